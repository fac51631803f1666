"""The embedded store: profiles, identifiers, metrics, events and outcomes in one SQLite file.

Only the processor writes here (`process/`), one transaction per batch of log entries, and the
log position it reached is written in that same transaction (design.md, invariant 3). Reads
(job status, receipts, later the query API) use their own connection.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS positions (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS profiles (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    doc BLOB NOT NULL,             -- JSON of process.profiles.Profile
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    last_event_date TEXT
);
CREATE TABLE IF NOT EXISTS identifiers (
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL,            -- external_id, email, phone_number, anonymous_id, _kx
    value TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    PRIMARY KEY (account_id, kind, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metrics (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    service TEXT NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (account_id, name, service)
);
CREATE TABLE IF NOT EXISTS events (
    rowid INTEGER PRIMARY KEY,     -- log seq * 1000 + index in the submission
    account_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    metric_id TEXT NOT NULL,
    time INTEGER NOT NULL,
    dedup_key TEXT NOT NULL,       -- unique_id, or the time to the second
    value REAL,
    value_currency TEXT,
    backfill INTEGER NOT NULL,
    properties BLOB NOT NULL,      -- JSON
    received_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_dedup
    ON events (account_id, profile_id, metric_id, dedup_key);
CREATE TABLE IF NOT EXISTS outcomes (
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,          -- event index in the submission (0 for a profile-only one)
    account_id TEXT NOT NULL,
    job_id TEXT,
    receipt_id TEXT,
    outcome TEXT NOT NULL,         -- stored, deduplicated, rejected
    profile_id TEXT,               -- the profile the submission resolved to
    event_rowid INTEGER,           -- the stored event, or the one a duplicate matched
    detail TEXT,                   -- why rejected, the dedup key, identifier conflicts
    PRIMARY KEY (seq, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outcomes_job ON outcomes (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS outcomes_receipt ON outcomes (receipt_id) WHERE receipt_id IS NOT NULL;
"""

# Event ids on the wire are the rowid in base 62: short like Klaviyo's, stable across restarts.
_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def event_id(rowid: int) -> str:
    out = ""
    while True:
        rowid, rest = divmod(rowid, 62)
        out = _DIGITS[rest] + out
        if not rowid:
            return out


def event_rowid(event_id: str) -> int | None:
    value = 0
    for char in event_id:
        digit = _DIGITS.find(char)
        if digit < 0 or len(event_id) > 12:
            return None
        value = value * 62 + digit
    return value


@dataclass(frozen=True, slots=True)
class Outcome:
    seq: int
    idx: int
    account_id: str
    job_id: str | None
    receipt_id: str | None
    outcome: str
    profile_id: str | None
    event_rowid: int | None
    detail: str | None


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # the log is the durable record; see Processor
    return conn


class SQLiteStore:
    """Read access for the API; the processor opens its own writer (`writer()`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def writer(self) -> sqlite3.Connection:
        return connect(self.path)

    def close(self) -> None:
        self._conn.close()

    def _all(self, sql: str, args: tuple[Any, ...]) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def position(self, name: str = "processor") -> int:
        rows = self._all("SELECT seq FROM positions WHERE name = ?", (name,))
        return rows[0][0] if rows else 0

    def job_outcomes(self, account_id: str, job_id: str) -> list[Outcome]:
        rows = self._all(
            "SELECT * FROM outcomes WHERE job_id = ? AND account_id = ? ORDER BY seq, idx",
            (job_id, account_id),
        )
        return [Outcome(*r) for r in rows]

    def receipt_outcomes(self, account_id: str, receipt_id: str) -> list[Outcome]:
        rows = self._all(
            "SELECT * FROM outcomes WHERE receipt_id = ? AND account_id = ? ORDER BY idx",
            (receipt_id, account_id),
        )
        return [Outcome(*r) for r in rows]

    def profile(self, account_id: str, profile_id: str) -> bytes | None:
        """A profile's stored document (process.profiles.Profile as JSON)."""
        rows = self._all(
            "SELECT doc FROM profiles WHERE id = ? AND account_id = ?", (profile_id, account_id)
        )
        return rows[0][0] if rows else None

    def counts(self, account_id: str) -> dict[str, int]:
        """How many events, profiles and metrics an account has (for tests and the CLI)."""
        out = {}
        for table in ("events", "profiles", "metrics"):
            out[table] = self._all(
                f"SELECT count(*) FROM {table} WHERE account_id = ?", (account_id,)
            )[0][0]
        return out
