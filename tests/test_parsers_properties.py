"""Property-based tests (hypothesis) of every parser and validator at the edge: whatever the
input, each either accepts it or refuses it with a 4xx APIError (or, for legacy Track, its
own refusal) — never another exception, which the server would turn into a 5xx.

Inputs are both free-form and valid documents with one part replaced by arbitrary JSON, so
that the search reaches deep into the validators, not only the first type check.
"""

from __future__ import annotations

import time
from datetime import date
from typing import Any

import msgspec
from conftest import bulk_body, bulk_event, event_body
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trackhouse.api import limits
from trackhouse.api.accept import Caller
from trackhouse.api.body import decode_json
from trackhouse.api.bulk import parse_groups
from trackhouse.api.errors import APIError
from trackhouse.api.events import parse_create_event
from trackhouse.api.legacy import Refused, decode_data, identify_submission, track_submission
from trackhouse.api.paging import decode_cursor
from trackhouse.api.revision import parse_revision
from trackhouse.api.wire import BulkJobCreate
from trackhouse.model import decode_submission, encode_submission
from trackhouse.query.filters import FilterError, parse_filter

REVISIONS = ["2023-01-24", "2023-07-15", "2024-02-15", "2025-01-15", "2025-04-15", "2026-10-15"]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["", "+12125550199", "a@b.co", "2025-06-02T00:00:00Z", "USD", "$email"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)


def caller(revision: str) -> Caller:
    day, rules = parse_revision(revision, today=date(2026, 11, 1))
    return Caller("TrkHs1", day, rules, {})


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON document."""
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += paths(value, (*prefix, i))
    return found


def replaced(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    doc = msgspec.json.decode(msgspec.json.encode(doc))  # a copy
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return doc


@st.composite
def mutated(draw: st.DrawFn, valid: Any) -> bytes:
    """A valid document with one value (anywhere in it) replaced by arbitrary JSON."""
    path = draw(st.sampled_from(paths(valid)))
    return msgspec.json.encode(replaced(valid, path, draw(json_values)))


def refused_as_4xx(error: APIError) -> None:
    assert 400 <= error.status < 500, error.to_json()
    body = error.to_json()["errors"][0]
    assert body["detail"] and (body["source"].get("pointer") or body["source"].get("parameter"))


def check_create(body: bytes, revision: str) -> None:
    try:
        submission = parse_create_event(body, caller(revision), time.time(), "api")
    except APIError as error:
        refused_as_4xx(error)
        return
    assert decode_submission(encode_submission(submission)) == submission  # loggable


FULL_EVENT = event_body(
    profile_attributes={
        "email": "sarah.mason@klaviyo-demo.com",
        "phone_number": "+12125550199",
        "first_name": "Sarah",
        "location": {"city": "Boston", "latitude": 42.36},
        "properties": {"plan": "trial"},
    },
    properties={"Brand": "Kids Book", "Items": [{"SKU": "W1", "Price": 9.99}]},
    time="2025-06-02T00:00:00Z",
    value=9.99,
    value_currency="USD",
    unique_id="u1",
)
FLAT_EVENT = {
    "data": {
        "type": "event",
        "attributes": {
            "profile": {"$email": "sarah.mason@klaviyo-demo.com", "$first_name": "Sarah"},
            "metric": {"name": "Viewed Product"},
            "properties": {"Brand": "Kids Book"},
            "time": "2025-06-02T00:00:00Z",
            "value": 9.99,
        },
    }
}
BULK = bulk_body(
    [
        ({"email": "a@klaviyo-demo.com"}, [bulk_event(unique_id="1", properties={"n": 1})]),
        ({"phone_number": "+12125550199"}, [bulk_event(time="2025-06-02T00:00:00Z")]),
    ]
)


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from(REVISIONS))
def test_create_event_bytes(body: bytes, revision: str) -> None:
    check_create(body, revision)


@SETTINGS
@given(json_values, st.sampled_from(REVISIONS))
def test_create_event_any_json(doc: Any, revision: str) -> None:
    check_create(msgspec.json.encode(doc), revision)


@SETTINGS
@given(mutated(FULL_EVENT), st.sampled_from(REVISIONS[1:]))
def test_create_event_with_one_part_replaced(body: bytes, revision: str) -> None:
    check_create(body, revision)


@SETTINGS
@given(mutated(FLAT_EVENT))
def test_flat_create_event_with_one_part_replaced(body: bytes) -> None:
    check_create(body, "2023-01-24")


@SETTINGS
@given(mutated(BULK), st.sampled_from(REVISIONS[3:]))
def test_bulk_job_with_one_part_replaced(body: bytes, revision: str) -> None:
    who = caller(revision)
    try:
        groups = decode_json(body, BulkJobCreate).data.attributes.events_bulk_create.data
        at = "/data/attributes/events-bulk-create/data"
        wheres = [f"{at}/{i}" for i in range(len(groups))]
        parse_groups(groups, wheres, at, who, int(time.time()), from_client=False)
    except APIError as error:
        refused_as_4xx(error)


@SETTINGS
@given(json_values)
def test_properties_limits(value: Any) -> None:
    try:
        limits.check_json(value, "/data/attributes/properties")
    except APIError as error:
        refused_as_4xx(error)
        assert error.pointer and error.pointer.startswith("/data/attributes/properties")


@SETTINGS
@given(st.text(max_size=120))
def test_email_and_phone_checks(text: str) -> None:
    for check in (limits.check_email, limits.check_phone):
        try:
            check(text, "/x")
        except APIError as error:
            refused_as_4xx(error)


@SETTINGS
@given(
    st.text(max_size=80)
    | st.builds(
        lambda d: base64_of(d),
        st.dictionaries(
            st.sampled_from(["token", "event", "customer_properties", "properties", "time"]),
            json_values,
        ),
    )
)
def test_legacy_track_and_identify(data: str) -> None:
    try:
        payload = decode_data(data)
    except Refused:
        return
    for build in (track_submission, identify_submission):
        try:
            build(payload, "TrkHs1", time.time())
        except (Refused, APIError) as error:
            if isinstance(error, APIError):
                refused_as_4xx(error)


def base64_of(doc: Any) -> str:
    import base64

    return base64.b64encode(msgspec.json.encode(doc)).decode()


@SETTINGS
@given(
    st.text(max_size=120)
    | st.builds(
        lambda op, field, value: f"{op}({field},{value})",
        st.sampled_from(["equals", "greater-than", "less-or-equal", "has", "any", "and"]),
        st.sampled_from(["metric_id", "profile_id", "datetime", "timestamp", "email", "x"]),
        st.text(max_size=30),
    )
)
def test_filter_parser(text: str) -> None:
    try:
        parse_filter(text)
    except FilterError as error:
        assert str(error)  # the API's 400 detail


@SETTINGS
@given(st.text(max_size=40), st.booleans())
def test_revision_header(text: str, opt_out: bool) -> None:
    try:
        parse_revision(text, opt_out)
    except APIError as error:
        assert error.status in (400, 404, 410)


@SETTINGS
@given(st.text(max_size=200))
def test_cursor(text: str) -> None:
    try:
        decode_cursor(text)
    except APIError as error:
        refused_as_4xx(error)
