"""The bodies our tests send are Klaviyo's wire format: each is valid by Klaviyo's own OpenAPI
document of the revision it is sent with, and trackhouse accepts it (202) and logs exactly what
it says. A body Klaviyo's spec rejects, trackhouse rejects too, pointing at the same field.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
from conftest import PRIVATE_KEY, PUBLIC_KEY, Server, bulk_body, bulk_event, event_body
from openapi import (
    SPEC_DIRS,
    Operation,
    ValidationError,
    error_pointer,
    operation,
    spec_errors,
    validate_request,
)

from trackhouse.model import Event, ProfileChange, Submission

CLIENT_OPERATIONS = ("create_client_event", "bulk_create_client_events")
RECEIVED = -1  # an expected event time meaning "the second the request was received"


def unique_email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@klaviyo-demo.com"


def unix(iso: str) -> int:
    """Unix seconds of an ISO 8601 time, truncated to the second as Klaviyo stores it."""
    return int(datetime.fromisoformat(iso).timestamp())


def send(server: Server, op: Operation, body: Any, revision: str | None = None) -> httpx.Response:
    """POST `body` where the spec puts the operation, with its media type and credentials."""
    headers = {"revision": revision or op.spec_dir, "Content-Type": op.content_type}
    params = {}
    if op.operation_id in CLIENT_OPERATIONS:
        params["company_id"] = PUBLIC_KEY
    else:
        headers["Authorization"] = f"Klaviyo-API-Key {PRIVATE_KEY}"
    with server.client() as client:
        return client.request(
            op.method, op.path, content=json.dumps(body), headers=headers, params=params
        )


def logged(
    server: Server, op: Operation, response: httpx.Response, marker: str
) -> list[Submission]:
    """The submissions a 202 wrote, in request order."""
    if "Trackhouse-Receipt" in response.headers:
        return [server.receipt(response.headers["Trackhouse-Receipt"])]
    if op.operation_id == "bulk_create_events":
        job_id = response.json()["data"]["id"]
        return [s for s in server.log_entries() if s.job_id == job_id]
    return about(server, marker)


def about(server: Server, identifier: str) -> list[Submission]:
    return [s for s in server.log_entries() if identifier in s.profile.identifiers().values()]


# -- bodies that Klaviyo's specs accept --------------------------------------------------------


@dataclass
class Example:
    spec_dir: str
    operation_id: str
    body: dict[str, Any]
    # what the log must hold: one (profile, events) per submission, in request order
    expected: list[tuple[ProfileChange, list[Event]]]
    marker: str  # an identifier no other test uses


def flat_create_event_2023() -> Example:
    """Seed 003: flat `$`-field profile and flat metric."""
    email = unique_email("flat")
    body = {
        "data": {
            "type": "event",
            "attributes": {
                "profile": {
                    "$email": email,
                    "$first_name": "Matt",
                    "$city": "Boston",
                    "plan": "trial",
                },
                "metric": {"name": "Viewed Product"},
                "properties": {
                    "Brand": "Kids Book",
                    "ProductID": 1111,
                    "$extra": {"URL": "http://www.example.com/path/to/product"},
                },
                "time": "2022-11-08T00:00:00.750+00:00",
                "value": 9.99,
                "unique_id": "flat-1",
            },
        }
    }
    profile = ProfileChange(
        email=email,
        attributes={"first_name": "Matt"},
        location={"city": "Boston"},
        properties={"plan": "trial"},
    )
    event = Event(
        metric="Viewed Product",
        properties=body["data"]["attributes"]["properties"],
        time=unix("2022-11-08T00:00:00+00:00"),
        value=9.99,
        unique_id="flat-1",
    )
    return Example("2023-01-24", "create_event", body, [(profile, [event])], email)


def flat_client_event_2023() -> Example:
    phone = "+12125551234"
    external_id = f"ext-{uuid.uuid4().hex}"
    body = {
        "data": {
            "type": "event",
            "attributes": {
                "profile": {"$phone_number": phone, "$id": external_id},
                "metric": {"name": "Started Checkout", "service": "web"},
                "properties": {"Items": ["Winnie the Pooh"]},
                "time": "2022-12-01T08:30:15Z",
            },
        }
    }
    profile = ProfileChange(
        external_id=external_id, phone_number=phone, may_change_identifiers=False
    )
    event = Event(
        metric="Started Checkout",
        service="web",
        properties={"Items": ["Winnie the Pooh"]},
        time=unix("2022-12-01T08:30:15+00:00"),
    )
    return Example("2023-01-24", "create_client_event", body, [(profile, [event])], external_id)


def create_event_2024() -> Example:
    """Seed 000: JSON:API profile with location and `meta` inside its attributes."""
    email = unique_email("seed000")
    body = event_body(
        email,
        "Viewed Product",
        properties={"Brand": "Kids Book", "ProductName": "Winnie the Pooh"},
        time="2024-01-02T03:04:05.999+00:00",
        value=9.99,
        value_currency="USD",
        unique_id="seed000-1",
        profile_attributes={
            "email": email,
            "phone_number": "+15005550006",
            "first_name": "Sarah",
            "locale": "en-US",
            "location": {"city": "New York", "latitude": "40.7128", "longitude": 74.006},
            "properties": {"pseudonym": "Dr. Octopus"},
            "meta": {"patch_properties": {"append": {"skus": "92538"}, "unset": "old_sku"}},
        },
    )
    profile = ProfileChange(
        email=email,
        phone_number="+15005550006",
        attributes={"first_name": "Sarah", "locale": "en-US"},
        location={"city": "New York", "latitude": "40.7128", "longitude": 74.006},
        properties={"pseudonym": "Dr. Octopus"},
        append={"skus": "92538"},
        unset=["old_sku"],
    )
    event = Event(
        metric="Viewed Product",
        properties={"Brand": "Kids Book", "ProductName": "Winnie the Pooh"},
        time=unix("2024-01-02T03:04:05+00:00"),
        value=9.99,
        value_currency="USD",
        unique_id="seed000-1",
    )
    return Example("2024-02-15", "create_event", body, [(profile, [event])], email)


def create_event_2026_04() -> Example:
    """Seed 002's additions on create_event: `backfill` and `meta.patch_identifiers`."""
    email = unique_email("backfill")
    body = event_body(
        email,
        "Placed Order",
        properties={"OrderId": "1234"},
        time="2025-03-04T05:06:07+00:00",
        value=29.98,
        value_currency="EUR",
        backfill=True,
        profile_attributes={
            "email": email,
            "meta": {
                "patch_identifiers": {
                    "append": {"email": ["example@test.com", "another@example.com"]}
                }
            },
        },
    )
    profile = ProfileChange(email=email, add_emails=["example@test.com", "another@example.com"])
    event = Event(
        metric="Placed Order",
        properties={"OrderId": "1234"},
        time=unix("2025-03-04T05:06:07+00:00"),
        value=29.98,
        value_currency="EUR",
        backfill=True,
    )
    return Example("2026-04-15", "create_event", body, [(profile, [event])], email)


