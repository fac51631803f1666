"""The read APIs: GET /api/events (filter, sort, include, sparse fields, pages), the event's
own, related and relationship endpoints, GET /api/profiles, GET /api/metrics and POST
/api/metric-aggregates, as the official SDK and Klaviyo's OpenAPI documents see them.

One server for the module, so every count is known: 120 "Viewed Item" events an hour apart
(three viewers in turn), five "Placed Order" events with values in two currencies for the
aggregates, and two "Checkout Started" events of one profile that carries every identifier.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import (
    NEWEST,
    PRIVATE_KEY,
    Server,
    bulk_body,
    bulk_event,
    event_body,
    make_env,
    single_error,
)
from klaviyo_api import KlaviyoAPI
from openapi import validate_response
from openapi_client.exceptions import BadRequestException, NotFoundException
from openapi_client.models import (
    GetEventMetricRelationshipResponse,
    GetEventProfileRelationshipResponse,
    GetEventResponseCollectionCompoundDocument,
    GetEventResponseCompoundDocument,
    GetMetricResponse,
    GetMetricResponseCollectionCompoundDocument,
    GetMetricResponseCompoundDocument,
    GetProfileResponse,
    GetProfileResponsePluralConversationsCollectionCompoundDocument,
    MetricAggregateEnum,
    MetricAggregateQuery,
    MetricAggregateQueryResourceObject,
    MetricAggregateQueryResourceObjectAttributes,
    MetricResponseObjectResource,
    PostMetricAggregateResponse,
    ProfileResponseObjectResource,
)

SPEC = "2026-07-15"  # the newest OpenAPI document we have
VIEWED, ORDERED, CHECKOUT = "Viewed Item", "Placed Order", "Checkout Started"
T0 = datetime(2025, 3, 1, tzinfo=UTC)  # Viewed Item number i happened at T0 + i hours
VIEWS = 120
VIEWERS = [f"reads-viewer-{n}@klaviyo-demo.com" for n in range(3)]
BUYERS = ["reads-buyer-1@klaviyo-demo.com", "reads-buyer-2@klaviyo-demo.com"]
IDENTITY = {
    "email": "reads-identity@klaviyo-demo.com",
    "phone_number": "+12125550147",
    "external_id": "reads-ext-1",
    "_kx": "reads-kx-1",
}
# (buyer, time, value, currency): 2025-04-07 is a Monday.
ORDERS = [
    (0, "2025-04-07T10:15:00+00:00", 10, "USD"),
    (0, "2025-04-07T10:45:00+00:00", 5, "USD"),
    (0, "2025-04-08T23:30:00+00:00", 20, "EUR"),
    (1, "2025-04-07T11:00:00+00:00", 7.5, "USD"),
    (1, "2025-04-14T00:30:00+00:00", 1, "USD"),
]
CHECKOUT_TIME = "2025-02-01T12:34:56+02:00"  # with unique_id, value and currency
PLAIN_CHECKOUT_TIME = "2025-02-02T00:00:00+00:00"  # neither
TOTAL = VIEWS + len(ORDERS) + 2


def at(i: int) -> datetime:
    return T0 + timedelta(hours=i)


def ts(i: int) -> int:
    return int(at(i).timestamp())


def iso(i: int) -> str:
    """Viewed Item i's time as an unquoted filter datetime (UTC, with `Z`)."""
    return at(i).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Data:
    metrics: dict[str, str]  # name -> metric id
    profiles: dict[str, str]  # email -> profile id
    events: list[dict[str, Any]]  # every event resource, oldest first

    def event_at(self, when: str, metric: str) -> dict[str, Any]:
        moment = int(datetime.fromisoformat(when).timestamp())
        (found,) = [
            e
            for e in self.events
            if e["attributes"]["timestamp"] == moment
            and e["relationships"]["metric"]["data"]["id"] == self.metrics[metric]
        ]
        return found

    @property
    def viewed(self) -> str:
        return f'equals(metric_id,"{self.metrics[VIEWED]}")'


def api_client(server: Server, **headers: str) -> httpx.Client:
    return server.client(
        Authorization=f"Klaviyo-API-Key {PRIVATE_KEY}",
        revision=NEWEST,
        **{"Content-Type": "application/vnd.api+json"},
        **headers,
    )


