"""A segment's `definition`, as Klaviyo's SegmentDefinition schema gives it, parsed strictly:
every object's keys are checked (unknown ones refused, as Klaviyo's strict shapes are), every
value's type and range, and a condition that a self-hosted server cannot evaluate is refused
with a detail saying so — never a silent "matches nobody". Errors carry a JSON pointer into
the request body.

Conditions handled here: `profile-property` (every filter kind of the spec but phone country
codes), `profile-metric` (count or sum of a metric's events over a timeframe, with filters on
the events' top-level properties), `profile-group-membership` (in, or not in, lists and
segments; joined within a timeframe) and `profile-region`. The others of the spec are refused
as unsupported by this server: postal-code distance, predictive analytics, custom objects,
permissions, funnels, marketing consent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import re2  # type: ignore[import-untyped]

MAX_CONDITIONS = 100  # conditions in a definition (Klaviyo's help 115005062847)
MAX_STRING = 1000  # characters in a filter's string value or pattern
MAX_LIST = 1000  # values in a filter's list
MAX_QUANTITY = 100_000  # a relative date's number of units (over 270 years of days)

# Well-known profile properties: (where in the stored profile, key).
WELL_KNOWN: dict[str, tuple[str, str]] = {
    **{name: ("identifiers", name) for name in ("email", "phone_number", "external_id")},
    **{
        name: ("attributes", name)
        for name in ("first_name", "last_name", "organization", "title", "locale", "image")
    },
    "created": ("created", "created"),
    "updated": ("updated", "updated"),
    "last_event_date": ("last_event_date", "last_event_date"),
}
LOCATION_KEYS = frozenset(
    ("address1", "address2", "city", "country", "region", "zip", "timezone", "latitude",
     "longitude", "ip")
)  # fmt: skip
_BRACKETED = re.compile(r"""(location|properties)\[(?:'([^']*)'|"([^"]*)")\]\Z""")

STRING_OPERATORS = frozenset(
    ("equals", "not-equals", "contains", "not-contains", "starts-with", "ends-with",
     "not-starts-with", "not-ends-with", "regex", "nregex")
)  # fmt: skip
NUMERIC_OPERATORS = frozenset(
    ("equals", "not-equals", "greater-than", "greater-than-or-equal", "less-than",
     "less-than-or-equal")
)  # fmt: skip
LIST_LENGTH_OPERATORS = frozenset(
    ("length-equals", "length-greater-than", "length-greater-than-or-equal", "length-less-than",
     "length-less-than-or-equal")
)  # fmt: skip
UNITS = {"hour": 3600, "day": 86400, "week": 7 * 86400}
REGIONS = frozenset(("european_union", "united_states"))
UNSUPPORTED_CONDITIONS = {
    "profile-postal-code-distance": "postal-code distance needs geographic data",
    "profile-predictive-analytics": "predictive analytics are Klaviyo's models",
    "profile-has-custom-object": "custom objects",
    "profile-permissions": "permissions",
    "profile-metric-funnel": "funnels",
    "profile-marketing-consent": "marketing consent",
}
LIST_SET_OPERATORS = frozenset(("contains-all", "contains-any", "not-contains-all",
                                "not-contains-any"))  # fmt: skip
LIST_SUBSTRING_OPERATORS = frozenset(("contains-substring", "not-contains-substring"))
MAX_GROUPS = 100  # lists and segments named by one membership condition


class DefinitionError(ValueError):
    """A definition Klaviyo would refuse, or one this server cannot evaluate: a 400."""

    def __init__(self, pointer: str, detail: str) -> None:
        super().__init__(f"{pointer}: {detail}")
        self.pointer = pointer
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Property:
    """Where a condition's property lives in a stored profile: `section` is "identifiers",
    "attributes", "location", "properties", or one of the dates (created, updated,
    last_event_date); `key` its key there."""

    section: str
    key: str


@dataclass(frozen=True, slots=True)
class Filter:
    type: str  # string, numeric, boolean, date, list, existence
    operator: str
    value: Any = None  # the compared value: a str, number, bool, list, or month
    pattern: Any = None  # a compiled regex (regex, nregex)
    seconds: int = 0  # relative dates: quantity × unit
    start: Any = None  # date ranges: datetimes (static) or seconds ago (relative)
    end: Any = None
    # Answers for scalar values seen already (a string by itself, other scalars as (type,
    # value)): a metric filter meets the same few values on event after event
    # (segments/evaluate.py).
    memo: dict[Any, bool] = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True, slots=True)
class PropertyCondition:
    property: Property
    filter: Filter