def explicit_nulls_2026_07() -> Example:
    """Every field the spec marks `nullable`, sent as null, means "not given"."""
    email = unique_email("nulls")
    body = event_body(
        email,
        "Viewed Product",
        properties={},
        time=None,
        value=None,
        value_currency=None,
        unique_id=None,
        backfill=None,
        profile_attributes={
            "email": email,
            "phone_number": None,
            "external_id": None,
            "_kx": None,
            "first_name": None,
            "properties": None,
        },
    )
    body["data"]["attributes"]["metric"]["data"]["attributes"]["service"] = None
    body["data"]["attributes"]["profile"]["data"]["id"] = None
    # time: null is the time the request was received, which `expected` cannot know
    return Example(
        "2026-07-15",
        "create_event",
        body,
        [(ProfileChange(email=email), [Event(metric="Viewed Product", time=RECEIVED)])],
        email,
    )


def bulk_2026_04() -> Example:
    """Seed 002: two profile groups; group `backfill`, the event's own `backfill` winning,
    `value_currency`, and profile `meta` (with `patch_identifiers`) beside `attributes`."""
    email = unique_email("bulk")
    external_id = f"ext-{uuid.uuid4().hex}"
    body = bulk_body(
        [
            (
                {"email": email, "first_name": "Sarah"},
                [
                    bulk_event(
                        "Ordered Product",
                        properties={"ProductID": 1111},
                        time="2025-06-01T10:00:00.5+00:00",
                        value=19.99,
                        value_currency="USD",
                        unique_id="order-1-line-1",
                    ),
                    bulk_event(
                        "Ordered Product",
                        properties={"ProductID": 2222},
                        time="2025-06-01T10:00:00+00:00",
                        value=9.99,
                        value_currency="USD",
                        unique_id="order-1-line-2",
                        backfill=False,
                    ),
                ],
            ),
            (
                {"phone_number": "+14155552671", "external_id": external_id},
                [bulk_event("Viewed Product", properties={}, time="2025-06-02T00:00:00Z")],
            ),
        ]
    )
    first_group = body["data"]["attributes"]["events-bulk-create"]["data"][0]
    first_group["attributes"]["backfill"] = True
    first_group["attributes"]["profile"]["data"]["meta"] = {
        "patch_properties": {"append": {"skus": "92538"}},
        "patch_identifiers": {"append": {"email": ["example@test.com"]}},
    }
    sarah = ProfileChange(
        email=email,
        attributes={"first_name": "Sarah"},
        append={"skus": "92538"},
        add_emails=["example@test.com"],
    )
    sarah_events = [
        Event(
            metric="Ordered Product",
            properties={"ProductID": 1111},
            time=unix("2025-06-01T10:00:00+00:00"),
            value=19.99,
            value_currency="USD",
            unique_id="order-1-line-1",
            backfill=True,  # from the group
        ),
        Event(
            metric="Ordered Product",
            properties={"ProductID": 2222},
            time=unix("2025-06-01T10:00:00+00:00"),
            value=9.99,
            value_currency="USD",
            unique_id="order-1-line-2",
            backfill=False,  # the event's own flag wins
        ),
    ]
    other = ProfileChange(external_id=external_id, phone_number="+14155552671")
    other_events = [
        Event(metric="Viewed Product", properties={}, time=unix("2025-06-02T00:00:00+00:00"))
    ]
    return Example(
        "2026-04-15",
        "bulk_create_events",
        body,
        [(sarah, sarah_events), (other, other_events)],
        email,
    )