@pytest.fixture(scope="module")
def reads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This module's own server: nothing else adds data to it."""
    server = Server(tmp_path_factory.mktemp("reads"), make_env()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(reads: Server) -> Iterator[httpx.Client]:
    with api_client(reads) as client:
        yield client


@pytest.fixture(scope="module")
def data(reads: Server, api: httpx.Client) -> Data:
    views = [
        (
            {"email": VIEWERS[n]},
            [
                bulk_event(VIEWED, time=at(i).isoformat(), properties={"n": i})
                for i in range(n, VIEWS, len(VIEWERS))
            ],
        )
        for n in range(len(VIEWERS))
    ]
    orders = [
        (
            {"email": email},
            [
                bulk_event(ORDERED, time=when, value=value, value_currency=currency)
                for buyer, when, value, currency in ORDERS
                if BUYERS[buyer] == email
            ],
        )
        for email in BUYERS
    ]
    r = api.post("/api/event-bulk-create-jobs", json=bulk_body(views + orders))
    assert r.status_code == 202, r.text
    checkout = event_body(
        IDENTITY["email"],
        CHECKOUT,
        profile_attributes=dict(IDENTITY),
        properties={"Brand": "Kids Book", "Items": ["Winnie", "Paddington"]},
        time=CHECKOUT_TIME,
        value=9.99,
        value_currency="USD",
        unique_id="reads-checkout-1",
    )
    plain = event_body(
        IDENTITY["email"], CHECKOUT, properties={"Brand": "Atlas"}, time=PLAIN_CHECKOUT_TIME
    )
    for body in (checkout, plain):
        r = api.post("/api/events", json=body)
        assert r.status_code == 202, r.text
    reads.settle()

    metrics = {m["attributes"]["name"]: m["id"] for m in api.get("/api/metrics").json()["data"]}
    profiles = {}
    for email in [*VIEWERS, *BUYERS, IDENTITY["email"]]:
        (profile,) = api.get("/api/profiles", params={"filter": f'equals(email,"{email}")'}).json()[
            "data"
        ]
        profiles[email] = profile["id"]
    r = api.get("/api/events", params={"page[size]": "1000", "sort": "datetime"})
    assert r.status_code == 200, r.text
    events = r.json()["data"]
    assert len(events) == TOTAL
    return Data(metrics, profiles, events)


def get(client: httpx.Client, path: str, **params: str) -> httpx.Response:
    return client.get(path, params=params)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/vnd.api+json")
    return response.json()


def event_ids(response: httpx.Response) -> list[str]:
    return [e["id"] for e in ok(response)["data"]]


def numbers(response: httpx.Response) -> list[int]:
    """The Viewed Item numbers (`n`) of a page, in order."""
    return [e["attributes"]["event_properties"]["n"] for e in ok(response)["data"]]


def viewed(api: httpx.Client, data: Data, condition: str, **params: str) -> list[int]:
    """The Viewed Item numbers a filter (besides the metric) selects, in time order."""
    params.setdefault("page[size]", "1000")
    params.setdefault("sort", "datetime")
    return numbers(get(api, "/api/events", filter=f"{data.viewed},{condition}", **params))


def invalid_parameter(response: httpx.Response, parameter: str) -> dict[str, Any]:
    error = single_error(response, 400)
    assert error["code"] == "invalid"
    assert error["source"] == {"parameter": parameter}
    validate_response(SPEC, "get_events", 400, response.json())
    return error


def pages(client: httpx.Client, url: str, **params: str) -> list[dict[str, Any]]:
    """Every page, following each page's absolute `links.next`."""
    documents = [ok(client.get(url, params=params))]
    while documents[-1]["links"].get("next"):
        assert len(documents) < 50
        documents.append(ok(client.get(documents[-1]["links"]["next"])))
    return documents


# -- the event resource -------------------------------------------------------------------------


def test_events_list_is_klaviyos_collection_document(api, data, reads):
    body = ok(get(api, "/api/events", filter=data.viewed, include="metric,profile"))
    validate_response(SPEC, "get_events", 200, body)
    assert len(body["data"]) == VIEWS  # default page size 200
    assert body["links"]["self"].startswith(f"{reads.url}/api/events?")
    assert not body["links"].get("next") and not body["links"].get("prev")


def test_event_resource_fields(api, data, reads):
    event = data.event_at(PLAIN_CHECKOUT_TIME, CHECKOUT)
    attributes = event["attributes"]
    assert event["type"] == "event"
    assert isinstance(attributes["timestamp"], int)
    moment = datetime.fromisoformat(attributes["datetime"])
    assert moment.utcoffset() is not None  # ISO 8601 with an offset
    assert moment == datetime.fromisoformat(PLAIN_CHECKOUT_TIME)
    assert attributes["timestamp"] == int(moment.timestamp())
    assert isinstance(attributes["uuid"], str) and attributes["uuid"]
    assert len({e["attributes"]["uuid"] for e in data.events}) == TOTAL
    # without a unique_id, $event_id is the time to the second; no $value without a value
    assert attributes["event_properties"] == {
        "Brand": "Atlas",
        "$event_id": str(attributes["timestamp"]),
    }
    own = f"{reads.url}/api/events/{event['id']}"
    assert event["links"] == {"self": own}
    profile = data.profiles[IDENTITY["email"]]
    assert event["relationships"]["profile"] == {
        "data": {"type": "profile", "id": profile},
        "links": {"self": f"{own}/relationships/profile", "related": f"{own}/profile"},
    }
    assert event["relationships"]["metric"] == {
        "data": {"type": "metric", "id": data.metrics[CHECKOUT]},
        "links": {"self": f"{own}/relationships/metric", "related": f"{own}/metric"},
    }


def test_event_properties_echo_event_id_value_and_currency(api, data):
    event = data.event_at(CHECKOUT_TIME, CHECKOUT)
    assert event["attributes"]["datetime"] == "2025-02-01T10:34:56+00:00"
    assert event["attributes"]["event_properties"] == {
        "Brand": "Kids Book",
        "Items": ["Winnie", "Paddington"],
        "$event_id": "reads-checkout-1",
        "$value": 9.99,
        "$value_currency": "USD",
    }


def test_get_event_by_id(api, data, reads):
    event = data.event_at(CHECKOUT_TIME, CHECKOUT)
    r = get(api, f"/api/events/{event['id']}")
    body = ok(r)
    validate_response(SPEC, "get_event", 200, body)
    assert body["data"] == event
    assert body["links"] == {"self": f"{reads.url}/api/events/{event['id']}"}
    assert "included" not in body
    body = ok(get(api, f"/api/events/{event['id']}", include="metric,profile"))
    validate_response(SPEC, "get_event", 200, body)
    assert {(i["type"], i["id"]) for i in body["included"]} == {
        ("metric", data.metrics[CHECKOUT]),
        ("profile", data.profiles[IDENTITY["email"]]),
    }


def test_related_and_relationship_links_lead_to_the_metric_and_profile(api, data):
    event = data.event_at(CHECKOUT_TIME, CHECKOUT)
    profile_id = data.profiles[IDENTITY["email"]]
    metric = event["relationships"]["metric"]["links"]
    profile = event["relationships"]["profile"]["links"]

    body = ok(api.get(metric["related"]))
    validate_response(SPEC, "get_metric_for_event", 200, body)
    assert body["data"]["id"] == data.metrics[CHECKOUT]
    assert body["data"]["attributes"]["name"] == CHECKOUT
    assert body["data"] == ok(get(api, f"/api/metrics/{data.metrics[CHECKOUT]}"))["data"]

    body = ok(api.get(profile["related"]))
    validate_response(SPEC, "get_profile_for_event", 200, body)
    assert body["data"]["id"] == profile_id
    assert body["data"]["attributes"]["email"] == IDENTITY["email"]

    body = ok(api.get(metric["self"]))
    validate_response(SPEC, "get_metric_id_for_event", 200, body)
    assert body["data"] == {"type": "metric", "id": data.metrics[CHECKOUT]}
    assert body["links"]["self"] == metric["self"]

    body = ok(api.get(profile["self"]))
    validate_response(SPEC, "get_profile_id_for_event", 200, body)
    assert body["data"] == {"type": "profile", "id": profile_id}


@pytest.mark.parametrize(
    "suffix", ["", "/metric", "/profile", "/relationships/metric", "/relationships/profile"]
)
@pytest.mark.parametrize("event_id", ["ZZZZZZZZ", "no-such-event", "0"])
def test_unknown_event_is_404_not_found(api, data, suffix, event_id):
    r = get(api, f"/api/events/{event_id}{suffix}")
    assert single_error(r, 404)["code"] == "not_found"
    validate_response(SPEC, "get_event", 404, r.json())


def test_unknown_related_resource_is_404(api, data):
    event = data.events[0]
    for path in ("attribution", "metrics", "relationships/profiles", "relationships/bogus"):
        assert single_error(get(api, f"/api/events/{event['id']}/{path}"), 404)


# -- filters ------------------------------------------------------------------------------------


def test_filter_equals_metric_id(api, data):
    assert viewed(api, data, "has(profile)") == list(range(VIEWS))
    orders = ok(get(api, "/api/events", filter=f'equals(metric_id,"{data.metrics[ORDERED]}")'))
    assert len(orders["data"]) == len(ORDERS)
    assert {e["relationships"]["metric"]["data"]["id"] for e in orders["data"]} == {
        data.metrics[ORDERED]
    }
    assert event_ids(get(api, "/api/events", filter='equals(metric_id,"NoSuch")')) == []


def test_filter_equals_profile_id(api, data):
    profile = data.profiles[VIEWERS[1]]
    found = numbers(
        get(api, "/api/events", filter=f'equals(profile_id,"{profile}")', sort="datetime")
    )
    assert found == list(range(1, VIEWS, 3))
    # and the checkout profile has only its two checkouts
    only = ok(
        get(api, "/api/events", filter=f"equals(profile_id,'{data.profiles[IDENTITY['email']]}')")
    )
    assert sorted(e["attributes"]["datetime"] for e in only["data"]) == [
        "2025-02-01T10:34:56+00:00",
        "2025-02-02T00:00:00+00:00",
    ]


@pytest.mark.parametrize("field", ["profile", "metric"])
def test_filter_has(api, data, field):
    r = get(api, "/api/events", filter=f"has({field})", **{"page[size]": "1000"})
    assert len(event_ids(r)) == TOTAL


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (f"greater-than(datetime,{iso(100)})", range(101, VIEWS)),
        (f"greater-or-equal(datetime,{iso(100)})", range(100, VIEWS)),
        (f"less-than(datetime,{iso(10)})", range(10)),
        (f"less-or-equal(datetime,{iso(10)})", range(11)),
        (f"greater-than(timestamp,{ts(100)})", range(101, VIEWS)),
        (f"greater-or-equal(timestamp,{ts(100)})", range(100, VIEWS)),
        (f"less-than(timestamp,{ts(10)})", range(10)),
        (f"less-or-equal(timestamp,{ts(10)})", range(11)),
        # fractions of a second: the whole seconds on the right side of the bound
        (f"greater-than(timestamp,{ts(110)}.5)", range(111, VIEWS)),
        (f"greater-or-equal(timestamp,{ts(110) - 1}.5)", range(110, VIEWS)),
        (f"less-than(timestamp,{ts(3)}.5)", range(4)),
        (f"less-or-equal(timestamp,{ts(3)}.5)", range(4)),
        (f"less-than(datetime,{iso(3)[:-1]}.000001Z)", range(4)),
        # an offset is honoured: 02:00+02:00 is midnight UTC, hour 96
        ("greater-or-equal(datetime,2025-03-05T02:00:00+02:00)", range(96, VIEWS)),
        ("less-than(datetime,2025-03-01T01:30:00-01:00)", range(3)),
        # a bare date is midnight UTC
        ("less-than(datetime,2025-03-02)", range(24)),
    ],
)
def test_filter_datetime_and_timestamp_bounds(api, data, condition, expected):
    assert viewed(api, data, condition) == list(expected)


