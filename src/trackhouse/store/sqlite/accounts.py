"""Accounts and API keys in the embedded store's file: its schema and named queries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from trackhouse.store.accounts import AccountStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,          -- the public key / company id
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,         -- shown in listings so a key can be recognised
    label TEXT NOT NULL DEFAULT '',
    scopes TEXT NOT NULL,         -- space separated
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
"""

_KEY = "SELECT id, account_id, prefix, label, scopes, created_at, revoked_at FROM api_keys"
QUERIES = {
    "account_ids": "SELECT id FROM accounts ORDER BY created_at, id",
    "account_exists": "SELECT 1 FROM accounts WHERE id = ?",
    "create_account": "INSERT OR IGNORE INTO accounts (id, created_at) VALUES (?, ?)",
    "create_key": "INSERT INTO api_keys (id, account_id, key_hash, prefix, label, scopes,"
    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    "key_account": "SELECT account_id FROM api_keys WHERE key_hash = ?",
    "restore_key": "UPDATE api_keys SET revoked_at = NULL, scopes = ? WHERE key_hash = ?",
    "account_keys": _KEY + " WHERE account_id = ? ORDER BY created_at, id",
    "all_keys": _KEY + " ORDER BY created_at, id",
    "revoke_key": "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
    "active_key": _KEY + " WHERE key_hash = ? AND revoked_at IS NULL",
}


class SQLiteAccounts(AccountStore):
    def __init__(self, path: Path) -> None:
        super().__init__()
        # The processor writes the same file in batches; wait for it rather than fail.
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def _fetch(self, query: str, args: tuple[object, ...] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(QUERIES[query], args).fetchall()

    def _execute(self, query: str, args: tuple[object, ...] = ()) -> int:
        with self._lock:
            return self._conn.execute(QUERIES[query], args).rowcount