def bulk_2026_07() -> Example:
    """2026-07-15 accepts event times after 1990 (after 2000 before)."""
    email = unique_email("y1995")
    body = bulk_body([({"email": email}, [bulk_event("Joined", time="1995-06-01T12:00:00+00:00")])])
    event = Event(metric="Joined", time=unix("1995-06-01T12:00:00+00:00"))
    return Example(
        "2026-07-15", "bulk_create_events", body, [(ProfileChange(email=email), [event])], email
    )


def client_event_2026_07() -> Example:
    email = unique_email("client")
    body = event_body(
        email,
        "Active on Site",
        properties={"page": "/products/1111"},
        time="2026-01-01T00:00:00+00:00",
        unique_id=str(uuid.UUID(int=7)),
        profile_attributes={"email": email, "anonymous_id": "anon-7", "_kx": "kx-7"},
    )
    profile = ProfileChange(
        email=email, anonymous_id="anon-7", kx="kx-7", may_change_identifiers=False
    )
    event = Event(
        metric="Active on Site",
        properties={"page": "/products/1111"},
        time=unix("2026-01-01T00:00:00+00:00"),
        unique_id=str(uuid.UUID(int=7)),
    )
    return Example("2026-07-15", "create_client_event", body, [(profile, [event])], email)


def client_bulk(spec_dir: str, *, backfill: bool | None) -> Example:
    email = unique_email("clientbulk")
    group: dict[str, Any] = {
        "type": "event-bulk-create",
        "attributes": {
            "profile": {
                "data": {
                    "type": "profile",
                    "attributes": {"email": email},
                    "meta": {"patch_properties": {"unappend": {"skus": "40571"}}},
                }
            },
            "events": {
                "data": [
                    {
                        "type": "event",
                        "attributes": {
                            "properties": {"Item": "Book"},
                            "metric": {"data": {"type": "metric", "attributes": {"name": name}}},
                            "time": time,
                            "value": 5,
                            "value_currency": "USD",
                        },
                    }
                    for name, time in (
                        ("Added to Cart", "2024-01-01T00:00:01Z"),
                        ("Started Checkout", "2024-01-01T00:00:02Z"),
                    )
                ]
            },
        },
    }
    if backfill is not None:
        group["attributes"]["backfill"] = backfill
    profile = ProfileChange(email=email, unappend={"skus": "40571"}, may_change_identifiers=False)
    events = [
        Event(
            metric=name,
            properties={"Item": "Book"},
            time=unix(time),
            value=5.0,
            value_currency="USD",
            backfill=bool(backfill),
        )
        for name, time in (
            ("Added to Cart", "2024-01-01T00:00:01+00:00"),
            ("Started Checkout", "2024-01-01T00:00:02+00:00"),
        )
    ]
    return Example(
        spec_dir, "bulk_create_client_events", {"data": group}, [(profile, events)], email
    )


