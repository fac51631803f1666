"""Flows running (flows/entry.py, flows/runner.py) on both backends, with the clock under the
test's control: an abandoned-cart flow entered by events, its delay run by advancing the
clock, its split and its email in the outbox — and the events that enter nothing, each with
its recorded reason (backfill, trigger filter, draft flow, re-entry)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ADMIN_KEY, PRIVATE_KEY, Server, bulk_body, bulk_event, event_body
from test_flows_api import abandoned_cart

ADMIN = {"Authorization": f"Klaviyo-API-Key {ADMIN_KEY}"}
START = "2026-03-02T09:00:00+00:00"


@pytest.fixture
def world(start_server) -> Iterator[tuple[Server, httpx.Client, httpx.Client]]:
    """A server of its own (an account with nothing else in it), its clock frozen at START."""
    server: Server = start_server()
    headers = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": "2026-10-15"}
    with server.client(**headers) as api, server.client(**ADMIN) as admin:
        assert admin.post("/admin/clock", json={"now": START}).status_code == 200
        yield server, api, admin


def _send(api: httpx.Client, email: str, metric: str, **attributes: Any) -> str:
    r = api.post("/api/events", json=event_body(email, metric=metric, **attributes))
    assert r.status_code == 202, r.text
    return r.headers["Trackhouse-Receipt"]


def _outcome(api: httpx.Client, receipt: str) -> dict[str, Any]:
    r = api.get(f"/api/event-receipts/{receipt}")
    assert r.status_code == 200, r.text
    (outcome,) = r.json()["data"]["attributes"]["outcomes"]
    return outcome


def _metric(server: Server, api: httpx.Client, name: str) -> str:
    receipt = _send(api, "seed@example.com", name, backfill=True)
    server.settle()
    event = _outcome(api, receipt)["event_id"]
    metric_id: str = api.get(f"/api/events/{event}/metric").json()["data"]["id"]
    return metric_id


def _live_cart_flow(server: Server, api: httpx.Client) -> tuple[str, str, str]:
    cart, placed = _metric(server, api, "Added to Cart"), _metric(server, api, "Placed Order")
    definition = abandoned_cart(cart, placed)
    definition["actions"][2] = {  # no webhook in this test: the split goes to the email
        **definition["actions"][2], "type": "time-delay",
        "data": {"unit": "minutes", "value": 0},
    }  # fmt: skip
    body = {"data": {"type": "flow", "attributes": {"name": "Cart", "definition": definition}}}
    r = api.post("/api/flows", json=body)
    assert r.status_code == 201, r.text
    flow_id = r.json()["data"]["id"]
    live = {"data": {"type": "flow", "id": flow_id, "attributes": {"status": "live"}}}
    assert api.patch(f"/api/flows/{flow_id}", json=live).status_code == 200
    return flow_id, cart, placed


def _decisions(api: httpx.Client, receipt: str) -> list[str]:
    return [f["decision"] for f in _outcome(api, receipt).get("flows", [])]


def test_abandoned_cart_runs_on_the_clock(world: tuple[Server, httpx.Client, httpx.Client]) -> None:
    server, api, admin = world
    flow_id, _, _ = _live_cart_flow(server, api)
    item = {"ItemName": "Blue Shoes"}
    entered = _send(api, "ann@example.com", "Added to Cart", value=80, properties=item)
    ordered = _send(api, "bob@example.com", "Added to Cart", value=90, properties=item)
    server.settle()
    assert _decisions(api, entered) == ["entered"] and _decisions(api, ordered) == ["entered"]
    runs = admin.get("/admin/flow-runs", params={"flow_id": flow_id}).json()["data"]
    assert len(runs) == 2 and {r["status"] for r in runs} == {"active"}
    for run in runs:  # waiting in the 4-hour delay, scheduled from the event's time
        (step,) = [s for s in run["steps"] if s["outcome"] == "waited"]
        assert step["detail"] == "until 2026-03-02T13:00:00+00:00"
    assert admin.get("/admin/outbox").json()["data"] == []

    # Bob orders within the 4 hours; then the clock passes the delay.
    _send(api, "bob@example.com", "Placed Order", value=90)
    r = admin.post("/admin/clock/advance", json={"seconds": 3 * 3600 + 59 * 60})
    assert r.status_code == 200, r.text
    assert admin.get("/admin/outbox").json()["data"] == []  # a minute short
    r = admin.post("/admin/clock/advance", json={"seconds": 60})
    assert r.status_code == 200, r.text
    assert {s["outcome"] for s in r.json()["ran"] if s["type"] == "flow-step"} >= {"true", "false"}
    (message,) = admin.get("/admin/outbox").json()["data"]
    assert message["recipient"] == "ann@example.com" and message["channel"] == "email"
    assert message["subject"] == "You left Blue Shoes" and message["status"] == "sent"
    assert message["at"] == "2026-03-02T13:00:00+00:00" and message["flow_id"] == flow_id
    runs = {r["profile_id"]: r for r in admin.get("/admin/flow-runs").json()["data"]}
    assert {r["status"] for r in runs.values()} == {"completed"}
    bob = next(r for r in runs.values() if r["id"] != message["run_id"])
    assert [s["outcome"] for s in bob["steps"]] == ["waited", "true"]

    # Re-entry within the 7 days of the criteria enters nothing, and says so.
    again = _send(api, "ann@example.com", "Added to Cart", value=80, properties=item)
    server.settle()
    assert _decisions(api, again) == ["reentry"]
    assert admin.delete("/admin/outbox").json() == {"deleted": 1}


def test_events_that_enter_nothing_say_why(
    world: tuple[Server, httpx.Client, httpx.Client],
) -> None:
    server, api, admin = world
    flow_id, _, _ = _live_cart_flow(server, api)
    backfilled = _send(api, "cat@example.com", "Added to Cart", value=80, backfill=True)
    cheap = _send(api, "dan@example.com", "Added to Cart", value=10)
    other = _send(api, "eve@example.com", "Viewed Product", value=80)
    server.settle()
    assert _decisions(api, backfilled) == ["backfill"]
    assert _decisions(api, cheap) == ["trigger_filter"]
    assert _decisions(api, other) == []  # no flow is triggered by that metric
    draft = {"data": {"type": "flow", "id": flow_id, "attributes": {"status": "draft"}}}
    assert api.patch(f"/api/flows/{flow_id}", json=draft).status_code == 200
    drafted = _send(api, "fay@example.com", "Added to Cart", value=80)
    server.settle()
    assert _decisions(api, drafted) == ["flow_not_live"]
    admin.post("/admin/clock/advance", json={"seconds": 86400})
    assert admin.get("/admin/flow-runs").json()["data"] == []
    assert admin.get("/admin/outbox").json()["data"] == []


def test_an_old_event_runs_its_overdue_steps_at_once(
    world: tuple[Server, httpx.Client, httpx.Client],
) -> None:
    """Steps are anchored to the event's time: an event from yesterday has passed its 4-hour
    delay already, so its email goes out as soon as it is processed, with no advance."""
    server, api, admin = world
    _live_cart_flow(server, api)
    _send(api, "gus@example.com", "Added to Cart", value=80, time="2026-03-01T09:00:00Z",
          properties={"ItemName": "Hat"})  # fmt: skip
    server.settle()
    messages = admin.get("/admin/outbox").json()["data"]
    assert len(messages) == 1, str(admin.get("/admin/flow-runs").json())
    (message,) = messages
    assert message["subject"] == "You left Hat" and message["at"] == START


def test_bulk_jobs_show_each_events_decisions(
    world: tuple[Server, httpx.Client, httpx.Client],
) -> None:
    server, api, _ = world
    flow_id, _, _ = _live_cart_flow(server, api)

    body = bulk_body([
        ({"email": "hal@example.com"}, [bulk_event("Added to Cart", value=70),
                                        bulk_event("Added to Cart", value=5,
                                                   time="2026-03-02T08:00:00Z")]),
    ])  # fmt: skip
    r = api.post("/api/event-bulk-create-jobs", json=body)
    assert r.status_code == 202, r.text
    server.settle()
    job = api.get(f"/api/event-bulk-create-jobs/{r.json()['data']['id']}").json()
    decisions = sorted(d["decision"] for d in job["data"]["attributes"]["flow_decisions"])
    assert decisions == ["entered", "trigger_filter"]
    assert all(d["flow_id"] == flow_id for d in job["data"]["attributes"]["flow_decisions"])
