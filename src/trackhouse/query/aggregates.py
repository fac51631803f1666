"""Metric aggregates (POST /api/metric-aggregates): `count`, `sum_value` and `unique` (distinct
profiles) per hour, day, week or month in an IANA time zone, optionally grouped `by` event
properties such as `$value_currency`.

Buckets start at the local midnight / hour / Monday / first of the month of the time zone; the
date range (required, as at Klaviyo) must come from `greater-or-equal` / `greater-than` and
`less-than` / `less-or-equal` conditions on `datetime`.

Buckets are real intervals of time, [start, next start), whatever the zone's clock does: a day
begins at its first midnight (a midnight skipped by a clock set forward, as in America/Havana,
begins at the moment of the change), a repeated hour is two hourly buckets (01:00-04:00 and
01:00-05:00 in New York in November), a skipped hour is none, and a day or hour may last longer
or shorter than usual. Hours start where the local clock reads :00, so at :15 UTC in
Asia/Kathmandu.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import msgspec

from trackhouse.query.filters import Condition, FilterError, as_datetime
from trackhouse.store.base import EventQuery, EventRow, Store

MAX_BUCKETS = 10_000
CHUNK = 10_000
MAX_ZONE_NAME = 64  # the longest IANA name is 32 characters
# Range bounds: a year of margin inside datetime's years 1 to 9999, so that every zone's local
# time, a bucket's start before the range and the one after it are all representable.
EARLIEST = datetime(2, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
_NOMINAL = {"hour": 3_600, "day": 86_400, "week": 7 * 86_400, "month": 31 * 86_400}
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class AggregateError(ValueError):
    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where  # JSON pointer below /data/attributes


@dataclass
class Aggregate:
    dates: list[str]
    data: list[dict[str, Any]]


def _zone(name: str) -> ZoneInfo:
    """The IANA zone of that name, or an AggregateError.

    Only names from the installed zone list reach ZoneInfo: it opens files named by the key, so
    a directory ("America"), an over-long name, "../", NUL bytes or an absolute path would
    otherwise surface as IsADirectoryError, OSError and friends, not as a bad zone name."""
    if len(name) > MAX_ZONE_NAME or name not in _zone_names():
        raise AggregateError(f"'{name[:64]}' is not an IANA time zone.", "/timezone")
    try:
        return ZoneInfo(name)
    except Exception:  # a listed but unreadable file: still the client's zone that is unusable
        raise AggregateError(f"'{name[:64]}' is not an IANA time zone.", "/timezone") from None


@cache
def _zone_names() -> frozenset[str]:
    # Listing walks the zone directories: once per process is enough. "localtime" and
    # "posixrules" are links to the host's own settings, not IANA names.
    return frozenset(available_timezones() | {"UTC"}) - {"localtime", "posixrules"}


def _floor(local: datetime, interval: str) -> datetime:
    """The wall-clock start (naive) of the bucket that holds a local wall-clock time."""
    local = local.replace(minute=0, second=0, microsecond=0, tzinfo=None, fold=0)
    if interval == "hour":
        return local
    local = local.replace(hour=0)
    if interval == "week":
        return local - timedelta(days=local.weekday())
    if interval == "month":
        return local.replace(day=1)
    return local


def _step(wall: datetime, interval: str, by: int = 1) -> datetime:
    """The wall-clock start `by` buckets later (or earlier, by < 0): naive arithmetic, so a day
    is always the next calendar date whatever the clock does in between."""
    if interval == "month":
        months = wall.year * 12 + wall.month - 1 + by
        return wall.replace(year=months // 12, month=months % 12 + 1)
    return wall + by * timedelta(hours=1) * {"hour": 1, "day": 24, "week": 168}[interval]


def _reading(moment: int, zone: ZoneInfo) -> datetime:
    """What the zone's clock reads at an instant (naive; equality ignores fold)."""
    return datetime.fromtimestamp(moment, zone).replace(tzinfo=None)


def _instants(wall: datetime, zone: ZoneInfo, *, every: bool) -> list[int]:
    """The instants (Unix seconds) at which the zone's clock reads `wall`, earliest first.

    A reading repeated by a clock set back has two instants: `every` keeps both (a repeated hour
    is a real hour of its own), otherwise only the first (a day starts at its first midnight).
    A reading skipped by a clock set forward has none; the bucket then starts at the first
    instant after it, the moment of the change."""
    # fold=0 and fold=1 interpret `wall` with the offsets before and after a change: for a
    # repeated reading these are its two instants, for a skipped one the two sides of the gap.
    sides = sorted({int(wall.replace(tzinfo=zone, fold=fold).timestamp()) for fold in (0, 1)})
    real = [t for t in sides if _reading(t, zone) == wall]
    if real:
        return real if every else real[:1]
    low, high = sides[0], sides[-1]  # the clock reads before `wall` at low, after it at high
    while high - low > 1:
        middle = (low + high) // 2
        if _reading(middle, zone) < wall:
            low = middle
        else:
            high = middle
    return [high]