def test_filter_and_and_commas_combine(api, data):
    profile = data.profiles[VIEWERS[2]]
    window = f"greater-or-equal(datetime,{iso(30)}),less-than(datetime,{iso(60)})"
    expected = [i for i in range(30, 60) if i % 3 == 2]
    assert viewed(api, data, f'equals(profile_id,"{profile}"),{window}') == expected
    assert viewed(api, data, f"and(equals(profile_id,'{profile}'),{window})") == expected
    nested = (
        f'and(and({data.viewed}, equals(profile_id, "{profile}")), '
        f"and(greater-or-equal(timestamp, {ts(30)}), less-than(timestamp, {ts(60)})))"
    )
    r = get(api, "/api/events", filter=nested, sort="datetime")
    assert numbers(r) == expected
    # conditions are ANDed, not ORed: an empty window selects nothing
    assert (
        viewed(api, data, f"greater-than(datetime,{iso(60)}),less-than(datetime,{iso(30)})") == []
    )


@pytest.mark.parametrize(
    "text",
    [
        'equals(metric_id,"abc"',  # unclosed
        "equals(metric_id,abc)",  # unquoted string
        'equals(metric_id,"abc") or equals(metric_id,"def")',
        'bogus(metric_id,"abc")',
        "greater-than(datetime,2025-13-01T00:00:00Z)",
        "",
    ],
)
def test_malformed_filter_is_400(api, data, text):
    error = invalid_parameter(get(api, "/api/events", filter=text), "filter")
    assert error["detail"].startswith("Invalid filter")


@pytest.mark.parametrize(
    "text",
    [
        'greater-than(metric_id,"abc")',  # only equals on ids
        'contains(profile_id,"abc")',
        "equals(metric_id,5)",  # ids are strings
        'equals(email,"a@b.co")',  # not a filterable field of events
        'equals(event_properties.n,"1")',
        "has(uuid)",
        'greater-than(datetime,"yesterday")',
        "greater-than(datetime,true)",
        "any(metric_id,['a','b'])",
    ],
)
def test_unsupported_filter_is_400(api, data, text):
    invalid_parameter(get(api, "/api/events", filter=text), "filter")


# -- sort and pages -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("datetime", list(range(VIEWS))),
        ("timestamp", list(range(VIEWS))),
        ("-datetime", list(reversed(range(VIEWS)))),
        ("-timestamp", list(reversed(range(VIEWS)))),
    ],
)
def test_sort(api, data, sort, expected):
    r = get(api, "/api/events", filter=data.viewed, sort=sort)
    assert numbers(r) == expected
    stamps = [e["attributes"]["timestamp"] for e in ok(r)["data"]]
    assert stamps == sorted(stamps, reverse=sort.startswith("-"))


@pytest.mark.parametrize("sort", ["name", "-uuid", "datetime,timestamp", "+datetime", ""])
def test_bad_sort_is_400(api, data, sort):
    invalid_parameter(get(api, "/api/events", sort=sort), "sort")


@pytest.mark.parametrize("sort", ["datetime", "-datetime"])
def test_every_page_by_links_next_and_back_by_links_prev(api, data, reads, sort):
    documents = pages(api, "/api/events", filter=data.viewed, sort=sort, **{"page[size]": "50"})
    assert [len(d["data"]) for d in documents] == [50, 50, 20]
    seen = [e["attributes"]["event_properties"]["n"] for d in documents for e in d["data"]]
    assert seen == (list(range(VIEWS)) if sort == "datetime" else list(reversed(range(VIEWS))))
    for document in documents:
        validate_response(SPEC, "get_events", 200, document)
        for name in ("self", "next", "prev"):
            link = document["links"].get(name)
            if link:
                assert link.startswith(f"{reads.url}/api/events?")
                query = parse_qs(urlsplit(link).query)
                assert query["filter"] == [data.viewed]
                assert query["sort"] == [sort]
                assert query["page[size]"] == ["50"]
    assert not documents[0]["links"].get("prev")
    assert not documents[-1]["links"].get("next")
    # back from the last page, then from the middle one
    back = ok(api.get(documents[2]["links"]["prev"]))
    assert back["data"] == documents[1]["data"]
    back = ok(api.get(back["links"]["prev"]))
    assert back["data"] == documents[0]["data"]
    assert not back["links"].get("prev")
    assert ok(api.get(back["links"]["next"]))["data"] == documents[1]["data"]


def test_page_size(api, data):
    assert len(event_ids(get(api, "/api/events", **{"page[size]": "1"}))) == 1
    assert len(event_ids(get(api, "/api/events", **{"page[size]": "1000"}))) == TOTAL
    body = ok(get(api, "/api/events", filter=data.viewed, **{"page[size]": "120"}))
    assert len(body["data"]) == VIEWS and not body["links"].get("next")
    body = ok(get(api, "/api/events", filter=data.viewed, **{"page[size]": "119"}))
    assert len(body["data"]) == 119 and body["links"]["next"]


