"""The `filter` query-parameter parser (Klaviyo's filtering syntax), in-process."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from trackhouse.query.filters import (
    ARRAY_OPERATORS,
    BINARY_OPERATORS,
    MAX_ARRAY,
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_LENGTH,
    Condition,
    FilterError,
    parse_filter,
)


def tz(hours: int, minutes: int = 0) -> timezone:
    return timezone(timedelta(hours=hours, minutes=minutes))


def exact(value: object) -> object:
    """`value` with its type (True == 1) and, for datetimes, its UTC offset (equal instants)."""
    if isinstance(value, tuple):
        return tuple(exact(item) for item in value)
    if isinstance(value, datetime):
        return (datetime, value, value.utcoffset())
    return (type(value), value)


def only_value(text: str) -> object:
    [condition] = parse_filter(text)
    return condition.value


# -- what parses -------------------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(BINARY_OPERATORS - ARRAY_OPERATORS))
def test_each_scalar_operator_parses_field_and_value(op: str) -> None:
    assert parse_filter(f'{op}(name,"x")') == [Condition(op, "name", "x")]


@pytest.mark.parametrize("op", sorted(ARRAY_OPERATORS))
def test_each_array_operator_parses_an_array_as_a_tuple(op: str) -> None:
    assert parse_filter(f'{op}(tags,["x", 2, true])') == [Condition(op, "tags", ("x", 2, True))]


def test_has_takes_only_a_field() -> None:
    assert parse_filter("has(profile)") == [Condition("has", "profile", None)]


def test_documented_event_example_is_an_implicit_and_with_bare_dates_at_utc_midnight() -> None:
    text = (
        'equals(metric_id,"UxxK4u"),greater-or-equal(datetime,2023-02-07),'
        "less-than(datetime,2023-02-15)"
    )
    assert parse_filter(text) == [
        Condition("equals", "metric_id", "UxxK4u"),
        Condition("greater-or-equal", "datetime", datetime(2023, 2, 7, tzinfo=UTC)),
        Condition("less-than", "datetime", datetime(2023, 2, 15, tzinfo=UTC)),
    ]
    assert all(c.value.utcoffset() == timedelta(0) for c in parse_filter(text)[1:])


def test_documented_and_example_flattens() -> None:
    text = 'and(equals(profile_id,"PROFILE_ID"),equals(metric_id,"METRIC_ID"))'
    assert parse_filter(text) == [
        Condition("equals", "profile_id", "PROFILE_ID"),
        Condition("equals", "metric_id", "METRIC_ID"),
    ]


def test_documented_single_quoted_string_and_dotted_field() -> None:
    assert parse_filter("equals(integration.name,'Shopify')") == [
        Condition("equals", "integration.name", "Shopify")
    ]


def test_documented_any_example() -> None:
    assert parse_filter('any(email,["a@b.com","c@d.com"])') == [
        Condition("any", "email", ("a@b.com", "c@d.com"))
    ]


def test_nested_and_flattens_in_order_alongside_top_level_conditions() -> None:
    text = "has(a),and(equals(b,1),and(equals(c,2),and(has(d))),equals(e,3)),has(f)"
    assert [(c.op, c.field) for c in parse_filter(text)] == [
        ("has", "a"),
        ("equals", "b"),
        ("equals", "c"),
        ("has", "d"),
        ("equals", "e"),
        ("has", "f"),
    ]


def test_whitespace_around_every_token_is_ignored() -> None:
    text = ' \t and ( equals ( a , "x y" ) ,\n any ( b , [ 1 , 2 ] ) , has ( c ) ) , has(d)\n'
    assert parse_filter(text) == [
        Condition("equals", "a", "x y"),
        Condition("any", "b", (1, 2)),
        Condition("has", "c", None),
        Condition("has", "d", None),
    ]


@pytest.mark.parametrize("field", ["_kx", "$value", "location.zip", "a-b", "42", "$extra.x_y"])
def test_field_names_allow_identifier_characters(field: str) -> None:
    assert parse_filter(f"has({field})") == [Condition("has", field, None)]


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        (r'"say \"hi\""', 'say "hi"'),
        (r"'it\'s'", "it's"),
        ('"it\'s"', "it's"),
        ("'say \"hi\"'", 'say "hi"'),
        (r'"back\\slash"', "back\\slash"),
        (r'"\\"', "\\"),
        (r'"\'"', "'"),
        ('""', ""),
        ('"a,b)(c]["', "a,b)(c]["),
        ('"ünï ☃ 日本"', "ünï ☃ 日本"),
    ],
)
def test_quoted_strings_unescape_quotes_and_backslashes(literal: str, expected: str) -> None:
    assert exact(only_value(f"equals(a,{literal})")) == exact(expected)


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("0", 0),
        ("42", 42),
        ("-12", -12),
        ("+7", 7),
        ("2.5", 2.5),
        ("-0.25", -0.25),
        (".5", 0.5),
        ("5.", 5.0),
        ("1e3", 1000.0),
        ("6.02E-23", 6.02e-23),
        ("-1.5e+2", -150.0),
        ("123456789012345678901234567890", 123456789012345678901234567890),
    ],
)
def test_numbers_are_int_without_point_or_exponent_else_float(
    literal: str, expected: float
) -> None:
    assert exact(only_value(f"equals(a,{literal})")) == exact(expected)


@pytest.mark.parametrize(
    ("literal", "expected"), [("true", True), ("false", False), ("null", None)]
)
def test_booleans_and_null(literal: str, expected: object) -> None:
    assert exact(only_value(f"equals(a,{literal})")) == exact(expected)


def test_quoted_keywords_and_numbers_stay_strings() -> None:
    assert parse_filter('equals(a,"true"),equals(b,"1"),equals(c,"2023-02-07")') == [
        Condition("equals", "a", "true"),
        Condition("equals", "b", "1"),
        Condition("equals", "c", "2023-02-07"),
    ]


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("2023-02-07T11:30:00-04:00", datetime(2023, 2, 7, 11, 30, tzinfo=tz(-4))),
        ("2012-04-21T11:30:00+05:30", datetime(2012, 4, 21, 11, 30, tzinfo=tz(5, 30))),
        ("2023-01-16T23:20:50.52Z", datetime(2023, 1, 16, 23, 20, 50, 520000, tzinfo=UTC)),
        ("2023-01-16t23:20:50z", datetime(2023, 1, 16, 23, 20, 50, tzinfo=UTC)),
        ("2023-01-16T23:20:50.123456789+00:00", datetime(2023, 1, 16, 23, 20, 50, 123456, UTC)),
        ("2023-01-16T23:20:50-00:00", datetime(2023, 1, 16, 23, 20, 50, tzinfo=UTC)),
        ("2023-01-16T23:20:50", datetime(2023, 1, 16, 23, 20, 50, tzinfo=UTC)),
        ("2023-02-07", datetime(2023, 2, 7, tzinfo=UTC)),
        ("2024-02-29", datetime(2024, 2, 29, tzinfo=UTC)),
    ],
)
def test_unquoted_datetimes_are_timezone_aware(literal: str, expected: datetime) -> None:
    assert exact(only_value(f"greater-or-equal(datetime,{literal})")) == exact(expected)


def test_arrays_may_be_empty_and_mix_literal_types() -> None:
    assert parse_filter("any(a,[])") == [Condition("any", "a", ())]
    value = only_value("contains-any(a,['x', -1, 2.5, false, null, 2023-02-07])")
    assert exact(value) == exact(("x", -1, 2.5, False, None, datetime(2023, 2, 7, tzinfo=UTC)))


def test_limits_are_inclusive() -> None:
    deepest = "and(" * MAX_DEPTH + "has(a)" + ")" * MAX_DEPTH
    assert parse_filter(deepest) == [Condition("has", "a", None)]
    assert len(parse_filter(",".join(["has(a)"] * MAX_CONDITIONS))) == MAX_CONDITIONS
    widest = "any(a,[" + ",".join(["1"] * MAX_ARRAY) + "])"
    assert only_value(widest) == (1,) * MAX_ARRAY
    longest = 'equals(a,"' + "x" * (MAX_LENGTH - 12) + '")'
    assert len(longest) == MAX_LENGTH
    assert len(only_value(longest)) == MAX_LENGTH - 12


# -- what does not -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "filter is empty"),
        ("  \n\t", "filter is empty"),
        ("and(has(a)", "expected ',' or ')' at character 10, found end of input"),
        ("equals(a,1", "expected ')' at character 10, found end of input"),
        ("has(a))", "expected ',' or end of input at character 6, found ')'"),
        ("equals(a 1)", "expected ',' at character 9, found '1)'"),
        ('equals(a,"x")equals(b,"y")', "expected ',' or end of input at character 13"),
        ("and(has(a) has(b))", "expected ',' or ')' at character 11, found 'has(b))'"),
        ("foo(a,1)", "unknown operator 'foo' at character 0; expected one of and, any,"),
        ("has(a),Equals(b,1)", "unknown operator 'Equals' at character 7"),
        ("or(has(a),has(b))", "unknown operator 'or' at character 0"),
        ("equals(a,b c)", "expected a value at character 9, found 'b'; strings must be quoted"),
        ("equals(a,Shopify)", "found 'Shopify'; strings must be quoted"),
        ("equals(a,True)", "found 'True'; strings must be quoted"),
        ('equals(a,"x" "y")', "expected ')' at character 13, found '\"y\")'"),
        ("has(a),", "expected an operator such as equals(...) or and(...) at character 7"),
        (",has(a)", "expected an operator such as equals(...) or and(...) at character 0"),
        ("and()", "expected an operator such as equals(...) or and(...) at character 4"),
        ("has", "expected '(' at character 3, found end of input"),
        ("has()", "expected a field name at character 4, found ')'"),
        ("has(a,b)", "expected ')' (has takes only a field) at character 5"),
        ("equals(a b,1)", "expected ',' at character 9, found 'b,1)'"),
        ("equals(a,)", "expected a value (quoted string, number, true, false, null, datetime)"),
        ('equals(a,"abc)', "unterminated string starting at character 9"),
        (r'equals(a,"x\n")', "invalid escape at character 11"),
        ('equals(a,"x\\', "invalid escape at character 11"),
        ("equals(a,[1])", "equals expects a single value, not an array, at character 9"),
        ('any(a,"x")', "any expects an array at character 6"),
        ("any(a,[1,2)", "expected ',' or ']' at character 10, found ')'"),
        ("any(a,[1,])", "expected a value (quoted string, number, true, false, null, datetime)"),
        ("any(a,[1,[2]])", "nested arrays are not allowed at character 9"),
        ("equals(a,1.2.3)", "found '1.2.3'; strings must be quoted"),
        ("equals(a,1e999)", "number out of range at character 9"),
        ("equals(a,\u0663)", "strings must be quoted"),  # Arabic-Indic digit three
        ("equals(d,2023-02-30)", "invalid datetime at character 9: day is out of range"),
        ("equals(d,2023-13-01)", "invalid datetime at character 9: month must be in 1..12"),
        ("equals(d,2023-02-07T24:00:00Z)", "invalid datetime at character 9: hour must be"),
        ("equals(d,2016-12-31T23:59:60Z)", "invalid datetime at character 9: second must be"),
        ("equals(d,2023-02-07T11:30:00+24:00)", "invalid UTC offset in datetime at character 9"),
        (
            "equals(d,2023-02-07T11:30-04:00)",
            "invalid datetime at character 9, found '2023-02-07T11:30-04",
        ),
        # A '+' in an offset sent without URL-encoding arrives as a space.
        ("equals(d,2023-02-07T11:30:00 04:00)", "expected ')' at character 29, found '04:00)'"),
        ("x" * (MAX_LENGTH + 1), f"filter is longer than {MAX_LENGTH} characters"),
        (
            "and(" * (MAX_DEPTH + 1) + "has(a)" + ")" * (MAX_DEPTH + 1),
            f"and(...) nested deeper than {MAX_DEPTH} at character {4 * MAX_DEPTH}",
        ),
        ("and(" * 900, f"and(...) nested deeper than {MAX_DEPTH}"),
        (",".join(["has(a)"] * (MAX_CONDITIONS + 1)), f"more than {MAX_CONDITIONS} conditions"),
        ("any(a,[" + ",".join(["1"] * (MAX_ARRAY + 1)) + "])", f"more than {MAX_ARRAY} items"),
    ],
)
def test_malformed_filter_names_what_was_expected_and_where(text: str, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text)
    assert message in str(caught.value)


def test_error_position_points_at_the_offending_character() -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter('equals(a,"x"),has(b c)')
    assert caught.value.position == 20
    assert 'equals(a,"x"),has(b c)'[caught.value.position] == "c"


def test_filter_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="filter is empty"):
        parse_filter("")


def test_non_string_input_is_a_filter_error() -> None:
    with pytest.raises(FilterError, match="must be a string"):
        parse_filter(b"has(a)")  # type: ignore[arg-type]


# -- properties --------------------------------------------------------------------------------


@dataclass(frozen=True)
class And:
    parts: tuple[object, ...]


def flatten(expression: object) -> list[Condition]:
    if isinstance(expression, And):
        return [c for part in expression.parts for c in flatten(part)]
    assert isinstance(expression, Condition)
    return [expression]


def render_value(value: object, quote: str) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(render_value(item, quote) for item in value) + "]"
    if isinstance(value, str):
        return quote + value.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)  # int, float


def render(expression: object, space: str = "", quote: str = '"') -> str:
    """The filter text for an expression: a Condition, an And, or a list (implicit AND)."""
    if isinstance(expression, list):
        return f"{space},{space}".join(render(part, space, quote) for part in expression)
    if isinstance(expression, And):
        return f"and({space}{render(list(expression.parts), space, quote)}{space})"
    assert isinstance(expression, Condition)
    if expression.op == "has":
        return f"has({space}{expression.field}{space})"
    value = render_value(expression.value, quote)
    return f"{expression.op}({space}{expression.field}{space},{space}{value}{space})"


offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
scalars = st.one_of(
    st.text(max_size=12),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.datetimes(timezones=offsets),
)
fields = st.from_regex(r"[A-Za-z0-9_.$\-]{1,12}", fullmatch=True)
conditions = st.one_of(
    st.builds(Condition, st.just("has"), fields, st.none()),
    st.builds(
        Condition, st.sampled_from(sorted(BINARY_OPERATORS - ARRAY_OPERATORS)), fields, scalars
    ),
    st.builds(
        Condition,
        st.sampled_from(sorted(ARRAY_OPERATORS)),
        fields,
        st.lists(scalars, max_size=4).map(tuple),
    ),
)


def expressions(depth: int) -> st.SearchStrategy[object]:
    if depth == 0:
        return conditions
    nested = st.lists(expressions(depth - 1), min_size=1, max_size=3).map(tuple).map(And)
    return st.one_of(conditions, nested)


filters = st.lists(expressions(2), min_size=1, max_size=3)
spaces = st.sampled_from(["", " ", " \t\n "])
quotes = st.sampled_from(['"', "'"])


@settings(max_examples=120, deadline=None)
@given(filters, spaces, quotes)
def test_rendered_conditions_parse_back_to_the_same_conditions(
    expression: list[object], space: str, quote: str
) -> None:
    text = render(expression, space, quote)
    assume(len(text) <= MAX_LENGTH)
    expected = [c for part in expression for c in flatten(part)]
    parsed = parse_filter(text)
    assert [(c.op, c.field, exact(c.value)) for c in parsed] == [
        (c.op, c.field, exact(c.value)) for c in expected
    ]


def parses_or_raises_filter_error(text: str) -> None:
    try:
        result = parse_filter(text)
    except FilterError as error:
        assert str(error)
        return
    assert 1 <= len(result) <= MAX_CONDITIONS
    assert all(isinstance(c, Condition) for c in result)


SOUP = list("()[],\"'\\ \t.-+:$_0123456789eETZ") + ["and(", "has(", "equals(", "any(", "true"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_filter_error(text: str) -> None:
    parses_or_raises_filter_error(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SOUP), max_size=80).map("".join))
def test_bracket_soup_parses_or_raises_filter_error(text: str) -> None:
    parses_or_raises_filter_error(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(filters, st.data())
def test_mutated_valid_filters_parse_or_raise_filter_error(
    expression: list[object], data: st.DataObject
) -> None:
    text = render(expression)
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 5)))
    insert = data.draw(st.text(alphabet=SOUP[:14] + ["\u0663", "\x00", "é"], max_size=3))
    parses_or_raises_filter_error(text[:start] + insert + text[end:])
