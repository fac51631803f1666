"""Whether a profile is in a segment, at a moment (`now`: the clock, not the wall).

The rules where Klaviyo's docs are silent, decided here and tested in
tests/test_segment_conditions.py:
- **Unset**: a property that is absent (or null) matches no condition but `not-set`,
  negations included: `not-equals "x"` does not match a profile without the property.
- **Types**: a filter compares values of its own type only. A string filter matches strings,
  a numeric one numbers (not booleans), a boolean one booleans, a list one lists, a date one
  ISO 8601 strings (and the profile's own dates). A value of another type matches neither the
  filter nor its negation, as if unset; `is-set` still matches it (an object value included).
- **Text** comparisons ignore case (Unicode case folding), list elements' included (`contains`,
  `contains-all` / `-any`); `regex` / `nregex` are RE2 patterns searched anywhere in the value,
  case as written. A list's `contains 1` matches the number 1, never `true`.
- **Dates** are UTC; a date without a time is its midnight, one without an offset is UTC.
  `between-static` includes both ends; relative ranges run from `now` (in-the-last N: the N
  units before now, at-least N: N units ago or earlier, in-the-next N: the N units after now,
  between A and B: from B to A units ago). `anniversary`: the same month and day as today
  (29 February on 28 February in other years); `anniversary-month`: the same month;
  `anniversary-last` / `-next` N: this year's anniversary (or last / next year's) falls in the N
  units before / after now; `calendar-month` M: the date's month is M.
- **Metrics**: `count` is the number of the metric's events in the timeframe that pass every
  metric filter, `sum` the sum of their values (an event without a value adds 0), added
  exactly and rounded once, so that 0.1 + 0.2 + 0.3 equals 0.6 in any order; a profile
  with no such event has a count and a sum of 0, so "done 0 times" matches it. Metric filters
  are the property filters above, on the event's top-level properties (an object value only
  passes `is-set`), plus `contains-all` / `-any` and `contains-substring` on lists of strings
  (negated forms: not all / none / no element containing it). Backfilled events count: backfill
  only keeps flows from triggering. The timeframe's relative operators are taken from `now`;
  `alltime` is every event.
- **Membership**: `is_member: true` matches a profile in at least one of the lists or segments
  (and, with a timeframe, one it joined within it); `false`, one in none of them.
- **Region**: from `location.country`, as an ISO 3166 alpha-2 code or an English name; the
  European Union is its 27 members (not the United Kingdom). No country: not in any region,
  and not "not in" one either (unset).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import Any, Protocol

from trackhouse.process.profiles import Profile
from trackhouse.segments.definition import (
    Condition,
    Definition,
    Filter,
    MembershipCondition,
    MetricCondition,
    Property,
    PropertyCondition,
    RegionCondition,
)


class MetricEvent(Protocol):
    @property
    def time(self) -> int: ...  # unix seconds

    @property
    def value(self) -> float | None: ...

    @property
    def properties(self) -> dict[str, Any]: ...


class ProfileFacts(Protocol):
    """What conditions beyond the profile's own document need: the count and sum of its
    events that a metric condition measures (`measure_events` over its events, or a measure
    kept up to date), and when it joined a list or segment (None: not a member)."""

    def measure(self, condition: MetricCondition, now: datetime) -> Measure: ...

    def joined(self, group_id: str) -> datetime | None: ...


class NoFacts:
    """A profile with no events and no memberships."""

    def measure(self, condition: MetricCondition, now: datetime) -> Measure:
        return NOTHING

    def joined(self, group_id: str) -> datetime | None:
        return None


_EU = {
    "AT": "austria", "BE": "belgium", "BG": "bulgaria", "HR": "croatia", "CY": "cyprus",
    "CZ": "czechia", "DK": "denmark", "EE": "estonia", "FI": "finland", "FR": "france",
    "DE": "germany", "GR": "greece", "HU": "hungary", "IE": "ireland", "IT": "italy",
    "LV": "latvia", "LT": "lithuania", "LU": "luxembourg", "MT": "malta", "NL": "netherlands",
    "PL": "poland", "PT": "portugal", "RO": "romania", "SK": "slovakia", "SI": "slovenia",
    "ES": "spain", "SE": "sweden",
}  # fmt: skip
_REGIONS = {
    "european_union": {*(c.lower() for c in _EU), *_EU.values(), "czech republic"},
    "united_states": {"us", "usa", "united states", "united states of america"},
}


def value_of(profile: Profile, prop: Property) -> Any:
    """The property's value in the profile, or None when it is unset."""
    section = prop.section
    if section == "identifiers":
        return profile.identifiers.get(prop.key)
    if section == "attributes":
        return profile.attributes.get(prop.key)
    if section == "location":
        return profile.location.get(prop.key)
    if section == "properties":
        return profile.properties.get(prop.key)
    if section == "last_event_date":
        t = profile.last_event_time
        return None if t is None else datetime.fromtimestamp(t, UTC)
    return getattr(profile, section)  # created, updated: ISO 8601 strings


