"""Reads of the PostgreSQL store for the API and the query layer, and the cluster-wide reset.

Reads use a small pool of autocommit connections: each query sees what has committed, by any
worker. A text argument PostgreSQL cannot hold (NUL) finds nothing rather than failing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from typing import Any

import psycopg

from trackhouse.clock import ClockSetting
from trackhouse.log import EventLog
from trackhouse.store import StoreUnavailable
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
from trackhouse.store.postgres.connection import Reader, connect, storage_errors
from trackhouse.store.postgres.leases import PartitionLeases
from trackhouse.store.postgres.writer import RESET_GATE, TABLES, PostgresWriter

_SQL = sql_reads.Dialect(param="%s", number="number", array_params=True)
_EVENT_COLUMNS = "number, profile_id, metric_id, time, dedup_key, value, value_currency, properties"


def _text(value: bytes | None) -> str | None:
    """A bytea column back to the text it was written from (in Python: PostgreSQL's
    convert_from cannot give back a NUL)."""
    return None if value is None else value.decode("utf-8", "surrogatepass")


def _event(row: tuple[Any, ...]) -> EventRow:
    number, profile_id, metric_id, t, key, value, currency, properties = row
    return EventRow(
        number, profile_id, metric_id, t, key.decode("utf-8", "surrogatepass"), value,
        None if currency is None else currency.decode("utf-8", "surrogatepass"), properties,
    )  # fmt: skip


class PostgresStore(flow_runs.FlowRunReads):
    _flow_sql = _SQL

    def __init__(self, url: str, partitions: int) -> None:
        self.url = url
        self.partitions = partitions
        self.db = Reader(url)

    def _query(self, sql: str, args: tuple[Any, ...] | list[Any]) -> list[tuple]:
        return self.db.all(sql, args)

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        return self.db.run(sql, args)

    def writer(self) -> PostgresWriter:
        return PostgresWriter(self.url)

    def claim_processing(self, inherited: int | None = None) -> PartitionLeases:
        return PartitionLeases(self.url, self.partitions)

    def bind_log(self, log: EventLog, log_name: str) -> None:
        """The log lives in the same database: they cannot be mismatched."""

    def close(self) -> None:
        self.db.close()

    # -- processing progress ---------------------------------------------------------------

    def positions(self) -> dict[int, int]:
        return dict(self.db.all("SELECT partition, position FROM positions"))  # type: ignore[arg-type]

    def unprocessed(self, log: EventLog) -> int:
        rows = self.db.all(
            "SELECT coalesce(sum(h.head - p.position), 0) FROM log_heads h"
            " JOIN positions p USING (partition)"
        )
        return int(rows[0][0])

    def job_outcomes(self, account_id: str, job_id: str) -> list[Outcome]:
        rows = self.db.all(
            "SELECT seq, profile_id, results, job_group FROM outcomes"
            " WHERE job_id = %s AND account_id = %s ORDER BY seq",
            (job_id, account_id),
        )
        return outcomes_of(rows)

    def receipt_outcomes(self, account_id: str, receipt_id: str) -> list[Outcome]:
        rows = self.db.all(
            "SELECT seq, profile_id, results, job_group FROM outcomes"
            " WHERE receipt_id = %s AND account_id = %s",
            (receipt_id, account_id),
        )
        return outcomes_of(rows)

    def outcome_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for (blob,) in self.db.all("SELECT results FROM outcomes"):
            for outcome, _, _ in unpack_results(bytes(blob)):
                counts[outcome] += 1
        return counts

    def profile(self, account_id: str, profile_id: str) -> bytes | None:
        rows = self.db.all(
            "SELECT doc FROM profiles WHERE id = %s AND account_id = %s", (profile_id, account_id)
        )
        return bytes(rows[0][0]) if rows else None

    def reset_position(self, account_id: str) -> int:
        return 0  # a reset deletes the account's log entries and jobs too

    # -- reads for the query API ---------------------------------------------------------

    def events(self, q: EventQuery) -> list[EventRow]:
        sql, args = sql_reads.event_page(_SQL, _EVENT_COLUMNS, q)
        return [_event(r) for r in self.db.all(sql, args)]

    def event(self, account_id: str, number: int) -> EventRow | None:
        rows = self.db.all(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE number = %s AND account_id = %s",
            (number, account_id),
        )
        return _event(rows[0]) if rows else None

    def metrics(
        self, account_id: str, ids: list[str] | None = None, after: str | None = None,
        limit: int = 200,
    ) -> list[MetricRow]:  # fmt: skip
        sql, args = sql_reads.metric_page(_SQL, account_id, ids, after, limit)
        return [
            MetricRow(i, _text(name) or "", _text(service) or "", created)
            for i, name, service, created in self.db.all(sql, args)
        ]

    # -- lists -----------------------------------------------------------------------------

    def add_list(self, account_id: str, row: ListRow) -> bool:
        args = (row.id, account_id, row.name, row.opt_in_process, row.created, row.updated)
        return self.db.run(sql_reads.add_list(_SQL), (*args, row.id)) == 1

    def lists(self, q: ListQuery) -> list[ListRow]:
        sql, args = sql_reads.list_page(_SQL, q)
        return [ListRow(*r) for r in self.db.all(sql, args)]

    def update_list(
        self, account_id: str, list_id: str, changes: dict[str, str], updated: str
    ) -> ListRow | None:
        sets = "".join(f"{column} = %s, " for column in changes)  # name, opt_in_process
        rows = self.db.write_rows(
            f"UPDATE lists SET {sets}updated = %s WHERE id = %s AND account_id = %s"
            f" RETURNING {sql_reads.LIST_COLUMNS}",
            (*changes.values(), updated, list_id, account_id),
        )
        return ListRow(*rows[0]) if rows else None

    def _delete_group(self, kind: str, account_id: str, group_id: str) -> bool:
        """A list or segment, its members and their changes, in one statement."""
        table, column = GROUP_TABLES[kind]
        rows = self.db.write_rows(
            f"WITH gone AS (DELETE FROM {kind}s WHERE id = %s AND account_id = %s RETURNING id),"
            f" members AS (DELETE FROM {table} m USING gone WHERE m.account_id = %s"
            f" AND m.{column} = gone.id), changes AS (DELETE FROM membership_changes c"
            " USING gone WHERE c.account_id = %s AND c.group_id = gone.id),"
            " counted AS (INSERT INTO trackhouse_meta SELECT 'groups_deleted', '1' FROM gone"
            " ON CONFLICT (key) DO UPDATE SET value = (trackhouse_meta.value::bigint + 1)::text)"
            " SELECT count(*) FROM gone",
            (group_id, account_id, account_id, account_id),
        )
        return bool(rows and rows[0][0])

    def delete_list(self, account_id: str, list_id: str) -> bool:
        return self._delete_group("list", account_id, list_id)

    def _counts(self, kind: str, account_id: str, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        sql, args = sql_reads.group_profile_counts(_SQL, kind, account_id, ids)
        return dict(self.db.all(sql, args))  # type: ignore[arg-type]

    def list_profile_counts(self, account_id: str, list_ids: list[str]) -> dict[str, int]:
        return self._counts("list", account_id, list_ids)

    def members(self, q: MemberQuery) -> list[tuple[bytes, str]]:
        if q.identifiers is not None:  # identifier values are bytea here
            kind, values = q.identifiers
            q = dataclasses.replace(
                q, identifiers=(kind, [v.encode("utf-8", "surrogatepass") for v in values])
            )
        sql, args = sql_reads.member_page(_SQL, q)
        return [(bytes(doc), joined) for doc, joined in self.db.all(sql, args)]

    def profile_groups(self, account_id: str, profile_id: str, kind: str) -> list[str]:
        sql, args = sql_reads.profile_groups(_SQL, kind, account_id, profile_id)
        return [r[0] for r in self.db.all(sql, args)]

    # -- segments --------------------------------------------------------------------------

    def add_segment(self, account_id: str, row: SegmentRow) -> bool:
        sql, _ = sql_reads.add_segment(_SQL)
        args = (row.id, account_id, row.name, row.definition, row.is_active, row.is_starred,
                row.created, row.updated, row.pending, row.cursor, row.version, row.cause,
                row.id)  # fmt: skip
        return self.db.run(sql, args) == 1

    def segments(self, q: SegmentQuery) -> list[SegmentRow]:
        sql, args = sql_reads.segment_page(_SQL, q)
        return [sql_reads.segment_row(r) for r in self.db.all(sql, args)]

    def update_segment(
        self, account_id: str, segment_id: str, changes: dict[str, Any], updated: str
    ) -> SegmentRow | None:
        sets, values = sql_reads.update_segment(_SQL, changes)
        rows = self.db.write_rows(
            f"UPDATE segments SET {sets}, updated = %s WHERE id = %s AND account_id = %s"
            f" RETURNING {sql_reads.SEGMENT_COLUMNS}",
            (*values, updated, segment_id, account_id),
        )
        return sql_reads.segment_row(rows[0]) if rows else None

    def delete_segment(self, account_id: str, segment_id: str) -> bool:
        return self._delete_group("segment", account_id, segment_id)

    def segment_profile_counts(self, account_id: str, ids: list[str]) -> dict[str, int]:
        return self._counts("segment", account_id, ids)

    def membership_changes(
        self, account_id: str, group_id: str, after: int = 0, limit: int = 1000
    ) -> list[MembershipChangeRow]:
        sql = sql_reads.membership_changes(_SQL)
        return self.db.all(sql, (account_id, group_id, after, limit))  # type: ignore[return-value]

    def start_sweeps(self, segments: list[tuple[str, str, int]]) -> None:
        for segment in segments:  # a few: an account's segments relative to now
            self.db.run(sql_reads.start_sweep(_SQL), segment)

    def segments_pending(self) -> int:
        return self.db.all("SELECT count(*) FROM segments WHERE pending AND is_active")[0][0]

    def profiles(
        self,
        account_id: str,
        ids: list[str] | None = None,
        identifiers: tuple[str, list[str]] | None = None,
        after: str | None = None,
        limit: int = 100,
        q: ProfileQuery | None = None,
    ) -> list[bytes]:
        stored = None  # identifier values are bytea here
        if identifiers is not None:
            kind, values = identifiers
            stored = (kind, [v.encode("utf-8", "surrogatepass") for v in values])
        sql, args = sql_reads.profile_page(
            _SQL, account_id, ids, stored, after, limit, q or ProfileQuery()
        )
        return [bytes(doc) for _, doc, _ in self.db.all(sql, args)]

    # -- test control ----------------------------------------------------------------------

    # -- flows -------------------------------------------------------------------------------

    def add_flow(self, account_id: str, flow: FlowRow, actions: list[FlowActionRow]) -> bool:
        statements = sql_reads.add_flow_statements(_SQL, account_id, flow, actions)
        try:
            self.db.run_all(statements)
        except psycopg.errors.UniqueViolation:
            return False
        return True

    def flows(self, account_id: str, ids: list[str] | None = None) -> list[FlowRow]:
        sql, args = sql_reads.flows(_SQL, account_id, ids)
        return [sql_reads.flow_row(r) for r in self.db.all(sql, args)]

    def update_flow(
        self, account_id: str, flow_id: str, status: str, updated: str,
        actions: list[FlowActionRow], definition: str, expected: str,
        deleted: list[str] | None = None,
    ) -> FlowRow | None:  # fmt: skip
        statements = sql_reads.flow_update_statements(_SQL, account_id, flow_id, status, updated,
                                                      actions, definition, expected,
                                                      deleted or [])  # fmt: skip
        if not self.db.run_all(statements)[0]:
            return None
        found = self.flows(account_id, [flow_id])
        return found[0] if found else None

    def delete_flow(self, account_id: str, flow_id: str) -> bool:
        return self.db.run_all(sql_reads.delete_flow_statements(_SQL, account_id, flow_id))[-1] == 1

    def flow_actions(
        self, account_id: str, flow_ids: list[str] | None = None, ids: list[str] | None = None,
        message_ids: list[str] | None = None,
    ) -> list[FlowActionRow]:  # fmt: skip
        sql, args = sql_reads.flow_actions(_SQL, account_id, flow_ids, ids, message_ids)
        return [sql_reads.action_row(r) for r in self.db.all(sql, args)]

    # -- test control ------------------------------------------------------------------------

    def clock_settings(self) -> dict[str, ClockSetting]:
        return sql_reads.clock_settings(self.db.all(sql_reads.CLOCK_SETTINGS))

    def set_clock(self, account_id: str, setting: ClockSetting) -> None:
        if setting.real:
            self.db.run(sql_reads.clear_clock(_SQL), (account_id,))
        else:
            self.db.run(sql_reads.set_clock(_SQL), (account_id, setting.frozen_at, setting.offset))

    def move_clock(self, account_id: str, expected: ClockSetting, setting: ClockSetting) -> bool:
        statement = sql_reads.move_clock(_SQL, account_id, expected, setting)
        return statement is None or self.db.run(*statement) == 1

    def reset_account(self, account_id: str, deadline: float) -> dict[str, int]:
        """Hold every partition at the head it has now (under the reset gate, which batches
        look through as they commit: none can go past a hold once it is recorded), wait for
        the workers to reach the heads, then delete the account's data, its log entries up to
        the heads and its jobs in one transaction. Nothing waits here for a batch in flight."""
        reset_id = uuid.uuid4().hex
        conn = connect(self.url)
        try:
            try:
                return self._reset(conn, reset_id, account_id, deadline)
            except StoreUnavailable as exc:
                raise TimeoutError(f"the store is unavailable: {exc}") from None
            finally:
                with contextlib.suppress(StoreUnavailable), storage_errors():
                    conn.rollback()
                    conn.execute("DELETE FROM holds WHERE reset_id = %s", (reset_id,))
                    conn.commit()
        finally:
            conn.close()

    def _reset(self, conn: Any, reset_id: str, account_id: str, deadline: float) -> dict[str, int]:
        with storage_errors():
            _lock_timeout(conn, deadline)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (RESET_GATE,))
                heads: dict[int, int] = dict(
                    conn.execute("SELECT partition, head FROM log_heads").fetchall()
                )
                jobs = [
                    j
                    for (j,) in conn.execute(
                        "SELECT id FROM log_jobs WHERE account_id = %s", (account_id,)
                    )
                ]
                lasts = max(1.0, deadline - time.monotonic()) + 5  # if this process dies
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO holds VALUES (%s, %s, %s,"
                        " extract(epoch FROM clock_timestamp()) + %s)",
                        [(reset_id, p, h, lasts) for p, h in heads.items()],
                    )
        while any(self.positions().get(p, 0) < h for p, h in heads.items()):
            if time.monotonic() >= deadline:
                done = sum(min(self.positions().get(p, 0), h) for p, h in heads.items())
                raise TimeoutError(f"processing reached {done} of {sum(heads.values())}")
            time.sleep(0.02)
        with storage_errors():
            _lock_timeout(conn, deadline)
            with conn.transaction():
                deleted = {}
                for table in TABLES:
                    deleted[table] = conn.execute(
                        f"DELETE FROM {table} WHERE account_id = %s", (account_id,)
                    ).rowcount
                with conn.cursor() as cur:
                    cur.executemany(
                        "DELETE FROM log_entries WHERE partition = %s AND position <= %s"
                        " AND account_id = %s",
                        [(p, h, account_id) for p, h in heads.items()],
                    )
                conn.execute("DELETE FROM log_jobs WHERE id = ANY(%s)", (jobs,))
        return deleted


def _lock_timeout(conn: Any, deadline: float) -> None:
    ms = max(1, int((deadline - time.monotonic()) * 1000))
    conn.execute(f"SET lock_timeout = {ms}")
    conn.commit()
