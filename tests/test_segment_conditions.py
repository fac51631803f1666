"""Segment definitions (segments/definition.py, segments/evaluate.py): every filter kind and
operator of Klaviyo's `profile-property` condition, table by table, with the unset rule (an
absent property matches no condition but `not-set`, negations included) and values of the
wrong type; `profile-region`; groups AND, conditions inside a group OR; and the strict parse:
unknown keys, bad values and conditions this server cannot evaluate refused with a pointer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from trackhouse.process.profiles import Profile
from trackhouse.segments.definition import DefinitionError, MetricCondition, parse_definition
from trackhouse.segments.evaluate import Measure, matches, measure_events

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
UNSET = object()  # the property is absent from the profile


def profile_with(prop: str, value: Any) -> Profile:
    p = Profile(id="P1", account_id="A1", created="2026-01-01T00:00:00+00:00",
                updated="2026-06-01T00:00:00+00:00")  # fmt: skip
    if value is UNSET:
        return p
    if prop.startswith("properties['"):
        p.properties[prop[len("properties['") : -2]] = value
    elif prop.startswith("location['"):
        p.location[prop[len("location['") : -2]] = value
    elif prop in ("email", "phone_number", "external_id"):
        p.identifiers[prop] = value
    else:
        p.attributes[prop] = value
    return p


def one_condition(prop: str, filter_: dict[str, Any]) -> dict[str, Any]:
    condition = {"type": "profile-property", "property": prop, "filter": filter_}
    return {"condition_groups": [{"conditions": [condition]}]}


def check(prop: str, filter_: dict[str, Any], value: Any, expected: bool) -> None:
    definition = parse_definition(one_condition(prop, filter_))
    got = matches(definition, profile_with(prop, value), NOW)
    assert got is expected, (prop, filter_, value)


P = "properties['x']"
S = "string"
STRING_CASES = [
    # operator, filter value, profile value, expected
    ("equals", "Blue", "blue", True),  # text ignores case
    ("equals", "Blue", "Green", False),
    ("equals", "Blue", UNSET, False),
    ("equals", "1", 1, False),  # a number is not a string
    ("not-equals", "Blue", "Green", True),
    ("not-equals", "Blue", "BLUE", False),
    ("not-equals", "Blue", UNSET, False),  # negations do not match unset properties
    ("not-equals", "Blue", 7, False),  # nor values of another type
    ("contains", "oo", "Book", True),
    ("contains", "oo", "Bike", False),
    ("contains", "oo", UNSET, False),
    ("not-contains", "oo", "Bike", True),
    ("not-contains", "oo", "Book", False),
    ("not-contains", "oo", UNSET, False),
    ("starts-with", "Wi", "winnie", True),
    ("starts-with", "Wi", "pooh", False),
    ("not-starts-with", "Wi", "pooh", True),
    ("not-starts-with", "Wi", "Winnie", False),
    ("not-starts-with", "Wi", UNSET, False),
    ("ends-with", ".com", "a@b.COM", True),
    ("ends-with", ".com", "a@b.org", False),
    ("not-ends-with", ".com", "a@b.org", True),
    ("not-ends-with", ".com", "a@b.com", False),
    ("not-ends-with", ".com", UNSET, False),
    ("regex", "^A[0-9]+$", "A123", True),
    ("regex", "^A[0-9]+$", "a123", False),  # patterns keep their case
    ("regex", "^A[0-9]+$", UNSET, False),
    ("nregex", "^A[0-9]+$", "B1", True),
    ("nregex", "^A[0-9]+$", "A1", False),
    ("nregex", "^A[0-9]+$", UNSET, False),
    ("equals", None, "x", False),
    ("not-equals", None, "x", True),
    ("equals", None, UNSET, False),
]


@pytest.mark.parametrize(("operator", "needle", "value", "expected"), STRING_CASES)
def test_string_filters(operator: str, needle: Any, value: Any, expected: bool) -> None:
    check(P, {"type": S, "operator": operator, "value": needle}, value, expected)


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [("in", "Red", True), ("in", "Teal", False), ("in", UNSET, False), ("in", ["Red"], False),
     ("not-in", "Teal", True), ("not-in", "red", False), ("not-in", UNSET, False),
     ("not-in", 3, False)],
)  # fmt: skip
def test_string_array_filters(operator: str, value: Any, expected: bool) -> None:
    check(P, {"type": S, "operator": operator, "value": ["red", "Blue"]}, value, expected)


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [("equals", 10, True), ("equals", 10.0, True), ("equals", 11, False),
     ("equals", "10", False), ("equals", True, False), ("equals", UNSET, False),
     ("not-equals", 11, True), ("not-equals", 10, False), ("not-equals", UNSET, False),
     ("not-equals", "x", False),
     ("greater-than", 10.5, True), ("greater-than", 10, False), ("greater-than", UNSET, False),
     ("greater-than-or-equal", 10, True), ("greater-than-or-equal", 9.99, False),
     ("less-than", -3, True), ("less-than", 10, False), ("less-than", UNSET, False),
     ("less-than-or-equal", 10, True), ("less-than-or-equal", 10.01, False)],
)  # fmt: skip
def test_numeric_filters(operator: str, value: Any, expected: bool) -> None:
    check(P, {"type": "numeric", "operator": operator, "value": 10}, value, expected)


@pytest.mark.parametrize(
    ("wanted", "value", "expected"),
    [(True, True, True), (True, False, False), (False, False, True), (False, UNSET, False),
     (True, 1, False), (True, "true", False)],
)  # fmt: skip
def test_boolean_filter(wanted: bool, value: Any, expected: bool) -> None:
    check(P, {"type": "boolean", "operator": "equals", "value": wanted}, value, expected)


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [("is-set", "x", True), ("is-set", "", True), ("is-set", 0, True), ("is-set", False, True),
     ("is-set", {"nested": 1}, True), ("is-set", UNSET, False), ("is-set", None, False),
     ("not-set", UNSET, True), ("not-set", None, True), ("not-set", "x", False),
     ("not-set", {"nested": 1}, False)],
)  # fmt: skip
def test_existence_filters(operator: str, value: Any, expected: bool) -> None:
    check(P, {"type": "existence", "operator": operator}, value, expected)


@pytest.mark.parametrize(
    ("operator", "needle", "value", "expected"),
    [("contains", "a", ["a", "b"], True), ("contains", "c", ["a", "b"], False),
     ("contains", 2, [1, 2], True), ("contains", "2", [1, 2], False),
     ("contains", "a", UNSET, False), ("contains", "a", "a", False),
     ("not-contains", "c", ["a"], True), ("not-contains", "a", ["a"], False),
     ("not-contains", "a", UNSET, False), ("not-contains", "a", "abc", False),
     ("length-equals", 2, ["a", "b"], True), ("length-equals", 2, [], False),
     ("length-greater-than", 1, ["a", "b"], True), ("length-greater-than", 2, ["a", "b"], False),
     ("length-greater-than-or-equal", 2, ["a", "b"], True),
     ("length-less-than", 1, [], True), ("length-less-than", 1, ["a"], False),
     ("length-less-than-or-equal", 0, [], True), ("length-less-than", 5, UNSET, False),
     ("length-equals", 3, "abc", False),
     ("contains", "A", ["a", "b"], True),  # text ignores case, in lists too
     ("not-contains", "A", ["a"], False),
     ("contains", 1, [True], False), ("contains", 1, [1.0], True)],  # a boolean is no number
)  # fmt: skip
def test_list_filters(operator: str, needle: Any, value: Any, expected: bool) -> None:
    check(P, {"type": "list", "operator": operator, "value": needle}, value, expected)


D = "date"
DATE_CASES = [
    # filter (without type), profile value, expected; NOW is 2026-06-15T12:00Z
    ({"operator": "before", "date": "2026-01-01T00:00:00Z"}, "2025-12-31T23:59:59Z", True),
    ({"operator": "before", "date": "2026-01-01T00:00:00Z"}, "2026-01-01T00:00:00Z", False),
    ({"operator": "before", "date": "2026-01-01T00:00:00+00:00"}, "2026-01-01", False),
    ({"operator": "after", "date": "2026-01-01T00:00:00Z"}, "2026-01-01T01:00:00+01:00", False),
    ({"operator": "after", "date": "2026-01-01T00:00:00Z"}, "2026-01-02", True),
    ({"operator": "after", "date": "2026-01-01T00:00:00Z"}, UNSET, False),
    ({"operator": "after", "date": "2026-01-01T00:00:00Z"}, "not a date", False),
    ({"operator": "after", "date": "2026-01-01T00:00:00Z"}, 1767225600, False),
    ({"operator": "before", "date": "2026-01-01T00:00:00Z"}, "0001-01-01T00:00:00+01:00",
     False),  # before year 1 in UTC: not a date
    ({"operator": "after", "date": "2026-01-01T00:00:00Z"}, "9999-12-31T23:00:00-05:00", False),
    ({"operator": "between-static", "start": "2026-01-01T00:00:00Z",
      "end": "2026-02-01T00:00:00Z"}, "2026-02-01T00:00:00Z", True),  # both ends included
    ({"operator": "between-static", "start": "2026-01-01T00:00:00Z",
      "end": "2026-02-01T00:00:00Z"}, "2026-02-01T00:00:01Z", False),
    ({"operator": "in-the-last", "unit": "day", "quantity": 30}, "2026-05-20T00:00:00Z", True),
    ({"operator": "in-the-last", "unit": "day", "quantity": 30}, "2026-05-01T00:00:00Z", False),
    ({"operator": "in-the-last", "unit": "hour", "quantity": 2}, "2026-06-15T10:30:00Z", True),
    ({"operator": "in-the-last", "unit": "week", "quantity": 1}, "2026-06-16T00:00:00Z", False),
    ({"operator": "in-the-last", "unit": "day", "quantity": 30}, UNSET, False),
    ({"operator": "at-least", "unit": "day", "quantity": 30}, "2026-05-01T00:00:00Z", True),
    ({"operator": "at-least", "unit": "day", "quantity": 30}, "2026-06-01T00:00:00Z", False),
    ({"operator": "at-least", "unit": "day", "quantity": 30}, UNSET, False),
    ({"operator": "in-the-next", "unit": "day", "quantity": 3}, "2026-06-17T00:00:00Z", True),
    ({"operator": "in-the-next", "unit": "day", "quantity": 3}, "2026-06-14T00:00:00Z", False),
    ({"operator": "between", "start": 10, "end": 20, "unit": "day"}, "2026-05-31T00:00:00Z",
     True),  # 15.5 days ago
    ({"operator": "between", "start": 10, "end": 20, "unit": "day"}, "2026-06-10T00:00:00Z",
     False),
    ({"operator": "anniversary"}, "1990-06-15T08:00:00Z", True),
    ({"operator": "anniversary"}, "1990-06-16T08:00:00Z", False),
    ({"operator": "anniversary-month"}, "1990-06-01", True),
    ({"operator": "anniversary-month"}, "1990-07-01", False),
    ({"operator": "anniversary-last", "unit": "day", "quantity": 7}, "1990-06-10T12:00:00Z",
     True),
    ({"operator": "anniversary-last", "unit": "day", "quantity": 7}, "1990-06-20T12:00:00Z",
     False),
    ({"operator": "anniversary-next", "unit": "day", "quantity": 7}, "1990-06-20T12:00:00Z",
     True),
    ({"operator": "anniversary-next", "unit": "week", "quantity": 1}, "1990-06-30", False),
    ({"operator": "calendar-month", "value": 2}, "2024-02-29T00:00:00Z", True),
    ({"operator": "calendar-month", "value": 3}, "2024-02-29T00:00:00Z", False),
    ({"operator": "calendar-month", "value": 2}, UNSET, False),
]  # fmt: skip


@pytest.mark.parametrize(("filter_", "value", "expected"), DATE_CASES)
def test_date_filters(filter_: dict[str, Any], value: Any, expected: bool) -> None:
    check(P, {"type": D, **filter_}, value, expected)


def test_anniversary_of_29_february_is_28_february_in_other_years() -> None:
    definition = parse_definition(one_condition(P, {"type": D, "operator": "anniversary"}))
    leapling = profile_with(P, "2000-02-29")
    assert matches(definition, leapling, datetime(2027, 2, 28, 9, tzinfo=UTC))
    assert not matches(definition, leapling, datetime(2027, 3, 1, 9, tzinfo=UTC))
    assert matches(definition, leapling, datetime(2028, 2, 29, 9, tzinfo=UTC))


def test_well_known_properties_and_profile_dates() -> None:
    p = Profile(id="P1", account_id="A1", identifiers={"email": "Sarah@Example.com"},
                attributes={"first_name": "Sarah"}, location={"city": "Boston"},
                created="2026-06-01T00:00:00+00:00", updated="2026-06-10T00:00:00+00:00",
                last_event_time=int(datetime(2026, 6, 14, tzinfo=UTC).timestamp()))  # fmt: skip
    cases = [
        ("email", {"type": S, "operator": "ends-with", "value": "@example.com"}, True),
        ("first_name", {"type": S, "operator": "equals", "value": "sarah"}, True),
        ("last_name", {"type": "existence", "operator": "not-set"}, True),
        ("location['city']", {"type": S, "operator": "equals", "value": "Boston"}, True),
        ("location['zip']", {"type": S, "operator": "not-equals", "value": "02110"}, False),
        ("created", {"type": D, "operator": "in-the-last", "unit": "day", "quantity": 30}, True),
        ("updated", {"type": D, "operator": "before", "date": "2026-06-05T00:00:00Z"}, False),
        ("last_event_date", {"type": D, "operator": "in-the-last", "unit": "day", "quantity": 2},
         True),
    ]  # fmt: skip
    for prop, filter_, expected in cases:
        assert matches(parse_definition(one_condition(prop, filter_)), p, NOW) is expected, prop


@pytest.mark.parametrize(
    ("country", "region", "in_region", "expected"),
    [("FR", "european_union", True, True), ("France", "european_union", True, True),
     ("GB", "european_union", True, False), ("United Kingdom", "european_union", False, True),
     ("US", "united_states", True, True), ("United States", "united_states", False, False),
     ("Canada", "united_states", False, True), (UNSET, "united_states", True, False),
     (UNSET, "united_states", False, False)],
)  # fmt: skip
def test_region(country: Any, region: str, in_region: bool, expected: bool) -> None:
    condition = {"type": "profile-region", "in_region": in_region, "region": region}
    definition = parse_definition({"condition_groups": [{"conditions": [condition]}]})
    assert matches(definition, profile_with("location['country']", country), NOW) is expected


def test_groups_and_conditions_or() -> None:
    def cond(key: str, value: str) -> dict[str, Any]:
        return {"type": "profile-property", "property": f"properties['{key}']",
                "filter": {"type": S, "operator": "equals", "value": value}}  # fmt: skip

    # (a = 1 OR b = 1) AND (c = 1)
    definition = parse_definition({"condition_groups": [
        {"conditions": [cond("a", "1"), cond("b", "1")]}, {"conditions": [cond("c", "1")]},
    ]})  # fmt: skip

    def profile(**props: str) -> Profile:
        return Profile(id="P", account_id="A", properties=props, created="", updated="")

    assert matches(definition, profile(a="1", c="1"), NOW)
    assert matches(definition, profile(b="1", c="1"), NOW)
    assert not matches(definition, profile(a="1", b="1"), NOW)  # the second group fails
    assert not matches(definition, profile(c="1"), NOW)  # no condition of the first group
    assert not matches(definition, profile(), NOW)


BAD = [
    # definition, pointer (under /data/attributes/definition), words in the detail
    ({}, "/condition_groups", "required"),
    ({"condition_groups": [], "x": 1}, "/x", "unknown key"),
    ({"condition_groups": []}, "/condition_groups", "non-empty"),
    ({"condition_groups": [{"conditions": [], "logic": "or"}]}, "/condition_groups/0/logic",
     "unknown key"),
    ({"condition_groups": [{"conditions": [{"type": "profile-property", "property": "email",
      "filter": {"type": S, "operator": "equals", "value": "x"}, "negate": True}]}]},
     "/condition_groups/0/conditions/0/negate", "unknown key"),
    ({"condition_groups": [{"conditions": [{"type": "profile-postal-code-distance"}]}]},
     "/condition_groups/0/conditions/0/type", "not supported by this server"),
    ({"condition_groups": [{"conditions": [{"type": "profile-predictive-analytics-date"}]}]},
     "/condition_groups/0/conditions/0/type", "not supported by this server"),
    ({"condition_groups": [{"conditions": [{"type": "profile-marketing-consent"}]}]},
     "/condition_groups/0/conditions/0/type", "not supported by this server"),
    ({"condition_groups": [{"conditions": [{"type": "something-else"}]}]},
     "/condition_groups/0/conditions/0/type", "unknown condition type"),
]  # fmt: skip
FILTER_BAD = [
    # property, filter, pointer under the condition, words in the detail
    ("phone_number", {"type": S, "operator": "phone-country-code-in", "value": ["US"]},
     "/filter/operator", "not supported by this server"),
    ("properties['$extra']", {"type": "existence", "operator": "is-set"}, "/property",
     "not segmentable"),
    ("favorite_color", {"type": "existence", "operator": "is-set"}, "/property",
     "unknown profile property"),
    ("location['planet']", {"type": "existence", "operator": "is-set"}, "/property",
     "unknown location field"),
    (P, {"type": S, "operator": "equals"}, "/filter/value", "required"),
    (P, {"type": S, "operator": "equals", "value": 3}, "/filter/value", "must be a string"),
    (P, {"type": S, "operator": "equals", "value": "x" * 1001}, "/filter/value", "at most"),
    (P, {"type": S, "operator": "equalz", "value": "x"}, "/filter/operator", "must be one of"),
    (P, {"type": S, "operator": "regex", "value": "(unclosed"}, "/filter/value", "not a valid"),
    (P, {"type": S, "operator": "equals", "value": "x", "unit": "day"}, "/filter/unit",
     "unknown key"),
    (P, {"type": "numeric", "operator": "equals", "value": True}, "/filter/value",
     "must be a number"),
    (P, {"type": "numeric", "operator": "equals", "value": "1"}, "/filter/value",
     "must be a number"),
    (P, {"type": "boolean", "operator": "equals", "value": 1}, "/filter/value", "true or false"),
    (P, {"type": "list", "operator": "length-equals", "value": -1}, "/filter/value", "between"),
    (P, {"type": "list", "operator": "contains", "value": 1.5}, "/filter/value", "integer"),
    (P, {"type": D, "operator": "before", "date": "yesterday"}, "/filter/date", "ISO 8601"),
    (P, {"type": D, "operator": "before", "date": "0001-01-01T00:00:00+01:00"}, "/filter/date",
     "years 1 to 9999"),
    (P, {"type": D, "operator": "in-the-last", "unit": "month", "quantity": 1}, "/filter/unit",
     "must be one of"),
    (P, {"type": D, "operator": "in-the-last", "unit": "day", "quantity": 10**12},
     "/filter/quantity", "between"),
    (P, {"type": D, "operator": "between", "start": 20, "end": 10, "unit": "day"}, "/filter/end",
     "less than start"),
    (P, {"type": D, "operator": "between-static", "start": "2026-02-01T00:00:00Z",
         "end": "2026-01-01T00:00:00Z"}, "/filter/end", "before start"),
    (P, {"type": D, "operator": "calendar-month", "value": 13}, "/filter/value", "between"),
    (P, {"type": D, "operator": "anniversary-next", "unit": "week", "quantity": 60},
     "/filter/quantity", "within a year"),
    (P, {"type": "date-ish", "operator": "before"}, "/filter/type", "must be one of"),
]  # fmt: skip


@pytest.mark.parametrize(("definition", "pointer", "words"), BAD)
def test_bad_definitions_are_refused_with_a_pointer(
    definition: Any, pointer: str, words: str
) -> None:
    with pytest.raises(DefinitionError) as refused:
        parse_definition(definition)
    assert refused.value.pointer == "/data/attributes/definition" + pointer
    assert words in refused.value.detail


@pytest.mark.parametrize(("prop", "filter_", "pointer", "words"), FILTER_BAD)
def test_bad_conditions_are_refused_with_a_pointer(
    prop: str, filter_: dict[str, Any], pointer: str, words: str
) -> None:
    with pytest.raises(DefinitionError) as refused:
        parse_definition(one_condition(prop, filter_))
    at = "/data/attributes/definition/condition_groups/0/conditions/0"
    assert refused.value.pointer == at + pointer
    assert words in refused.value.detail


def test_at_most_100_conditions() -> None:
    condition = {"type": "profile-property", "property": P,
                 "filter": {"type": "existence", "operator": "is-set"}}  # fmt: skip
    parse_definition({"condition_groups": [{"conditions": [condition] * 100}]})
    with pytest.raises(DefinitionError, match="at most 100 conditions"):
        parse_definition({"condition_groups": [{"conditions": [condition] * 50}] * 3})


def test_a_pathological_pattern_is_evaluated_in_linear_time() -> None:
    """RE2, not backtracking: (a+)+$ against 50,000 a's and a b answers at once."""
    definition = parse_definition(one_condition(P, {"type": S, "operator": "regex",
                                                    "value": "(a+)+$"}))  # fmt: skip
    assert not matches(definition, profile_with(P, "a" * 50_000 + "b!"), NOW)