def _as_date(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset past year 1 or 9999
        return None


def _anniversary(moment: datetime, year: int) -> date:
    try:
        return moment.date().replace(year=year)
    except ValueError:  # 29 February in a year without one
        return date(year, 2, 28)


def _date_matches(f: Filter, moment: datetime, now: datetime) -> bool:
    op = f.operator
    if op == "before":
        return moment < f.value
    if op == "after":
        return moment > f.value
    if op == "between-static":
        return f.start <= moment <= f.end
    # Relative ranges in seconds since 1970: a range reaching past year 1 or 9999 (a clock set
    # near either end) cannot overflow.
    at, t, span = now.timestamp(), moment.timestamp(), f.seconds
    if op == "in-the-last":
        return at - span <= t <= at
    if op == "at-least":
        return t <= at - span
    if op == "in-the-next":
        return at <= t <= at + span
    if op == "between":
        return at - f.end <= t <= at - f.start
    if op == "calendar-month":
        return moment.month == f.value
    if op == "anniversary-month":
        return moment.month == now.month
    today = now.date()
    if op == "anniversary":
        return _anniversary(moment, today.year) == today
    # anniversary-last / anniversary-next: one of the anniversaries near now is in the window
    for year in (today.year - 1, today.year, today.year + 1):
        if not 1 <= year <= 9999:
            continue
        day = _anniversary(moment, year)
        when = datetime(day.year, day.month, day.day, moment.hour, moment.minute, tzinfo=UTC)
        w = when.timestamp()
        if op == "anniversary-last" and at - span <= w <= at:
            return True
        if op == "anniversary-next" and at <= w <= at + span:
            return True
    return False


def filter_matches(f: Filter, value: Any, now: datetime) -> bool:
    """Whether a (set or unset: None) value passes the filter."""
    if f.type == "existence":
        return (value is not None) == (f.operator == "is-set")
    if value is None:
        return False  # unset: no condition but not-set, negations included
    kind, op = f.type, f.operator
    if kind == "string":
        if not isinstance(value, str):
            return False
        if op == "regex":
            return f.pattern.search(value) is not None
        if op == "nregex":
            return f.pattern.search(value) is None
        text = value.casefold()
        if op == "in":
            return text in f.value
        if op == "not-in":
            return text not in f.value
        needle = f.value
        if needle is None:  # equals null: never a set value
            return op.startswith("not-")
        positive, negated = op.removeprefix("not-"), op.startswith("not-")
        if positive == "equals":
            hit = text == needle
        elif positive == "contains":
            hit = needle in text
        elif positive == "starts-with":
            hit = text.startswith(needle)
        else:  # ends-with
            hit = text.endswith(needle)
        return hit != negated
    if kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return _compare(op, value, f.value)
    if kind == "boolean":
        return isinstance(value, bool) and value == f.value
    if kind == "list":
        if not isinstance(value, list):
            return False
        if op in ("contains", "not-contains"):
            hit = any(_same(item, f.value) for item in value)
            return hit != (op == "not-contains")
        return _compare(op.removeprefix("length-"), len(value), f.value)
    moment = _as_date(value)
    return moment is not None and _date_matches(f, moment, now)


def _same(item: Any, wanted: Any) -> bool:
    """A list element equal to a filter's value, as the scalar filters compare: text ignoring
    case, numbers as numbers (never a boolean), null as null."""
    if isinstance(wanted, str):
        return isinstance(item, str) and item.casefold() == wanted.casefold()
    if wanted is None:
        return item is None
    return not isinstance(item, bool) and isinstance(item, int | float) and item == wanted


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "equals": operator.eq,
    "not-equals": operator.ne,
    "greater-than": operator.gt,
    "greater-than-or-equal": operator.ge,
    "less-than": operator.lt,
    "less-than-or-equal": operator.le,
}


