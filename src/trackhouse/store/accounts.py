"""Accounts and API keys, over the named queries of a backend (`sqlite/accounts.py`,
`postgres/accounts.py`).

An account is identified by its public key, a 6-character company id, as in Klaviyo. Private
keys (`pk_…`) are stored only as SHA-256 digests: they are 136 random bits, so a fast digest
is enough and lets every request be authenticated with one dictionary lookup.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from trackhouse.ids import short_id

# Scopes as Klaviyo names them (x-klaviyo-scopes in the OpenAPI files).
ALL_SCOPES: tuple[str, ...] = (
    "events:read",
    "events:write",
    "flows:read",
    "flows:write",
    "lists:read",
    "lists:write",
    "segments:read",
    "segments:write",
    "metrics:read",
    "metrics:write",
    "profiles:read",
    "profiles:write",
)
# Test control (wait for processing, reset an account): never part of an ordinary key.
ADMIN_SCOPE = "trackhouse:admin"


# How long a successful key lookup is trusted before the database is asked again, so that a
# key revoked from the CLI stops working within this many seconds on a running server.
KEY_CACHE_SECONDS = 2.0


def hash_key(private_key: str) -> str:
    return hashlib.sha256(private_key.encode()).hexdigest()


def new_private_key() -> str:
    return "pk_" + secrets.token_hex(17)


def new_public_key() -> str:
    return short_id()


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
    """The rules (hashing, the key cache, ensuring pinned keys); a backend supplies `_fetch`
    and `_execute`, which run its query of that name with `args`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        self._known_accounts: set[str] = set()  # accounts are never deleted, so this is safe

    def _fetch(self, query: str, args: tuple[object, ...] = ()) -> list[tuple]:
        raise NotImplementedError

    def _execute(self, query: str, args: tuple[object, ...] = ()) -> int:
        """Run a write; how many rows it changed."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- accounts -------------------------------------------------------------------------

    def account_ids(self) -> list[str]:
        return [r[0] for r in self._fetch("account_ids")]

    def account_exists(self, account_id: str) -> bool:
        if account_id in self._known_accounts:
            return True
        found = bool(self._fetch("account_exists", (account_id,)))
        if found:
            self._known_accounts.add(account_id)
        return found

    def create_account(self, public_key: str | None = None) -> str:
        account_id = public_key or new_public_key()
        self._execute("create_account", (account_id, _now()))
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
        row = (
            key.id,
            account_id,
            hash_key(secret),
            key.prefix,
            label,
            " ".join(sorted(key.scopes)),
        )
        self._execute("create_key", (*row, key.created_at))
        return secret, key

    def ensure_key(
        self, account_id: str, private_key: str, scopes: tuple[str, ...] = ALL_SCOPES
    ) -> None:
        """Make sure this exact key exists, active with exactly `scopes`, for the account."""
        digest = hash_key(private_key)
        rows = self._fetch("key_account", (digest,))
        if rows:
            if rows[0][0] != account_id:
                raise ValueError("that private key belongs to another account")
            self._execute("restore_key", (" ".join(sorted(scopes)), digest))
            self._cache.clear()
            return
        self.create_key(
            account_id, frozenset(scopes), label="from environment", private_key=private_key
        )

    def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        if account_id:
            return [_key_from_row(r) for r in self._fetch("account_keys", (account_id,))]
        return [_key_from_row(r) for r in self._fetch("all_keys")]

    def revoke_key(self, key_id: str) -> bool:
        changed = self._execute("revoke_key", (_now(), key_id))
        self._cache.clear()
        return changed == 1

    def authenticate(self, private_key: str) -> ApiKey | None:
        """The active key record for a private key, or None."""
        digest = hash_key(private_key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < KEY_CACHE_SECONDS:
            return hit[1]
        rows = self._fetch("active_key", (digest,))
        if not rows:
            self._cache.pop(digest, None)
            return None
        key = _key_from_row(rows[0])
        if len(self._cache) > 10_000:  # bound memory, whatever the number of keys
            self._cache.clear()
        self._cache[digest] = (now, key)
        return key


def _key_from_row(row: tuple) -> ApiKey:
    key_id, account_id, prefix, label, scopes, created_at, revoked_at = row
    return ApiKey(
        key_id, account_id, prefix, label, frozenset(scopes.split()), created_at, revoked_at
    )
