"""The embedded log: one SQLite file in WAL mode, written by one thread with group commit
(`group_commit.py`): each batch is one transaction committed with `synchronous=FULL` (the WAL
is fsync'd before COMMIT returns). One writer, one partition: positions are entry numbers.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from pathlib import Path

from trackhouse.log import BulkJob, LogEntry, LogUnavailable
from trackhouse.log.group_commit import DEFAULT_MAX_PENDING_BYTES, GroupCommitLog, Pending
from trackhouse.model import decode_submission

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL,
    job_id TEXT,
    receipt_id TEXT,
    submission BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_receipt ON entries (receipt_id) WHERE receipt_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (  -- identity: which log this is (see EventLog.identity)
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    event_count INTEGER NOT NULL,
    submission_count INTEGER NOT NULL,
    first_seq INTEGER NOT NULL
);
"""


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class SQLiteLog(GroupCommitLog):
    partitions = 1

    def __init__(self, path: Path, max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES) -> None:
        self.path = path
        self._writer = connect(path)
        self._writer.executescript(SCHEMA)
        self._writer.execute(
            "INSERT OR IGNORE INTO meta VALUES ('identity', ?)", (uuid.uuid4().hex,)
        )
        (self.identity,) = self._writer.execute(
            "SELECT value FROM meta WHERE key = 'identity'"
        ).fetchone()
        (self.committed,) = self._writer.execute(
            "SELECT coalesce(max(seq), 0) FROM entries"
        ).fetchone()
        self._reader = connect(path)
        self._read_lock = threading.Lock()
        super().__init__(max_pending_bytes)

    def _commit(self, batch: list[Pending]) -> BaseException | None:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            # One statement for the whole batch; with one writer its rows get consecutive seqs.
            rows = [row for p in batch for row in p.rows]
            conn.executemany(
                "INSERT INTO entries (account_id, job_id, receipt_id, submission)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )
            (last,) = conn.execute("SELECT max(seq) FROM entries").fetchone()
            if any(p.job is not None for p in batch):
                first_seq = last - len(rows) + 1
                for p in batch:
                    if (j := p.job) is not None:
                        job = (j.id, j.account_id, j.created_at, j.event_count, j.submission_count)
                        conn.execute(
                            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?)", (*job, first_seq)
                        )
                    first_seq += len(p.rows)
            conn.execute("COMMIT")
            self.committed = last
        except Exception as exc:  # disk full, read-only, locked, … : nothing was written
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            return LogUnavailable(f"log commit failed: {exc}")
        return None

    def get_job(self, account_id: str, job_id: str) -> BulkJob | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT id, account_id, created_at, event_count, submission_count, first_seq"
                " FROM jobs WHERE id = ? AND account_id = ?",
                (job_id, account_id),
            ).fetchone()
        return BulkJob(*row) if row else None

    def head(self) -> int:
        with self._read_lock:
            return self._reader.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()[0]

    def heads(self) -> dict[int, int]:
        return {0: self.head()}

    def receipt_seq(self, account_id: str, receipt_id: str) -> int | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT seq FROM entries WHERE receipt_id = ? AND account_id = ?",
                (receipt_id, account_id),
            ).fetchone()
        return None if row is None else row[0]

    def read(
        self, partition: int, after_seq: int, limit: int, max_bytes: int | None = None
    ) -> list[LogEntry]:
        rows: list[tuple[int, bytes]] = []
        size = 0
        with self._read_lock:
            cursor = self._reader.execute(
                "SELECT seq, submission FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            )
            for seq, blob in cursor:
                size += len(blob)
                if rows and max_bytes is not None and size > max_bytes:
                    break
                rows.append((seq, blob))
        return [LogEntry(seq, decode_submission(blob), 0, seq) for seq, blob in rows]

    def forget_processed(self, older_than: float) -> int:
        return 0  # the embedded log keeps every entry (it is also the store's backup)

    def close(self) -> None:
        super().close()
        self._writer.close()
        self._reader.close()


def log_head(path: Path) -> int:
    """The newest log position, read without opening the log for writing (CLI use)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()[0]
    finally:
        conn.close()