def _compare(op: str, left: float, right: float) -> bool:
    return _COMPARISONS[op](left, right)


def _in_region(profile: Profile, condition: RegionCondition) -> bool:
    country = profile.location.get("country")
    if not isinstance(country, str) or not country.strip():
        return False  # unset: neither in nor out of a region
    inside = country.strip().casefold() in _REGIONS[condition.region]
    return inside == condition.in_region


def _event_passes(f: Filter, value: Any, now: datetime) -> bool:
    """A metric filter on one event property (the property filters, and list set/substring)."""
    if f.type == "list" and f.operator in (
        "contains-all", "contains-any", "not-contains-all", "not-contains-any",
        "contains-substring", "not-contains-substring",
    ):  # fmt: skip
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return False
        if f.operator.endswith("substring"):
            if f.value is None:
                return f.operator.startswith("not-")
            hit = any(f.value in v.casefold() for v in value)
            return hit != f.operator.startswith("not-")
        present = {v.casefold() for v in value}
        every = f.operator.endswith("-all")
        hit = f.value <= present if every else not f.value.isdisjoint(present)
        return hit != f.operator.startswith("not-")
    if isinstance(value, dict):  # an object is not segmentable: only is-set sees it
        return f.type == "existence" and f.operator == "is-set"
    return filter_matches(f, value, now)


# A metric condition's measure: the count of the events it measures and the exact sum of their
# values, as numerator / 2**shift (every float is one such fraction), so that a sum is the same
# whatever the order of its events and however it was kept up to date (`add_measures`).
Measure = tuple[int, int, int]
NOTHING: Measure = (0, 0, 0)


_SCALARS = (str, int, float, bool, type(None))
MEMO_SIZE = 4096  # answers a metric filter remembers


def event_value_passes(f: Filter, value: Any, now: datetime) -> bool:
    """Whether an event's property value passes a filter (a flow's trigger filter)."""
    return _event_passes(f, value, now)


def _event_property_passes(f: Filter, value: Any, now: datetime) -> bool:
    """`_event_passes`, remembered for scalar values (metric filters do not read the clock:
    dates are not an event property filter)."""
    kind = type(value)
    if kind is str:
        key: Any = value
    elif kind in _SCALARS:
        key = (kind, value)  # the type too: True, 1 and 1.0 are one key otherwise
    else:
        return _event_passes(f, value, now)
    memo = f.memo
    found = memo.get(key)
    if found is None:
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        found = memo[key] = _event_passes(f, value, now)
    return found


# Whether a metric condition measures an event, at `now`.
EventTest = Callable[[MetricEvent, datetime], bool]