def _starts(since: int, until: int, zone: ZoneInfo, interval: str) -> list[int]:
    """Bucket starts (Unix seconds, strictly increasing): the one holding `since`, then every
    later one before `until`. Events are placed by bisecting these instants, so each bucket is
    the real interval [start, next start) however the zone's clock moves."""
    # Each bucket lasts at most its nominal length plus the largest clock change in the tz
    # database (about a day): a range longer than that many buckets is refused before any is
    # computed, so year 2 to 9998 in hours is answered at once.
    if until - since > MAX_BUCKETS * (_NOMINAL[interval] + 2 * 86_400):
        raise _too_many(interval)
    # Start one bucket early: a clock set back can make the first reading of the bucket that
    # holds `since` come after it; the loop keeps only the last start at or before `since`.
    wall = _step(_floor(datetime.fromtimestamp(since, zone), interval), interval, -1)
    starts: list[int] = []
    while True:
        for moment in _instants(wall, zone, every=interval == "hour"):
            if moment >= until:
                return starts
            if moment <= since:
                starts = [moment]
            elif not starts or moment > starts[-1]:  # a skipped reading can land on the next start
                starts.append(moment)
                if len(starts) > MAX_BUCKETS:
                    raise _too_many(interval)
        wall = _step(wall, interval)


def _too_many(interval: str) -> AggregateError:
    return AggregateError(f"At most {MAX_BUCKETS} {interval}s can be asked for.", "/filter")


def _utc(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")  # strftime("%Y") drops the zeros of 0002


def _range(conditions: list[Condition]) -> tuple[int, int, list[Condition]]:
    since = until = None
    rest = []
    for c in conditions:
        if c.field != "datetime":
            rest.append(c)
            continue
        try:
            moment = as_datetime(c.value)  # quoted or not; without an offset, UTC
        except FilterError:
            raise AggregateError("datetime filters need an ISO 8601 datetime.", "/filter") from None
        if not EARLIEST <= moment <= LATEST:
            raise AggregateError(
                f"datetime must be from {_utc(EARLIEST)} to {_utc(LATEST)}.", "/filter"
            )
        x = moment.timestamp()
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


def _rows(store: Store, query: EventQuery) -> Iterator[EventRow]:
    """Every matching row, fetched a chunk at a time (no long-held read lock)."""
    while True:
        rows = store.events(query)
        yield from rows
        if len(rows) < query.limit:
            return
        query.after = (rows[-1].time, rows[-1].number)


def _dimension(row: EventRow, properties: dict[str, Any], name: str) -> str:
    if name == "$value_currency":
        value: Any = row.value_currency
    else:
        value = properties.get(name)
    return "" if value is None else str(value)


def aggregate(
    store: Store,
    account_id: str,
    *,
    metric_id: str,
    measurements: Sequence[str],
    conditions: list[Condition],
    interval: str,
    timezone: str,
    by: list[str],
) -> Aggregate:
    if not store.metrics(account_id, ids=[metric_id], limit=1):
        raise AggregateError(f"A metric with id {metric_id[:64]} does not exist.", "/metric_id")
    zone = _zone(timezone)
    since, until, rest = _range(conditions)
    for c in rest:
        if c.op not in ("equals", "any"):
            raise AggregateError(f"'{c.op}' is not supported on '{c.field}'.", "/filter")

    starts = _starts(since, until, zone, interval)

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
        # starts[0] <= since <= row.time < until (see _starts): always one bucket, never -1
        slot = bisect_right(starts, row.time) - 1
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
    # Each start with the zone's offset at that instant: a repeated hour shows as 01:00-04:00
    # and 01:00-05:00, a skipped midnight as the moment the day began (01:00-04:00).
    dates = [datetime.fromtimestamp(start, zone).isoformat() for start in starts]
    return Aggregate(dates, data)


def _matches(row: EventRow, properties: dict[str, Any], c: Condition) -> bool:
    actual = _dimension(row, properties, c.field)
    wanted = c.value if isinstance(c.value, tuple) else (c.value,)
    return actual in {str(w) for w in wanted}