@pytest.mark.parametrize("size", ["0", "1001", "-5", "ten", "1.5", ""])
def test_bad_page_size_is_400(api, data, size):
    invalid_parameter(get(api, "/api/events", **{"page[size]": size}), "page[size]")


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "bm90IGpzb24",  # base64 of "not json"
        "WzEsMiwzXQ",  # [1,2,3]
        "eyJhIjoxfQ",  # {"a":1}
        "WyJ4IiwxLCJuZXh0Il0",  # ["x",1,"next"]
        "WzEsMiwic2lkZXdheXMiXQ",  # [1,2,"sideways"]
    ],
)
def test_bad_cursor_is_400(api, data, cursor):
    error = invalid_parameter(get(api, "/api/events", **{"page[cursor]": cursor}), "page[cursor]")
    assert error["detail"] == "Invalid cursor provided."


def test_links_use_the_host_the_client_reached(reads, data):
    with api_client(reads, Host=f"trackhouse.test:{reads.port}") as client:
        body = ok(get(client, "/api/events", filter=data.viewed, **{"page[size]": "10"}))
    base = f"http://trackhouse.test:{reads.port}"
    assert body["links"]["self"].startswith(f"{base}/api/events?")
    assert body["links"]["next"].startswith(f"{base}/api/events?")
    event = body["data"][0]
    assert event["links"]["self"] == f"{base}/api/events/{event['id']}"
    assert event["relationships"]["metric"]["links"]["related"].startswith(base + "/")


# -- include and sparse fieldsets ---------------------------------------------------------------


def test_include_metric_and_profile(api, data):
    profile = data.profiles[VIEWERS[0]]
    body = ok(
        get(
            api,
            "/api/events",
            filter=f'equals(profile_id,"{profile}")',
            include="metric,profile",
            **{"page[size]": "5"},
        )
    )
    validate_response(SPEC, "get_events", 200, body)
    assert len(body["data"]) == 5
    included = {(i["type"], i["id"]): i for i in body["included"]}
    assert set(included) == {("metric", data.metrics[VIEWED]), ("profile", profile)}
    assert included["metric", data.metrics[VIEWED]]["attributes"]["name"] == VIEWED
    assert included["profile", profile]["attributes"]["email"] == VIEWERS[0]
    # each included once, and only what was asked for
    assert len(body["included"]) == 2
    only_metric = ok(get(api, "/api/events", filter=data.viewed, include="metric"))
    assert [(i["type"], i["id"]) for i in only_metric["included"]] == [
        ("metric", data.metrics[VIEWED])
    ]
    mixed = ok(get(api, "/api/events", include="profile", **{"page[size]": "1000"}))
    assert {i["id"] for i in mixed["included"]} == set(data.profiles.values())


@pytest.mark.parametrize(
    "include", ["profiless", "metrics", "profiles", "metric,bogus", "event", "flow-triggers"]
)
def test_bad_include_is_400(api, data, include):
    error = invalid_parameter(get(api, "/api/events", include=include), "include")
    assert "is not an allowed include parameter" in error["detail"]


def test_sparse_fieldsets(api, data):
    body = ok(
        get(
            api,
            "/api/events",
            filter=data.viewed,
            include="metric,profile",
            **{
                "page[size]": "3",
                "fields[event]": "timestamp,event_properties",
                "fields[metric]": "name",
                "fields[profile]": "email,location.city",
            },
        )
    )
    validate_response(SPEC, "get_events", 200, body)
    for event in body["data"]:
        assert set(event["attributes"]) == {"timestamp", "event_properties"}
        assert event["relationships"]["metric"]["data"]["id"] == data.metrics[VIEWED]
    included = {i["type"]: i for i in body["included"]}
    assert included["metric"]["attributes"] == {"name": VIEWED}
    assert set(included["profile"]["attributes"]) == {"email", "location"}
    assert set(included["profile"]["attributes"]["location"]) == {"city"}
    event = data.events[0]
    single = ok(get(api, f"/api/events/{event['id']}", **{"fields[event]": "datetime"}))
    assert single["data"]["attributes"] == {"datetime": event["attributes"]["datetime"]}


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("fields[event]", "bogus"),
        ("fields[event]", "timestamp,metric_id"),  # an attribute only before 2023-07-15
        ("fields[metric]", "color"),
        ("fields[profile]", "location.planet"),
    ],
)
def test_bad_sparse_field_is_400(api, data, parameter, value):
    error = invalid_parameter(get(api, "/api/events", **{parameter: value}), parameter)
    assert "is not a valid field for the resource" in error["detail"]


# -- older revisions ----------------------------------------------------------------------------


@pytest.mark.parametrize("revision", ["2023-01-24", "2023-06-15"])
def test_events_before_2023_07_15_have_the_old_shape(api, data, reads, revision):
    r = api.get(
        "/api/events",
        params={
            "filter": data.viewed,
            "include": "metrics",
            "sort": "datetime",
            "page[size]": "50",
        },
        headers={"revision": revision},
    )
    body = ok(r)
    validate_response("2023-01-24", "get_events", 200, body)
    first = body["data"][0]
    viewer = data.profiles[VIEWERS[0]]
    assert first["attributes"]["metric_id"] == data.metrics[VIEWED]
    assert first["attributes"]["profile_id"] == viewer
    assert first["attributes"]["timestamp"] == str(ts(0))  # a string then
    assert first["attributes"]["datetime"] == at(0).isoformat()
    assert first["relationships"] == {
        "metrics": {"data": [{"type": "metric", "id": data.metrics[VIEWED]}]},
        "profiles": {"data": [{"type": "profile", "id": viewer}]},
    }
    assert first["links"]["self"].startswith(f"{reads.url}/api/events/{first['id']}")
    assert [i["type"] for i in body["included"]] == ["metric"]
    with_profiles = api.get(
        "/api/events", params={"include": "metrics,profiles"}, headers={"revision": revision}
    )
    assert {i["type"] for i in ok(with_profiles)["included"]} == {"metric", "profile"}
    # old field names in sparse fieldsets, new include names refused
    sparse = api.get(
        "/api/events",
        params={"fields[event]": "metric_id,profile_id", "page[size]": "1"},
        headers={"revision": revision},
    )
    assert set(ok(sparse)["data"][0]["attributes"]) == {"metric_id", "profile_id"}
    refused = api.get("/api/events", params={"include": "metric"}, headers={"revision": revision})
    invalid_parameter(refused, "include")


def test_events_at_2024_02_15_validate(api, data):
    r = api.get(
        "/api/events",
        params={"filter": data.viewed, "include": "metric,profile", "page[size]": "50"},
        headers={"revision": "2024-02-15"},
    )
    body = ok(r)
    validate_response("2024-02-15", "get_events", 200, body)
    assert isinstance(body["data"][0]["attributes"]["timestamp"], int)
    assert set(body["data"][0]["relationships"]) >= {"metric", "profile"}


