"""The queries both SQL backends share (reads, and what processing writes to keep lists' and
segments' members), built once: the same standard SQL for SQLite and
PostgreSQL but for what `Dialect` says (the placeholder, the events' number column, how a
list of values is matched). Each backend runs them and shapes the rows itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trackhouse.clock import ClockSetting
from trackhouse.store.base import (
    GROUP_TABLES,
    EventQuery,
    FlowActionRow,
    FlowRow,
    ListQuery,
    MemberQuery,
    ProfileQuery,
    SegmentQuery,
    SegmentRow,
)


@dataclass(frozen=True)
class Dialect:
    param: str  # "?" or "%s"
    number: str  # the events' number column
    array_params: bool  # a list is one parameter (`= ANY(%s)`), or one placeholder a value
    # After `FROM events`, to read a profile's events through its index (SQLite's INDEXED
    # BY): a store that is never analysed is planned without statistics.
    by_profile: str = ""

    def one_of(self, column: str, values: list[Any]) -> tuple[str, list[Any]]:
        if self.array_params:
            return f"{column} = ANY({self.param})", [values]
        return f"{column} IN ({','.join([self.param] * len(values))})", list(values)


def _after(descending: bool) -> str:
    return "<" if descending else ">"


def event_page(d: Dialect, columns: str, q: EventQuery) -> tuple[str, list[Any]]:
    p = d.param
    where = [f"account_id = {p}"]
    args: list[Any] = [q.account_id]
    for column, value in (("metric_id", q.metric_id), ("profile_id", q.profile_id)):
        if value is not None:
            where.append(f"{column} = {p}")
            args.append(value)
    if q.since is not None:
        where.append(f"time >= {p}")
        args.append(q.since)
    if q.until is not None:
        where.append(f"time < {p}")
        args.append(q.until)
    if q.after is not None:
        where.append(f"(time, {d.number}) {_after(q.descending)} ({p}, {p})")
        args += q.after
    # With a profile, its index: a profile has few events, a metric or a time range may have
    # millions (without statistics SQLite took the metric's index: 4 s for one profile's
    # events of a metric of 500,000 events, against 2 ms).
    table = "events" if q.profile_id is None else f"events{d.by_profile}"
    order = "DESC" if q.descending else "ASC"
    sql = (
        f"SELECT {columns} FROM {table} WHERE {' AND '.join(where)}"
        f" ORDER BY time {order}, {d.number} {order} LIMIT {p}"
    )
    return sql, [*args, q.limit]


def metric_page(
    d: Dialect, account_id: str, ids: list[str] | None, after: str | None, limit: int
) -> tuple[str, list[Any]]:
    where = [f"account_id = {d.param}"]
    args: list[Any] = [account_id]
    if ids is not None:
        clause, values = d.one_of("id", ids)
        where.append(clause)
        args += values
    if after is not None:
        where.append(f"id > {d.param}")
        args.append(after)
    sql = (
        f"SELECT id, name, service, created FROM metrics WHERE {' AND '.join(where)}"
        f" ORDER BY id LIMIT {d.param}"
    )
    return sql, [*args, limit]


def profile_page(
    d: Dialect,
    account_id: str,
    ids: list[str] | None,
    identifiers: tuple[str, list[Any]] | None,
    after: str | None,
    limit: int,
    q: ProfileQuery,
) -> tuple[str, list[Any]]:
    """Rows of (id, document, sort key) in `q.sort` order; `identifiers` = (kind, stored
    values) filters by them."""
    p = d.param
    where = [f"p.account_id = {p}"]
    args: list[Any] = [account_id]
    for column, low, high in (
        ("created", q.created_since, q.created_until),
        ("updated", q.updated_since, q.updated_until),
    ):
        if low is not None:
            where.append(f"p.{column} >= {p}")
            args.append(low)
        if high is not None:
            where.append(f"p.{column} < {p}")
            args.append(high)
    source = "profiles p"
    if identifiers is not None:
        kind, values = identifiers
        source += " JOIN identifiers i ON i.profile_id = p.id AND i.account_id = p.account_id"
        clause, matched = d.one_of("i.value", values)
        where.append(f"i.kind = {p} AND {clause}")
        args += [kind, *matched]
    if ids is not None:
        clause, matched = d.one_of("p.id", ids)
        where.append(clause)
        args += matched
    order = "DESC" if q.descending else "ASC"
    if q.sort == "id":
        if after is not None:
            where.append(f"p.id {_after(q.descending)} {p}")
            args.append(after)
        ordering = f"p.id {order}"
    else:  # created or updated, ties broken by id; `after` is "value|id"
        if after is not None:
            value, _, last_id = after.rpartition("|")
            where.append(f"(p.{q.sort}, p.id) {_after(q.descending)} ({p}, {p})")
            args += [value, last_id]
        ordering = f"p.{q.sort} {order}, p.id {order}"
    sql = (
        f"SELECT DISTINCT p.id, p.doc, p.{q.sort} FROM {source}"
        f" WHERE {' AND '.join(where)} ORDER BY {ordering} LIMIT {p}"
    )
    return sql, [*args, limit]


LIST_COLUMNS = "id, name, opt_in_process, created, updated"
LIST_SORTS = ("id", "name", "created", "updated")


def _group_page(
    d: Dialect, table: str, columns: str, q: ListQuery | SegmentQuery, flags: list[tuple[str, Any]]
) -> tuple[str, list[Any]]:
    """A page of an account's lists or segments: filters by id, name, creation and update
    time (and `flags`: (column, value or None)), in `q.sort` order, ties broken by id."""
    p = d.param
    where = [f"account_id = {p}"]
    args: list[Any] = [q.account_id]
    for column, values in (("id", q.ids), ("name", q.names)):
        if values is not None:
            clause, matched = d.one_of(column, values)
            where.append(clause)
            args += matched
    for column, low in (("created", q.created_after), ("updated", q.updated_after)):
        if low is not None:
            where.append(f"{column} > {p}")
            args.append(low)
    for column, flag in flags:
        if flag is not None:
            where.append(f"{column} = {p}")
            args.append(flag)
    assert q.sort in LIST_SORTS
    order = "DESC" if q.descending else "ASC"
    if q.after is not None:
        if q.sort == "id":
            where.append(f"id {_after(q.descending)} {p}")
            args.append(q.after[1])
        else:
            where.append(f"({q.sort}, id) {_after(q.descending)} ({p}, {p})")
            args += list(q.after)
    ordering = f"id {order}" if q.sort == "id" else f"{q.sort} {order}, id {order}"
    sql = f"SELECT {columns} FROM {table} WHERE {' AND '.join(where)} ORDER BY {ordering} LIMIT {p}"
    return sql, [*args, q.limit]


def list_page(d: Dialect, q: ListQuery) -> tuple[str, list[Any]]:
    return _group_page(d, "lists", LIST_COLUMNS, q, [])


def group_profile_counts(
    d: Dialect, kind: str, account_id: str, ids: list[str]
) -> tuple[str, list[Any]]:
    """Members of each list (kind "list") or segment."""
    table, column = GROUP_TABLES[kind]
    clause, matched = d.one_of(column, ids)
    sql = (
        f"SELECT {column}, count(*) FROM {table} WHERE account_id = {d.param} AND {clause}"
        f" GROUP BY {column}"
    )
    return sql, [account_id, *matched]


def list_profile_counts(d: Dialect, account_id: str, ids: list[str]) -> tuple[str, list[Any]]:
    return group_profile_counts(d, "list", account_id, ids)


SEGMENT_COLUMNS = (
    "id, name, definition, is_active, is_starred, created, updated, pending, cursor, version, cause"
)


def segment_row(row: tuple[Any, ...]) -> SegmentRow:
    """A row of SEGMENT_COLUMNS (SQLite's booleans are integers)."""
    sid, name, definition, active, starred, created, updated, pending, cursor, version, cause = row
    return SegmentRow(sid, name, definition, bool(active), bool(starred), created, updated,
                      bool(pending), cursor, version, cause)  # fmt: skip


def segment_page(d: Dialect, q: SegmentQuery) -> tuple[str, list[Any]]:
    flags = [("is_active", q.is_active), ("is_starred", q.is_starred)]
    return _group_page(d, "segments", SEGMENT_COLUMNS, q, flags)


def member_page(d: Dialect, q: MemberQuery) -> tuple[str, list[Any]]:
    """Rows of (profile document, joined at) in the order members joined (ties by id)."""
    p = d.param
    table, column = GROUP_TABLES[q.kind]
    where = [f"m.account_id = {p}", f"m.{column} = {p}"]
    args: list[Any] = [q.account_id, q.group_id]
    if q.profile_ids is not None:
        clause, matched = d.one_of("m.profile_id", q.profile_ids)
        where.append(clause)
        args += matched
    if q.identifiers is not None:
        kind, values = q.identifiers
        clause, matched = d.one_of("i.value", values)
        where.append(
            "m.profile_id IN (SELECT i.profile_id FROM identifiers i WHERE"
            f" i.account_id = {p} AND i.kind = {p} AND {clause})"
        )
        args += [q.account_id, kind, *matched]
    if q.joined_since is not None:
        where.append(f"m.joined_at >= {p}")
        args.append(q.joined_since)
    if q.joined_until is not None:
        where.append(f"m.joined_at < {p}")
        args.append(q.joined_until)
    if q.after is not None:
        where.append(f"(m.joined_at, m.profile_id) {_after(q.descending)} ({p}, {p})")
        args += list(q.after)
    order = "DESC" if q.descending else "ASC"
    # CROSS JOIN: SQLite then walks the members in join order and looks each profile up
    # (without statistics it chose to scan every profile of the account and sort); to
    # PostgreSQL it is the same inner join, planned as it sees fit.
    sql = (
        f"SELECT p.doc, m.joined_at FROM {table} m CROSS JOIN profiles p"
        f" WHERE p.id = m.profile_id AND p.account_id = m.account_id AND {' AND '.join(where)}"
        f" ORDER BY m.joined_at {order}, m.profile_id {order} LIMIT {p}"
    )
    return sql, [*args, q.limit]


def profile_groups(d: Dialect, kind: str, account_id: str, profile_id: str) -> tuple[str, list]:
    table, column = GROUP_TABLES[kind]
    sql = (
        f"SELECT {column} FROM {table} WHERE account_id = {d.param} AND profile_id = {d.param}"
        f" ORDER BY {column}"
    )
    return sql, [account_id, profile_id]


# -- what processing reads and writes to keep membership (store/*/writer.py) ---------------


def memberships(d: Dialect, account_id: str, profile_ids: list[str]) -> tuple[str, list[Any]]:
    """Rows of (profile, group, joined at) of every list and segment the profiles are in."""
    parts, args = [], []
    for table, column in GROUP_TABLES.values():
        clause, matched = d.one_of("profile_id", profile_ids)
        parts.append(
            f"SELECT profile_id, {column}, joined_at FROM {table}"
            f" WHERE account_id = {d.param} AND {clause}"
        )
        args += [account_id, *matched]
    return " UNION ALL ".join(parts), args


def metric_events(
    d: Dialect,
    account_id: str,
    profile_ids: list[str],
    metric_ids: list[str],
    with_properties: list[str],
) -> tuple[str, list[Any]]:
    """Rows of (profile, metric, time, value, properties or NULL)."""
    properties: str = "NULL"
    args: list[Any] = []
    if with_properties:
        clause, args = d.one_of("metric_id", with_properties)
        properties = f"CASE WHEN {clause} THEN properties END"
    profiles, by_profile = d.one_of("profile_id", profile_ids)
    metrics, by_metric = d.one_of("metric_id", metric_ids)
    sql = (
        f"SELECT profile_id, metric_id, time, value, {properties} FROM events"
        f" WHERE account_id = {d.param} AND {profiles} AND {metrics}"
    )
    return sql, [*args, account_id, *by_profile, *by_metric]


def join_member(d: Dialect, kind: str) -> str:
    """(account, group, profile, joined at); a member already is one still (since then)."""
    table, column = GROUP_TABLES[kind]
    p = d.param
    return (
        f"INSERT INTO {table} (account_id, {column}, profile_id, joined_at)"
        f" VALUES ({p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING"
    )


def leave_member(d: Dialect, kind: str) -> str:
    """(account, group, profile)."""
    table, column = GROUP_TABLES[kind]
    p = d.param
    return f"DELETE FROM {table} WHERE account_id = {p} AND {column} = {p} AND profile_id = {p}"


def membership_changes(d: Dialect) -> str:
    """(account, group, after, limit) → MembershipChangeRow, oldest first."""
    p = d.param
    return (
        "SELECT id, kind, group_id, profile_id, joined, at, cause FROM membership_changes"
        f" WHERE account_id = {p} AND group_id = {p} AND id > {p} ORDER BY id LIMIT {p}"
    )


def record_change(d: Dialect) -> str:
    """(kind, account, group, profile, joined, at, cause)."""
    p = d.param
    return (
        "INSERT INTO membership_changes (kind, account_id, group_id, profile_id, joined, at,"
        f" cause) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})"
    )


def profile_page_after(d: Dialect, lock: str = "") -> str:
    """(account, after, limit) → (id, doc), by id; `lock` e.g. " FOR SHARE"."""
    p = d.param
    return (
        f"SELECT id, doc FROM profiles WHERE account_id = {p} AND id > {p}"
        f" ORDER BY id LIMIT {p}{lock}"
    )


def segment_progress(d: Dialect) -> str:
    """(cursor, pending, account, segment, version): ignored if the definition moved on."""
    p = d.param
    return (
        f"UPDATE segments SET cursor = {p}, pending = {p}"
        f" WHERE account_id = {p} AND id = {p} AND version = {p}"
    )


def add_segment(d: Dialect) -> tuple[str, int]:
    """The insert of a new segment (its SEGMENT_COLUMNS, account after id, then its id again),
    refused where a list has the id; how many parameters."""
    p = d.param
    return (
        "INSERT INTO segments (id, account_id, name, definition, is_active, is_starred, created,"
        f" updated, pending, cursor, version, cause) SELECT {', '.join([p] * 12)}"
        f" WHERE NOT EXISTS (SELECT 1 FROM lists WHERE id = {p}) ON CONFLICT (id) DO NOTHING"
    ), 13


def start_sweep(d: Dialect) -> str:
    """(account, segment, version): computed again from the first profile, cause "time"."""
    p = d.param
    return (
        "UPDATE segments SET pending = TRUE, cursor = '', cause = 'time'"
        f" WHERE account_id = {p} AND id = {p} AND version = {p} AND NOT pending AND is_active"
    )


SETTLED_SEGMENTS = (
    f"SELECT account_id, {SEGMENT_COLUMNS} FROM segments WHERE is_active AND NOT pending"
)


def add_list(d: Dialect) -> str:
    """(id, account, name, opt-in, created, updated, id): refused where a segment has the id."""
    p = d.param
    return (
        "INSERT INTO lists (id, account_id, name, opt_in_process, created, updated)"
        f" SELECT {', '.join([p] * 6)} WHERE NOT EXISTS (SELECT 1 FROM segments WHERE id = {p})"
        " ON CONFLICT (id) DO NOTHING"
    )


def update_segment(d: Dialect, changes: dict[str, Any]) -> tuple[str, list[Any]]:
    """The SET clause's columns and values: a new definition, or becoming active again,
    restarts the computation (pending, from the first profile) and moves the version."""
    p = d.param
    sets = [f"{column} = {p}" for column in changes]
    values = list(changes.values())
    if "definition" in changes or changes.get("is_active") is True:
        sets += ["pending = TRUE", "cursor = ''", "version = version + 1", "cause = 'definition'"]
    return ", ".join(sets), values


# -- test control: the accounts' clocks (trackhouse/clock.py) -------------------------------

CLOCK_SETTINGS = "SELECT account_id, frozen_at, clock_offset FROM clocks"


def clock_settings(rows: list[tuple[Any, ...]]) -> dict[str, ClockSetting]:
    return {account: ClockSetting(frozen_at, offset) for account, frozen_at, offset in rows}


def set_clock(d: Dialect) -> str:
    p = d.param
    return (
        f"INSERT INTO clocks (account_id, frozen_at, clock_offset) VALUES ({p}, {p}, {p})"
        " ON CONFLICT (account_id) DO UPDATE SET frozen_at = excluded.frozen_at,"
        " clock_offset = excluded.clock_offset"
    )


def clear_clock(d: Dialect) -> str:
    return f"DELETE FROM clocks WHERE account_id = {d.param}"


def move_clock(
    d: Dialect, account_id: str, expected: ClockSetting, setting: ClockSetting
) -> tuple[str, tuple[Any, ...]] | None:
    """The account's clock from `expected` to `setting` only if it is still `expected` (one
    row changed); None when nothing is to be written (real time stays real time)."""
    p = d.param
    if expected.real:
        if setting.real:
            return None
        return (f"INSERT INTO clocks (account_id, frozen_at, clock_offset) VALUES ({p}, {p}, {p})"
                " ON CONFLICT (account_id) DO NOTHING",
                (account_id, setting.frozen_at, setting.offset))  # fmt: skip
    frozen = "frozen_at IS NULL" if expected.frozen_at is None else f"frozen_at = {p}"
    was = (account_id, *([] if expected.frozen_at is None else [expected.frozen_at]),
           expected.offset)  # fmt: skip
    where = f" WHERE account_id = {p} AND {frozen} AND clock_offset = {p}"
    if setting.real:
        return "DELETE FROM clocks" + where, was
    return (f"UPDATE clocks SET frozen_at = {p}, clock_offset = {p}" + where,
            (setting.frozen_at, setting.offset, *was))  # fmt: skip


# -- flows ------------------------------------------------------------------------------------

FLOW_COLUMNS = (
    "id, name, status, archived, trigger_type, trigger_kind, trigger_id, definition, created,"
    " updated"
)
ACTION_COLUMNS = "id, flow_id, type, status, definition, message_id, created, updated"


def flow_row(row: tuple[Any, ...]) -> FlowRow:
    i, name, status, archived, trigger_type, kind, trigger_id, definition, created, updated = row
    return FlowRow(i, name, status, bool(archived), trigger_type, (kind, trigger_id), definition,
                   created, updated)  # fmt: skip


def action_row(row: tuple[Any, ...]) -> FlowActionRow:
    return FlowActionRow(*row)


def add_flow(d: Dialect) -> str:
    p = d.param
    return f"INSERT INTO flows (account_id, {FLOW_COLUMNS}) VALUES ({', '.join([p] * 11)})"


def add_action(d: Dialect) -> str:
    p = d.param
    return f"INSERT INTO flow_actions (account_id, {ACTION_COLUMNS}) VALUES ({', '.join([p] * 9)})"


def flows(d: Dialect, account_id: str, ids: list[str] | None) -> tuple[str, list[Any]]:
    sql, args = f"SELECT {FLOW_COLUMNS} FROM flows WHERE account_id = {d.param}", [account_id]
    if ids is not None:
        where, values = d.one_of("id", ids)
        sql, args = f"{sql} AND {where}", args + values
    return sql + " ORDER BY id", args


def flow_actions(
    d: Dialect, account_id: str, flow_ids: list[str] | None, ids: list[str] | None,
    message_ids: list[str] | None,
) -> tuple[str, list[Any]]:  # fmt: skip
    sql = f"SELECT {ACTION_COLUMNS} FROM flow_actions WHERE account_id = {d.param}"
    args: list[Any] = [account_id]
    for column, values in (("flow_id", flow_ids), ("id", ids), ("message_id", message_ids)):
        if values is not None:
            where, more = d.one_of(column, values)
            sql, args = f"{sql} AND {where}", args + more
    return sql + " ORDER BY id", args


Statements = list[tuple[str, tuple[Any, ...]]]


def add_flow_statements(
    d: Dialect, account_id: str, f: FlowRow, actions: list[FlowActionRow]
) -> Statements:
    """A new flow and its actions (run in one transaction)."""
    flow = (account_id, f.id, f.name, f.status, f.archived, f.trigger_type, *f.trigger,
            f.definition, f.created, f.updated)  # fmt: skip
    found: Statements = [(add_flow(d), flow)]
    for a in actions:
        action = (account_id, a.id, a.flow_id, a.type, a.status, a.definition, a.message_id,
                  a.created, a.updated)  # fmt: skip
        found.append((add_action(d), action))
    return found


def flow_update_statements(
    d: Dialect, account_id: str, flow_id: str, status: str, updated: str,
    actions: list[FlowActionRow], definition: str, expected: str, deleted: list[str],
) -> Statements:  # fmt: skip
    """The flow's status and definition, set only if its definition is still `expected` (the
    first statement: one row changed, or none if the flow is gone or was changed meanwhile);
    then its actions' rows as they are now and the deleted actions, each only if that first
    statement took (the flow's definition is then `definition`)."""
    p = d.param
    found: Statements = [(
        f"UPDATE flows SET status = {p}, definition = {p}, updated = {p} WHERE id = {p}"
        f" AND account_id = {p} AND definition = {p}",
        (status, definition, updated, flow_id, account_id, expected),
    )]  # fmt: skip
    took = (f"EXISTS (SELECT 1 FROM flows WHERE account_id = {p} AND id = {p}"
            f" AND definition = {p})")  # fmt: skip
    for a in actions:
        found.append((
            f"UPDATE flow_actions SET status = {p}, definition = {p}, updated = {p}"
            f" WHERE id = {p} AND account_id = {p} AND {took}",
            (a.status, a.definition, updated, a.id, account_id, account_id, flow_id, definition),
        ))  # fmt: skip
    for action_id in deleted:
        found.append((
            f"DELETE FROM flow_actions WHERE id = {p} AND account_id = {p} AND {took}",
            (action_id, account_id, account_id, flow_id, definition),
        ))  # fmt: skip
    return found


def delete_flow_statements(d: Dialect, account_id: str, flow_id: str) -> Statements:
    """The flow's actions, then the flow (the last statement: one row if it was there)."""
    p = d.param
    where = (account_id, flow_id)
    return [
        (f"DELETE FROM flow_actions WHERE account_id = {p} AND flow_id = {p}", where),
        (f"DELETE FROM flows WHERE account_id = {p} AND id = {p}", where),
    ]
