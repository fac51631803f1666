"""The embedded store: profiles, identifiers, metrics, events and outcomes in one SQLite file.

Only the processor writes these tables (`process/`, through `writer.py`), one transaction per
batch of log entries, and the log position it reached is written in that same transaction
(design.md, invariant 3). Reads (job status, receipts, the query API) use their own
connection. The same file also holds accounts and keys (`accounts.py` here). The read
queries it shares with PostgreSQL are built by `store/sql.py`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trackhouse.clock import ClockSetting
from trackhouse.identifiers import email_key
from trackhouse.store import flows as flow_runs
from trackhouse.store import sql as sql_reads
from trackhouse.store.base import (
    GROUP_TABLES,
    OUTCOMES,
    EventQuery,
    EventRow,
    FlowActionRow,
    FlowRow,
    ListQuery,
    ListRow,
    MemberQuery,
    MembershipChangeRow,
    MetricRow,
    Outcome,
    ProfileQuery,
    SegmentQuery,
    SegmentRow,
    outcomes_of,
    unpack_results,
)

if TYPE_CHECKING:
    from trackhouse.store.sqlite.writer import SQLiteWriter
from trackhouse.log import EventLog, LogMismatch
from trackhouse.store import ProcessorRunning, ResetElsewhere, StoreUnavailable

logger = logging.getLogger("trackhouse.store")

# Counts deletions of lists and segments (StoreWriter.groups_deleted).
DELETED_GROUP = (
    "INSERT INTO meta VALUES ('groups_deleted', '1') ON CONFLICT (key)"
    " DO UPDATE SET value = CAST(value AS INTEGER) + 1"
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS positions (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (  -- log_identity: the log this store is built from
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS resets (  -- test control: the log position of an account's reset
    account_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
-- Test control: an account's clock, frozen (frozen_at) or moved (clock_offset); real time
-- when it has no row (trackhouse/clock.py).
CREATE TABLE IF NOT EXISTS clocks (
    account_id TEXT PRIMARY KEY,
    frozen_at REAL,
    clock_offset REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS profiles (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    doc BLOB NOT NULL,             -- JSON of process.profiles.Profile
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    last_event_time INTEGER
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
-- The read API's filters: by time, by profile and time, by metric and time (rowid breaks ties).
CREATE INDEX IF NOT EXISTS events_time ON events (account_id, time);
CREATE INDEX IF NOT EXISTS events_profile_time ON events (account_id, profile_id, time);
CREATE INDEX IF NOT EXISTS events_metric_time ON events (account_id, metric_id, time);
CREATE INDEX IF NOT EXISTS profiles_account ON profiles (account_id, id);
-- One row per log entry (a bulk group, a single create, an identify): one row per event
-- would cost as much as the event itself, so the entry's per-event outcomes are packed.
CREATE TABLE IF NOT EXISTS outcomes (
    seq INTEGER PRIMARY KEY,       -- the log entry
    account_id TEXT NOT NULL,
    job_id TEXT,
    receipt_id TEXT,
    profile_id TEXT,               -- the profile the submission resolved to
    results BLOB NOT NULL,         -- msgpack [[outcome, event number, detail], ...] by event
    job_group INTEGER              -- a bulk job's profile group: its index in the request
);
-- Lists (written by the API process) and their members (written by processing).
CREATE TABLE IF NOT EXISTS lists (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    opt_in_process TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS lists_name ON lists (account_id, name, id);
CREATE INDEX IF NOT EXISTS lists_created ON lists (account_id, created, id);
CREATE INDEX IF NOT EXISTS lists_updated ON lists (account_id, updated, id);
CREATE TABLE IF NOT EXISTS list_members (
    account_id TEXT NOT NULL,
    list_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    joined_at TEXT NOT NULL,
    PRIMARY KEY (account_id, list_id, profile_id)
) WITHOUT ROWID;
-- A profile's lists, covering: with (account, profile) alone, and no statistics, SQLite read
-- every member of the account through list_members_joined instead.
DROP INDEX IF EXISTS list_members_profile;
CREATE INDEX IF NOT EXISTS list_members_of_profile
    ON list_members (account_id, profile_id, list_id, joined_at);
CREATE INDEX IF NOT EXISTS list_members_joined
    ON list_members (account_id, list_id, joined_at, profile_id);
-- Segments (written by the API process) and their members (written by processing).
CREATE TABLE IF NOT EXISTS segments (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    definition TEXT NOT NULL,      -- JSON, as given
    is_active INTEGER NOT NULL,
    is_starred INTEGER NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    pending INTEGER NOT NULL,      -- its members are being computed (is_processing)
    cursor TEXT,                   -- the last profile id computed so far
    version INTEGER NOT NULL,      -- moved by each new definition
    cause TEXT NOT NULL            -- why it is pending: definition | time
);
CREATE INDEX IF NOT EXISTS segments_name ON segments (account_id, name, id);
CREATE INDEX IF NOT EXISTS segments_created ON segments (account_id, created, id);
CREATE INDEX IF NOT EXISTS segments_updated ON segments (account_id, updated, id);
CREATE INDEX IF NOT EXISTS segments_pending ON segments (pending) WHERE pending;
CREATE TABLE IF NOT EXISTS segment_members (
    account_id TEXT NOT NULL,
    segment_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    joined_at TEXT NOT NULL,
    PRIMARY KEY (account_id, segment_id, profile_id)
) WITHOUT ROWID;
DROP INDEX IF EXISTS segment_members_profile;  -- as list_members_profile
CREATE INDEX IF NOT EXISTS segment_members_of_profile
    ON segment_members (account_id, profile_id, segment_id, joined_at);
CREATE INDEX IF NOT EXISTS segment_members_joined
    ON segment_members (account_id, segment_id, joined_at, profile_id);
-- Flows (written by the API process): the definition as stored, with its actions' ids; each
-- action a row too (flow-actions and their flow-messages are read by id).
CREATE TABLE IF NOT EXISTS flows (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,          -- draft | manual | live
    archived INTEGER NOT NULL,
    trigger_type TEXT NOT NULL,    -- Klaviyo's: Metric, Added to List
    trigger_kind TEXT NOT NULL,    -- metric | list | segment
    trigger_id TEXT NOT NULL,
    definition TEXT NOT NULL,      -- JSON
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flows_account ON flows (account_id, id);
CREATE INDEX IF NOT EXISTS flows_trigger ON flows (account_id, trigger_kind, trigger_id);
CREATE TABLE IF NOT EXISTS flow_actions (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    type TEXT NOT NULL,
    status TEXT NOT NULL,          -- draft | manual | live | disabled
    definition TEXT NOT NULL,      -- JSON
    message_id TEXT UNIQUE,        -- its flow-message, for actions that send one
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flow_actions_flow ON flow_actions (account_id, flow_id, id);
-- Every join and leave of a list or segment (flows enter on joins).
CREATE TABLE IF NOT EXISTS membership_changes (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,            -- list | segment
    account_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    joined INTEGER NOT NULL,       -- 1 joined, 0 left
    at TEXT NOT NULL,
    cause TEXT NOT NULL            -- processing | time | definition
);
CREATE INDEX IF NOT EXISTS membership_changes_group
    ON membership_changes (account_id, group_id, id);
CREATE INDEX IF NOT EXISTS outcomes_job ON outcomes (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS outcomes_receipt ON outcomes (receipt_id) WHERE receipt_id IS NOT NULL;
"""