def test_related_paths_by_revision(api, data):
    event = data.events[-1]
    profile = event["relationships"]["profile"]["data"]["id"]
    metric = event["relationships"]["metric"]["data"]["id"]
    old = {"revision": "2023-06-15"}
    base = f"/api/events/{event['id']}"

    r = api.get(f"{base}/relationships/metrics/", headers=old)
    assert ok(r)["data"] == [{"type": "metric", "id": metric}]
    r = api.get(f"{base}/relationships/profiles/", headers=old)
    assert ok(r)["data"] == [{"type": "profile", "id": profile}]
    validate_response("2023-01-24", "get_event_relationships", 200, r.json())
    assert ok(api.get(f"{base}/metrics/", headers=old))["data"]
    assert ok(api.get(f"{base}/profiles/", headers=old))["data"]
    # the singular paths are 2023-07-15's; the plural ones are gone from then on
    for path in ("metric", "profile", "relationships/metric", "relationships/profile"):
        assert single_error(api.get(f"{base}/{path}", headers=old), 404)["code"] == "not_found"
        assert ok(api.get(f"{base}/{path}", headers={"revision": "2023-07-15"}))
    for path in ("metrics/", "profiles/", "relationships/metrics/", "relationships/profiles/"):
        assert single_error(api.get(f"{base}/{path}"), 404)["code"] == "not_found"


@pytest.mark.parametrize(
    ("path", "operation"), [("metrics", "get_event_metrics"), ("profiles", "get_event_profiles")]
)
def test_related_resources_before_2023_07_15_are_collections(api, data, path, operation):
    """2023-01-24's GET /api/events/{id}/metrics/ and /profiles/ answer a collection
    (`GetMetricResponseCollection` / `GetProfileResponseCollection`: `data` is an array)."""
    event = data.events[-1]
    r = api.get(f"/api/events/{event['id']}/{path}/", headers={"revision": "2023-01-24"})
    body = ok(r)
    assert isinstance(body["data"], list), body["data"]
    assert [item["type"] for item in body["data"]] == [path[:-1]]
    if path == "profiles":
        # 2023-01-24 types unset profile attributes as non-nullable strings, but Klaviyo sent
        # nulls then too (the Python SDK had to allow them): validate without the nulls.
        attributes = body["data"][0]["attributes"]
        body["data"][0]["attributes"] = {k: v for k, v in attributes.items() if v is not None}
        body["data"][0]["attributes"]["location"] = {
            k: v for k, v in attributes["location"].items() if v is not None
        }
    validate_response("2023-01-24", operation, 200, body)


# -- profiles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["email", "phone_number", "external_id", "_kx", "id"])
def test_profiles_filter_by_identifier(api, data, field):
    profile_id = data.profiles[IDENTITY["email"]]
    value = profile_id if field == "id" else IDENTITY[field]
    r = get(api, "/api/profiles", filter=f'equals({field},"{value}")')
    body = ok(r)
    validate_response(SPEC, "get_profiles", 200, body)
    assert [p["id"] for p in body["data"]] == [profile_id]
    attributes = body["data"][0]["attributes"]
    assert attributes["email"] == IDENTITY["email"]
    assert attributes["phone_number"] == IDENTITY["phone_number"]
    assert attributes["external_id"] == IDENTITY["external_id"]
    # and nobody else
    other = get(api, "/api/profiles", filter=f"equals({field},'{value}-other')")
    assert ok(other)["data"] == []


def test_profiles_list_and_pages(api, data, reads):
    body = ok(get(api, "/api/profiles"))
    validate_response(SPEC, "get_profiles", 200, body)
    assert {p["id"] for p in body["data"]} == set(data.profiles.values())
    documents = pages(api, "/api/profiles", **{"page[size]": "2"})
    assert [len(d["data"]) for d in documents] == [2, 2, 2]
    assert {p["id"] for d in documents for p in d["data"]} == set(data.profiles.values())
    assert documents[0]["links"]["next"].startswith(f"{reads.url}/api/profiles?")


def test_get_profile(api, data, reads):
    profile_id = data.profiles[IDENTITY["email"]]
    body = ok(get(api, f"/api/profiles/{profile_id}"))
    validate_response(SPEC, "get_profile", 200, body)
    assert body["data"]["id"] == profile_id
    assert body["data"]["links"]["self"] == f"{reads.url}/api/profiles/{profile_id}"
    assert body["data"]["attributes"]["last_event_date"] == "2025-02-02T00:00:00+00:00"
    r = get(api, "/api/profiles/01JZZZZZZZZZZZZZZZZZZZZZZZ")
    assert single_error(r, 404)["code"] == "not_found"
    validate_response(SPEC, "get_profile", 404, r.json())


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"filter": 'equals(first_name,"Sarah")'}, "filter"),
        ({"filter": 'greater-than(email,"a")'}, "filter"),
        ({"filter": "equals(email,5)"}, "filter"),
        ({"filter": "equals(email"}, "filter"),
        ({"page[size]": "101"}, "page[size]"),
        ({"sort": "email"}, "sort"),
        ({"page[cursor]": "!!"}, "page[cursor]"),
    ],
)
def test_profiles_bad_parameter_is_400(api, data, params, parameter):
    error = single_error(api.get("/api/profiles", params=params), 400)
    assert error["source"] == {"parameter": parameter}


# -- metrics ------------------------------------------------------------------------------------


def test_metrics(api, data, reads):
    r = get(api, "/api/metrics")
    body = ok(r)
    validate_response(SPEC, "get_metrics", 200, body)
    assert sorted(m["attributes"]["name"] for m in body["data"]) == sorted(
        [VIEWED, ORDERED, CHECKOUT]
    )
    metric = next(m for m in body["data"] if m["attributes"]["name"] == VIEWED)
    assert metric["links"]["self"] == f"{reads.url}/api/metrics/{metric['id']}"
    assert metric["attributes"]["integration"]["name"] == "API"
    single = ok(get(api, f"/api/metrics/{metric['id']}"))
    validate_response(SPEC, "get_metric", 200, single)
    assert single["data"] == metric
    sparse = ok(get(api, f"/api/metrics/{metric['id']}", **{"fields[metric]": "name"}))
    assert sparse["data"]["attributes"] == {"name": VIEWED}


@pytest.mark.parametrize(
    ("condition", "count"),
    [
        ('equals(integration.name,"API")', 3),
        ("equals(integration.category,'API')", 3),
        ('equals(integration.name,"Shopify")', 0),
        ('equals(integration.name,"API"),equals(integration.category,"Custom")', 0),
    ],
)
def test_metrics_filter(api, data, condition, count):
    body = ok(get(api, "/api/metrics", filter=condition))
    validate_response(SPEC, "get_metrics", 200, body)
    assert len(body["data"]) == count


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"filter": f'equals(name,"{VIEWED}")'}, "filter"),
        ({"filter": 'contains(integration.name,"A")'}, "filter"),
        ({"filter": "equals(integration.name,"}, "filter"),
        ({"fields[metric]": "colour"}, "fields[metric]"),
        ({"page[cursor]": "!!"}, "page[cursor]"),
    ],
)
def test_metrics_bad_parameter_is_400(api, data, params, parameter):
    error = single_error(api.get("/api/metrics", params=params), 400)
    assert error["source"] == {"parameter": parameter}


