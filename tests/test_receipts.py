"""Every accepted submission can be looked up (invariant 2): single creates, client creates,
client bulk, Track and Identify all answer with a `Trackhouse-Receipt`, and the receipt shows
each event's outcome — a rejection included."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
from conftest import PUBLIC_KEY, bulk_event, event_body, private_client

from trackhouse.model import Submission


def _outcomes(server, receipt: str) -> list[dict]:
    with private_client(server) as c:
        r = c.get(f"/api/event-receipts/{receipt}")
    assert r.status_code == 200, r.text
    attributes = r.json()["data"]["attributes"]
    assert attributes["status"] == "processed"
    return attributes["outcomes"]


def _b64(payload: dict) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()


def test_track_and_identify_answer_a_receipt_with_their_outcome(server):
    email = f"track.{uuid.uuid4().hex[:8]}@example.com"
    track = {"token": PUBLIC_KEY, "event": "Tracked", "customer_properties": {"$email": email}}
    r = httpx.get(f"{server.url}/api/track", params={"data": _b64(track)})
    assert r.text == "1"
    tracked = r.headers["Trackhouse-Receipt"]
    identify = {"token": PUBLIC_KEY, "properties": {"$email": email, "plan": "gold"}}
    r = httpx.post(f"{server.url}/api/identify", data={"data": json.dumps(identify)})
    assert r.text == "1"
    identified = r.headers["Trackhouse-Receipt"]
    server.settle()
    (event,) = _outcomes(server, tracked)
    (change,) = _outcomes(server, identified)
    assert event["outcome"] == "stored" and event["event_id"]
    assert change["outcome"] == "stored" and change["profile_id"] == event["profile_id"]


def test_a_refused_track_has_no_receipt(server):
    r = httpx.get(f"{server.url}/api/track", params={"data": _b64({"token": PUBLIC_KEY})})
    assert r.text == "0"
    assert "Trackhouse-Receipt" not in r.headers


def test_a_track_for_a_201st_metric_is_rejected_and_says_so(start_server):
    """The legacy API caps an account at 200 metrics: the 201st answered `1` (it was
    accepted) and was rejected in processing, with no way to find out."""
    server = start_server()
    email = "cap@example.com"
    with httpx.Client(base_url=server.url) as c:
        for n in range(200):
            payload = {
                "token": PUBLIC_KEY,
                "event": f"Metric {n}",
                "customer_properties": {"$email": email},
            }
            assert c.get("/api/track", params={"data": _b64(payload)}).text == "1"
        payload = {
            "token": PUBLIC_KEY,
            "event": "One too many",
            "customer_properties": {"$email": email},
        }
        r = c.get("/api/track", params={"data": _b64(payload)})
    assert r.text == "1"
    server.settle()
    (outcome,) = _outcomes(server, r.headers["Trackhouse-Receipt"])
    assert outcome["outcome"] == "rejected"
    assert "200 metrics" in outcome["detail"]


def test_client_bulk_answers_a_receipt_with_every_events_outcome(server):
    email = f"cb.{uuid.uuid4().hex[:8]}@example.com"
    body = {
        "data": {
            "type": "event-bulk-create",
            "attributes": {
                "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
                "events": {
                    "data": [
                        {"type": "event", "attributes": bulk_event(unique_id="a")},
                        {"type": "event", "attributes": bulk_event(unique_id="a")},
                        {"type": "event", "attributes": bulk_event(unique_id="b")},
                    ]
                },
            },
        }
    }
    r = httpx.post(
        f"{server.url}/client/event-bulk-create",
        params={"company_id": PUBLIC_KEY},
        json=body,
        headers={"revision": "2024-10-15"},  # before the repeated-unique_id rule
    )
    assert r.status_code == 202, r.text
    outcomes = _outcomes_after(server, r.headers["Trackhouse-Receipt"])
    assert [o["outcome"] for o in outcomes] == ["stored", "deduplicated", "stored"]


def _outcomes_after(server, receipt: str) -> list[dict]:
    server.settle()
    return _outcomes(server, receipt)


def test_a_client_create_answers_a_receipt(server):
    r = httpx.post(
        f"{server.url}/client/events",
        params={"company_id": PUBLIC_KEY},
        json=event_body(email=f"cl.{uuid.uuid4().hex[:8]}@example.com"),
        headers={"revision": "2026-10-15"},
    )
    assert r.status_code == 202
    (outcome,) = _outcomes_after(server, r.headers["Trackhouse-Receipt"])
    assert outcome["outcome"] == "stored"


def test_every_logged_submission_but_a_bulk_jobs_has_a_receipt(server):
    """(A list's member changes, answered 204 without a body, have neither.)"""
    entries: list[Submission] = server.log_entries()
    assert entries
    for s in entries:
        if s.list_change is not None:
            assert s.job_id is None and s.receipt_id is None, s
            continue
        assert (s.job_id is None) != (s.receipt_id is None), s