EXAMPLES = {
    "create_event-2023-01-24-flat-profile": flat_create_event_2023,
    "create_client_event-2023-01-24-flat-profile": flat_client_event_2023,
    "create_event-2024-02-15-value_currency-meta": create_event_2024,
    "create_event-2026-04-15-backfill-patch_identifiers": create_event_2026_04,
    "create_event-2026-07-15-explicit-nulls": explicit_nulls_2026_07,
    "bulk_create_events-2026-04-15-seed002": bulk_2026_04,
    "bulk_create_events-2026-07-15-time-after-1990": bulk_2026_07,
    "create_client_event-2026-07-15": client_event_2026_07,
    "bulk_create_client_events-2024-02-15": lambda: client_bulk("2024-02-15", backfill=None),
    "bulk_create_client_events-2026-07-15-backfill": lambda: client_bulk(
        "2026-07-15", backfill=True
    ),
}


@pytest.mark.parametrize("build", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_spec_valid_body_is_accepted_and_logged_as_it_says(build, server):
    example: Example = build()
    validate_request(example.spec_dir, example.operation_id, example.body)
    op = operation(example.spec_dir, example.operation_id)

    response = send(server, op, example.body)

    assert response.status_code == 202, response.text
    submissions = logged(server, op, response, example.marker)
    for s, (_, events) in zip(submissions, example.expected, strict=False):
        for event in events:
            if event.time == RECEIVED:
                event.time = int(s.received_at)
    assert [(s.profile, s.events) for s in submissions] == example.expected
    client = example.operation_id in CLIENT_OPERATIONS
    for s in submissions:
        assert s.source == ("client" if client else "api")
        assert s.revision == example.spec_dir
        assert s.metric_cap == (200 if example.spec_dir < "2023-07-15" else None)


def test_conftest_helper_bodies_are_valid_in_every_revision_that_has_them():
    """`event_body`, `bulk_body` and `bulk_event` build what Klaviyo's specs describe, so the
    rest of the suite tests Klaviyo's wire format (2024-02-15 on: the JSON:API shape)."""
    single = event_body(time="2025-01-01T00:00:00+00:00", value=1.5, unique_id="u-1")
    bulk = bulk_body([({"email": "a@klaviyo-demo.com"}, [bulk_event(value=2)])])
    for spec_dir in ("2024-02-15", "2026-04-15", "2026-07-15"):
        validate_request(spec_dir, "create_event", single)
        validate_request(spec_dir, "create_client_event", single)
    for spec_dir in ("2026-04-15", "2026-07-15"):
        validate_request(spec_dir, "bulk_create_events", bulk)


# -- the oracle is not vacuous: what the spec rejects, trackhouse rejects ----------------------


def _without(body: dict[str, Any], *path: str | int) -> dict[str, Any]:
    parent: Any = body
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]
    return body


def _with(body: dict[str, Any], value: Any, *path: str | int) -> dict[str, Any]:
    parent: Any = body
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return body


BULK_EVENT_0 = (
    *("data", "attributes", "events-bulk-create", "data", 0),
    *("attributes", "events", "data", 0, "attributes"),
)
BULK_EVENT_0_AT = "/data/attributes/events-bulk-create/data/0/attributes/events/data/0/attributes"


@dataclass
class Rejected:
    spec_dir: str
    operation_id: str
    build: Callable[[str], dict[str, Any]]  # (a fresh email) -> body
    pointer: str  # where Klaviyo's schema and trackhouse both say the problem is


REJECTED = {
    "create_event-missing-metric": Rejected(
        "2026-07-15",
        "create_event",
        lambda email: _without(event_body(email), "data", "attributes", "metric"),
        "/data/attributes",
    ),
    "create_event-missing-metric-name": Rejected(
        "2026-04-15",
        "create_event",
        lambda email: _with(
            event_body(email), {}, "data", "attributes", "metric", "data", "attributes"
        ),
        "/data/attributes/metric/data/attributes",
    ),
    "create_event-wrong-resource-type": Rejected(
        "2024-02-15",
        "create_event",
        lambda email: _with(event_body(email), "events", "data", "type"),
        "/data/type",
    ),
    "create_event-time-not-a-date-time": Rejected(
        "2026-04-15",
        "create_event",
        lambda email: event_body(email, time="last tuesday"),
        "/data/attributes/time",
    ),
    "create_event-properties-not-an-object": Rejected(
        "2026-07-15",
        "create_event",
        lambda email: event_body(email, properties="Kids Book"),
        "/data/attributes/properties",
    ),
    "create_client_event-missing-profile-data": Rejected(
        "2026-07-15",
        "create_client_event",
        lambda email: _with(event_body(email), {}, "data", "attributes", "profile"),
        "/data/attributes/profile",
    ),
    "create_event-2023-01-24-missing-profile": Rejected(
        "2023-01-24",
        "create_event",
        lambda email: {
            "data": {
                "type": "event",
                "attributes": {"metric": {"name": "Viewed Product"}, "properties": {}},
            }
        },
        "/data/attributes",
    ),
    "bulk_create_events-event-missing-properties": Rejected(
        "2026-04-15",
        "bulk_create_events",
        lambda email: _without(
            bulk_body([({"email": email}, [bulk_event()])]), *BULK_EVENT_0, "properties"
        ),
        BULK_EVENT_0_AT,
    ),
    "bulk_create_events-value-is-a-string": Rejected(
        "2026-07-15",
        "bulk_create_events",
        lambda email: bulk_body([({"email": email}, [bulk_event(value="9.99")])]),
        BULK_EVENT_0_AT + "/value",
    ),
    "bulk_create_client_events-missing-events": Rejected(
        "2026-07-15",
        "bulk_create_client_events",
        lambda email: {
            "data": {
                "type": "event-bulk-create",
                "attributes": {
                    "profile": {"data": {"type": "profile", "attributes": {"email": email}}}
                },
            }
        },
        "/data/attributes",
    ),
}