def test_unknown_metric_is_404(api, data):
    r = get(api, "/api/metrics/NoSuch")
    assert single_error(r, 404)["code"] == "not_found"
    validate_response(SPEC, "get_metric", 404, r.json())


# -- metric aggregates --------------------------------------------------------------------------


def aggregate_body(metric_id: str, since: str, until: str, **attributes: Any) -> dict[str, Any]:
    return {
        "data": {
            "type": "metric-aggregate",
            "attributes": {
                "metric_id": metric_id,
                "measurements": ["count", "sum_value", "unique"],
                "filter": [f"greater-or-equal(datetime,{since})", f"less-than(datetime,{until})"],
                **attributes,
            },
        }
    }


def aggregate(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = api.post("/api/metric-aggregates", json=body)
    document = ok(r)
    validate_response(SPEC, "query_metric_aggregates", 200, document)
    return document["data"]["attributes"]


def test_aggregates_by_day(api, data):
    body = aggregate_body(data.metrics[ORDERED], "2025-04-07T00:00:00", "2025-04-15T00:00:00")
    result = aggregate(api, body)
    assert result["dates"] == [f"2025-04-{d:02}T00:00:00+00:00" for d in range(7, 15)]
    assert result["data"] == [
        {
            "dimensions": [],
            "measurements": {
                "count": [3, 1, 0, 0, 0, 0, 0, 1],
                "sum_value": [22.5, 20.0, 0, 0, 0, 0, 0, 1.0],
                "unique": [2, 1, 0, 0, 0, 0, 0, 1],
            },
        }
    ]


@pytest.mark.parametrize(
    ("interval", "since", "until", "dates", "count", "unique"),
    [
        (
            "hour",
            "2025-04-07T10:00:00",
            "2025-04-07T12:00:00",
            ["2025-04-07T10:00:00+00:00", "2025-04-07T11:00:00+00:00"],
            [2, 1],
            [1, 1],
        ),
        (
            "week",
            "2025-04-07T00:00:00",
            "2025-04-21T00:00:00",
            ["2025-04-07T00:00:00+00:00", "2025-04-14T00:00:00+00:00"],
            [4, 1],
            [2, 1],
        ),
        (
            "month",
            "2025-04-01T00:00:00",
            "2025-06-01T00:00:00",
            ["2025-04-01T00:00:00+00:00", "2025-05-01T00:00:00+00:00"],
            [5, 0],
            [2, 0],
        ),
    ],
)
def test_aggregates_by_interval(api, data, interval, since, until, dates, count, unique):
    body = aggregate_body(data.metrics[ORDERED], since, until, interval=interval)
    result = aggregate(api, body)
    assert result["dates"] == dates
    (row,) = result["data"]
    assert row["measurements"]["count"] == count
    assert row["measurements"]["unique"] == unique


def test_aggregates_in_a_timezone(api, data):
    body = aggregate_body(
        data.metrics[ORDERED],
        "2025-04-07T00:00:00-04:00",
        "2025-04-15T00:00:00-04:00",
        timezone="America/New_York",
        measurements=["count"],
    )
    result = aggregate(api, body)
    assert result["dates"] == [f"2025-04-{d:02}T00:00:00-04:00" for d in range(7, 15)]
    # 2025-04-14T00:30Z is the evening of the 13th in New York
    assert result["data"] == [
        {"dimensions": [], "measurements": {"count": [3, 1, 0, 0, 0, 0, 1, 0]}}
    ]


def test_aggregates_by_currency_in_pages(api, data):
    body = aggregate_body(
        data.metrics[ORDERED],
        "2025-04-07T00:00:00",
        "2025-04-10T00:00:00",
        by=["$value_currency"],
        measurements=["count", "sum_value"],
    )
    rows = {tuple(row["dimensions"]): row["measurements"] for row in aggregate(api, body)["data"]}
    assert rows == {
        ("EUR",): {"count": [0, 1, 0], "sum_value": [0, 20.0, 0]},
        ("USD",): {"count": [3, 0, 0], "sum_value": [22.5, 0, 0]},
    }
    body["data"]["attributes"]["page_size"] = 1
    first = ok(api.post("/api/metric-aggregates", json=body))
    validate_response(SPEC, "query_metric_aggregates", 200, first)
    assert len(first["data"]["attributes"]["data"]) == 1
    next_link = first["links"]["next"]
    # the whole `next` link as the cursor, as the SDKs pass it
    body["data"]["attributes"]["page_cursor"] = next_link
    second = ok(api.post("/api/metric-aggregates", json=body))
    assert "next" not in second["links"] or not second["links"]["next"]
    paged = first["data"]["attributes"]["data"] + second["data"]["attributes"]["data"]
    assert {tuple(row["dimensions"]) for row in paged} == set(rows)
    # or just the cursor in it
    body["data"]["attributes"]["page_cursor"] = parse_qs(urlsplit(next_link).query)["page_cursor"][
        0
    ]
    assert (
        ok(api.post("/api/metric-aggregates", json=body))["data"]["attributes"]["data"]
        == (second["data"]["attributes"]["data"])
    )


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"filter": ["greater-or-equal(datetime,2025-04-07T00:00:00)"]}, "filter"),
        ({"filter": ['equals(metric_id,"x")']}, "filter"),
        ({"filter": ["greater-or-equal(datetime,2025-04-07", "x"]}, "filter"),
        (
            {
                "filter": [
                    "greater-or-equal(datetime,2025-04-09T00:00:00)",
                    "less-than(datetime,2025-04-07T00:00:00)",
                ]
            },
            "filter",
        ),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"metric_id": "NoSuch"}, "metric_id"),
        ({"page_size": 0}, "page_size"),
    ],
)
def test_bad_aggregate_query_is_400(api, data, change, pointer):
    body = aggregate_body(data.metrics[ORDERED], "2025-04-07T00:00:00", "2025-04-15T00:00:00")
    body["data"]["attributes"].update(change)
    r = api.post("/api/metric-aggregates", json=body)
    error = single_error(r, 400)
    assert error["source"] == {"pointer": f"/data/attributes/{pointer}"}
    validate_response(SPEC, "query_metric_aggregates", 400, r.json())


@pytest.mark.parametrize(
    "change",
    [
        {"interval": "fortnight"},
        {"measurements": ["median"]},
        {"colour": "blue"},
    ],
)
def test_aggregate_query_outside_the_schema_is_400(api, data, change):
    body = aggregate_body(data.metrics[ORDERED], "2025-04-07T00:00:00", "2025-04-15T00:00:00")
    body["data"]["attributes"].update(change)
    assert single_error(api.post("/api/metric-aggregates", json=body), 400)["code"] == "invalid"


