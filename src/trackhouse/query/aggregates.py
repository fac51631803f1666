"""Metric aggregates (POST /api/metric-aggregates): `count`, `sum_value` and `unique` (distinct
profiles) per hour, day, week or month in an IANA time zone, optionally grouped `by` event
properties such as `$value_currency`.

Buckets start at the local midnight / hour / Monday / first of the month of the time zone; the
date range (required, as at Klaviyo) must come from `greater-or-equal` / `greater-than` and
`less-than` / `less-or-equal` conditions on `datetime`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from trackhouse.query.filters import Condition
from trackhouse.store.sqlite import EventQuery, EventRow, SQLiteStore

MAX_BUCKETS = 10_000
CHUNK = 10_000
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class AggregateError(ValueError):
    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where  # JSON pointer below /data/attributes


@dataclass
class Aggregate:
    dates: list[str]
    data: list[dict[str, Any]]


def _bucket(moment: datetime, interval: str) -> datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    if interval == "hour":
        return moment
    moment = moment.replace(hour=0)
    if interval == "week":
        return moment - timedelta(days=moment.weekday())
    if interval == "month":
        return moment.replace(day=1)
    return moment


def _next(start: datetime, interval: str) -> datetime:
    if interval == "hour":
        return start + timedelta(hours=1)
    if interval == "day":
        return (start + timedelta(days=1, hours=2)).replace(hour=0)  # across DST changes
    if interval == "week":
        return (start + timedelta(days=7, hours=2)).replace(hour=0)
    return (start + timedelta(days=32)).replace(day=1)


def _range(conditions: list[Condition]) -> tuple[int, int, list[Condition]]:
    since = until = None
    rest = []
    for c in conditions:
        if c.field != "datetime":
            rest.append(c)
            continue
        if not isinstance(c.value, datetime):
            raise AggregateError("datetime filters need an unquoted ISO 8601 datetime.", "/filter")
        x = c.value.timestamp()
        if c.op == "greater-or-equal":
            since = math.ceil(x)
        elif c.op == "greater-than":
            since = math.floor(x) + 1
        elif c.op == "less-than":
            until = math.ceil(x)
        elif c.op == "less-or-equal":
            until = math.floor(x) + 1
        else:
            raise AggregateError(f"'{c.op}' is not supported on datetime.", "/filter")
    if since is None or until is None:
        raise AggregateError(
            "The filter must give a date range: greater-or-equal(datetime,…) and "
            "less-than(datetime,…).",
            "/filter",
        )
    if until <= since:
        raise AggregateError("The date range is empty.", "/filter")
    return since, until, rest


def _rows(store: SQLiteStore, query: EventQuery) -> Iterator[EventRow]:
    """Every matching row, fetched a chunk at a time (no long-held read lock)."""
    while True:
        rows = store.events(query)
        yield from rows
        if len(rows) < query.limit:
            return
        query.after = (rows[-1].time, rows[-1].rowid)


def _dimension(row: EventRow, properties: dict[str, Any], name: str) -> str:
    if name == "$value_currency":
        value: Any = row.value_currency
    else:
        value = properties.get(name)
    return "" if value is None else str(value)


def aggregate(
    store: SQLiteStore,
    account_id: str,
    *,
    metric_id: str,
    measurements: list[str],
    conditions: list[Condition],
    interval: str,
    timezone: str,
    by: list[str],
) -> Aggregate:
    if not store.metrics(account_id, ids=[metric_id], limit=1):
        raise AggregateError(f"A metric with id {metric_id[:64]} does not exist.", "/metric_id")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise AggregateError(f"'{timezone[:64]}' is not an IANA time zone.", "/timezone") from None
    since, until, rest = _range(conditions)
    for c in rest:
        if c.op not in ("equals", "any"):
            raise AggregateError(f"'{c.op}' is not supported on '{c.field}'.", "/filter")

    first = _bucket(datetime.fromtimestamp(since, zone), interval)
    starts = [first]
    while (nxt := _next(starts[-1], interval)).timestamp() < until:
        starts.append(nxt)
        if len(starts) > MAX_BUCKETS:
            raise AggregateError(f"At most {MAX_BUCKETS} {interval}s can be asked for.", "/filter")
    index = {start.timestamp(): i for i, start in enumerate(starts)}

    counts: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0] * len(starts))
    sums: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0] * len(starts))
    people: dict[tuple[str, ...], list[set[str]]] = defaultdict(lambda: [set() for _ in starts])
    needs_properties = bool(rest) or any(name != "$value_currency" for name in by)
    query = EventQuery(account_id, metric_id=metric_id, since=since, until=until, limit=CHUNK)
    for row in _rows(store, query):
        properties = _decode(row.properties) if needs_properties else {}
        if not all(_matches(row, properties, c) for c in rest):
            continue
        key = tuple(_dimension(row, properties, name) for name in by)
        slot = index[_bucket(datetime.fromtimestamp(row.time, zone), interval).timestamp()]
        counts[key][slot] += 1
        sums[key][slot] += row.value or 0.0
        people[key][slot].add(row.profile_id)

    data = []
    for key in sorted(counts) or ([()] if not by else []):
        values: dict[str, list[Any]] = {}
        if "count" in measurements:
            values["count"] = counts[key]
        if "sum_value" in measurements:
            values["sum_value"] = [round(s, 6) for s in sums[key]]
        if "unique" in measurements:
            values["unique"] = [len(s) for s in people[key]]
        data.append({"dimensions": list(key), "measurements": values})
    return Aggregate([s.isoformat() for s in starts], data)


def _matches(row: EventRow, properties: dict[str, Any], c: Condition) -> bool:
    actual = _dimension(row, properties, c.field)
    wanted = c.value if isinstance(c.value, tuple) else (c.value,)
    return actual in {str(w) for w in wanted}
