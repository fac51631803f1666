"""Accounts and API keys (embedded SQLite store).

An account is identified by its public key, a 6-character company id, as in Klaviyo. Private
keys (`pk_…`) are stored only as SHA-256 digests: they are 136 random bits, so a fast digest
is enough and lets every request be authenticated with one dictionary lookup.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import string
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

# Scopes as Klaviyo names them (x-klaviyo-scopes in the OpenAPI files).
ALL_SCOPES: tuple[str, ...] = (
    "events:read",
    "events:write",
    "metrics:read",
    "metrics:write",
    "profiles:read",
    "profiles:write",
)
# Test control (wait for processing, reset an account): never part of an ordinary key.
ADMIN_SCOPE = "trackhouse:admin"

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

_ALPHANUMERIC = string.ascii_letters + string.digits
# How long a successful key lookup is trusted before the database is asked again, so that a
# key revoked from the CLI stops working within this many seconds on a running server.
KEY_CACHE_SECONDS = 2.0


def hash_key(private_key: str) -> str:
    return hashlib.sha256(private_key.encode()).hexdigest()


def new_private_key() -> str:
    return "pk_" + secrets.token_hex(17)


def new_public_key() -> str:
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(6))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    account_id: str
    prefix: str
    label: str
    scopes: frozenset[str]
    created_at: str
    revoked_at: str | None


class AccountStore:
    def __init__(self, path: Path) -> None:
        # The processor writes the same file in batches; wait for it rather than fail.
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        self._known_accounts: set[str] = set()  # accounts are never deleted, so this is safe

    def close(self) -> None:
        self._conn.close()

    # -- accounts -------------------------------------------------------------------------

    def account_ids(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT id FROM accounts ORDER BY created_at, id").fetchall()
        return [r[0] for r in rows]

    def account_exists(self, account_id: str) -> bool:
        if account_id in self._known_accounts:
            return True
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,))
            found = row.fetchone() is not None
        if found:
            self._known_accounts.add(account_id)
        return found

    def create_account(self, public_key: str | None = None) -> str:
        account_id = public_key or new_public_key()
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO accounts (id, created_at) VALUES (?, ?)",
                (account_id, _now()),
            )
        return account_id

    # -- keys -----------------------------------------------------------------------------

    def create_key(
        self,
        account_id: str,
        scopes: frozenset[str] | None = None,
        label: str = "",
        private_key: str | None = None,
    ) -> tuple[str, ApiKey]:
        """Store a private key (a new random one unless given) and return it with its record."""
        secret = private_key or new_private_key()
        key = ApiKey(
            id=secrets.token_hex(8),
            account_id=account_id,
            prefix=secret[:8],
            label=label,
            scopes=frozenset(ALL_SCOPES if scopes is None else scopes),
            created_at=_now(),
            revoked_at=None,
        )
        with self._lock:
            self._conn.execute(
                "INSERT INTO api_keys (id, account_id, key_hash, prefix, label, scopes, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    account_id,
                    hash_key(secret),
                    key.prefix,
                    label,
                    " ".join(sorted(key.scopes)),
                    key.created_at,
                ),
            )
        return secret, key

    def ensure_key(
        self, account_id: str, private_key: str, scopes: tuple[str, ...] = ALL_SCOPES
    ) -> None:
        """Make sure this exact key exists, active with exactly `scopes`, for the account."""
        with self._lock:
            row = self._conn.execute(
                "SELECT account_id FROM api_keys WHERE key_hash = ?", (hash_key(private_key),)
            ).fetchone()
            if row is not None:
                if row[0] != account_id:
                    raise ValueError("that private key belongs to another account")
                self._conn.execute(
                    "UPDATE api_keys SET revoked_at = NULL, scopes = ? WHERE key_hash = ?",
                    (" ".join(sorted(scopes)), hash_key(private_key)),
                )
                self._cache.clear()
                return
        self.create_key(
            account_id, frozenset(scopes), label="from environment", private_key=private_key
        )

    def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        sql = "SELECT id, account_id, prefix, label, scopes, created_at, revoked_at FROM api_keys"
        args: tuple[str, ...] = ()
        if account_id:
            sql += " WHERE account_id = ?"
            args = (account_id,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created_at, id", args).fetchall()
        return [_key_from_row(r) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self._lock:
            cur = self._conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (_now(), key_id),
            )
        self._cache.clear()
        return cur.rowcount == 1

    def authenticate(self, private_key: str) -> ApiKey | None:
        """The active key record for a private key, or None."""
        digest = hash_key(private_key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < KEY_CACHE_SECONDS:
            return hit[1]
        with self._lock:
            row = self._conn.execute(
                "SELECT id, account_id, prefix, label, scopes, created_at, revoked_at"
                " FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                (digest,),
            ).fetchone()
        if row is None:
            self._cache.pop(digest, None)
            return None
        key = _key_from_row(row)
        if len(self._cache) > 10_000:  # bound memory, whatever the number of keys
            self._cache.clear()
        self._cache[digest] = (now, key)
        return key


def _key_from_row(row: tuple) -> ApiKey:
    key_id, account_id, prefix, label, scopes, created_at, revoked_at = row
    return ApiKey(
        key_id, account_id, prefix, label, frozenset(scopes.split()), created_at, revoked_at
    )