POSITION = "processor"  # the positions row of the embedded log's one partition
# How identifier rows are keyed: "2" is trackhouse.identifiers (normalized, lower-cased
# emails); stores without the mark were keyed by lower() alone and are re-keyed on opening.
IDENTIFIER_KEYS = "2"
_SQL = sql_reads.Dialect(
    param="?", number="rowid", array_params=False, by_profile=" INDEXED BY events_profile_time"
)
_EVENT_COLUMNS = "rowid, profile_id, metric_id, time, dedup_key, value, value_currency, properties"


class _StorageErrors:
    """`with storage_errors:` turns SQLite's OperationalError into StoreUnavailable. A class,
    not a @contextmanager generator: it runs several times per event, and costs a fifth."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> Literal[False]:
        if kind is not None and issubclass(kind, sqlite3.OperationalError):
            raise StoreUnavailable(str(exc)) from exc
        return False


storage_errors = _StorageErrors()


BUSY_SECONDS = 30.0  # how long a write waits for another writer's lock


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=BUSY_SECONDS)  # fmt: skip
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # the log is the durable record; see Processor
    return conn


class ProcessingClaim:
    """An exclusive `flock` on a file beside the store. The kernel drops it when the last
    process that has the file open dies, however it dies, so a crashed processor never leaves
    a stale claim behind. (`serve` shares it with its second process, which may outlive a
    killed `serve` by its last batch.)"""

    def __init__(self, path: Path, inherited: int | None = None) -> None:
        self.path = path
        if inherited is not None:  # already locked, by the process that handed it over
            self._file = open(inherited, "a+", closefd=True)  # noqa: SIM115
            return
        self._file = open(path, "a+")  # noqa: SIM115 (held open for as long as the claim)
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read(200).strip() or "another process"
            self._file.close()
            raise ProcessorRunning(
                f"This store is already being processed by {holder}, which holds {path}; "
                "one processor per store. Stop that one first."
            ) from None
        self._file.truncate(0)
        self._file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()

    def partitions(self) -> list[int]:
        return [0]  # the embedded log has one

    def fileno(self) -> int:
        return self._file.fileno()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the file drops the lock


class ResetGate:
    """The holds of resets in the API process on a processor in another one, in a file beside
    the store, under a `flock` of it: the processor holds it shared while it reads the holds
    and then a batch's entries from the log; a reset holds it exclusively while it reads the
    log's head and adds its hold (a moment: nothing else is waited for meanwhile). So a batch
    either read its entries before the head was read (none past it) or sees the hold.
    The file holds a line per hold: reset id, ceiling, expiry (Unix time)."""

    def __init__(self, store_path: Path) -> None:
        path = store_path.with_name(store_path.name + ".resets")
        self._file = open(path, "a+")  # noqa: SIM115 (one open file: the lock is its own)

    @contextlib.contextmanager
    def reading(self) -> Iterator[int | None]:
        """Shared: the lowest ceiling held (None: none), fixed until the block ends."""
        fcntl.flock(self._file, fcntl.LOCK_SH)
        try:
            yield min((ceiling for _, ceiling, _ in self._holds()), default=None)
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def hold(self, reset_id: str, head: Callable[[], int], expires: float, deadline: float) -> int:
        """Exclusive: read the log's head and hold processing there; the head."""
        with self._exclusive(deadline):
            at = head()
            self._write([*self._holds(), (reset_id, at, expires)])
            return at

    def release(self, reset_id: str, deadline: float) -> None:
        with self._exclusive(deadline):
            self._write([h for h in self._holds() if h[0] != reset_id])

    def _holds(self) -> list[tuple[str, int, float]]:
        """Those not expired: a reset whose process died lets go in the end."""
        self._file.seek(0)
        now, found = time.time(), []
        for line in self._file.read().splitlines():
            reset_id, ceiling, expires = line.split()
            if float(expires) > now:
                found.append((reset_id, int(ceiling), float(expires)))
        return found

    def _write(self, holds: list[tuple[str, int, float]]) -> None:
        self._file.seek(0)
        self._file.truncate()
        self._file.write("".join(f"{r} {c} {e}\n" for r, c, e in holds))
        self._file.flush()

    @contextlib.contextmanager
    def _exclusive(self, deadline: float) -> Iterator[None]:
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError("processing did not let go of the log") from None
                time.sleep(0.001)  # a processor holds it shared for one read of the log
        try:
            yield
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def close(self) -> None:
        self._file.close()