@dataclass(frozen=True, slots=True)
class RegionCondition:
    in_region: bool
    region: str


@dataclass(frozen=True, slots=True)
class MetricCondition:
    """`measurement` (count, or sum of the events' values) of the metric's events in the
    timeframe that pass every `metric_filters` entry, compared by `measurement_filter`."""

    metric_id: str
    measurement: str  # count | sum
    measurement_filter: Filter  # numeric
    timeframe: Filter  # date; operator "alltime" for every event
    metric_filters: tuple[tuple[str, Filter], ...]  # (top-level event property, filter)
    # Which events it measures (metric, timeframe and filters as written): conditions with
    # equal keys measure the same events, whatever their measurement and comparison.
    events_key: str = field(compare=False)

    @property
    def static(self) -> bool:
        """Whether each event's place in the measure is fixed (the timeframe does not move
        with the clock), so that a measure can be kept up to date by adding new events."""
        return self.timeframe.operator in STATIC_TIMEFRAMES


@dataclass(frozen=True, slots=True)
class MembershipCondition:
    """In (is_member) one of the lists or segments, joined within `timeframe` when given; or
    in none of them."""

    is_member: bool
    group_ids: tuple[str, ...]
    timeframe: Filter | None


Condition = PropertyCondition | RegionCondition | MetricCondition | MembershipCondition


@dataclass(frozen=True, slots=True)
class Definition:
    """Groups AND, conditions inside a group OR."""

    groups: tuple[tuple[Condition, ...], ...]


