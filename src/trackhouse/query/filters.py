"""Klaviyo's `filter` query parameter, parsed into a flat list of ANDed conditions.

Grammar (whitespace may surround any token; the text is already URL-decoded)::

    filter     := expression ("," expression)*          top-level commas are an implicit AND
    expression := "and" "(" expression ("," expression)* ")" | condition
    condition  := "has" "(" FIELD ")" | OPERATOR "(" FIELD "," value ")"
    OPERATOR   := equals | less-than | less-or-equal | greater-than | greater-or-equal
                | contains | contains-any | contains-all | ends-with | starts-with | any
    FIELD      := [A-Za-z0-9_.$-]+                      e.g. metric_id, integration.name, _kx
    value      := literal | "[" (literal ("," literal)*)? "]"
    literal    := 'single' or "double" quoted string    \\ escapes only a quote or a backslash
                | true | false | null
                | number                                 int or float: -1, 2.5, 1e3
                | unquoted RFC 3339 datetime             2023-02-07T11:30:00-04:00, ...Z,
                                                         or a bare date 2023-02-07

`and(...)` nests at most 16 deep and is flattened away. Datetimes come back timezone-aware; one
without an offset (including a bare date, meaning midnight) is UTC. `instant()` reads a value as
a point in time the same way whether the datetime was quoted or not. `any`, `contains-any` and
`contains-all` take an array (returned as a tuple); every other operator a single literal.

Whether a field supports an operator depends on the endpoint, so that check is left to the caller.
Every malformed input raises `FilterError` whose message names what was expected and the
0-based character offset where it went wrong (the convention of Python's `json` errors).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

MAX_LENGTH = 4000
MAX_DEPTH = 16
MAX_ARRAY = 1000
MAX_CONDITIONS = 100

BINARY_OPERATORS = frozenset(
    {
        "equals",
        "less-than",
        "less-or-equal",
        "greater-than",
        "greater-or-equal",
        "contains",
        "contains-any",
        "contains-all",
        "ends-with",
        "starts-with",
        "any",
    }
)
ARRAY_OPERATORS = frozenset({"any", "contains-any", "contains-all"})

Scalar = str | int | float | bool | datetime | None
Value = Scalar | tuple[Scalar, ...]

# re.ASCII throughout: without it \d would accept e.g. Arabic-Indic digits, which int() takes.
_SPACE = re.compile(r"\s*", re.ASCII)
_NAME = re.compile(r"[A-Za-z][A-Za-z-]*", re.ASCII)
_FIELD = re.compile(r"[A-Za-z0-9_.$\-]+", re.ASCII)
_BARE = re.compile(r"[^\s,()\[\]'\"]+", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_DATETIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)"
    r"(?:[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):(\d\d))?)?",
    re.ASCII,
)
_KEYWORDS: dict[str, Scalar] = {"true": True, "false": False, "null": None}
_ESCAPABLE = frozenset("\"'\\")


class FilterError(ValueError):
    """A `filter` that is not valid syntax; `position` is the 0-based offset it concerns."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


@dataclass(frozen=True, slots=True)
class Condition:
    op: str  # "equals", "greater-than", ..., "has"
    field: str
    value: Value  # None for has; a tuple for any / contains-any / contains-all


# The instants a filter may name as a number of seconds: datetime's own range (years 1 to 9999,
# UTC). A datetime with an offset may fall up to a day outside it, which is still exact.
MIN_SECONDS = -62135596800  # 0001-01-01T00:00:00Z
MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z


