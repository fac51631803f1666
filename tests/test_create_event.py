"""POST /api/events and POST /client/events: shapes per revision, and every documented limit."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import NEWEST, PRIVATE_KEY, PUBLIC_KEY, event_body, single_error

META_IN_ATTRIBUTES = {
    "email": "sarah.mason@klaviyo-demo.com",
    "meta": {"patch_properties": {"append": {"skus": "92538"}, "unset": "old"}},
}


def post(api, body, revision=NEWEST, path="/api/events"):
    return api.post(path, json=body, headers={"revision": revision})


def logged(api, server, body, revision=NEWEST):
    r = post(api, body, revision)
    assert r.status_code == 202, r.text
    assert r.content == b""
    return server.receipt(r.headers["Trackhouse-Receipt"])


# -- shapes ----------------------------------------------------------------------------------


def test_current_shape_maps_every_profile_and_event_field(api, server):
    profile = {
        "email": "sarah.mason@klaviyo-demo.com",
        "phone_number": "+15005550006",
        "external_id": "63f64a2b",
        "anonymous_id": "anon-1",
        "_kx": "J8fjcn003Wy6b",
        "first_name": "Sarah",
        "last_name": "Mason",
        "organization": "Example Corporation",
        "title": "Regional Manager",
        "locale": "en-US",
        "image": "https://images.example/p.jpg",
        "location": {"city": "New York", "latitude": "40.7128", "longitude": 74.006, "zip": None},
        "properties": {"pseudonym": "Dr. Octopus"},
    }
    s = logged(
        api,
        server,
        event_body(
            profile_attributes=profile,
            time="2022-11-08T00:00:00.750+00:00",
            value=9.99,
            value_currency="USD",
            unique_id="order-1",
        ),
    )
    p, e = s.profile, s.events[0]
    assert (p.email, p.phone_number, p.external_id, p.anonymous_id, p.kx) == (
        "sarah.mason@klaviyo-demo.com",
        "+15005550006",
        "63f64a2b",
        "anon-1",
        "J8fjcn003Wy6b",
    )
    assert p.attributes == {
        "first_name": "Sarah",
        "last_name": "Mason",
        "organization": "Example Corporation",
        "title": "Regional Manager",
        "locale": "en-US",
        "image": "https://images.example/p.jpg",
    }
    assert p.location == {"city": "New York", "latitude": "40.7128", "longitude": 74.006}
    assert p.properties == {"pseudonym": "Dr. Octopus"}
    assert p.may_change_identifiers is True
    assert e.time == int(datetime(2022, 11, 8, tzinfo=UTC).timestamp())  # truncated to the second
    assert (e.value, e.value_currency, e.unique_id, e.metric, e.service) == (
        9.99,
        "USD",
        "order-1",
        "Viewed Product",
        "api",
    )
    assert s.source == "api" and s.metric_cap is None and s.account_id == PUBLIC_KEY


def test_time_defaults_to_receipt_time_to_the_second(api, server):
    before = int(time.time())
    s = logged(api, server, event_body())
    assert before <= s.events[0].time <= int(time.time())
    assert s.events[0].unique_id is None  # the default dedup key is the time (processing)


def test_2023_01_24_flat_profile_and_metric(api, server):
    body = {
        "data": {
            "type": "event",
            "attributes": {
                "profile": {
                    "$email": "flat@klaviyo-demo.com",
                    "$phone_number": "+13239169023",
                    "$first_name": "Flat",
                    "$city": "Boston",
                    "$id": "ext-9",
                    "plan": "trial",
                },
                "metric": {"name": "Placed Order", "service": "shop"},
                "properties": {"n": 1},
                "time": "2022-11-08T00:00:00",
                "value": 5,
            },
        }
    }
    s = logged(api, server, body, revision="2023-01-24")
    assert (s.profile.email, s.profile.phone_number, s.profile.external_id) == (
        "flat@klaviyo-demo.com",
        "+13239169023",
        "ext-9",
    )
    assert s.profile.attributes == {"first_name": "Flat"}
    assert s.profile.location == {"city": "Boston"}
    assert s.profile.properties == {"plan": "trial"}
    assert (s.events[0].metric, s.events[0].service, s.events[0].value) == (
        "Placed Order",
        "shop",
        5.0,
    )
    assert s.metric_cap == 200  # the 200-metrics-per-account rule travels with the event


def test_2023_01_24_refuses_the_jsonapi_shape(api):
    error = single_error(post(api, event_body(), revision="2023-01-24"), 400)
    assert error["source"]["pointer"] == "/data/attributes/metric/data"


def test_2023_07_15_refuses_the_flat_shape(api):
    body = {
        "data": {
            "type": "event",
            "attributes": {
                "profile": {"$email": "a@klaviyo-demo.com"},
                "metric": {"name": "X"},
                "properties": {},
            },
        }
    }
    error = single_error(post(api, body, revision="2023-07-15"), 400)
    assert error["source"]["pointer"].startswith("/data/attributes/")


def test_revisions_before_2023_01_24_fall_forward_to_it(api, server):
    body = {
        "data": {
            "type": "event",
            "attributes": {
                "profile": {"$email": "old@klaviyo-demo.com"},
                "metric": {"name": "Old"},
                "properties": {},
            },
        }
    }
    assert logged(api, server, body, revision="2022-10-17").profile.email == "old@klaviyo-demo.com"
    r = api.post(
        "/api/events",
        json=body,
        headers={"revision": "2022-10-17", "X-Klaviyo-Revision-Fall-Forward-Opt-Out": "1"},
    )
    assert single_error(r, 410)["code"] == "gone"


def test_profile_meta_beside_attributes_before_2024_02_15_inside_until_2026_10_15(api, server):
    inside = event_body(profile_attributes=META_IN_ATTRIBUTES)
    s = logged(api, server, inside, revision="2024-02-15")
    assert s.profile.append == {"skus": "92538"} and s.profile.unset == ["old"]
    error = single_error(post(api, inside, revision="2023-10-15"), 400)
    assert error["source"]["pointer"] == "/data/attributes/profile/data/attributes/meta"

    beside = event_body()
    beside["data"]["attributes"]["profile"]["data"]["meta"] = META_IN_ATTRIBUTES["meta"]
    s = logged(api, server, beside, revision="2023-10-15")
    assert s.profile.append == {"skus": "92538"}
    error = single_error(post(api, beside, revision="2024-02-15"), 400)
    assert error["source"]["pointer"] == "/data/attributes/profile/data/meta"
    # 2026-10-15 (what klaviyo-api 25 sends) has it beside again, as in bulk.
    assert logged(api, server, beside, revision="2026-10-15").profile.unset == ["old"]


def test_value_currency_from_2024_02_15(api, server):
    body = event_body(value=10, value_currency="eur")
    assert logged(api, server, body, revision="2024-02-15").events[0].value_currency == "EUR"
    error = single_error(post(api, body, revision="2023-12-15"), 400)
    assert error["source"]["pointer"] == "/data/attributes/value_currency"
    assert "'value_currency' is not a valid field" in error["detail"]


def test_backfill_and_patch_identifiers_from_2026_04_15(api, server):
    attrs = {
        "email": "multi@klaviyo-demo.com",
        "meta": {"patch_identifiers": {"append": {"email": ["second@klaviyo-demo.com"]}}},
    }
    body = event_body(profile_attributes=attrs, backfill=True)
    s = logged(api, server, body, revision="2026-04-15")
    assert s.events[0].backfill is True
    assert s.profile.add_emails == ["second@klaviyo-demo.com"]
    error = single_error(post(api, event_body(backfill=False), revision="2026-01-15"), 400)
    assert error["source"]["pointer"] == "/data/attributes/backfill"
    no_backfill = event_body(profile_attributes=attrs)
    error = single_error(post(api, no_backfill, revision="2026-01-15"), 400)
    assert error["source"]["pointer"] == (
        "/data/attributes/profile/data/attributes/meta/patch_identifiers"
    )


def test_patch_identifiers_only_patch_emails(api):
    attrs = {
        "email": "a@klaviyo-demo.com",
        "meta": {"patch_identifiers": {"append": {"phone": "x"}}},
    }
    error = single_error(post(api, event_body(profile_attributes=attrs), "2026-07-15"), 400)
    assert error["source"]["pointer"].endswith("/patch_identifiers/append/phone")


@pytest.mark.parametrize(
    ("revision", "allowed"), [("2025-01-15", 300), ("2025-04-15", 400), (NEWEST, 400)]
)
def test_event_property_limit_is_300_then_400_from_2025_04_15(api, revision, allowed):
    ok = event_body(properties={f"p{i}": i for i in range(allowed)})
    assert post(api, ok, revision).status_code == 202
    too_many = event_body(properties={f"p{i}": i for i in range(allowed + 1)})
    error = single_error(post(api, too_many, revision), 400)
    assert error["source"]["pointer"] == "/data/attributes/properties"
    assert str(allowed) in error["detail"]


@pytest.mark.parametrize(
    ("revision", "floor"), [("2026-04-15", 2000), ("2026-07-15", 1990), (NEWEST, 1990)]
)
def test_event_time_floor_is_2000_then_1990_from_2026_07_15(api, revision, floor):
    assert post(api, event_body(time=f"{floor}-01-01T00:00:00Z"), revision).status_code == 202
    error = single_error(post(api, event_body(time=f"{floor - 1}-12-31T23:59:59Z"), revision), 400)
    assert error["source"]["pointer"] == "/data/attributes/time"
    assert str(floor) in error["detail"]
    if floor == 1990:  # between the two floors: refused only by the older rule
        assert post(api, event_body(time="1995-06-01T00:00:00Z"), revision).status_code == 202
    else:
        assert post(api, event_body(time="1995-06-01T00:00:00Z"), revision).status_code == 400


def test_event_time_at_most_a_year_ahead(api):
    soon = (datetime.now(UTC) + timedelta(days=360)).isoformat()
    late = (datetime.now(UTC) + timedelta(days=370)).isoformat()
    assert post(api, event_body(time=soon)).status_code == 202
    error = single_error(post(api, event_body(time=late)), 400)
    assert error["source"]["pointer"] == "/data/attributes/time"


def test_unparsable_time_is_pointed(api):
    error = single_error(post(api, event_body(time="yesterday")), 400)
    assert error["source"]["pointer"] == "/data/attributes/time"


@pytest.mark.parametrize(
    ("properties", "where", "word"),
    [
        ({"s": "x" * (100 * 1024 + 1)}, "/data/attributes/properties/s", "100 KB"),
        ({"a": list(range(4001))}, "/data/attributes/properties/a", "4000"),
        ({"big": 2**63}, "/data/attributes/properties/big", "64"),
    ],
)
def test_string_array_and_integer_limits(api, properties, where, word):
    error = single_error(post(api, event_body(properties=properties)), 400)
    assert error["source"]["pointer"] == where
    assert word in error["detail"]


def test_limits_at_the_boundary_are_accepted(api):
    properties = {"s": "x" * (100 * 1024), "a": list(range(4000)), "big": 2**63 - 1}
    assert post(api, event_body(properties=properties)).status_code == 202


def test_at_most_ten_nested_levels(api):
    def nest(levels):
        value: dict = {"leaf": 1}
        for _ in range(levels):  # levels of objects inside the properties object
            value = {"n": value}
        return value

    assert post(api, event_body(properties=nest(10))).status_code == 202
    error = single_error(post(api, event_body(properties=nest(11))), 400)
    assert error["source"]["pointer"].startswith("/data/attributes/properties/n/n")
    assert "10 nested levels" in error["detail"]


def test_metric_name_must_be_less_than_128_characters(api):
    assert post(api, event_body(metric="m" * 127)).status_code == 202
    error = single_error(post(api, event_body(metric="m" * 128)), 400)
    assert error["source"]["pointer"] == "/data/attributes/metric/data/attributes/name"
    error = single_error(post(api, event_body(metric="  ")), 400)
    assert error["source"]["pointer"] == "/data/attributes/metric/data/attributes/name"


def test_unique_id_is_1_to_255_characters(api):
    assert post(api, event_body(unique_id="u" * 255)).status_code == 202
    for bad in ("", "u" * 256):
        error = single_error(post(api, event_body(unique_id=bad)), 400)
        assert error["source"]["pointer"] == "/data/attributes/unique_id"


def test_profile_needs_an_identifier(api):
    error = single_error(post(api, event_body(profile_attributes={"first_name": "Nobody"})), 400)
    assert error["source"]["pointer"] == "/data/attributes/profile/data/attributes"
    assert "identifier" in error["detail"]


@pytest.mark.parametrize(
    "identifiers",
    [
        {"external_id": "e1"},
        {"anonymous_id": "a1"},
        {"_kx": "kx1"},
        {"phone_number": "+447911123456"},
    ],
)
def test_any_one_identifier_is_enough(api, server, identifiers):
    s = logged(api, server, event_body(profile_attributes=identifiers))
    assert list(s.profile.identifiers().values()) == list(identifiers.values())


def test_profile_id_alone_is_an_identifier(api, server):
    body = event_body(profile_attributes={})
    body["data"]["attributes"]["profile"]["data"]["id"] = "01GDDKASAP8TKDDA2GRZDSVP4H"
    assert logged(api, server, body).profile.id == "01GDDKASAP8TKDDA2GRZDSVP4H"


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "x" * 95 + "@b.com"])
def test_invalid_email_is_refused(api, email):
    error = single_error(post(api, event_body(email=email)), 400)
    assert error["source"]["pointer"] == "/data/attributes/profile/data/attributes/email"
    assert "Invalid email" in error["detail"]


def test_emails_at_test_domains_are_accepted(api, server):
    # Klaviyo silently drops these; we keep them (design.md, Decisions).
    assert (
        logged(api, server, event_body(email="dev@example.com")).profile.email == "dev@example.com"
    )


@pytest.mark.parametrize("phone", ["5005550006", "+1", "+1500555000612345", "+1 (800) CALL-NOW"])
def test_invalid_phone_is_refused(api, phone):
    body = event_body(profile_attributes={"email": "ok@klaviyo-demo.com", "phone_number": phone})
    error = single_error(post(api, body), 400)
    assert error["source"]["pointer"] == "/data/attributes/profile/data/attributes/phone_number"
    assert "+12345678901" in error["detail"]


def test_phone_is_stored_in_e164(api, server):
    body = event_body(profile_attributes={"phone_number": "+1 323-916-9023"})
    assert logged(api, server, body).profile.phone_number == "+13239169023"


def test_profile_object_at_most_95_kb(api):
    big = {"email": "big@klaviyo-demo.com", "properties": {"a": "x" * 60_000, "b": "y" * 40_000}}
    error = single_error(post(api, event_body(profile_attributes=big)), 400)
    assert error["source"]["pointer"] == "/data/attributes/profile/data"


def test_trailing_slash_paths_are_served(api, server):
    r = api.post("/api/events/", json=event_body(), headers={"revision": "2023-07-15"})
    assert r.status_code == 202
    assert server.receipt(r.headers["Trackhouse-Receipt"]).revision == "2023-07-15"


def test_client_events_use_the_public_key_and_cannot_change_identifiers(server):
    with server.client(revision=NEWEST) as c:
        r = c.post(f"/client/events?company_id={PUBLIC_KEY}", json=event_body())
        assert r.status_code == 202
        s = server.receipt(r.headers["Trackhouse-Receipt"])
        assert s.source == "client" and s.profile.may_change_identifiers is False
        assert s.account_id == PUBLIC_KEY
        error = single_error(c.post("/client/events?company_id=nope00", json=event_body()), 401)
        assert error["code"] == "not_authenticated"
        error = single_error(c.post("/client/events", json=event_body()), 400)
        assert error["source"] == {"parameter": "company_id"}


def test_from_2026_10_15_profile_meta_is_taken_beside_or_inside_but_not_both(api, server):
    inside = event_body(profile_attributes=META_IN_ATTRIBUTES)
    assert logged(api, server, inside, revision="2026-10-15").profile.append == {"skus": "92538"}
    both = event_body(profile_attributes=META_IN_ATTRIBUTES)
    both["data"]["attributes"]["profile"]["data"]["meta"] = META_IN_ATTRIBUTES["meta"]
    error = single_error(post(api, both, revision="2026-10-15"), 400)
    assert error["source"]["pointer"] == "/data/attributes/profile/data/attributes/meta"


def test_unset_list_is_limited_to_4000_keys(api):
    attrs = {
        "email": "unset@klaviyo-demo.com",
        "meta": {"patch_properties": {"unset": [f"k{i}" for i in range(4001)]}},
    }
    error = single_error(post(api, event_body(profile_attributes=attrs)), 400)
    assert error["source"]["pointer"].endswith("/meta/patch_properties/unset")


def test_overlong_phone_number_is_refused_without_parsing(api):
    body = event_body(profile_attributes={"phone_number": "+1" + "2" * 100_000})
    error = single_error(post(api, body), 400)
    assert error["source"]["pointer"] == "/data/attributes/profile/data/attributes/phone_number"


def test_emails_at_reserved_test_domains_are_accepted(api, server):
    assert logged(api, server, event_body(email="dev@shop.test")).profile.email == "dev@shop.test"


def test_flat_profile_errors_point_at_the_dollar_field(api):
    body = {
        "data": {
            "type": "event",
            "attributes": {
                "profile": {"$email": "a@klaviyo-demo.com", "$first_name": "x" * 200_000},
                "metric": {"name": "M"},
                "properties": {},
            },
        }
    }
    error = single_error(post(api, body, revision="2023-01-24"), 400)
    assert error["source"]["pointer"] == "/data/attributes/profile/$first_name"
    body["data"]["attributes"]["profile"] = {"$email": "a@klaviyo-demo.com", "x/y": ["z" * 200_000]}
    error = single_error(post(api, body, revision="2023-01-24"), 400)
    assert error["source"]["pointer"] == "/data/attributes/profile/x~1y/0"


def test_rate_limit_headers_are_on_errors_too(start_server):
    server = start_server(TRACKHOUSE_RATE_LIMITS="on")
    with server.client(Authorization=f"Klaviyo-API-Key {PRIVATE_KEY}", revision=NEWEST) as c:
        r = c.post("/api/events", json=event_body(email="bad"))
        assert r.status_code == 400
        assert r.headers["RateLimit-Limit"] == "3500"
        assert int(r.headers["RateLimit-Remaining"]) == 3499