def test_bad_aggregate_cursor_is_400(api, data):
    body = aggregate_body(
        data.metrics[ORDERED], "2025-04-07T00:00:00", "2025-04-15T00:00:00", page_cursor="!!"
    )
    single_error(api.post("/api/metric-aggregates", json=body), 400)


# -- scopes -------------------------------------------------------------------------------------


def create_key(server: Server, *scopes: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "trackhouse", "keys", "create", *server.where()]
        + [arg for scope in scopes for arg in ("--scope", scope)]
        + ["--label", "reads " + " ".join(scopes)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.fixture(scope="module")
def events_read_only(reads: Server) -> Iterator[httpx.Client]:
    with reads.client(
        Authorization=f"Klaviyo-API-Key {create_key(reads, 'events:read')}", revision=NEWEST
    ) as client:
        yield client


def forbidden(response: httpx.Response, scope: str) -> None:
    error = single_error(response, 403)
    assert error["code"] == "permission_denied"
    assert scope in error["detail"]


def test_events_read_scope_reads_events_only(events_read_only, data):
    c = events_read_only
    event = data.events[0]
    assert len(event_ids(get(c, "/api/events", **{"page[size]": "1000"}))) == TOTAL
    assert ok(get(c, f"/api/events/{event['id']}"))["data"]["id"] == event["id"]
    forbidden(get(c, "/api/events", include="metric"), "metrics:read")
    forbidden(get(c, "/api/events", include="profile"), "profiles:read")
    forbidden(get(c, f"/api/events/{event['id']}", include="profile"), "profiles:read")
    forbidden(get(c, f"/api/events/{event['id']}/metric"), "metrics:read")
    forbidden(get(c, f"/api/events/{event['id']}/relationships/metric"), "metrics:read")
    forbidden(get(c, f"/api/events/{event['id']}/profile"), "profiles:read")
    forbidden(get(c, f"/api/events/{event['id']}/relationships/profile"), "profiles:read")
    forbidden(get(c, "/api/metrics"), "metrics:read")
    forbidden(get(c, f"/api/metrics/{data.metrics[VIEWED]}"), "metrics:read")
    forbidden(get(c, "/api/profiles"), "profiles:read")
    forbidden(get(c, f"/api/profiles/{data.profiles[VIEWERS[0]]}"), "profiles:read")
    body = aggregate_body(data.metrics[ORDERED], "2025-04-07T00:00:00", "2025-04-15T00:00:00")
    forbidden(c.post("/api/metric-aggregates", json=body), "metrics:read")
    # nor may it write
    forbidden(c.post("/api/events", json=event_body()), "events:write")


def test_metrics_and_profiles_read_scopes_cannot_read_events(reads, data):
    key = create_key(reads, "metrics:read", "profiles:read")
    with reads.client(Authorization=f"Klaviyo-API-Key {key}", revision=NEWEST) as c:
        forbidden(get(c, "/api/events"), "events:read")
        forbidden(get(c, f"/api/events/{data.events[0]['id']}"), "events:read")
        forbidden(get(c, f"/api/events/{data.events[0]['id']}/metric"), "events:read")
        assert len(ok(get(c, "/api/metrics"))["data"]) == 3
        assert ok(get(c, "/api/profiles"))["data"]


# -- rate limits --------------------------------------------------------------------------------


@dataclass
class Limited:
    """A server with Klaviyo's rate limits on, holding one event."""

    client: httpx.Client
    event: str
    metric: str
    profile: str


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    env = make_env(TRACKHOUSE_RATE_LIMITS="on")
    server = Server(tmp_path_factory.mktemp("limited"), env).start()
    try:
        with api_client(server) as c:
            assert c.post("/api/events", json=event_body(metric=VIEWED)).status_code == 202
            server.settle()
            (event,) = ok(get(c, "/api/events"))["data"]
            relationships = event["relationships"]
            yield Limited(
                c,
                event["id"],
                relationships["metric"]["data"]["id"],
                relationships["profile"]["data"]["id"],
            )
    finally:
        server.stop()


def test_read_endpoints_report_their_own_steady_rate_limit(limited):
    c, event = limited.client, limited.event
    steady = {
        "/api/events": "3500",
        f"/api/events/{event}": "150",
        f"/api/events/{event}/metric": "3500",
        f"/api/events/{event}/profile": "3500",
        f"/api/events/{event}/relationships/metric": "3500",
        f"/api/events/{event}/relationships/profile": "3500",
        "/api/metrics": "150",
        f"/api/metrics/{limited.metric}": "150",
        "/api/profiles": "700",
        f"/api/profiles/{limited.profile}": "700",
    }
    reported = {}
    for path in steady:
        r = c.get(path)
        assert r.status_code == 200, (path, r.text)
        reported[path] = r.headers.get("RateLimit-Limit")
    body = aggregate_body(limited.metric, "2025-04-07T00:00:00", "2025-04-15T00:00:00")
    r = c.post("/api/metric-aggregates", json=body)
    assert r.status_code == 200, r.text
    reported["/api/metric-aggregates"] = r.headers.get("RateLimit-Limit")
    assert reported == steady | {"/api/metric-aggregates": "60"}


def test_read_endpoints_burst_limits(limited):
    # 25 requests span at most two one-second windows, so at most 20 of a 10/s endpoint
    # pass, while the 350/s list endpoint takes them all.
    c = limited.client
    single = [c.get(f"/api/events/{limited.event}").status_code for _ in range(25)]
    assert 429 in single and set(single) <= {200, 429}
    listed = [c.get("/api/events").status_code for _ in range(25)]
    assert listed == [200] * 25
    metrics = [c.get("/api/metrics").status_code for _ in range(25)]
    assert 429 in metrics and set(metrics) <= {200, 429}
    # metric aggregates: 3/s
    body = aggregate_body(limited.metric, "2025-04-07T00:00:00", "2025-04-15T00:00:00")
    throttled = [c.post("/api/metric-aggregates", json=body) for _ in range(7)]
    assert {r.status_code for r in throttled} <= {200, 429}
    error = next(r for r in throttled if r.status_code == 429)
    assert single_error(error, 429)["code"] == "throttled"
    assert 1 <= int(error.headers["Retry-After"]) <= 60


# -- the official SDK ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdk(reads: Server) -> KlaviyoAPI:
    # max_retries=0: a test sees our first answer, never a retried one
    return KlaviyoAPI(PRIVATE_KEY, test_host=reads.url, max_retries=0)


def cursor_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["page[cursor]"][0]


def sdk_pages(
    sdk: KlaviyoAPI, data: Data, cursor: Any
) -> list[GetEventResponseCollectionCompoundDocument]:
    """Every page of the 120 Viewed Items, 50 a page; `cursor(links.next)` is what is passed
    to the SDK as `page_cursor`."""
    query = {"filter": data.viewed, "sort": "-datetime", "page_size": 50}
    documents = [sdk.Events.get_events(**query)]
    while documents[-1].links.next:
        assert len(documents) < 10
        documents.append(
            sdk.Events.get_events(**query, page_cursor=cursor(documents[-1].links.next))
        )
    for document in documents:
        assert isinstance(document, GetEventResponseCollectionCompoundDocument)
    return documents


def viewed_numbers(documents: list[GetEventResponseCollectionCompoundDocument]) -> list[int]:
    return [e.attributes.event_properties["n"] for d in documents for e in d.data]


def test_sdk_every_page_by_the_cursor_value(sdk, data):
    documents = sdk_pages(sdk, data, cursor_of)
    assert [len(d.data) for d in documents] == [50, 50, 20]
    assert viewed_numbers(documents) == list(reversed(range(VIEWS)))


def test_sdk_every_page_by_the_whole_next_link(sdk, data):
    """The SDK README passes the whole `links.next` URL as `page_cursor`. Against a
    `test_host` on http:// the SDK sends it on unchanged (it only cuts out the cursor of an
    https:// link), so the server itself must find the cursor in it."""
    documents = sdk_pages(sdk, data, lambda link: link)
    assert viewed_numbers(documents) == list(reversed(range(VIEWS)))


def test_sdk_every_page_by_an_https_next_link(sdk, data):
    """Behind a TLS proxy the links are https://: the SDK then sends what follows
    `page%5Bcursor%5D` up to the next `&`, which still starts with the `=`."""
    documents = sdk_pages(sdk, data, lambda link: link.replace("http://", "https://", 1))
    assert viewed_numbers(documents) == list(reversed(range(VIEWS)))


def test_sdk_get_events_with_filters_sort_and_include(sdk, data):
    profile = data.profiles[VIEWERS[2]]
    document = sdk.Events.get_events(
        filter=f'equals(profile_id,"{profile}"),greater-or-equal(datetime,{iso(60)})',
        sort="timestamp",
        include=["metric", "profile"],
    )
    assert isinstance(document, GetEventResponseCollectionCompoundDocument)
    assert [e.attributes.event_properties["n"] for e in document.data] == list(range(62, VIEWS, 3))
    first = document.data[0]
    assert first.attributes.timestamp == ts(62)
    assert first.attributes.datetime_ == at(62)
    assert first.relationships.profile.data.id == profile
    assert first.relationships.metric.data.id == data.metrics[VIEWED]
    assert first.links.var_self.endswith(f"/api/events/{first.id}")
    # included resources come back as dicts; they parse as the spec's resources
    by_type = {item["type"]: item for item in document.included}
    metric = MetricResponseObjectResource.from_dict(by_type["metric"])
    assert (metric.id, metric.attributes.name) == (data.metrics[VIEWED], VIEWED)
    person = ProfileResponseObjectResource.from_dict(by_type["profile"])
    assert (person.id, person.attributes.email) == (profile, VIEWERS[2])


def test_sdk_get_event_and_its_relations(sdk, data):
    event_id = data.event_at(CHECKOUT_TIME, CHECKOUT)["id"]
    document = sdk.Events.get_event(event_id, include=["metric", "profile"])
    assert isinstance(document, GetEventResponseCompoundDocument)
    attributes = document.data.attributes
    assert attributes.datetime_ == datetime.fromisoformat(CHECKOUT_TIME)
    assert attributes.event_properties["$value"] == 9.99
    assert attributes.event_properties["$event_id"] == "reads-checkout-1"
    assert len(document.included) == 2

    metric = sdk.Events.get_metric_for_event(event_id)
    assert isinstance(metric, GetMetricResponse) and metric.data.attributes.name == CHECKOUT
    profile = sdk.Events.get_profile_for_event(event_id)
    assert isinstance(profile, GetProfileResponse)
    assert profile.data.attributes.external_id == IDENTITY["external_id"]
    metric_id = sdk.Events.get_metric_id_for_event(event_id)
    assert isinstance(metric_id, GetEventMetricRelationshipResponse)
    assert metric_id.data.id == data.metrics[CHECKOUT]
    profile_id = sdk.Events.get_profile_id_for_event(event_id)
    assert isinstance(profile_id, GetEventProfileRelationshipResponse)
    assert profile_id.data.id == data.profiles[IDENTITY["email"]]

    with pytest.raises(NotFoundException):
        sdk.Events.get_event("ZZZZZZZZ")
    with pytest.raises(BadRequestException):
        sdk.Events.get_events(filter='equals(email,"a@b.co")')


def test_sdk_sparse_fields_come_back_as_dicts_that_parse(sdk, data):
    # The SDK answers sparse fieldsets with plain dicts (exclude_none); they must still be
    # the spec's documents.
    document = sdk.Events.get_events(
        filter=data.viewed, fields_event=["datetime", "uuid"], page_size=5
    )
    assert isinstance(document, dict)
    parsed = GetEventResponseCollectionCompoundDocument.from_dict(document)
    assert len(parsed.data) == 5
    assert parsed.data[0].attributes.datetime_ == at(0)
    assert parsed.data[0].attributes.timestamp is None


def test_sdk_get_profiles_by_email(sdk, data):
    document = sdk.Profiles.get_profiles(filter=f'equals(email,"{IDENTITY["email"]}")')
    assert isinstance(document, GetProfileResponsePluralConversationsCollectionCompoundDocument)
    (profile,) = document.data
    assert profile.id == data.profiles[IDENTITY["email"]]
    assert profile.attributes.phone_number == IDENTITY["phone_number"]
    assert profile.attributes.last_event_date == datetime.fromisoformat(PLAIN_CHECKOUT_TIME)


def test_sdk_get_metrics(sdk, data):
    document = sdk.Metrics.get_metrics(filter='equals(integration.name,"API")')
    assert isinstance(document, GetMetricResponseCollectionCompoundDocument)
    assert {m.attributes.name: m.id for m in document.data} == data.metrics
    single = sdk.Metrics.get_metric(data.metrics[ORDERED])
    assert isinstance(single, GetMetricResponseCompoundDocument)
    assert single.data.attributes.integration["category"] == "API"


def test_sdk_query_metric_aggregates(sdk, data):
    query = MetricAggregateQuery(
        data=MetricAggregateQueryResourceObject(
            type=MetricAggregateEnum.METRIC_MINUS_AGGREGATE,
            attributes=MetricAggregateQueryResourceObjectAttributes(
                metric_id=data.metrics[ORDERED],
                measurements=["count", "sum_value", "unique"],
                interval="week",
                filter=[
                    "greater-or-equal(datetime,2025-04-07T00:00:00)",
                    "less-than(datetime,2025-04-21T00:00:00)",
                ],
                by=["$value_currency"],
                timezone="UTC",
            ),
        )
    )
    document = sdk.Metrics.query_metric_aggregates(query)
    assert isinstance(document, PostMetricAggregateResponse)
    attributes = document.data.attributes
    assert attributes.dates == [datetime(2025, 4, 7, tzinfo=UTC), datetime(2025, 4, 14, tzinfo=UTC)]
    rows = {tuple(row.dimensions): row.measurements for row in attributes.data}
    assert rows == {
        ("EUR",): {"count": [1, 0], "sum_value": [20.0, 0], "unique": [1, 0]},
        ("USD",): {"count": [3, 1], "sum_value": [22.5, 1.0], "unique": [2, 1]},
    }
