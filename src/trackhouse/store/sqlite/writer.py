"""The processor's writes to the embedded store, as named operations of one batch transaction.

One connection, one transaction at a time (`transaction()`); the processor asks for what it
needs — who owns an identifier, a profile's document, insert these events, record these
outcomes, advance the position — and never sees SQL. Storage trouble (SQLite's
OperationalError: disk full, locked, I/O) leaves here as `StoreUnavailable`, which the
processor retries; anything else is a problem with the entry being applied.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from trackhouse.clock import ClockSetting
from trackhouse.store import ProcessingFenced
from trackhouse.store import flows as flow_runs
from trackhouse.store import sql as sql_writes
from trackhouse.store.base import (
    EventInsert,
    MembershipChange,
    MetricEventRow,
    OutcomeRow,
    ProfileRow,
    SegmentRow,
)
from trackhouse.store.sqlite.store import POSITION, ResetGate, connect
from trackhouse.store.sqlite.store import storage_errors as _storage_errors

# An account's data (members before their lists and segments: nothing else refers to those).
TABLES = (*flow_runs.TABLES, "events", "profiles", "identifiers", "metrics", "outcomes",
          "list_members", "segment_members", "membership_changes", "lists", "segments",
          "flow_actions", "flows", "clocks")  # fmt: skip
_SQL = sql_writes.Dialect(param="?", number="rowid", array_params=False)


class SQLiteWriter(flow_runs.FlowRunWrites):
    _flow_sql = _SQL
    _skip_locked = ""  # one processor per store
    shared = False  # one processor per store (ProcessingClaim): what it read stays true

    def __init__(self, path: Path) -> None:
        self.conn = connect(path)
        self._gate = ResetGate(path)

    def close(self) -> None:
        self.conn.close()
        self._gate.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: committed when the block ends, rolled back if it raises."""
        conn = self.conn
        try:
            with _storage_errors:
                conn.execute("BEGIN IMMEDIATE")
                yield
                conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def busy_timeout(self, seconds: float) -> None:
        """How long a write waits for another writer's lock before StoreUnavailable."""
        self.conn.execute(f"PRAGMA busy_timeout = {max(1, int(seconds * 1000))}")

    # -- identity and profiles -----------------------------------------------------------

    def identifier_owner(self, account_id: str, kind: str, key: str) -> str | None:
        with _storage_errors:
            row = self.conn.execute(
                "SELECT profile_id FROM identifiers"
                " WHERE account_id = ? AND kind = ? AND value = ?",
                (account_id, kind, key),
            ).fetchone()
        return None if row is None else row[0]

    def identifier_owners(
        self, keys: list[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], str]:
        found = {}
        for key in keys:
            owner = self.identifier_owner(*key)
            if owner is not None:
                found[key] = owner
        return found

    def profile_docs(self, ids: list[tuple[str, str]]) -> dict[str, bytes]:
        found = {}
        for account_id, profile_id in ids:
            doc = self.profile_doc(account_id, profile_id)
            if doc is not None:
                found[profile_id] = doc
        return found

    def claim_identifiers(self, rows: list[tuple[str, str, str, str]]) -> None:
        with _storage_errors:
            self.conn.executemany("INSERT INTO identifiers VALUES (?, ?, ?, ?)", rows)

    def release_identifiers(self, rows: list[tuple[str, str, str, str]]) -> None:
        with _storage_errors:
            self.conn.executemany(
                "DELETE FROM identifiers WHERE account_id = ? AND kind = ? AND value = ?"
                " AND profile_id = ?",
                rows,
            )

    def profile_doc(self, account_id: str, profile_id: str) -> bytes | None:
        with _storage_errors:
            row = self.conn.execute(
                "SELECT doc FROM profiles WHERE id = ? AND account_id = ?", (profile_id, account_id)
            ).fetchone()
        return None if row is None else row[0]

    def save_profiles(self, rows: list[ProfileRow]) -> None:
        with _storage_errors:
            self.conn.executemany("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?, ?)", rows)

    # -- metrics -------------------------------------------------------------------------

    def metric_id(self, account_id: str, name: str, service: str) -> str | None:
        with _storage_errors:
            row = self.conn.execute(
                "SELECT id FROM metrics WHERE account_id = ? AND name = ? AND service = ?",
                (account_id, name, service),
            ).fetchone()
        return None if row is None else row[0]

    def metric_count(self, account_id: str) -> int:
        with _storage_errors:
            (count,) = self.conn.execute(
                "SELECT count(*) FROM metrics WHERE account_id = ?", (account_id,)
            ).fetchone()
        return count

    def add_metric(
        self, metric_id: str, account_id: str, name: str, service: str, created: str
    ) -> bool:
        """False when the id is taken already (the caller draws another)."""
        with _storage_errors:
            try:
                self.conn.execute(
                    "INSERT INTO metrics VALUES (?, ?, ?, ?, ?)",
                    (metric_id, account_id, name, service, created),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    # -- events, outcomes, position ------------------------------------------------------

    def insert_events(self, rows: list[EventInsert]) -> set[int]:
        """Insert the event rows the dedup key lets in, in order (the first processed wins);
        the numbers of those inserted."""
        conn = self.conn
        before = conn.total_changes
        with _storage_errors:
            conn.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (account_id, profile_id, metric_id, dedup_key) DO NOTHING",
                rows,
            )
        numbers = {row[0] for row in rows}
        if conn.total_changes - before == len(rows):
            return numbers  # usually every row goes in, and that is enough to know
        return numbers & self._stored_numbers(min(numbers), max(numbers))

    def _stored_numbers(self, first: int, last: int) -> set[int]:
        """Which of the event ids first..last are stored."""
        with _storage_errors:
            rows = self.conn.execute(
                "SELECT rowid FROM events WHERE rowid BETWEEN ? AND ?", (first, last)
            ).fetchall()
        return {r for (r,) in rows}

    def event_with_key(self, account_id: str, profile_id: str, metric_id: str, key: str) -> int:
        """The id of the stored event with this dedup key (the one a duplicate repeats)."""
        with _storage_errors:
            (found,) = self.conn.execute(
                "SELECT rowid FROM events WHERE account_id = ? AND profile_id = ?"
                " AND metric_id = ? AND dedup_key = ?",
                (account_id, profile_id, metric_id, key),
            ).fetchone()
        return found

    def record_outcomes(self, rows: list[OutcomeRow]) -> None:
        with _storage_errors:
            self.conn.executemany(
                "INSERT INTO outcomes (seq, account_id, job_id, receipt_id, profile_id, results,"
                " job_group) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    # -- lists and segments: membership --------------------------------------------------

    def _rows(self, sql: str, args: list | tuple) -> list[tuple]:
        with _storage_errors:
            return self.conn.execute(sql, args).fetchall()

    def _run(self, sql: str, args: list | tuple) -> int:
        with _storage_errors:
            return self.conn.execute(sql, args).rowcount

    def clock_settings(self) -> dict[str, ClockSetting]:
        return sql_writes.clock_settings(self._rows(sql_writes.CLOCK_SETTINGS, ()))

    def list_exists(self, account_id: str, list_id: str) -> bool:
        sql = "SELECT 1 FROM lists WHERE id = ? AND account_id = ?"
        return bool(self._rows(sql, (list_id, account_id)))

    def active_segments(self, account_id: str) -> list[SegmentRow]:
        sql = (
            f"SELECT {sql_writes.SEGMENT_COLUMNS} FROM segments WHERE account_id = ? AND is_active"
        )
        return [sql_writes.segment_row(r) for r in self._rows(sql, (account_id,))]

    def lock_profiles(self, account_id: str, profile_ids: list[str]) -> None:
        """Nothing to do: the batch's transaction holds the whole store (BEGIN IMMEDIATE)."""

    def memberships(self, account_id: str, profile_ids: list[str]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for start in range(0, len(profile_ids), 500):  # SQLite's bound on parameters
            sql, args = sql_writes.memberships(_SQL, account_id, profile_ids[start : start + 500])
            for profile_id, group_id, joined_at in self._rows(sql, args):
                found.setdefault(profile_id, {})[group_id] = joined_at
        return found

    def groups_deleted(self) -> int:
        found = self._rows("SELECT value FROM meta WHERE key = 'groups_deleted'", ())
        return int(found[0][0]) if found else 0

    def metric_events(
        self,
        account_id: str,
        profile_ids: list[str],
        metric_ids: list[str],
        with_properties: list[str],
    ) -> list[MetricEventRow]:
        rows: list[MetricEventRow] = []
        for start in range(0, len(profile_ids), 500):
            part = profile_ids[start : start + 500]
            sql, args = sql_writes.metric_events(
                _SQL, account_id, part, metric_ids, with_properties
            )
            rows += self._rows(sql, args)
        return rows

    def change_memberships(
        self, joins: list[MembershipChange], leaves: list[MembershipChange]
    ) -> None:
        with _storage_errors:
            for kind in ("list", "segment"):
                joined = [(a, g, p, at) for k, a, g, p, at, _ in joins if k == kind]
                if joined:
                    self.conn.executemany(sql_writes.join_member(_SQL, kind), joined)
                left = [(a, g, p) for k, a, g, p, _, _ in leaves if k == kind]
                if left:
                    self.conn.executemany(sql_writes.leave_member(_SQL, kind), left)
            changes = [(k, a, g, p, True, at, c) for k, a, g, p, at, c in joins]
            changes += [(k, a, g, p, False, at, c) for k, a, g, p, at, c in leaves]
            self.conn.executemany(sql_writes.record_change(_SQL), changes)

    def pending_segments(self) -> list[tuple[str, str]]:
        sql = "SELECT account_id, id FROM segments WHERE pending AND is_active ORDER BY updated"
        return self._rows(sql, ())  # type: ignore[return-value]

    def segment_for_update(self, account_id: str, segment_id: str) -> SegmentRow | None:
        sql = f"SELECT {sql_writes.SEGMENT_COLUMNS} FROM segments WHERE id = ? AND account_id = ?"
        rows = self._rows(sql, (segment_id, account_id))
        return sql_writes.segment_row(rows[0]) if rows else None

    def profile_page(self, account_id: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        return self._rows(sql_writes.profile_page_after(_SQL), (account_id, after, limit))  # type: ignore[return-value]

    def segment_progress(
        self, account_id: str, segment_id: str, version: int, cursor: str | None
    ) -> None:
        with _storage_errors:
            self.conn.execute(
                sql_writes.segment_progress(_SQL),
                (cursor, cursor is not None, account_id, segment_id, version),
            )

    def settled_segments(self) -> list[tuple[str, SegmentRow]]:
        rows = self._rows(sql_writes.SETTLED_SEGMENTS, ())
        return [(r[0], sql_writes.segment_row(r[1:])) for r in rows]

    def start_sweeps(self, segments: list[tuple[str, str, int]]) -> None:
        with _storage_errors:
            self.conn.executemany(sql_writes.start_sweep(_SQL), segments)

    def processed_position(self, partition: int) -> int:
        with _storage_errors:
            row = self.conn.execute(
                "SELECT seq FROM positions WHERE name = ?", (POSITION,)
            ).fetchone()
        return 0 if row is None else row[0]

    def reading(self, partition: int) -> contextlib.AbstractContextManager[int | None]:
        """The lowest hold of a reset in another process (SQLiteStore.reset_account); a
        processor in the API process is held by Processor.reset_account instead."""
        return self._gate.reading()

    def ceiling(self, partition: int) -> int | None:
        return None  # holds are read with the entries (`reading`)

    def before_commit(self, partition: int, position: int) -> None:
        """Nothing to check: holds are read with the entries (`reading`)."""

    def resets_done(self) -> int:
        """How many account resets have committed (read first in a transaction: after one,
        what processing remembers of the store no longer holds)."""
        found = self._rows("SELECT value FROM meta WHERE key = 'resets'", ())
        return int(found[0][0]) if found else 0

    def advance(self, partition: int, old: int, new: int) -> None:
        """The position the log has been processed up to, in the batch's own transaction."""
        with _storage_errors:
            if old == 0:
                self.conn.execute(
                    "INSERT INTO positions VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                    (POSITION,),
                )
            moved = self.conn.execute(
                "UPDATE positions SET seq = ? WHERE name = ? AND seq = ?", (new, POSITION, old)
            ).rowcount
        if moved != 1:
            raise ProcessingFenced(f"the position is no longer {old}")

    def delete_account(self, account_id: str, reset_seq: int) -> dict[str, int]:
        """Delete the account's processed data (test control); jobs and receipts up to log
        position `reset_seq` answer 404 from then on, not "queued" for ever. Rows per table."""
        deleted = {}
        with _storage_errors:
            for table in TABLES:
                sql = f"DELETE FROM {table} WHERE account_id = ?"
                deleted[table] = self.conn.execute(sql, (account_id,)).rowcount
            self.conn.execute(
                "INSERT INTO resets VALUES (?, ?)"
                " ON CONFLICT (account_id) DO UPDATE SET seq = excluded.seq",
                (account_id, reset_seq),
            )
            self.conn.execute(
                "INSERT INTO meta VALUES ('resets', '1') ON CONFLICT (key)"
                " DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )
        return deleted
