"""Accounts and API keys in PostgreSQL: the named queries of `AccountStore`."""

from __future__ import annotations

from trackhouse.store.accounts import AccountStore
from trackhouse.store.postgres.connection import Reader

_KEY = "SELECT id, account_id, prefix, label, scopes, created_at, revoked_at FROM api_keys"
QUERIES = {
    "account_ids": "SELECT id FROM accounts ORDER BY created_at, id",
    "account_exists": "SELECT 1 FROM accounts WHERE id = %s",
    "create_account": "INSERT INTO accounts (id, created_at) VALUES (%s, %s)"
    " ON CONFLICT DO NOTHING",
    "create_key": "INSERT INTO api_keys (id, account_id, key_hash, prefix, label, scopes,"
    " created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
    "key_account": "SELECT account_id FROM api_keys WHERE key_hash = %s",
    "restore_key": "UPDATE api_keys SET revoked_at = NULL, scopes = %s WHERE key_hash = %s",
    "account_keys": _KEY + " WHERE account_id = %s ORDER BY created_at, id",
    "all_keys": _KEY + " ORDER BY created_at, id",
    "revoke_key": "UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
    "active_key": _KEY + " WHERE key_hash = %s AND revoked_at IS NULL",
}


class PostgresAccounts(AccountStore):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.db = Reader(url, max_size=2)

    def close(self) -> None:
        self.db.close()

    def _fetch(self, query: str, args: tuple[object, ...] = ()) -> list[tuple]:
        return self.db.all(QUERIES[query], args)

    def _execute(self, query: str, args: tuple[object, ...] = ()) -> int:
        return self.db.run(QUERIES[query], args)