def as_datetime(value: Value) -> datetime:
    """A datetime, or a quoted one read as the unquoted form is (no offset: UTC)."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and (match := _DATETIME.fullmatch(value.strip())):
        return _datetime(match, 0)
    raise FilterError(f"{_snippet(str(value))} is not an RFC 3339 datetime")


def instant(value: Value) -> float:
    """A condition's value as seconds since the epoch: a datetime (unquoted, or quoted RFC 3339;
    without an offset it is UTC, never the server's local time) or a number of seconds within
    years 1 to 9999. Anything else raises FilterError."""
    if isinstance(value, str):
        value = as_datetime(value)
    if isinstance(value, datetime):
        return value.timestamp()  # exact even at years 1 and 9999 with an offset
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not MIN_SECONDS <= value <= MAX_SECONDS:
            raise FilterError(
                f"{value!r} seconds is out of range ({MIN_SECONDS} to {MAX_SECONDS}, "
                "years 1 to 9999)"
            )
        return float(value)
    raise FilterError(f"{_snippet(str(value))} is neither a datetime nor a number of seconds")


def parse_filter(text: str) -> list[Condition]:
    """Parse a `filter` value into the conditions that must all hold."""
    if not isinstance(text, str):
        raise FilterError("filter must be a string")
    if len(text) > MAX_LENGTH:
        raise FilterError(f"filter is longer than {MAX_LENGTH} characters")
    if not text.strip():
        raise FilterError("filter is empty")
    return _Parser(text).parse()


class _Parser:
    """Recursive descent over `text`; only and(...) recurses, so depth is bounded by MAX_DEPTH."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.conditions: list[Condition] = []

    def parse(self) -> list[Condition]:
        self._expressions(depth=0)
        if self.pos < len(self.text):
            raise self._expected("',' or end of input")
        return self.conditions

    # -- structure ---------------------------------------------------------------------------

    def _expressions(self, depth: int) -> None:
        self._expression(depth)
        while self._accept(","):
            self._expression(depth)

    def _expression(self, depth: int) -> None:
        self._skip_space()
        start = self.pos
        match = _NAME.match(self.text, start)
        if match is None:
            raise self._expected("an operator such as equals(...) or and(...)")
        op = match.group()
        if op != "and" and op != "has" and op not in BINARY_OPERATORS:
            known = ", ".join(sorted(BINARY_OPERATORS | {"and", "has"}))
            raise FilterError(
                f"unknown operator {op!r} at character {start}; expected one of {known}", start
            )
        self.pos = match.end()
        self._expect("(")
        if op == "and":
            if depth >= MAX_DEPTH:
                raise FilterError(
                    f"and(...) nested deeper than {MAX_DEPTH} at character {start}", start
                )
            self._expressions(depth + 1)
            self._expect(")", "',' or ')'")
            return
        field = self._field()
        if op == "has":
            self._expect(")", "')' (has takes only a field)")
            self._add(Condition(op, field, None))
            return
        self._expect(",")
        self._skip_space()
        value_start = self.pos
        value = self._value()
        if op in ARRAY_OPERATORS and not isinstance(value, tuple):
            raise FilterError(f"{op} expects an array at character {value_start}", value_start)
        if op not in ARRAY_OPERATORS and isinstance(value, tuple):
            raise FilterError(
                f"{op} expects a single value, not an array, at character {value_start}",
                value_start,
            )
        self._expect(")")
        self._add(Condition(op, field, value))

    def _add(self, condition: Condition) -> None:
        if len(self.conditions) == MAX_CONDITIONS:
            raise FilterError(f"filter has more than {MAX_CONDITIONS} conditions")
        self.conditions.append(condition)

    def _field(self) -> str:
        self._skip_space()
        match = _FIELD.match(self.text, self.pos)
        if match is None:
            raise self._expected("a field name")
        self.pos = match.end()
        return match.group()

    # -- values ------------------------------------------------------------------------------

    def _value(self) -> Value:
        if not self._accept("["):
            return self._literal()
        items: list[Scalar] = []
        if self._accept("]"):
            return ()
        while True:
            self._skip_space()
            if self._peek() == "[":
                raise FilterError(
                    f"nested arrays are not allowed at character {self.pos}", self.pos
                )
            items.append(self._literal())
            if len(items) > MAX_ARRAY:
                raise FilterError(f"array has more than {MAX_ARRAY} items", self.pos)
            if self._accept("]"):
                return tuple(items)
            self._expect(",", "',' or ']'")

    def _literal(self) -> Scalar:
        self._skip_space()
        start = self.pos
        if self._peek() in ("'", '"'):
            return self._string()
        match = _BARE.match(self.text, start)
        if match is None:
            raise self._expected("a value (quoted string, number, true, false, null, datetime)")
        word = match.group()
        self.pos = match.end()
        if word in _KEYWORDS:
            return _KEYWORDS[word]
        if moment := _DATETIME.fullmatch(word):
            return _datetime(moment, start)
        if _NUMBER.fullmatch(word):
            return _number(word, start)
        if _DATETIME.match(word):
            raise FilterError(
                f"invalid datetime at character {start}, found {_snippet(word)}; "
                "expected RFC 3339 such as 2023-02-07T11:30:00-04:00 or 2023-02-07",
                start,
            )
        raise FilterError(
            f"expected a value at character {start}, found {_snippet(word)}; "
            "strings must be quoted",
            start,
        )

    def _string(self) -> str:
        quote = self.text[self.pos]
        start = self.pos
        self.pos += 1
        chars: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == quote:
                self.pos += 1
                return "".join(chars)
            if char == "\\":
                escaped = self.text[self.pos + 1 : self.pos + 2]
                if escaped not in _ESCAPABLE:
                    raise FilterError(
                        f"invalid escape at character {self.pos}: a backslash may only "
                        "precede a quote or another backslash",
                        self.pos,
                    )
                chars.append(escaped)
                self.pos += 2
                continue
            chars.append(char)
            self.pos += 1
        raise FilterError(f"unterminated string starting at character {start}", start)

    # -- tokens ------------------------------------------------------------------------------

    def _skip_space(self) -> None:
        self.pos = _SPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]

    def _peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def _accept(self, token: str) -> bool:
        self._skip_space()
        if self._peek() == token:
            self.pos += 1
            return True
        return False

    def _expect(self, token: str, expected: str | None = None) -> None:
        if not self._accept(token):
            raise self._expected(expected or repr(token))

    def _expected(self, what: str) -> FilterError:
        self._skip_space()
        found = "end of input" if self.pos >= len(self.text) else _snippet(self.text[self.pos :])
        return FilterError(f"expected {what} at character {self.pos}, found {found}", self.pos)


def _snippet(text: str) -> str:
    return repr(text[:20] + "…" if len(text) > 20 else text)


def _number(word: str, position: int) -> int | float:
    if not any(c in word for c in ".eE"):
        return int(word)
    number = float(word)
    if not math.isfinite(number):
        raise FilterError(f"number out of range at character {position}", position)
    return number


def _datetime(match: re.Match[str], position: int) -> datetime:
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    tz: timezone = UTC
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            raise FilterError(f"invalid UTC offset in datetime at character {position}", position)
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-offset if sign == "-" else offset)
    # RFC 3339 allows any number of fraction digits; datetime keeps microseconds.
    micro = int((fraction or "").ljust(6, "0")[:6])
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            micro,
            tzinfo=tz,
        )
    except ValueError as exc:
        raise FilterError(f"invalid datetime at character {position}: {exc}", position) from None