def event_test(condition: MetricCondition) -> EventTest | None:
    """The condition's test of an event: in its timeframe, passing every metric filter (the
    event's properties are read only where a condition filters by them); None when it takes
    every event (all time, no filter)."""
    frame, filters = condition.timeframe, condition.metric_filters

    def in_frame(event: MetricEvent, now: datetime) -> bool:
        return _date_matches(frame, datetime.fromtimestamp(event.time, UTC), now)

    if not filters:
        return None if frame.operator == "alltime" else in_frame
    if frame.operator == "alltime" and len(filters) == 1:
        ((name, f),) = filters
        memo = f.memo

        def one(event: MetricEvent, now: datetime) -> bool:
            value = event.properties.get(name)
            if type(value) is str:  # the common case, answered without another call
                found = memo.get(value)
                if found is not None:
                    return found
            return _event_property_passes(f, value, now)

        return one
    framed = frame.operator != "alltime"

    def test(event: MetricEvent, now: datetime) -> bool:
        if framed and not in_frame(event, now):
            return False
        properties = event.properties
        return all(_event_property_passes(f, properties.get(name), now) for name, f in filters)

    return test


def measure_events(
    condition: MetricCondition, events: Iterable[MetricEvent], now: datetime
) -> Measure:
    """The measure of the events the condition takes (`event_test`)."""
    test = event_test(condition)
    if test is None:
        return measure_values([e.value for e in events])
    return measure_values([e.value for e in events if test(e, now)])


def measure_values(values: list[float | None]) -> Measure:
    """The count of the values and their exact sum (None adds 0)."""
    numerator, shift = 0, 0
    for value in values:
        if value:
            n, d = value.as_integer_ratio()  # d is a power of two
            k = d.bit_length() - 1
            if k > shift:
                numerator <<= k - shift
                shift = k
            numerator += n << (shift - k)
    return len(values), numerator, shift


def add_measures(a: Measure, b: Measure) -> Measure:
    (c1, n1, k1), (c2, n2, k2) = a, b
    k = max(k1, k2)
    return c1 + c2, (n1 << (k - k1)) + (n2 << (k - k2)), k


def total(measure: Measure) -> float:
    """The sum, rounded once to the nearest float."""
    _, numerator, shift = measure
    try:
        return numerator / (1 << shift)
    except OverflowError:  # past the largest float
        return math.copysign(math.inf, numerator)


def _membership_matches(condition: MembershipCondition, facts: ProfileFacts, now: datetime) -> bool:
    def member(group_id: str) -> bool:
        joined = facts.joined(group_id)
        when = condition.timeframe
        return joined is not None and (when is None or _date_matches(when, joined, now))

    return any(member(g) for g in condition.group_ids) == condition.is_member


# A definition or condition made into one function of (profile, now in UTC, facts): made once
# per segment version, called for every profile a batch touches.
Test = Callable[[Profile, datetime, ProfileFacts], bool]


def compile_condition(condition: Condition) -> Test:
    if isinstance(condition, PropertyCondition):
        f, prop = condition.filter, condition.property
        return lambda profile, now, facts: filter_matches(f, value_of(profile, prop), now)
    if isinstance(condition, MetricCondition):
        compare = _COMPARISONS[condition.measurement_filter.operator]
        wanted = condition.measurement_filter.value
        if condition.measurement == "count":
            return lambda profile, now, facts: compare(facts.measure(condition, now)[0], wanted)
        return lambda profile, now, facts: compare(total(facts.measure(condition, now)), wanted)
    if isinstance(condition, MembershipCondition):
        return lambda profile, now, facts: _membership_matches(condition, facts, now)
    return lambda profile, now, facts: _in_region(profile, condition)


def compile_definition(definition: Definition) -> Test:
    """Groups AND, conditions inside a group OR."""
    groups = [[compile_condition(c) for c in group] for group in definition.groups]
    if len(groups) == 1 and len(groups[0]) == 1:
        return groups[0][0]

    def test(profile: Profile, now: datetime, facts: ProfileFacts) -> bool:
        for group in groups:  # (loops, not all/any of generators: this is hot)
            for condition in group:
                if condition(profile, now, facts):
                    break
            else:
                return False
        return True

    return test


def matches(
    definition: Definition, profile: Profile, now: datetime, facts: ProfileFacts | None = None
) -> bool:
    """Whether the profile is in the definition's segment at `now` (`compile_definition`
    makes the test once, for many profiles)."""
    known = facts if facts is not None else NoFacts()
    return compile_definition(definition)(profile, now.astimezone(UTC), known)
