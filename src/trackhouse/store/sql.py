"""The read queries both SQL backends share, built once: the same standard SQL for SQLite and
PostgreSQL but for what `Dialect` says (the placeholder, the events' number column, how a
list of values is matched). Each backend runs them and shapes the rows itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trackhouse.store.base import EventQuery, ListQuery, ProfileQuery


@dataclass(frozen=True)
class Dialect:
    param: str  # "?" or "%s"
    number: str  # the events' number column
    array_params: bool  # a list is one parameter (`= ANY(%s)`), or one placeholder a value

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
    order = "DESC" if q.descending else "ASC"
    sql = (
        f"SELECT {columns} FROM events WHERE {' AND '.join(where)}"
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


def list_page(d: Dialect, q: ListQuery) -> tuple[str, list[Any]]:
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
    sql = (
        f"SELECT {LIST_COLUMNS} FROM lists WHERE {' AND '.join(where)}"
        f" ORDER BY {ordering} LIMIT {p}"
    )
    return sql, [*args, q.limit]


def list_profile_counts(d: Dialect, account_id: str, ids: list[str]) -> tuple[str, list[Any]]:
    clause, matched = d.one_of("list_id", ids)
    sql = (
        f"SELECT list_id, count(*) FROM list_members WHERE account_id = {d.param} AND {clause}"
        " GROUP BY list_id"
    )
    return sql, [account_id, *matched]
