"""Klaviyo's documented data limits (reference § 2.11), each failing with a pointed 400.

Every revision: strings ≤ 100 KB, arrays ≤ 4,000 items, ≤ 10 nested object levels, integers
64-bit, metric names < 128 characters, `unique_id` 1–255 characters, valid emails (< 100
characters) and E.164 phone numbers. Every other string that is stored has a bound too: a
metric's `service` like its name, and whole profiles (95 KB as sent). The property-count and
time-window limits depend on the revision and arrive as arguments.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from trackhouse.api.errors import APIError, invalid, pointer
from trackhouse.identifiers import phone_e164, validate_email

MAX_STRING_BYTES = 100 * 1024
MAX_ARRAY_ITEMS = 4000
MAX_OBJECT_LEVELS = 10
# Arrays do not count as levels for Klaviyo; this bounds arrays-of-arrays so that walking a
# payload can never run out of stack.
MAX_ANY_NESTING = 32
MAX_METRIC_NAME = 127
MAX_UNIQUE_ID = 255
MAX_EMAIL = 99
MAX_PROFILE_BYTES = 95 * 1024
INT64 = (-(2**63), 2**63 - 1)


# len(str) is a lower bound of its UTF-8 size and 4 * len an upper bound: shorter strings
# cannot pass the limit, and only longer ones are encoded to find out.
_BIG_STRING = MAX_STRING_BYTES // 4
STRING_TOO_LARGE = "A single string cannot be larger than 100 KB."


def _too_large(value: str) -> bool:
    return len(value) > _BIG_STRING and len(value.encode()) > MAX_STRING_BYTES


def check_string(value: str, where: str) -> None:
    if _too_large(value):
        raise invalid(STRING_TOO_LARGE, where)


def check_json(value: Any, where: str) -> None:
    """Strings, arrays, integers and nesting of a free-form JSON object (properties).

    "No more than 10 nested levels" counts the objects inside `properties`, not `properties`
    itself (the reading that refuses less when the seeds' wording is ambiguous)."""
    try:
        _walk(value, -1, 0)
    except _Refused as refused:
        # The path was collected innermost first while unwinding; only now is it a pointer.
        raise invalid(refused.detail, where + pointer(*reversed(refused.path))) from None


class _Refused(Exception):
    """A limit broken somewhere inside; `path` grows as the walk unwinds."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        self.path: list[str | int] = []


def _walk(value: Any, object_levels: int, nesting: int) -> None:
    kind = type(value)
    if kind is dict:
        object_levels += 1
        if object_levels > MAX_OBJECT_LEVELS:
            raise _Refused("Properties cannot contain more than 10 nested levels.")
        items: Any = value.items()
    elif kind is list:
        if len(value) > MAX_ARRAY_ITEMS:
            raise _Refused("An array cannot have more than 4000 elements.")
        items = enumerate(value)
    else:
        _check_scalar(value)
        return
    if nesting >= MAX_ANY_NESTING:
        raise _Refused("Properties are nested too deeply.")
    # Scalars are checked inline: a call per scalar would cost more than the checks (this runs
    # on every property of every event).
    for key, item in items:
        if type(key) is str and len(key) > _BIG_STRING:
            _check_scalar(key)  # points at the object holding it: the key is not echoed
        try:
            kind = type(item)
            if kind is str:
                if len(item) > _BIG_STRING:
                    _check_scalar(item)
            elif kind is dict or kind is list:
                _walk(item, object_levels, nesting + 1)
            elif kind is int:
                _check_scalar(item)
        except _Refused as refused:
            refused.path.append(key)
            raise


def _check_scalar(value: Any) -> None:
    kind = type(value)
    if kind is str and _too_large(value):
        raise _Refused(STRING_TOO_LARGE)
    if kind is int and not INT64[0] <= value <= INT64[1]:
        raise _Refused("Integers must fit in 64 bits (signed).")


def check_event_properties(properties: dict[str, Any], where: str, max_count: int) -> None:
    if len(properties) > max_count:
        raise invalid(f"An event cannot have more than {max_count} properties.", where)
    check_json(properties, where)


def check_metric_name(name: str, where: str) -> str:
    if not name.strip():
        raise invalid("The metric name cannot be blank.", where)
    if len(name) > MAX_METRIC_NAME:
        raise invalid("The metric name must be less than 128 characters.", where)
    return name


def check_metric_service(service: str | None, where: str) -> str:
    """A metric's `service` is stored with it and shown on every metric read: bounded like the
    name (Klaviyo documents no limit of its own)."""
    if not service:
        return "api"
    if len(service) > MAX_METRIC_NAME:
        raise invalid("The metric service must be less than 128 characters.", where)
    return service


def check_unique_id(unique_id: str | None, where: str) -> str | None:
    if unique_id is None:
        return None
    if not 1 <= len(unique_id) <= MAX_UNIQUE_ID:
        raise invalid("unique_id must be 1 to 255 characters long.", where)
    return unique_id


def check_currency(code: str | None, where: str) -> str | None:
    if code is None:
        return None
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        raise invalid("value_currency must be an ISO 4217 currency code such as USD.", where)
    return code.upper()


def parse_event_time(value: str | None, now: int, min_year: int, where: str) -> int:
    """Unix seconds (truncated) of an ISO 8601 time; after `min_year`, at most a year ahead
    of `now` (the account's clock), which is also the time when none is given."""
    if value is None:
        return now
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(f"'{value[:64]}' is not a valid ISO 8601 date-time.", where) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return check_event_time(moment, min_year, where, now)


def check_event_time(moment: datetime, min_year: int, where: str, now: float) -> int:
    if moment < datetime(min_year, 1, 1, tzinfo=UTC):
        raise invalid(f"The event time must be after the year {min_year}.", where)
    if moment > datetime.fromtimestamp(now, UTC) + timedelta(days=365):
        raise invalid("The event time can only be up to 1 year in the future.", where)
    return int(moment.timestamp())


def check_email(email: str, where: str) -> str:
    email = email.strip()
    if len(email) > MAX_EMAIL:
        raise invalid("Invalid email address (it must be less than 100 characters).", where)
    _, problem = validate_email(email)
    if problem:
        raise invalid(f"Invalid email address: {problem}", where)
    return email


def check_phone(phone: str, where: str) -> str:
    e164 = phone_e164(phone)
    if e164 is None:
        raise invalid(
            "Invalid phone number format (Example of a valid format: +12345678901)", where
        )
    return e164


def too_many_events(count: int, where: str) -> APIError:
    return invalid(f"A bulk request can create at most 1000 events; it had {count}.", where)
