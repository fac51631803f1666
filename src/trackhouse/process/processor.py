"""The processor: log entries in, profiles, metrics, events and one outcome per event out.

It reads the log in order (so one person's events are applied in arrival order) in batches,
applies each batch in one store transaction, and writes the log position it reached in that
same transaction: a crash anywhere rolls back both, and the restart redoes exactly the
uncommitted batch (design.md, invariants 2 and 3).
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import string
import threading
from datetime import UTC, datetime

import msgspec

from trackhouse.log import EventLog, LogEntry
from trackhouse.model import Submission
from trackhouse.process.identity import ProfileBook, resolve_profile
from trackhouse.process.profiles import apply_attributes
from trackhouse.store.sqlite import SQLiteStore, event_id, pack_results

logger = logging.getLogger("trackhouse.process")

POSITION = "processor"
BATCH_ENTRIES = 500
# Event rowids are seq * EVENTS_PER_ENTRY + index: a submission holds at most 1,000 events.
EVENTS_PER_ENTRY = 1000
_ALPHANUMERIC = string.ascii_letters + string.digits
_json = msgspec.json.Encoder()

Result = tuple[str, int | None, str | None]  # outcome, event rowid, detail
OutcomeRow = tuple[int, str, str | None, str | None, str | None, bytes]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class Processor:
    def __init__(self, log: EventLog, store: SQLiteStore) -> None:
        self.log = log
        self.conn = store.writer()
        self.book = ProfileBook(self.conn)
        self._metrics: dict[tuple[str, str, str], str] = {}
        self._metric_counts: dict[str, int] = {}
        self.position = store.position(POSITION)
        self.wake = threading.Event()  # set by the log after each commit
        self.lock = threading.Lock()  # one batch (or reset) at a time

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Process until `stop` is set; the batch in hand is always finished first."""
        while not stop.is_set():
            if not self.run_once():
                self.wake.wait(0.25)
                self.wake.clear()

    def run_once(self, max_entries: int = BATCH_ENTRIES) -> int:
        """Process the next batch of log entries; returns how many there were."""
        with self.lock:
            return self._run_once(max_entries)

    def _run_once(self, max_entries: int) -> int:
        entries = self.log.read(self.position, max_entries)
        if not entries:
            return 0
        try:
            self._commit(entries, self._apply_all)
        except Exception:
            # Something in the batch is broken: redo it one entry at a time so that only the
            # broken entry is affected, and it still gets an outcome (no silent drops).
            logger.exception("batch failed; retrying entry by entry")
            for entry in entries:
                try:
                    self._commit([entry], self._apply_all)
                except Exception as exc:
                    logger.exception("log entry %d failed", entry.seq)
                    self._commit([entry], lambda es, e=exc: self._reject_all(es, repr(e)))
        return len(entries)

    def _commit(self, entries: list[LogEntry], apply) -> None:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            outcomes = apply(entries)
            self.book.flush()
            conn.executemany("INSERT INTO outcomes VALUES (?, ?, ?, ?, ?, ?)", outcomes)
            conn.execute(
                "INSERT INTO positions VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
                (POSITION, entries[-1].seq),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.forget()
            raise
        self.position = entries[-1].seq

    def forget(self) -> None:
        """Drop every cache (after a rollback, or when another writer changed the store)."""
        self.book.forget()
        self._metrics.clear()
        self._metric_counts.clear()

    # -- one submission ------------------------------------------------------------------

    def _apply_all(self, entries: list[LogEntry]) -> list[OutcomeRow]:
        return [self._apply(entry.seq, entry.submission) for entry in entries]

    def _reject_all(self, entries: list[LogEntry], reason: str) -> list[OutcomeRow]:
        detail = f"internal error: {reason}"
        return [
            _row(e.seq, e.submission, None, [("rejected", None, detail)] * _slots(e.submission))
            for e in entries
        ]

    def _apply(self, seq: int, s: Submission) -> OutcomeRow:
        resolution = resolve_profile(self.book, s.account_id, s.profile, _iso(s.received_at))
        profile = resolution.profile
        if profile is None:
            return _row(seq, s, None, [("rejected", None, resolution.rejected)] * _slots(s))
        apply_attributes(profile, s.profile)
        notes = "; ".join(resolution.notes) or None
        if not s.events:  # identify: a profile change only
            return _row(seq, s, profile.id, [("stored", None, notes)])

        results: list[Result] = []
        rows = []
        keys = []
        for idx, event in enumerate(s.events):
            metric_id = self._metric(s.account_id, event.metric, event.service, s.metric_cap)
            if metric_id is None:
                reason = f"the account already has {s.metric_cap} metrics (the limit of this API)"
                results.append(("rejected", None, reason))
                continue
            key = event.unique_id if event.unique_id is not None else str(event.time)
            rowid = seq * EVENTS_PER_ENTRY + idx
            rows.append(
                (
                    rowid,
                    s.account_id,
                    profile.id,
                    metric_id,
                    event.time,
                    key,
                    event.value,
                    event.value_currency,
                    event.backfill,
                    _json.encode(event.properties),
                    s.received_at,
                )
            )
            keys.append((metric_id, key, event.unique_id is not None))
            results.append(("stored", rowid, notes))  # until the insert says otherwise
        # The dedup index refuses a repeated (account, profile, metric, key): the first
        # processed wins. Usually every row goes in, and one executemany is enough to know.
        before = self.conn.total_changes
        self.conn.executemany(
            "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
        )
        if self.conn.total_changes - before != len(rows):
            self._mark_duplicates(s.account_id, profile.id, rows, keys, results)
        newest = max(
            (e.time for e, r in zip(s.events, results, strict=True) if r[0] == "stored"),
            default=None,
        )
        if newest is not None and (profile.last_event_time or 0) < newest:
            profile.last_event_time = newest
        return _row(seq, s, profile.id, results)

    def _mark_duplicates(
        self,
        account_id: str,
        profile_id: str,
        rows: list[tuple],
        keys: list[tuple[str, str, bool]],
        results: list[Result],
    ) -> None:
        """Find which of `rows` the dedup index refused, and the event each one repeats."""
        first_rowid, last_rowid = rows[0][0], rows[-1][0]
        inserted = {
            r
            for (r,) in self.conn.execute(
                "SELECT rowid FROM events WHERE rowid BETWEEN ? AND ?", (first_rowid, last_rowid)
            )
        }
        by_rowid = {row[0]: n for n, row in enumerate(rows)}
        for idx, (outcome, rowid, _) in enumerate(results):
            if outcome != "stored" or rowid in inserted:
                continue
            metric_id, key, explicit = keys[by_rowid[rowid]]
            (first,) = self.conn.execute(
                "SELECT rowid FROM events WHERE account_id = ? AND profile_id = ?"
                " AND metric_id = ? AND dedup_key = ?",
                (account_id, profile_id, metric_id, key),
            ).fetchone()
            what = "unique_id" if explicit else "time (no unique_id)"
            detail = f"duplicate of event {event_id(first)}: same profile, metric and {what}"
            results[idx] = ("deduplicated", first, f"{detail} {key[:64]!r}")

    def _metric(self, account_id: str, name: str, service: str, cap: int | None) -> str | None:
        """The metric's id, created on first use; None when `cap` forbids a new one."""
        key = (account_id, name, service)
        metric_id = self._metrics.get(key)
        if metric_id is not None:
            return metric_id
        row = self.conn.execute(
            "SELECT id FROM metrics WHERE account_id = ? AND name = ? AND service = ?", key
        ).fetchone()
        if row is None:
            count = self._metric_counts.get(account_id)
            if count is None:
                (count,) = self.conn.execute(
                    "SELECT count(*) FROM metrics WHERE account_id = ?", (account_id,)
                ).fetchone()
            if cap is not None and count >= cap:
                self._metric_counts[account_id] = count
                return None
            while True:
                metric_id = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(6))
                try:
                    self.conn.execute(
                        "INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                        (metric_id, account_id, name, service, _iso(datetime.now(UTC).timestamp())),
                    )
                    break
                except sqlite3.IntegrityError:  # the random id is taken: draw another
                    continue
            self._metric_counts[account_id] = count + 1
        else:
            metric_id = row[0]
        self._metrics[key] = metric_id
        return metric_id

    def reset_account(self, account_id: str) -> dict[str, int]:
        """Delete an account's processed data (test control); returns what was deleted."""
        deleted = {}
        with self.lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for table in ("events", "profiles", "identifiers", "metrics", "outcomes"):
                    cursor = conn.execute(
                        f"DELETE FROM {table} WHERE account_id = ?", (account_id,)
                    )
                    deleted[table] = cursor.rowcount
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self.forget()
        return deleted

    def close(self) -> None:
        self.conn.close()


def _slots(s: Submission) -> int:
    """How many outcomes a submission has: one per event, or one for a profile-only change."""
    return max(1, len(s.events))


def _row(seq: int, s: Submission, profile_id: str | None, results: list[Result]) -> OutcomeRow:
    return (seq, s.account_id, s.job_id, s.receipt_id, profile_id, pack_results(results))