class SQLiteStore(flow_runs.FlowRunReads):
    """Read access for the API; the processor opens its own writer (`writer()`)."""

    _flow_sql = _SQL

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._conn.executescript(SCHEMA + flow_runs.SQLITE_SCHEMA)
        self._lock = threading.Lock()
        self._log: EventLog | None = None  # bind_log's
        self._add_job_group()
        self._rekey_emails()

    def _add_job_group(self) -> None:
        """Stores from before outcomes recorded their bulk group get the column (NULL in their
        rows: those groups had consecutive log positions, which stood in for it)."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(outcomes)")}
        if "job_group" not in columns:
            self._conn.execute("ALTER TABLE outcomes ADD COLUMN job_group INTEGER")

    def _rekey_emails(self) -> None:
        """Stores written before `trackhouse.identifiers` keyed emails by `lower()` alone, so
        NFD and NFC, or `xn--` and Unicode spellings, of one address had keys of their own.
        Re-key those rows once (only non-ASCII or IDNA ones can differ). Where both spellings
        were claimed, by two profiles, the profile that holds the new key keeps it and the
        other row goes: there is no implicit merge, and lookups find one profile again."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = conn.execute("SELECT 1 FROM meta WHERE key = 'identifier_keys'").fetchone()
            if done is None:
                rows = conn.execute(
                    "SELECT account_id, value FROM identifiers WHERE kind = 'email'"
                    " AND (value GLOB '*[^ -~]*' OR value LIKE '%xn--%')"
                ).fetchall()
                for account_id, value in rows:
                    key = email_key(value)
                    if key == value:
                        continue
                    taken = conn.execute(
                        "SELECT 1 FROM identifiers WHERE account_id = ? AND kind = 'email'"
                        " AND value = ?",
                        (account_id, key),
                    ).fetchone()
                    where = " WHERE account_id = ? AND kind = 'email' AND value = ?"
                    if taken:
                        conn.execute("DELETE FROM identifiers" + where, (account_id, value))
                    else:
                        conn.execute(
                            "UPDATE identifiers SET value = ?" + where, (key, account_id, value)
                        )
                conn.execute("INSERT INTO meta VALUES ('identifier_keys', ?)", (IDENTIFIER_KEYS,))
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def writer(self) -> SQLiteWriter:
        """The processor's own connection, for its batch transactions."""
        from trackhouse.store.sqlite.writer import SQLiteWriter

        return SQLiteWriter(self.path)

    def close(self) -> None:
        self._conn.close()

    def _all(self, sql: str, args: tuple[Any, ...]) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def bind_log(self, log: EventLog, log_name: str) -> None:  # the embedded, one-partition log
        """Record the log this store is built from on first use; afterwards refuse any other
        log, and a log whose head is behind what this store has processed (an older copy).
        Raises LogMismatch with what was found and what to do."""
        identity, head = log.identity, log.heads()[0]
        position = self.position()
        with self._lock:
            (bound,) = self._conn.execute(
                "SELECT coalesce(max(value), '') FROM meta WHERE key = 'log_identity'"
            ).fetchone()
        if not bound and position:
            # A store from before logs had identities: bind it only if the newest entry it
            # has an outcome for is in this log as it was processed.
            self._check_processed_entry(log, log_name, position)
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('log_identity', ?)", (identity,))
            (bound,) = self._conn.execute(
                "SELECT value FROM meta WHERE key = 'log_identity'"
            ).fetchone()
        if bound != identity:
            raise LogMismatch(
                f"The store {self.path} was built from another log (log {bound}) than "
                f"{log_name} (log {identity}), which was created afresh or replaced; "
                f"processing it would skip or mix up events (the store has processed "
                f"{position} entries, the log holds {head}). Put the log that belongs to "
                f"the store back, or start with a new data directory."
            )
        if position > head:
            raise LogMismatch(
                f"The store {self.path} has processed {position} entries of its log, but "
                f"{log_name} ends at entry {head}: it is an older copy of that log, or was "
                f"cut short. Events accepted now would never be processed. Put the complete "
                f"log back, or start with a new data directory."
            )
        self._log = log

    def _check_processed_entry(self, log: EventLog, log_name: str, position: int) -> None:
        rows = self._all(
            "SELECT seq, account_id, job_id, receipt_id FROM outcomes WHERE seq <= ?"
            " ORDER BY seq DESC LIMIT 1",
            (position,),
        )
        if not rows:
            return  # nothing left to compare (reset since): trust the position check
        seq, account_id, job_id, receipt_id = rows[0]
        entries = log.read(0, seq - 1, 1)
        found = entries[0] if entries and entries[0].seq == seq else None
        if found is None or (
            found.submission.account_id,
            found.submission.job_id,
            found.submission.receipt_id,
        ) != (account_id, job_id, receipt_id):
            raise LogMismatch(
                f"The store {self.path} has processed log entry {seq}, but {log_name} holds "
                f"another entry there (or none): the log was replaced. Processing it would "
                f"skip or mix up events. Put the log that belongs to the store back, or start "
                f"with a new data directory."
            )

    def claim_processing(self, inherited: int | None = None) -> ProcessingClaim:
        """The right to process into this store, held until released or the process ends.
        Two processors on one store would apply the same entries twice; the second one is
        refused at once (ProcessorRunning, naming the process that holds the claim). With
        `inherited`, the claim `serve` took and handed its second process (the lock belongs
        to the open file, which both share, so `serve` holds it across the child's restarts
        and no other processor can slip in between)."""
        return ProcessingClaim(self.path.with_name(self.path.name + ".processor.lock"), inherited)

    def position(self) -> int:
        rows = self._all("SELECT seq FROM positions WHERE name = ?", (POSITION,))
        return rows[0][0] if rows else 0

    def positions(self) -> dict[int, int]:
        """The one partition of the embedded log."""
        return {0: self.position()}

    def unprocessed(self, log: EventLog) -> int:
        return log.committed - self.position()  # the log's one writer is this process

    def job_outcomes(self, account_id: str, job_id: str) -> list[Outcome]:
        rows = self._all(
            "SELECT seq, profile_id, results, job_group FROM outcomes"
            " WHERE job_id = ? AND account_id = ? ORDER BY seq",
            (job_id, account_id),
        )
        return outcomes_of(rows)

    def receipt_outcomes(self, account_id: str, receipt_id: str) -> list[Outcome]:
        rows = self._all(
            "SELECT seq, profile_id, results, job_group FROM outcomes"
            " WHERE receipt_id = ? AND account_id = ?",
            (receipt_id, account_id),
        )
        return outcomes_of(rows)

    def outcome_counts(self) -> dict[str, int]:
        """Events per outcome over the whole store (tests and benchmarks)."""
        counts = dict.fromkeys(OUTCOMES, 0)
        with self._lock:
            for (blob,) in self._conn.execute("SELECT results FROM outcomes"):
                for outcome, _, _ in unpack_results(blob):
                    counts[outcome] += 1
        return counts

    def profile(self, account_id: str, profile_id: str) -> bytes | None:
        """A profile's stored document (process.profiles.Profile as JSON)."""
        rows = self._all(
            "SELECT doc FROM profiles WHERE id = ? AND account_id = ?", (profile_id, account_id)
        )
        return rows[0][0] if rows else None

    # -- reads for the query API ---------------------------------------------------------

    def events(self, q: EventQuery) -> list[EventRow]:
        sql, args = sql_reads.event_page(_SQL, _EVENT_COLUMNS, q)
        return [EventRow(*r) for r in self._all(sql, tuple(args))]

    def event(self, account_id: str, number: int) -> EventRow | None:
        rows = self._all(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE rowid = ? AND account_id = ?",
            (number, account_id),
        )
        return EventRow(*rows[0]) if rows else None

    def metrics(
        self, account_id: str, ids: list[str] | None = None, after: str | None = None,
        limit: int = 200,
    ) -> list[MetricRow]:  # fmt: skip
        sql, args = sql_reads.metric_page(_SQL, account_id, ids, after, limit)
        return [MetricRow(*r) for r in self._all(sql, tuple(args))]

    # -- lists -----------------------------------------------------------------------------

    def _run(self, sql: str, args: tuple[Any, ...]) -> int:
        with self._lock, storage_errors:
            return self._conn.execute(sql, args).rowcount

    def _query(self, sql: str, args: tuple[Any, ...] | list[Any]) -> list[tuple]:
        return self._all(sql, tuple(args))

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        return self._run(sql, args)

    def add_list(self, account_id: str, row: ListRow) -> bool:
        args = (row.id, account_id, row.name, row.opt_in_process, row.created, row.updated)
        return self._run(sql_reads.add_list(_SQL), (*args, row.id)) == 1

    def lists(self, q: ListQuery) -> list[ListRow]:
        sql, args = sql_reads.list_page(_SQL, q)
        return [ListRow(*r) for r in self._all(sql, tuple(args))]

    def update_list(
        self, account_id: str, list_id: str, changes: dict[str, str], updated: str
    ) -> ListRow | None:
        sets = "".join(f"{column} = ?, " for column in changes)  # name, opt_in_process
        self._run(
            f"UPDATE lists SET {sets}updated = ? WHERE id = ? AND account_id = ?",
            (*changes.values(), updated, list_id, account_id),
        )
        found = self.lists(ListQuery(account_id, ids=[list_id], limit=1))
        return found[0] if found else None

    def _delete_group(self, kind: str, account_id: str, group_id: str) -> bool:
        """A list or segment, its members and their changes, in one transaction."""
        table, column = GROUP_TABLES[kind]
        with self._lock, storage_errors:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                where = f" WHERE account_id = ? AND {column} = ?"
                self._conn.execute(f"DELETE FROM {table}" + where, (account_id, group_id))
                self._conn.execute(
                    "DELETE FROM membership_changes WHERE account_id = ? AND group_id = ?",
                    (account_id, group_id),
                )
                gone = self._conn.execute(
                    f"DELETE FROM {kind}s WHERE id = ? AND account_id = ?", (group_id, account_id)
                ).rowcount
                if gone:  # the processor's memory of memberships no longer holds
                    self._conn.execute(DELETED_GROUP)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return gone == 1

    def delete_list(self, account_id: str, list_id: str) -> bool:
        return self._delete_group("list", account_id, list_id)

    def _counts(self, kind: str, account_id: str, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        sql, args = sql_reads.group_profile_counts(_SQL, kind, account_id, ids)
        return dict(self._all(sql, tuple(args)))  # type: ignore[arg-type]

    def list_profile_counts(self, account_id: str, list_ids: list[str]) -> dict[str, int]:
        return self._counts("list", account_id, list_ids)

    def members(self, q: MemberQuery) -> list[tuple[bytes, str]]:
        sql, args = sql_reads.member_page(_SQL, q)
        return self._all(sql, tuple(args))  # type: ignore[return-value]

    def profile_groups(self, account_id: str, profile_id: str, kind: str) -> list[str]:
        sql, args = sql_reads.profile_groups(_SQL, kind, account_id, profile_id)
        return [r[0] for r in self._all(sql, tuple(args))]

    # -- segments --------------------------------------------------------------------------

    def add_segment(self, account_id: str, row: SegmentRow) -> bool:
        sql, _ = sql_reads.add_segment(_SQL)
        args = (row.id, account_id, row.name, row.definition, row.is_active, row.is_starred,
                row.created, row.updated, row.pending, row.cursor, row.version, row.cause,
                row.id)  # fmt: skip
        return self._run(sql, args) == 1

    def segments(self, q: SegmentQuery) -> list[SegmentRow]:
        sql, args = sql_reads.segment_page(_SQL, q)
        return [sql_reads.segment_row(r) for r in self._all(sql, tuple(args))]

    def update_segment(
        self, account_id: str, segment_id: str, changes: dict[str, Any], updated: str
    ) -> SegmentRow | None:
        sets, values = sql_reads.update_segment(_SQL, changes)
        self._run(
            f"UPDATE segments SET {sets}, updated = ? WHERE id = ? AND account_id = ?",
            (*values, updated, segment_id, account_id),
        )
        found = self.segments(SegmentQuery(account_id, ids=[segment_id], limit=1))
        return found[0] if found else None

    def delete_segment(self, account_id: str, segment_id: str) -> bool:
        return self._delete_group("segment", account_id, segment_id)

    def segment_profile_counts(self, account_id: str, ids: list[str]) -> dict[str, int]:
        return self._counts("segment", account_id, ids)

    def membership_changes(
        self, account_id: str, group_id: str, after: int = 0, limit: int = 1000
    ) -> list[MembershipChangeRow]:
        rows = self._all(sql_reads.membership_changes(_SQL), (account_id, group_id, after, limit))
        return [(i, k, g, p, bool(joined), at, c) for i, k, g, p, joined, at, c in rows]

    def start_sweeps(self, segments: list[tuple[str, str, int]]) -> None:
        with self._lock, storage_errors:
            self._conn.executemany(sql_reads.start_sweep(_SQL), segments)

    def segments_pending(self) -> int:
        return self._all("SELECT count(*) FROM segments WHERE pending AND is_active", ())[0][0]

    def profiles(
        self,
        account_id: str,
        ids: list[str] | None = None,
        identifiers: tuple[str, list[str]] | None = None,
        after: str | None = None,
        limit: int = 100,
        q: ProfileQuery | None = None,
    ) -> list[bytes]:
        """Profile documents in `q.sort` order (id by default); `identifiers` = (kind, values)
        filters by them."""
        sql, args = sql_reads.profile_page(
            _SQL, account_id, ids, identifiers, after, limit, q or ProfileQuery()
        )
        return [doc for _, doc, _ in self._all(sql, tuple(args))]

    # -- flows -------------------------------------------------------------------------------

    def add_flow(self, account_id: str, flow: FlowRow, actions: list[FlowActionRow]) -> bool:
        statements = sql_reads.add_flow_statements(_SQL, account_id, flow, actions)
        try:
            self._run_all(statements)
        except sqlite3.IntegrityError:
            return False
        return True

    def _run_all(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """Writes in one transaction, all or none; how many rows each changed."""
        with self._lock, storage_errors:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                counts = [self._conn.execute(sql, args).rowcount for sql, args in statements]
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return counts

    def flows(self, account_id: str, ids: list[str] | None = None) -> list[FlowRow]:
        sql, args = sql_reads.flows(_SQL, account_id, ids)
        return [sql_reads.flow_row(r) for r in self._all(sql, tuple(args))]

    def update_flow(
        self, account_id: str, flow_id: str, status: str, updated: str,
        actions: list[FlowActionRow], definition: str, expected: str,
        deleted: list[str] | None = None,
    ) -> FlowRow | None:  # fmt: skip
        statements = sql_reads.flow_update_statements(_SQL, account_id, flow_id, status, updated,
                                                      actions, definition, expected,
                                                      deleted or [])  # fmt: skip
        if not self._run_all(statements)[0]:
            return None
        found = self.flows(account_id, [flow_id])
        return found[0] if found else None

    def delete_flow(self, account_id: str, flow_id: str) -> bool:
        return self._run_all(sql_reads.delete_flow_statements(_SQL, account_id, flow_id))[-1] == 1

    def flow_actions(
        self, account_id: str, flow_ids: list[str] | None = None, ids: list[str] | None = None,
        message_ids: list[str] | None = None,
    ) -> list[FlowActionRow]:  # fmt: skip
        sql, args = sql_reads.flow_actions(_SQL, account_id, flow_ids, ids, message_ids)
        return [sql_reads.action_row(r) for r in self._all(sql, tuple(args))]

    # -- test control ------------------------------------------------------------------------

    def clock_settings(self) -> dict[str, ClockSetting]:
        return sql_reads.clock_settings(self._all(sql_reads.CLOCK_SETTINGS, ()))

    def set_clock(self, account_id: str, setting: ClockSetting) -> None:
        if setting.real:
            self._run(sql_reads.clear_clock(_SQL), (account_id,))
        else:
            self._run(sql_reads.set_clock(_SQL), (account_id, setting.frozen_at, setting.offset))

    def move_clock(self, account_id: str, expected: ClockSetting, setting: ClockSetting) -> bool:
        statement = sql_reads.move_clock(_SQL, account_id, expected, setting)
        return statement is None or self._run(*statement) == 1

    def reset_account(self, account_id: str, deadline: float) -> dict[str, int]:
        """For a processor in another process (`serve`'s second process, `trackhouse
        process`): hold processing at the log's head as it is now (`ResetGate`), wait for
        processing to reach it, then delete the account's data in one transaction, which also
        tells the processor that what it remembers no longer holds (`resets_done`), and let
        go. A processor in this process holds itself instead (Processor.reset_account)."""
        log = self._log
        if log is None or log.partitions != 1:
            raise ResetElsewhere
        reset_id = uuid.uuid4().hex
        lasts = max(1.0, deadline - time.monotonic()) + 5  # if this process dies
        gate = ResetGate(self.path)
        try:
            writer = self.writer()
        except BaseException:
            gate.close()
            raise
        try:
            head = gate.hold(reset_id, lambda: log.heads()[0], time.time() + lasts,
                             deadline)  # fmt: skip
            try:
                while (done := self.position()) < head:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"processing reached {done} of {head}")
                    time.sleep(0.01)
                writer.busy_timeout(max(0.001, deadline - time.monotonic()))
                with writer.transaction():
                    return writer.delete_account(account_id, head)
            finally:
                try:
                    gate.release(reset_id, time.monotonic() + 10)
                except TimeoutError:  # the hold expires by itself (`lasts`)
                    logger.warning("reset %s could not let go of its hold", reset_id)
        except StoreUnavailable as exc:
            raise TimeoutError(f"the store is unavailable: {exc}") from None
        finally:
            writer.close()
            gate.close()

    def reset_position(self, account_id: str) -> int:
        """The log position of the account's last reset (0 if never): what was accepted up to
        there is gone."""
        rows = self._all("SELECT seq FROM resets WHERE account_id = ?", (account_id,))
        return rows[0][0] if rows else 0