# -- profile-metric and profile-group-membership ---------------------------------------------


class Event:
    def __init__(self, when: str, value: float | None = None, **properties: Any) -> None:
        self.time = int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp())
        self.value = value
        self.properties = properties


class Facts:
    def __init__(self, events: dict[str, list[Event]] | None = None,
                 joined: dict[str, datetime] | None = None) -> None:  # fmt: skip
        self._events, self._joined = events or {}, joined or {}

    def events(self, metric_id: str) -> list[Event]:
        return self._events.get(metric_id, [])

    def measure(self, condition: MetricCondition, now: datetime) -> Measure:
        return measure_events(condition, self.events(condition.metric_id), now)

    def joined(self, group_id: str) -> datetime | None:
        return self._joined.get(group_id)


def metric_condition(
    measurement: str,
    operator: str,
    value: float,
    timeframe: dict[str, Any] | None = None,
    metric_filters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    condition: dict[str, Any] = {
        "type": "profile-metric", "metric_id": "M1", "measurement": measurement,
        "measurement_filter": {"type": "numeric", "operator": operator, "value": value},
        "timeframe_filter": timeframe or {"type": "date", "operator": "alltime"},
    }  # fmt: skip
    if metric_filters is not None:
        condition["metric_filters"] = metric_filters
    return {"condition_groups": [{"conditions": [condition]}]}


ORDERS = {
    "M1": [
        Event("2026-06-14T10:00:00", 20.0, Brand="Kids Book", Items=["a", "b"], Nested={"x": 1}),
        Event("2026-06-01T10:00:00", 5.0, Brand="Adult Book", Items=["c"]),
        Event("2025-01-01T10:00:00", None, Brand="Kids Book"),
    ],
    "M2": [Event("2026-06-15T11:00:00", 100.0)],
}
LAST_7_DAYS = {"type": "date", "operator": "in-the-last", "unit": "day", "quantity": 7}
METRIC_CASES = [
    # measurement, operator, value, timeframe, metric filters, expected
    ("count", "equals", 3, None, None, True),
    ("count", "greater-than", 3, None, None, False),
    ("sum", "equals", 25.0, None, None, True),  # an event without a value adds 0
    ("count", "equals", 1, LAST_7_DAYS, None, True),
    ("sum", "greater-than-or-equal", 20, LAST_7_DAYS, None, True),
    ("count", "equals", 2, {"type": "date", "operator": "at-least", "unit": "day", "quantity": 7},
     None, True),
    ("count", "equals", 1, {"type": "date", "operator": "before", "date": "2026-01-01T00:00:00Z"},
     None, True),
    ("count", "equals", 2, {"type": "date", "operator": "between-static",
                            "start": "2026-01-01T00:00:00Z", "end": "2026-12-31T00:00:00Z"},
     None, True),
    ("count", "equals", 2, None,
     [{"property": "Brand", "filter": {"type": "string", "operator": "equals",
                                        "value": "kids book"}}], True),
    ("count", "equals", 1, None,
     [{"property": "Items", "filter": {"type": "list", "operator": "contains-any",
                                        "value": ["b", "z"]}}], True),
    ("count", "equals", 0, None,
     [{"property": "Items", "filter": {"type": "list", "operator": "contains-all",
                                        "value": ["a", "z"]}}], True),
    ("count", "equals", 1, None,
     [{"property": "Items", "filter": {"type": "list", "operator": "not-contains-any",
                                        "value": ["a"]}}], True),  # unset Items: no match
    ("count", "equals", 1, None,
     [{"property": "Items", "filter": {"type": "list", "operator": "contains-substring",
                                        "value": "B"}}], True),
    ("count", "equals", 1, None, [{"property": "Nested", "filter": None}], True),  # is set
    ("count", "equals", 0, None,
     [{"property": "Nested", "filter": {"type": "string", "operator": "not-equals",
                                         "value": "x"}}], True),  # an object is not compared
    ("count", "equals", 1, None,
     [{"property": "Nested", "filter": {"type": "existence", "operator": "is-set"}}], True),
    ("count", "equals", 1, LAST_7_DAYS,
     [{"property": "Brand", "filter": {"type": "string", "operator": "contains", "value": "kid"}},
      {"property": "Items", "filter": {"type": "list", "operator": "length-equals", "value": 2}}],
     True),  # every metric filter must pass
]  # fmt: skip


@pytest.mark.parametrize(
    ("measurement", "operator", "value", "timeframe", "metric_filters", "expected"), METRIC_CASES
)
def test_metric_conditions(
    measurement: str, operator: str, value: float, timeframe: Any, metric_filters: Any,
    expected: bool,
) -> None:  # fmt: skip
    definition = parse_definition(
        metric_condition(measurement, operator, value, timeframe, metric_filters)
    )
    assert matches(definition, profile_with(P, UNSET), NOW, Facts(ORDERS)) is expected


def test_done_zero_times_matches_a_profile_without_events() -> None:
    zero = parse_definition(metric_condition("count", "equals", 0))
    assert matches(zero, profile_with(P, UNSET), NOW, Facts())
    assert not matches(zero, profile_with(P, UNSET), NOW, Facts(ORDERS))
    assert matches(parse_definition(metric_condition("sum", "less-than", 1)),
                   profile_with(P, UNSET), NOW)  # fmt: skip


def test_group_membership() -> None:
    facts = Facts(
        joined={"L1": datetime(2026, 6, 10, tzinfo=UTC), "S9": datetime(2025, 1, 1, tzinfo=UTC)}
    )

    def member(is_member: bool, ids: list[str], timeframe: Any = None) -> bool:
        condition: dict[str, Any] = {"type": "profile-group-membership", "is_member": is_member,
                                     "group_ids": ids}  # fmt: skip
        if timeframe is not None:
            condition["timeframe_filter"] = timeframe
        definition = parse_definition({"condition_groups": [{"conditions": [condition]}]})
        return matches(definition, profile_with(P, UNSET), NOW, facts)

    assert member(True, ["L1"]) and member(True, ["L2", "S9"]) and not member(True, ["L2"])
    assert member(False, ["L2"]) and not member(False, ["L2", "L1"])
    assert member(True, ["L1", "S9"], LAST_7_DAYS)  # L1 was joined 5 days ago
    assert not member(True, ["S9"], LAST_7_DAYS)


METRIC_BAD = [
    ({"measurement": "average"}, "/measurement", "must be one of"),
    ({"measurement_filter": {"type": "string", "operator": "equals", "value": "1"}},
     "/measurement_filter/type", "must be 'numeric'"),
    ({"timeframe_filter": {"type": "date", "operator": "anniversary"}},
     "/timeframe_filter/operator", "must be one of"),
    ({"metric_filters": [{"property": "$extra", "filter": None}]},
     "/metric_filters/0/property", "not segmentable"),
    ({"metric_filters": [{"property": "x", "filter": {"type": "date", "operator": "alltime"}}]},
     "/metric_filters/0/filter/type", "not an event property filter"),
    ({"metric_filters": [{"property": "x", "filter": None, "negate": True}]},
     "/metric_filters/0/negate", "unknown key"),
    ({"metric_filters": [{"property": "", "filter": None}]}, "/metric_filters/0/property",
     "must name"),
    ({"metric_id": 7}, "/metric_id", "must be a string"),
    ({"metric_filters": {}}, "/metric_filters", "must be a list"),
    ({"metric_filters": False}, "/metric_filters", "must be a list"),
    ({"extra": 1}, "/extra", "unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "pointer", "words"), METRIC_BAD)
def test_bad_metric_conditions(change: dict[str, Any], pointer: str, words: str) -> None:
    definition = metric_condition("count", "equals", 1)
    definition["condition_groups"][0]["conditions"][0].update(change)
    with pytest.raises(DefinitionError) as refused:
        parse_definition(definition)
    at = "/data/attributes/definition/condition_groups/0/conditions/0"
    assert (refused.value.pointer, words in refused.value.detail) == (at + pointer, True)


@pytest.mark.parametrize(
    ("condition", "pointer", "words"),
    [({"is_member": "yes", "group_ids": ["L1"]}, "/is_member", "true or false"),
     ({"is_member": True, "group_ids": []}, "/group_ids", "1 to 100"),
     ({"is_member": True, "group_ids": [3]}, "/group_ids/0", "must be a string"),
     ({"is_member": False, "group_ids": ["L1"], "timeframe_filter": LAST_7_DAYS},
      "/timeframe_filter", "unknown key"),
     ({"is_member": True, "group_ids": ["L1"],
       "timeframe_filter": {"type": "date", "operator": "alltime"}},
      "/timeframe_filter/operator", "must be one of")],
)  # fmt: skip
def test_bad_membership_conditions(condition: dict[str, Any], pointer: str, words: str) -> None:
    condition = {"type": "profile-group-membership", **condition}
    with pytest.raises(DefinitionError) as refused:
        parse_definition({"condition_groups": [{"conditions": [condition]}]})
    at = "/data/attributes/definition/condition_groups/0/conditions/0"
    assert refused.value.pointer == at + pointer
    assert words in refused.value.detail


def test_relative_dates_at_the_ends_of_time_do_not_overflow() -> None:
    far = {"type": D, "operator": "in-the-next", "unit": "week", "quantity": 100_000}
    definition = parse_definition(one_condition(P, far))
    late = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    assert matches(definition, profile_with(P, "9999-12-31T23:30:00Z"), late)
    early = {"type": D, "operator": "at-least", "unit": "week", "quantity": 100_000}
    assert not matches(parse_definition(one_condition(P, early)),
                       profile_with(P, "0001-01-02"), datetime(1, 1, 3, tzinfo=UTC))  # fmt: skip
