"""Every string that is stored, and every stored profile, has a bound: nothing a client sends
grows the log or the store beyond what it sent, and no profile grows without end."""

from __future__ import annotations

import uuid

import pytest
from conftest import NEWEST, bulk_body, bulk_event, event_body, single_error

from trackhouse.process.profiles import MAX_STORED_PROFILE_BYTES


def test_a_huge_revision_header_is_refused_and_not_echoed(server, api):
    """Three bulk requests with a 60 KB revision grew the log by 246 MB: the header was
    copied into every log entry."""
    before = len(server.log_entries())
    body = bulk_body([({"email": f"r{i}@example.com"}, [bulk_event()]) for i in range(50)])
    r = api.post(
        "/api/event-bulk-create-jobs", json=body, headers={"revision": "2026-10-15." + "x" * 60_000}
    )
    error = single_error(r, 400)
    assert error["source"] == {"parameter": "revision"}
    assert len(r.content) < 1000
    assert len(server.log_entries()) == before


def test_a_retired_revision_with_a_long_suffix_is_refused_not_echoed(api):
    r = api.post(
        "/api/events",
        json=event_body(),
        headers={
            "revision": "2022-11-01." + "y" * 5000,
            "X-Klaviyo-Revision-Fall-Forward-Opt-Out": "1",
        },
    )
    single_error(r, 400)
    assert len(r.content) < 1000


def test_a_short_suffix_is_served_and_logged_as_sent(server, api):
    r = api.post("/api/events", json=event_body(), headers={"revision": f"{NEWEST}.pre"})
    assert r.status_code == 202, r.text
    assert server.receipt(r.headers["Trackhouse-Receipt"]).revision == f"{NEWEST}.pre"


@pytest.mark.parametrize("revision_shape", ["jsonapi", "flat"])
def test_a_metric_service_is_bounded_with_a_pointer(api, revision_shape):
    """A 3 MB `service` was accepted, and GET /api/metrics then answered 6.4 MB."""
    big = "s" * 3_000_000
    if revision_shape == "jsonapi":
        body = event_body()
        body["data"]["attributes"]["metric"]["data"]["attributes"]["service"] = big
        r = api.post("/api/events", json=body)
        pointer = "/data/attributes/metric/data/attributes/service"
    else:
        body = {
            "data": {
                "type": "event",
                "attributes": {
                    "profile": {"$email": "flat@example.com"},
                    "metric": {"name": "Flat", "service": big},
                    "properties": {},
                },
            }
        }
        r = api.post("/api/events", json=body, headers={"revision": "2023-02-22"})
        pointer = "/data/attributes/metric/service"
    error = single_error(r, 400)
    assert error["source"] == {"pointer": pointer}
    assert len(r.content) < 1000


def test_a_metric_service_below_the_bound_is_stored(server, api):
    name = f"Bounded {uuid.uuid4().hex[:6]}"
    body = event_body(metric=name)
    body["data"]["attributes"]["metric"]["data"]["attributes"]["service"] = "s" * 127
    assert api.post("/api/events", json=body).status_code == 202
    server.settle()
    metrics = api.get("/api/metrics").json()["data"]
    (metric,) = [m for m in metrics if m["attributes"]["name"] == name]
    assert metric["attributes"]["integration"]["name"] == "s" * 127


def test_a_profile_stops_growing_at_its_bound_and_says_so(server, api):
    """200 appends of 90 KB made a 17 MB profile. Past the bound the change is refused: the
    event is still stored, its outcome says the profile change was not applied."""
    email = f"grow.{uuid.uuid4().hex[:8]}@example.com"
    chunk = "z" * 90_000
    receipts = []
    for n in range(8):  # 8 × 90 KB > 512 KB
        body = event_body(
            unique_id=f"grow-{n}",
            profile_attributes={
                "email": email,
                "meta": {"patch_properties": {"append": {"notes": chunk}}},
            },
        )
        r = api.post("/api/events", json=body)
        assert r.status_code == 202, r.text
        receipts.append(r.headers["Trackhouse-Receipt"])
    server.settle()
    outcomes = [
        api.get(f"/api/event-receipts/{receipt}").json()["data"]["attributes"]["outcomes"][0]
        for receipt in receipts
    ]
    assert {o["outcome"] for o in outcomes} == {"stored"}  # every event is kept
    refused = [o for o in outcomes if o["detail"] and "profile change not applied" in o["detail"]]
    assert 1 <= len(refused) <= 3  # the first five or so fit
    assert outcomes[0]["detail"] is None
    (profile,) = api.get("/api/profiles", params={"filter": f'equals(email,"{email}")'}).json()[
        "data"
    ]
    notes = profile["attributes"]["properties"]["notes"]
    assert len(notes) == len(outcomes) - len(refused)
    stored = len(server.raw_profile(profile["id"]))
    assert stored <= MAX_STORED_PROFILE_BYTES
    events = api.get(
        "/api/events", params={"filter": f'equals(profile_id,"{profile["id"]}")'}
    ).json()["data"]
    assert len(events) == 8


def test_an_identify_past_the_profile_bound_is_rejected(server, api):
    """A profile-only change (legacy Identify) has nothing else to store: its outcome is
    `rejected`, and the reason is readable by its receipt."""
    import base64
    import json

    import httpx
    from conftest import PUBLIC_KEY

    email = f"ident.{uuid.uuid4().hex[:8]}@example.com"
    for n in range(7):
        body = event_body(
            unique_id=f"i-{n}",
            profile_attributes={
                "email": email,
                "meta": {"patch_properties": {"append": {"log": "q" * 90_000}}},
            },
        )
        assert api.post("/api/events", json=body).status_code == 202
    payload = {"token": PUBLIC_KEY, "properties": {"$email": email, "more": "w" * 90_000}}
    data = base64.b64encode(json.dumps(payload).encode()).decode()
    r = httpx.post(f"{server.url}/api/identify", data={"data": data})
    assert r.text == "1"
    server.settle()
    receipt = api.get(f"/api/event-receipts/{r.headers['Trackhouse-Receipt']}").json()
    (outcome,) = receipt["data"]["attributes"]["outcomes"]
    assert outcome["outcome"] == "rejected"
    assert "profile change not applied" in outcome["detail"]
