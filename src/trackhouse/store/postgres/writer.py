"""A worker's batch transaction on PostgreSQL, as the named operations of `StoreWriter`.

Several workers write at once, so what the embedded store's one processor may assume is made
true by the database: an identifier is claimed by an insert its primary key guards (taken
meanwhile → StoreConflict, and the batch is redone seeing the other claim); a profile is
written only at the version it was read at; an event goes in only if its dedup key is free
(the first to commit wins); and the partition's position moves only from where this worker
last left it (ProcessingFenced otherwise), first in the transaction, so a worker that lost its
partition cannot apply a batch twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg

from trackhouse.clock import ClockSetting
from trackhouse.store import ProcessingFenced, ProcessingHeld, StoreConflict
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
from trackhouse.store.postgres.connection import connect, has_nul, storage_errors

RESET_GATE = 0x7472_6B68  # the advisory lock between resets' holds and batches' commits
_CEILING = (
    "SELECT min(ceiling) FROM holds WHERE partition = %s"
    " AND expires > extract(epoch FROM clock_timestamp())"
)
# An account's data (members before their lists and segments: nothing else refers to those).
TABLES = (*flow_runs.TABLES, "events", "profiles", "identifiers", "metrics", "outcomes",
          "list_members", "segment_members", "membership_changes", "lists", "segments",
          "flow_actions", "flows", "clocks")  # fmt: skip
_SQL = sql_writes.Dialect(param="%s", number="number", array_params=True)
# A batch's events, COPYed in before they are inserted; emptied by each commit.
_STAGING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS events_in (o integer NOT NULL,"
    " LIKE events) ON COMMIT DELETE ROWS"
)
_COPY_STAGED = (
    "COPY events_in (o, number, account_id, profile_id, metric_id, time, dedup_key, value,"
    " value_currency, backfill, properties, received_at) FROM STDIN (FORMAT BINARY)"
)
_COPY_PROFILES = (
    "COPY profiles (id, account_id, doc, created, updated, last_event_time, version)"
    " FROM STDIN (FORMAT BINARY)"
)
_PROFILE_TYPES = ["text", "text", "bytea", "text", "text", "int8", "int8"]
_COPY_OUTCOMES = (
    "COPY outcomes (seq, account_id, job_id, receipt_id, profile_id, results, job_group)"
    " FROM STDIN (FORMAT BINARY)"
)
_OUTCOME_TYPES = ["int8", "text", "text", "text", "text", "bytea", "int4"]
_STAGED_TYPES = [
    "int4", "int8", "text", "text", "text", "int8", "bytea", "float8", "bytea", "bool",
    "bytea", "float8",
]  # fmt: skip


def _b(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", "surrogatepass")


def _columns(rows: list[tuple[str, str, str, str]]) -> tuple[list, list, list, list]:
    """(account, kind, key, profile) rows as the arrays of an unnest, keys as bytea."""
    return (
        [r[0] for r in rows], [r[1] for r in rows], [_b(r[2]) for r in rows],
        [r[3] for r in rows],
    )  # fmt: skip


class PostgresWriter(flow_runs.FlowRunWrites):
    _flow_sql = _SQL
    _skip_locked = " FOR UPDATE OF {alias} SKIP LOCKED"  # workers share the steps
    shared = True  # other workers write too: nothing read is kept past its transaction

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = self._connect()
        self._versions: dict[str, int] = {}  # profiles read in this transaction

    def _connect(self) -> psycopg.Connection[Any]:
        """A session with its staging table for a batch's events (see insert_events)."""
        conn = connect(self.url)
        with storage_errors():
            conn.execute(_STAGING)
            conn.commit()
        return conn

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self.conn.closed or self.conn.broken:
            self.conn = self._connect()
        self._versions.clear()
        with storage_errors(), self.conn.transaction():
            yield

    def busy_timeout(self, seconds: float) -> None:
        with storage_errors():
            self.conn.execute(f"SET lock_timeout = {max(1, int(seconds * 1000))}")
            self.conn.commit()

    def _one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        with storage_errors():
            return self.conn.execute(sql, args).fetchone()

    def _run(self, sql: str, args: tuple[Any, ...]) -> int:
        with storage_errors():
            return self.conn.execute(sql, args).rowcount

    # -- identity and profiles -----------------------------------------------------------

    def identifier_owner(self, account_id: str, kind: str, key: str) -> str | None:
        row = self._one(
            "SELECT profile_id FROM identifiers WHERE account_id = %s AND kind = %s AND value = %s",
            (account_id, kind, _b(key)),
        )
        return None if row is None else row[0]

    def identifier_owners(
        self, keys: list[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], str]:
        """The owners of many (account, kind, key) at once: one round trip for a batch."""
        if not keys:
            return {}
        with storage_errors():
            rows = self.conn.execute(
                "SELECT i.account_id, i.kind, i.value, i.profile_id FROM identifiers i"
                " JOIN unnest(%b::text[], %b::text[], %b::bytea[]) AS k(a, kind, v)"
                " ON i.account_id = k.a AND i.kind = k.kind AND i.value = k.v",
                ([k[0] for k in keys], [k[1] for k in keys], [_b(k[2]) for k in keys]),
            ).fetchall()
        return {
            (a, kind, bytes(v).decode("utf-8", "surrogatepass")): pid for a, kind, v, pid in rows
        }

    def profile_docs(self, ids: list[tuple[str, str]]) -> dict[str, bytes]:
        """The documents of many (account, profile id) at once, their versions noted."""
        ids = [i for i in ids if "\x00" not in i[1]]
        if not ids:
            return {}
        with storage_errors():
            rows = self.conn.execute(
                "SELECT p.id, p.doc, p.version FROM profiles p"
                " JOIN unnest(%b::text[], %b::text[]) AS k(a, id) ON p.account_id = k.a"
                " AND p.id = k.id",
                ([i[0] for i in ids], [i[1] for i in ids]),
            ).fetchall()
        found = {}
        for pid, doc, version in rows:
            self._versions[pid] = version
            found[pid] = bytes(doc)
        return found

    def claim_identifiers(self, rows: list[tuple[str, str, str, str]]) -> None:
        with storage_errors():
            claimed = self.conn.execute(
                "INSERT INTO identifiers SELECT * FROM unnest(%b::text[], %b::text[],"
                " %b::bytea[], %b::text[]) ON CONFLICT DO NOTHING",
                _columns(rows),
            ).rowcount
        if claimed != len(rows):  # another worker's transaction claimed one after we looked
            raise StoreConflict("an identifier was claimed concurrently")

    def release_identifiers(self, rows: list[tuple[str, str, str, str]]) -> None:
        with storage_errors():
            self.conn.execute(
                "DELETE FROM identifiers i USING unnest(%b::text[], %b::text[], %b::bytea[],"
                " %b::text[]) AS r(a, kind, v, pid) WHERE i.account_id = r.a"
                " AND i.kind = r.kind AND i.value = r.v AND i.profile_id = r.pid",
                _columns(rows),
            )

    def profile_doc(self, account_id: str, profile_id: str) -> bytes | None:
        if has_nul((profile_id,)):
            return None
        row = self._one(
            "SELECT doc, version FROM profiles WHERE id = %s AND account_id = %s",
            (profile_id, account_id),
        )
        if row is None:
            return None
        self._versions[profile_id] = row[1]
        return bytes(row[0])

    def save_profiles(self, rows: list[ProfileRow]) -> None:
        new = [r for r in rows if r[0] not in self._versions]
        changed = sorted((r for r in rows if r[0] in self._versions), key=lambda r: r[0])
        with storage_errors(), self.conn.cursor() as cur:
            if new:  # fresh ids: a clash (StoreConflict) is all but impossible, and redone
                with cur.copy(_COPY_PROFILES) as copy:
                    copy.set_types(_PROFILE_TYPES)
                    for row in new:
                        copy.write_row((*row, 1))
            if changed:
                versions = [self._versions[r[0]] for r in changed]
                cur.execute(
                    "UPDATE profiles p SET doc = u.doc, updated = u.updated,"
                    " last_event_time = u.last_event_time, version = p.version + 1"
                    " FROM unnest(%b::text[], %b::bytea[], %b::text[], %b::bigint[],"
                    " %b::bigint[]) AS u(id, doc, updated, last_event_time, version)"
                    " WHERE p.id = u.id AND p.version = u.version",
                    (
                        [r[0] for r in changed],
                        [r[2] for r in changed],
                        [r[4] for r in changed],
                        [r[5] for r in changed],
                        versions,
                    ),
                )
                if cur.rowcount != len(changed):
                    raise StoreConflict("a profile was changed by another worker")
                for r in changed:
                    self._versions[r[0]] += 1
        for r in new:
            self._versions[r[0]] = 1

    # -- metrics -------------------------------------------------------------------------

    def metric_id(self, account_id: str, name: str, service: str) -> str | None:
        row = self._one(
            "SELECT id FROM metrics WHERE account_id = %s AND name = %s AND service = %s",
            (account_id, _b(name), _b(service)),
        )
        return None if row is None else row[0]

    def metric_count(self, account_id: str) -> int:
        row = self._one("SELECT count(*) FROM metrics WHERE account_id = %s", (account_id,))
        return 0 if row is None else row[0]

    def add_metric(
        self, metric_id: str, account_id: str, name: str, service: str, created: str
    ) -> bool:
        added = self._run(
            "INSERT INTO metrics VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (metric_id, account_id, _b(name), _b(service), created),
        )
        if added:
            return True
        if self.metric_id(account_id, name, service) is not None:
            raise StoreConflict("the metric was created by another worker")
        return False  # the id is taken: draw another

    # -- events, outcomes, position ------------------------------------------------------

    def insert_events(self, rows: list[EventInsert]) -> set[int]:
        """COPY into the session's staging table (binary: the properties go in as they are),
        then one INSERT from it in the batch's order, so that of two rows with one dedup key
        the first is kept. (An INSERT from unnest of arrays spent most of its time in
        psycopg's Python dumping of the arrays.)"""
        if not rows:
            return set()
        with storage_errors():
            with self.conn.cursor() as cur, cur.copy(_COPY_STAGED) as copy:
                copy.set_types(_STAGED_TYPES)
                for order, row in enumerate(rows):
                    n, a, p, m, t, key, v, currency, backfill, properties, received = row
                    copy.write_row((
                        order, n, a, p, m, t, _b(key), v, _b(currency), bool(backfill),
                        properties, received,
                    ))  # fmt: skip
            found = self.conn.execute(
                "INSERT INTO events SELECT number, account_id, profile_id, metric_id, time,"
                " dedup_key, value, value_currency, backfill, properties, received_at"
                " FROM events_in ORDER BY o ON CONFLICT DO NOTHING RETURNING number"
            ).fetchall()
        return {n for (n,) in found}

    def event_with_key(self, account_id: str, profile_id: str, metric_id: str, key: str) -> int:
        row = self._one(
            "SELECT number FROM events WHERE account_id = %s AND profile_id = %s"
            " AND metric_id = %s AND dedup_key = %s",
            (account_id, profile_id, metric_id, _b(key)),
        )
        if row is None:  # the duplicate's first copy was deleted meanwhile (a reset)
            raise StoreConflict("the event a duplicate repeats is gone")
        return row[0]

    def record_outcomes(self, rows: list[OutcomeRow]) -> None:
        with (
            storage_errors(),
            self.conn.cursor() as cur,
            cur.copy(_COPY_OUTCOMES) as copy,
        ):
            copy.set_types(_OUTCOME_TYPES)
            for row in rows:
                copy.write_row(row)

    # -- lists and segments: membership --------------------------------------------------

    def _rows(self, sql: str, args: list | tuple) -> list[tuple]:
        if has_nul(args):
            return []
        with storage_errors():
            return self.conn.execute(sql, args).fetchall()

    def clock_settings(self) -> dict[str, ClockSetting]:
        return sql_writes.clock_settings(self._rows(sql_writes.CLOCK_SETTINGS, ()))

    def list_exists(self, account_id: str, list_id: str) -> bool:
        sql = "SELECT 1 FROM lists WHERE id = %s AND account_id = %s"
        return bool(self._rows(sql, (list_id, account_id)))

    def active_segments(self, account_id: str) -> list[SegmentRow]:
        sql = (
            f"SELECT {sql_writes.SEGMENT_COLUMNS} FROM segments WHERE account_id = %s AND is_active"
        )
        return [sql_writes.segment_row(r) for r in self._rows(sql, (account_id,))]

    def lock_profiles(self, account_id: str, profile_ids: list[str]) -> None:
        """Row locks in id order (as save_profiles takes them), so two batches cannot deadlock
        on them; a computation page waits for them (FOR SHARE), and they for it."""
        self._rows(
            "SELECT 1 FROM profiles WHERE account_id = %s AND id = ANY(%s) ORDER BY id FOR UPDATE",
            (account_id, sorted(profile_ids)),
        )

    def memberships(self, account_id: str, profile_ids: list[str]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        sql, args = sql_writes.memberships(_SQL, account_id, profile_ids)
        for profile_id, group_id, joined_at in self._rows(sql, args):
            found.setdefault(profile_id, {})[group_id] = joined_at
        return found

    def groups_deleted(self) -> int:
        found = self._rows("SELECT value FROM trackhouse_meta WHERE key = 'groups_deleted'", ())
        return int(found[0][0]) if found else 0

    def resets_done(self) -> int:
        return 0  # shared: processors remember nothing past a transaction (Processor.forget)

    def metric_events(
        self,
        account_id: str,
        profile_ids: list[str],
        metric_ids: list[str],
        with_properties: list[str],
    ) -> list[MetricEventRow]:
        sql, args = sql_writes.metric_events(
            _SQL, account_id, profile_ids, metric_ids, with_properties
        )
        return [
            (p, m, t, v, None if props is None else bytes(props))
            for p, m, t, v, props in self._rows(sql, args)
        ]

    def change_memberships(
        self, joins: list[MembershipChange], leaves: list[MembershipChange]
    ) -> None:
        with storage_errors(), self.conn.cursor() as cur:
            for kind in ("list", "segment"):
                joined = [(a, g, p, at) for k, a, g, p, at, _ in joins if k == kind]
                if joined:
                    cur.executemany(sql_writes.join_member(_SQL, kind), joined)
                left = [(a, g, p) for k, a, g, p, _, _ in leaves if k == kind]
                if left:
                    cur.executemany(sql_writes.leave_member(_SQL, kind), left)
            changes = [(k, a, g, p, True, at, c) for k, a, g, p, at, c in joins]
            changes += [(k, a, g, p, False, at, c) for k, a, g, p, at, c in leaves]
            if changes:
                cur.executemany(sql_writes.record_change(_SQL), changes)

    def pending_segments(self) -> list[tuple[str, str]]:
        sql = "SELECT account_id, id FROM segments WHERE pending AND is_active ORDER BY updated"
        return self._rows(sql, ())  # type: ignore[return-value]

    def segment_for_update(self, account_id: str, segment_id: str) -> SegmentRow | None:
        rows = self._rows(
            f"SELECT {sql_writes.SEGMENT_COLUMNS} FROM segments WHERE id = %s AND account_id = %s"
            " FOR UPDATE",
            (segment_id, account_id),
        )
        return sql_writes.segment_row(rows[0]) if rows else None

    def profile_page(self, account_id: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        rows = self._rows(
            sql_writes.profile_page_after(_SQL, " FOR SHARE"), (account_id, after, limit)
        )
        return [(pid, bytes(doc)) for pid, doc in rows]

    def segment_progress(
        self, account_id: str, segment_id: str, version: int, cursor: str | None
    ) -> None:
        self._run(
            sql_writes.segment_progress(_SQL),
            (cursor, cursor is not None, account_id, segment_id, version),
        )

    def settled_segments(self) -> list[tuple[str, SegmentRow]]:
        rows = self._rows(sql_writes.SETTLED_SEGMENTS, ())
        return [(r[0], sql_writes.segment_row(r[1:])) for r in rows]

    def start_sweeps(self, segments: list[tuple[str, str, int]]) -> None:
        with storage_errors(), self.conn.cursor() as cur:
            cur.executemany(sql_writes.start_sweep(_SQL), segments)

    def _between_batches(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """A read outside any batch, not left open as a transaction."""
        if self.conn.closed or self.conn.broken:
            self.conn = self._connect()
        try:
            return self._one(sql, args)
        finally:
            with storage_errors():
                self.conn.rollback()

    def processed_position(self, partition: int) -> int:
        row = self._between_batches(
            "SELECT position FROM positions WHERE partition = %s", (partition,)
        )
        return 0 if row is None else row[0]

    def reading(self, partition: int) -> contextlib.AbstractContextManager[int | None]:
        return contextlib.nullcontext()  # holds are checked as a batch commits (before_commit)

    def ceiling(self, partition: int) -> int | None:
        row = self._between_batches(_CEILING, (partition,))
        return None if row is None else row[0]

    def advance(self, partition: int, old: int, new: int) -> None:
        """First in the batch's transaction: the row lock it takes orders this batch after any
        other worker's on the partition."""
        moved = self._run(
            "UPDATE positions SET position = %s WHERE partition = %s AND position = %s",
            (new, partition, old),
        )
        if moved != 1:
            raise ProcessingFenced(f"partition {partition} is no longer at position {old}")

    def before_commit(self, partition: int, position: int) -> None:
        """Last in the batch's transaction. A reset records its holds under the exclusive
        gate, so this (shared) look at them sees every reset whose heads were read before
        this batch's entries could have been, and the batch is redone short of its hold."""
        with storage_errors():
            self.conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (RESET_GATE,))
        row = self._one(_CEILING, (partition,))
        if row is not None and row[0] is not None and position > row[0]:
            raise ProcessingHeld(row[0])

    def delete_account(self, account_id: str, reset_seq: int) -> dict[str, int]:
        deleted = {}
        for table in TABLES:
            deleted[table] = self._run(f"DELETE FROM {table} WHERE account_id = %s", (account_id,))
        return deleted
