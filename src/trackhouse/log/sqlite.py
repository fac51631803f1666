"""The embedded log: one SQLite file in WAL mode, written by one thread with group commit.

Requests hand their submissions to `append`, which queues them and waits. A single writer
thread takes everything queued, writes it in one transaction and commits with
`synchronous=FULL` (the WAL is fsync'd before COMMIT returns), then wakes every waiter. Under
load the batches grow by themselves, so one fsync serves many requests; with one request in
flight it costs one fsync, and nobody is acknowledged before their commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trackhouse.log import BulkJob, LogEntry, LogOverloaded, LogUnavailable
from trackhouse.model import Submission, decode_submission, encode_submission

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

# Waiters whose bytes are still uncommitted; past this, new appends are refused (503) rather
# than letting memory grow without bound.
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024


@dataclass(slots=True)
class _Pending:
    rows: list[tuple[str, str | None, str | None, bytes]]
    job: BulkJob | None
    size: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


def _resolve_all(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():  # the request was cancelled (client went away) meanwhile
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _wake(batch: list[_Pending], error: BaseException | None) -> None:
    """Resolve the batch's futures with one callback per event loop: a thread-safe call costs a
    write to the loop's self-pipe, too much to pay per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for p in batch:
        by_loop.setdefault(p.loop, []).append(p.future)
    for loop, futures in by_loop.items():
        # RuntimeError: that event loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve_all, futures, error)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class SQLiteLog:
    def __init__(self, path: Path, max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES) -> None:
        self.path = path
        self.max_pending_bytes = max_pending_bytes
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
        self._queue: deque[_Pending] = deque()
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._listeners: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, name="trackhouse-log", daemon=True)
        self._thread.start()

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call `listener` (from the writer thread) after every successful commit."""
        self._listeners.append(listener)

    async def append(self, submissions: list[Submission], job: BulkJob | None = None) -> None:
        rows = [(s.account_id, s.job_id, s.receipt_id, encode_submission(s)) for s in submissions]
        size = sum(len(r[3]) for r in rows)
        loop = asyncio.get_running_loop()
        pending = _Pending(rows, job, size, loop, loop.create_future())
        with self._cond:
            if self._closing:
                raise LogUnavailable("the log is closed")
            if self._pending_bytes + size > self.max_pending_bytes and self._queue:
                raise LogOverloaded("too many uncommitted writes")
            self._pending_bytes += size
            self._queue.append(pending)
            self._cond.notify()
        await pending.future

    def _run(self) -> None:
        batch: list[_Pending] = []
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return
                    batch = list(self._queue)
                    self._queue.clear()
                error = self._commit(batch)
                if error is None:
                    for listener in self._listeners:
                        listener()
                with self._cond:
                    self._pending_bytes -= sum(p.size for p in batch)
                _wake(batch, error)
                batch = []
        finally:
            # However the writer ends, nobody is left waiting and nothing new is accepted.
            with self._cond:
                self._closing = True
                left = batch + list(self._queue)
                self._queue.clear()
            _wake(left, LogUnavailable("the log writer stopped"))

    def _commit(self, batch: list[_Pending]) -> BaseException | None:
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

    def receipt_seq(self, account_id: str, receipt_id: str) -> int | None:
        with self._read_lock:
            row = self._reader.execute(
                "SELECT seq FROM entries WHERE receipt_id = ? AND account_id = ?",
                (receipt_id, account_id),
            ).fetchone()
        return None if row is None else row[0]

    def read(self, after_seq: int, limit: int, max_bytes: int | None = None) -> list[LogEntry]:
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
        return [LogEntry(seq, decode_submission(blob)) for seq, blob in rows]

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        self._writer.close()
        self._reader.close()


def log_head(path: Path) -> int:
    """The newest log position, read without opening the log for writing (CLI use)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()[0]
    finally:
        conn.close()