def strict_object(
    value: Any, pointer: str, required: set[str], optional: set[str]
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DefinitionError(pointer, "must be an object")
    for key in value:
        if key not in required and key not in optional:
            raise DefinitionError(f"{pointer}/{_escape(str(key))}", f"unknown key {key!r}")
    for key in sorted(required - value.keys()):
        raise DefinitionError(f"{pointer}/{key}", f"{key!r} is required")
    return value


def _escape(key: str) -> str:
    """A key as a JSON pointer token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _string(value: Any, pointer: str, *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise DefinitionError(pointer, "must be a string")
    if len(value) > MAX_STRING:
        raise DefinitionError(pointer, f"must be at most {MAX_STRING} characters")
    return value


def _integer(value: Any, pointer: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DefinitionError(pointer, "must be an integer")
    if not low <= value <= high:
        raise DefinitionError(pointer, f"must be between {low} and {high}")
    return value


def _number(value: Any, pointer: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DefinitionError(pointer, "must be a number")
    if isinstance(value, float) and value != value:  # NaN cannot come from JSON; be sure
        raise DefinitionError(pointer, "must be a number")
    return value


def _date(value: Any, pointer: str) -> datetime:
    text = _string(value, pointer)
    assert text is not None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset past year 1 or 9999
        raise DefinitionError(pointer, "must be an ISO 8601 date-time in years 1 to 9999") from None


def _enum(value: Any, pointer: str, allowed: frozenset[str] | set[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise DefinitionError(pointer, f"must be one of {', '.join(sorted(allowed))}")
    return value


def parse_property(value: Any, pointer: str) -> Property:
    name = _string(value, pointer)
    assert name is not None
    if name in WELL_KNOWN:
        return Property(*WELL_KNOWN[name])
    match = _BRACKETED.match(name)
    if match is None:
        raise DefinitionError(
            pointer,
            f"unknown profile property {name[:100]!r}: use a well-known name"
            f" ({', '.join(sorted(WELL_KNOWN))}), location['…'] or properties['…']",
        )
    section, key = match[1], match[2] if match[2] is not None else match[3]
    if section == "location" and key not in LOCATION_KEYS:
        raise DefinitionError(
            pointer, f"unknown location field {key!r}: one of {', '.join(sorted(LOCATION_KEYS))}"
        )
    if section == "properties" and key == "$extra":
        raise DefinitionError(pointer, "'$extra' holds values that are not segmentable")
    return Property(section, key)


def parse_filter(value: Any, pointer: str, *, event_property: bool = False) -> Filter:
    """A property filter. `event_property`: one of a metric condition's `metric_filters`,
    which also take the list set and substring operators."""
    raw = strict_object(value, pointer, {"type", "operator"}, {"value", "unit", "quantity", "start",
                                                          "end", "date"})  # fmt: skip
    kind = _enum(raw["type"], pointer + "/type",
                 {"string", "numeric", "boolean", "date", "list", "existence"})  # fmt: skip
    op = raw["operator"]
    at = pointer + "/operator"

    def keys(*required: str) -> None:
        strict_object(raw, pointer, {"type", "operator", *required}, set())

    if kind == "string":
        if op in ("phone-country-code-in", "phone-country-code-not-in"):
            raise DefinitionError(at, f"{op!r} is not supported by this server (phone country"
                                      " codes)")  # fmt: skip
        if op in ("in", "not-in"):
            keys("value")
            values = raw["value"]
            if not isinstance(values, list) or len(values) > MAX_LIST:
                raise DefinitionError(pointer + "/value", f"must be a list of at most {MAX_LIST}"
                                                          " strings")  # fmt: skip
            for n, item in enumerate(values):
                _string(item, f"{pointer}/value/{n}")
            return Filter(kind, op, value=frozenset(v.casefold() for v in values))
        op = _enum(op, at, STRING_OPERATORS | {"in", "not-in"})
        keys("value")
        text = _string(raw["value"], pointer + "/value", nullable=True)
        if op in ("regex", "nregex"):
            if text is None:
                raise DefinitionError(pointer + "/value", "must be a pattern")
            try:  # RE2: linear time whatever the pattern, so no pattern can stall processing
                pattern = re2.compile(text)
            except re2.error as exc:
                raise DefinitionError(pointer + "/value", f"not a valid pattern: {exc}") from None
            return Filter(kind, op, value=text, pattern=pattern)
        return Filter(kind, op, value=None if text is None else text.casefold())
    if kind == "numeric":
        op = _enum(op, at, NUMERIC_OPERATORS)
        keys("value")
        return Filter(kind, op, value=_number(raw["value"], pointer + "/value"))
    if kind == "boolean":
        op = _enum(op, at, {"equals"})
        keys("value")
        if not isinstance(raw["value"], bool):
            raise DefinitionError(pointer + "/value", "must be true or false")
        return Filter(kind, op, value=raw["value"])
    if kind == "existence":
        op = _enum(op, at, {"is-set", "not-set"})
        keys()
        return Filter(kind, op)
    if kind == "list":
        extra = LIST_SET_OPERATORS | LIST_SUBSTRING_OPERATORS if event_property else frozenset()
        op = _enum(op, at, LIST_LENGTH_OPERATORS | {"contains", "not-contains"} | extra)
        keys("value")
        if op in LIST_SET_OPERATORS:
            values = raw["value"]
            if not isinstance(values, list) or not values or len(values) > MAX_LIST:
                raise DefinitionError(pointer + "/value", f"must be a list of 1 to {MAX_LIST}"
                                                          " strings")  # fmt: skip
            for n, item in enumerate(values):
                _string(item, f"{pointer}/value/{n}")
            return Filter(kind, op, value=frozenset(v.casefold() for v in values))
        if op in LIST_SUBSTRING_OPERATORS:
            text = _string(raw["value"], pointer + "/value", nullable=True)
            return Filter(kind, op, value=None if text is None else text.casefold())
        if op in ("contains", "not-contains"):
            item = raw["value"]
            if isinstance(item, bool) or not (item is None or isinstance(item, int | str)):
                raise DefinitionError(pointer + "/value", "must be an integer, a string or null")
            if isinstance(item, str):
                _string(item, pointer + "/value")
            return Filter(kind, op, value=item)
        return Filter(kind, op, value=_integer(raw["value"], pointer + "/value", 0, 1_000_000))
    return parse_date_filter(raw, pointer, set(DATE_OPERATORS))


DATE_OPERATORS = ("before", "after", "between-static", "in-the-last", "at-least", "in-the-next",
                  "between", "anniversary", "anniversary-month", "anniversary-last",
                  "anniversary-next", "calendar-month")  # fmt: skip
# A metric condition's timeframe, and a membership condition's (the spec's unions).
TIMEFRAME_OPERATORS = {"before", "after", "between-static", "in-the-last", "at-least",
                       "in-the-next", "between", "anniversary-last", "anniversary-next",
                       "alltime"}  # fmt: skip
# Timeframes that do not move with the clock.
STATIC_TIMEFRAMES = frozenset(("alltime", "before", "after", "between-static"))
JOINED_OPERATORS = {"before", "after", "between-static", "in-the-last", "at-least",
                    "in-the-next", "between"}  # fmt: skip


def parse_date_filter(raw: Any, pointer: str, operators: set[str]) -> Filter:
    raw = strict_object(raw, pointer, {"type", "operator"}, {"unit", "quantity", "start", "end",
                                                        "date", "value"})  # fmt: skip
    kind = _enum(raw["type"], pointer + "/type", {"date"})
    op = _enum(raw["operator"], pointer + "/operator", operators)

    def keys(*required: str) -> None:
        strict_object(raw, pointer, {"type", "operator", *required}, set())

    if op == "alltime":
        keys()
        return Filter(kind, op)
    if op in ("before", "after"):
        keys("date")
        return Filter(kind, op, value=_date(raw["date"], pointer + "/date"))
    if op == "between-static":
        keys("start", "end")
        start, end = _date(raw["start"], pointer + "/start"), _date(raw["end"], pointer + "/end")
        if end < start:
            raise DefinitionError(pointer + "/end", "must not be before start")
        return Filter(kind, op, start=start, end=end)
    if op in ("in-the-last", "at-least", "in-the-next", "anniversary-last", "anniversary-next"):
        keys("unit", "quantity")
        unit = UNITS[_enum(raw["unit"], pointer + "/unit", set(UNITS))]
        quantity = _integer(raw["quantity"], pointer + "/quantity", 0, MAX_QUANTITY)
        if op.startswith("anniversary-") and quantity * unit > 366 * 86400:
            raise DefinitionError(pointer + "/quantity", "an anniversary is within a year")
        return Filter(kind, op, seconds=quantity * unit)
    if op == "between":
        keys("start", "end", "unit")
        unit = UNITS[_enum(raw["unit"], pointer + "/unit", set(UNITS))]
        units_from = _integer(raw["start"], pointer + "/start", 0, MAX_QUANTITY)
        units_to = _integer(raw["end"], pointer + "/end", 0, MAX_QUANTITY)
        if units_to < units_from:
            raise DefinitionError(pointer + "/end", "must not be less than start")
        return Filter(kind, op, start=units_from * unit, end=units_to * unit)
    if op == "calendar-month":
        keys("value")
        return Filter(kind, op, value=_integer(raw["value"], pointer + "/value", 1, 12))
    keys()  # anniversary, anniversary-month
    return Filter(kind, op)


def parse_condition(value: Any, pointer: str) -> Condition:
    if not isinstance(value, dict):
        raise DefinitionError(pointer, "must be an object")
    kind = value.get("type")
    if kind == "profile-property":
        raw = strict_object(value, pointer, {"type", "property", "filter"}, set())
        return PropertyCondition(
            parse_property(raw["property"], pointer + "/property"),
            parse_filter(raw["filter"], pointer + "/filter"),
        )
    if kind == "profile-region":
        raw = strict_object(value, pointer, {"type", "in_region", "region"}, set())
        if not isinstance(raw["in_region"], bool):
            raise DefinitionError(pointer + "/in_region", "must be true or false")
        return RegionCondition(raw["in_region"], _enum(raw["region"], pointer + "/region", REGIONS))
    if kind == "profile-metric":
        required = {"type", "metric_id", "measurement", "measurement_filter", "timeframe_filter"}
        raw = strict_object(value, pointer, required, {"metric_filters"})
        metric_id = _string(raw["metric_id"], pointer + "/metric_id")
        assert metric_id is not None
        measurement = _enum(raw["measurement"], pointer + "/measurement", {"count", "sum"})
        measured = parse_filter(raw["measurement_filter"], pointer + "/measurement_filter")
        if measured.type != "numeric":
            raise DefinitionError(pointer + "/measurement_filter/type", "must be 'numeric'")
        timeframe = parse_date_filter(
            raw["timeframe_filter"], pointer + "/timeframe_filter", TIMEFRAME_OPERATORS
        )
        filters_raw = raw.get("metric_filters")
        if filters_raw is None:  # absent, or null as the spec allows
            filters_raw = []
        if not isinstance(filters_raw, list) or len(filters_raw) > MAX_CONDITIONS:
            detail = f"must be a list of at most {MAX_CONDITIONS} filters"
            raise DefinitionError(pointer + "/metric_filters", detail)
        metric_filters = []
        for n, item in enumerate(filters_raw):
            at = f"{pointer}/metric_filters/{n}"
            entry = strict_object(item, at, {"property"}, {"filter"})
            name = _string(entry["property"], at + "/property")
            if not name:
                raise DefinitionError(at + "/property", "must name an event property")
            if name == "$extra":
                raise DefinitionError(at + "/property", "'$extra' holds values that are not"
                                                        " segmentable")  # fmt: skip
            if entry.get("filter") is None:  # the spec allows null: the property is present
                rule = Filter("existence", "is-set")
            else:
                if isinstance(entry["filter"], dict) and entry["filter"].get("type") == "date":
                    detail = "dates are not an event property filter (the spec has none)"
                    raise DefinitionError(at + "/filter/type", detail)
                rule = parse_filter(entry["filter"], at + "/filter", event_property=True)
            metric_filters.append((name, rule))
        key = msgspec.json.encode([metric_id, raw["timeframe_filter"], filters_raw], order="sorted")
        return MetricCondition(metric_id, measurement, measured, timeframe, tuple(metric_filters),
                               key.decode())  # fmt: skip
    if kind == "profile-group-membership":
        if not isinstance(value.get("is_member"), bool):
            raise DefinitionError(pointer + "/is_member", "must be true or false")
        member = value["is_member"]
        optional = {"timeframe_filter"} if member else set()
        raw = strict_object(value, pointer, {"type", "is_member", "group_ids"}, optional)
        ids = raw["group_ids"]
        if not isinstance(ids, list) or not ids or len(ids) > MAX_GROUPS:
            raise DefinitionError(pointer + "/group_ids", f"must be a list of 1 to {MAX_GROUPS}"
                                                          " list or segment ids")  # fmt: skip
        for n, group_id in enumerate(ids):
            if not _string(group_id, f"{pointer}/group_ids/{n}"):
                raise DefinitionError(f"{pointer}/group_ids/{n}", "must be a list or segment id")
        joined = raw.get("timeframe_filter")
        when = (
            None
            if joined is None
            else parse_date_filter(joined, pointer + "/timeframe_filter", JOINED_OPERATORS)
        )
        return MembershipCondition(member, tuple(ids), when)
    if isinstance(kind, str):
        for prefix, what in UNSUPPORTED_CONDITIONS.items():
            if kind.startswith(prefix):
                detail = f"{kind!r} conditions are not supported by this server ({what})"
                raise DefinitionError(pointer + "/type", detail)
    raise DefinitionError(pointer + "/type", "unknown condition type")


def parse_groups(
    value: Any, pointer: str, parse: Callable[[Any, str], Any], what: str = "segment"
) -> tuple[tuple[Any, ...], ...]:
    """`{condition_groups: [{conditions: [...]}]}` (groups AND, conditions inside a group OR),
    each condition parsed by `parse` (a segment's, or a flow filter's)."""
    raw = strict_object(value, pointer, {"condition_groups"}, set())
    groups_raw = raw["condition_groups"]
    at = pointer + "/condition_groups"
    if not isinstance(groups_raw, list) or not groups_raw:
        raise DefinitionError(at, "must be a non-empty list of condition groups")
    groups = []
    count = 0
    for g, group in enumerate(groups_raw):
        gp = f"{at}/{g}"
        conditions_raw = strict_object(group, gp, {"conditions"}, set())["conditions"]
        if not isinstance(conditions_raw, list) or not conditions_raw:
            raise DefinitionError(gp + "/conditions", "must be a non-empty list of conditions")
        count += len(conditions_raw)
        if count > MAX_CONDITIONS:
            detail = f"at most {MAX_CONDITIONS} conditions in a {what}"
            raise DefinitionError(gp + "/conditions", detail)
        groups.append(tuple(parse(c, f"{gp}/conditions/{n}") for n, c in enumerate(conditions_raw)))
    return tuple(groups)


def parse_definition(value: Any, pointer: str = "/data/attributes/definition") -> Definition:
    return Definition(parse_groups(value, pointer, parse_condition))


def groups_of(definition: Definition) -> set[str]:
    """The lists and segments its membership conditions name."""
    return {
        g
        for group in definition.groups
        for c in group
        if isinstance(c, MembershipCondition)
        for g in c.group_ids
    }


def metrics_of(definition: Definition) -> set[str]:
    """The metrics its conditions count or sum."""
    return {
        c.metric_id for group in definition.groups for c in group if isinstance(c, MetricCondition)
    }


# Date operators whose answer does not move with the clock.
STATIC_DATE_OPERATORS = frozenset(
    ("alltime", "before", "after", "between-static", "calendar-month")
)


def depends_on_time(definition: Definition) -> bool:
    """Whether the same profile can come to match, or stop matching, as time passes alone
    (a date relative to now, an anniversary, a metric timeframe or join time so relative)."""
    for group in definition.groups:
        for c in group:
            frames: list[Filter | None] = []
            if isinstance(c, PropertyCondition) and c.filter.type == "date":
                frames.append(c.filter)
            elif isinstance(c, MetricCondition | MembershipCondition):
                frames.append(c.timeframe)
            if any(f is not None and f.operator not in STATIC_DATE_OPERATORS for f in frames):
                return True
    return False