@pytest.mark.parametrize("case", REJECTED.values(), ids=REJECTED.keys())
def test_spec_invalid_body_gets_400_pointing_where_the_spec_does(case, server):
    email = unique_email("rejected")
    body = case.build(email)
    errors = spec_errors(case.spec_dir, case.operation_id, body)
    assert errors, "Klaviyo's spec accepts this body; the case proves nothing"
    assert case.pointer in [error_pointer(e) for e in errors]
    with pytest.raises(ValidationError):
        validate_request(case.spec_dir, case.operation_id, body)

    response = send(server, operation(case.spec_dir, case.operation_id), body)

    assert response.status_code == 400, response.text
    (error,) = response.json()["errors"]
    assert error["status"] == 400
    assert error["code"] == "invalid"
    assert error["source"] == {"pointer": case.pointer}
    assert about(server, email) == []


def test_current_shape_is_invalid_by_the_2023_01_24_spec_and_refused_at_that_revision(server):
    """Before 2023-07-15 `metric` is flat (`{"name": ...}`): the JSON:API sub-document that
    later revisions require is wrong there, by Klaviyo's spec and by trackhouse."""
    email = unique_email("oldrev")
    body = event_body(email)
    errors = spec_errors("2023-01-24", "create_event", body)
    assert [error_pointer(e) for e in errors] == ["/data/attributes/metric"]
    validate_request("2024-02-15", "create_event", body)  # the same body is fine later

    response = send(server, operation("2023-01-24", "create_event"), body)

    assert response.status_code == 400, response.text
    (error,) = response.json()["errors"]
    assert error["source"]["pointer"].startswith("/data/attributes/metric")
    assert about(server, email) == []


# -- which revision has which operation ---------------------------------------------------------


PATHS = {
    "create_event": "/api/events",
    "bulk_create_events": "/api/event-bulk-create-jobs",
    "create_client_event": "/client/events",
    "bulk_create_client_events": "/client/event-bulk-create",
}


@pytest.mark.parametrize(
    ("spec_dir", "operation_ids", "path_suffix", "content_type"),
    [
        ("2023-01-24", ("create_event", "create_client_event"), "/", "application/json"),
        (
            "2024-02-15",
            ("create_event", "create_client_event", "bulk_create_client_events"),
            "/",
            "application/json",
        ),
        ("2026-04-15", tuple(PATHS), "", "application/vnd.api+json"),
        ("2026-07-15", tuple(PATHS), "", "application/vnd.api+json"),
    ],
)
def test_spec_lookup_finds_each_revisions_event_operations(
    spec_dir, operation_ids, path_suffix, content_type
):
    """Paths lose their trailing slash and the media type becomes JSON:API in 2024-10-15."""
    assert spec_dir in SPEC_DIRS
    for operation_id in operation_ids:
        op = operation(spec_dir, operation_id)
        assert (op.method, op.path) == ("POST", PATHS[operation_id] + path_suffix)
        assert op.content_type == content_type
        assert op.schema["$ref"].startswith("#/components/schemas/")


def test_bulk_create_jobs_are_absent_from_the_2024_02_15_spec_and_answer_404_there(server):
    with pytest.raises(LookupError):
        operation("2024-02-15", "bulk_create_events")
    email = unique_email("nobulk")
    body = bulk_body([({"email": email}, [bulk_event()])])
    validate_request("2026-04-15", "bulk_create_events", body)

    response = send(server, operation("2026-04-15", "bulk_create_events"), body, "2024-02-15")

    assert response.status_code == 404, response.text
    assert response.json()["errors"][0]["source"] == {"parameter": "revision"}
    assert about(server, email) == []
