"""Flows running (flows/entry.py, flows/runner.py, flows/webhooks.py) on both backends, with
the clock under the test's control: an abandoned-cart flow entered by events, its delay run
by advancing the clock, its split, its webhook to a receiver in the test (retried, with one
idempotency key) and its email in the outbox — and the events that enter nothing, each with
its recorded reason (backfill, trigger filter, draft flow, re-entry)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import pytest
from conftest import ADMIN, PRIVATE_KEY, Server, bulk_body, bulk_event, event_body
from test_flows_api import abandoned_cart
from test_list_members import change, new_list, new_profiles

from trackhouse.backends import STORE_FILE

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


class Receiver:
    """A local webhook receiver: records each request, answers with the next planned status
    (200 once the plan is used up)."""

    def __init__(self, plan: list[int] | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.plan = list(plan or [])
        self.delay = 0.0  # seconds before each answer
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                time.sleep(receiver.delay)
                status = receiver.plan.pop(0) if receiver.plan else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _webhook_flow(server: Server, api: httpx.Client, url: str, body: str | None = None) -> str:
    cart, placed = _metric(server, api, "Added to Cart"), _metric(server, api, "Placed Order")
    definition = abandoned_cart(cart, placed)
    definition["actions"][2]["data"]["message"]["url"] = url
    if body is not None:
        definition["actions"][2]["data"]["message"]["body"] = body
    body = {"data": {"type": "flow", "attributes": {"name": "Hook", "definition": definition}}}
    r = api.post("/api/flows", json=body)
    assert r.status_code == 201, r.text
    flow_id: str = r.json()["data"]["id"]
    live = {"data": {"type": "flow", "id": flow_id, "attributes": {"status": "live"}}}
    assert api.patch(f"/api/flows/{flow_id}", json=live).status_code == 200
    return flow_id


def _deliveries(admin: httpx.Client) -> list[dict[str, Any]]:
    r = admin.get("/admin/webhook-deliveries")
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["data"]
    return found


def test_the_webhook_is_posted_with_its_headers_and_rendered_body(
    world: tuple[Server, httpx.Client, httpx.Client], receiver: Receiver
) -> None:
    server, api, admin = world
    template = (
        '{"email": "{{ person.email }}", "count": {{ event.Count }}, "price": {{ event.Price }}}'
    )
    flow_id = _webhook_flow(server, api, receiver.url, template)
    item = {"ItemName": "Kite", "Count": 3, "Price": 12.5}
    _send(api, "ivy@example.com", "Added to Cart", value=99, properties=item)
    server.settle()
    assert receiver.requests == []  # 4 hours to go
    assert admin.post("/admin/clock/advance", json={"seconds": 4 * 3600}).status_code == 200
    ((headers, body),) = receiver.requests
    assert msgspec.json.decode(body) == {"email": "ivy@example.com", "count": 3, "price": 12.5}
    assert headers["x-shop"] == "demo" and headers["content-type"] == "application/json"
    (delivery,) = _deliveries(admin)
    assert headers["idempotency-key"] == delivery["idempotency_key"]
    assert delivery["status"] == "delivered" and delivery["flow_id"] == flow_id
    assert [a["status"] for a in delivery["attempts"]] == [200]
    assert delivery["attempts"][0]["at"] == "2026-03-02T13:00:00+00:00"
    (email,) = admin.get("/admin/outbox").json()["data"]  # the step after the webhook
    assert email["subject"] == "You left Kite"


def test_an_attempt_that_ends_after_a_reset_leaves_nothing_behind(
    world: tuple[Server, httpx.Client, httpx.Client], receiver: Receiver
) -> None:
    """The account is reset while its webhook is being posted: the attempt's result, recorded
    when the answer comes, is not kept for a delivery that is gone."""
    server, api, admin = world
    _webhook_flow(server, api, receiver.url)
    _send(api, "late@example.com", "Added to Cart", value=99, properties={"ItemName": "Kite"})
    server.settle()
    receiver.delay = 3.0
    advance = threading.Thread(target=lambda: server.client(**ADMIN).post(
        "/admin/clock/advance", json={"seconds": 4 * 3600}, timeout=60))  # fmt: skip
    advance.start()
    deadline = time.monotonic() + 20
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert receiver.requests, "the webhook was not posted"
    assert admin.post("/admin/reset").status_code == 200
    advance.join(60)
    time.sleep(receiver.delay)  # the answer has come and its result is recorded
    server.settle()
    assert server.query(STORE_FILE, "SELECT count(*) FROM webhook_attempts") == [(0,)]
    assert server.query(STORE_FILE, "SELECT count(*) FROM webhook_deliveries") == [(0,)]


def test_retried_on_503_with_one_key_and_not_on_400(
    world: tuple[Server, httpx.Client, httpx.Client], receiver: Receiver
) -> None:
    server, api, admin = world
    _webhook_flow(server, api, receiver.url)
    receiver.plan = [503, 429, 200]
    _send(api, "jo@example.com", "Added to Cart", value=99, time="2026-03-01T00:00:00Z")
    server.settle()  # overdue: sent at once; the retries wait for the clock
    assert len(receiver.requests) == 1
    admin.post("/admin/clock/advance", json={"seconds": 60})
    assert len(receiver.requests) == 3
    assert len({h["idempotency-key"] for h, _ in receiver.requests}) == 1
    (delivery,) = _deliveries(admin)
    assert [a["status"] for a in delivery["attempts"]] == [503, 429, 200]
    assert delivery["status"] == "delivered"
    # A 400 is not retried.
    receiver.plan = [400]
    _send(api, "kim@example.com", "Added to Cart", value=99, time="2026-03-01T00:00:00Z")
    server.settle()
    admin.post("/admin/clock/advance", json={"seconds": 86400})
    failed = [d for d in _deliveries(admin) if d["status"] == "failed"]
    assert len(failed) == 1 and [a["status"] for a in failed[0]["attempts"]] == [400]
    assert failed[0]["detail"] == "answered 400"


def test_retries_stop_after_17_over_a_day(
    world: tuple[Server, httpx.Client, httpx.Client], receiver: Receiver
) -> None:
    server, api, admin = world
    _webhook_flow(server, api, receiver.url)
    receiver.plan = [500] * 30
    _send(api, "lee@example.com", "Added to Cart", value=99, time="2026-03-01T00:00:00Z")
    server.settle()
    r = admin.post("/admin/clock/advance", json={"seconds": 86400 - 60})
    assert r.status_code == 200, r.text
    assert len(receiver.requests) == 17  # the first, then 16 retries within the day
    admin.post("/admin/clock/advance", json={"seconds": 3600})
    (delivery,) = _deliveries(admin)
    assert len(delivery["attempts"]) == 18 and delivery["status"] == "failed"
    first, last = delivery["attempts"][0]["at"], delivery["attempts"][-1]["at"]
    span = datetime.fromisoformat(last) - datetime.fromisoformat(first)
    assert timedelta(hours=23, minutes=59) < span <= timedelta(hours=24)


def test_by_default_webhooks_go_to_public_https_only(start_server) -> None:
    """Without --allow-http-webhooks: an http URL is refused when the flow is created, and an
    https URL on a loopback address fails when it is attempted, never called."""
    server: Server = start_server(TRACKHOUSE_ALLOW_HTTP_WEBHOOKS="0")
    headers = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": "2026-10-15"}
    with server.client(**headers) as api, server.client(**ADMIN) as admin:
        cart, placed = _metric(server, api, "Added to Cart"), _metric(server, api, "Placed")
        definition = abandoned_cart(cart, placed)
        definition["actions"][2]["data"]["message"]["url"] = "http://127.0.0.1:9/hook"
        body = {"data": {"type": "flow", "attributes": {"name": "x", "definition": definition}}}
        r = api.post("/api/flows", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["source"]["pointer"].endswith("/actions/2/data/message/url")
        definition["actions"][2]["data"]["message"]["url"] = "https://127.0.0.1:9/hook"
        flow_id = api.post("/api/flows", json=body).json()["data"]["id"]
        live = {"data": {"type": "flow", "id": flow_id, "attributes": {"status": "live"}}}
        api.patch(f"/api/flows/{flow_id}", json=live)
        _send(api, "max@example.com", "Added to Cart", value=99, time="2026-01-01T00:00:00Z")
        server.settle()
        (delivery,) = _deliveries(admin)
        assert delivery["status"] == "failed" and "not a public address" in delivery["detail"]
        assert [a["status"] for a in delivery["attempts"]] == [None]


def _group_flow(api: httpx.Client, kind: str, group_id: str) -> str:
    definition = {
        "triggers": [{"type": kind, "id": group_id}],
        "entry_action_id": "hello",
        "actions": [{"temporary_id": "hello", "type": "send-email", "links": {"next": None},
                     "data": {"status": "live", "message": {"subject_line": f"Welcome ({kind})"}}}],
    }  # fmt: skip
    body = {"data": {"type": "flow", "attributes": {"name": kind, "definition": definition}}}
    r = api.post("/api/flows", json=body)
    assert r.status_code == 201, r.text
    flow_id: str = r.json()["data"]["id"]
    assert r.json()["data"]["attributes"]["trigger_type"] == "Added to List"
    live = {"data": {"type": "flow", "id": flow_id, "attributes": {"status": "live"}}}
    assert api.patch(f"/api/flows/{flow_id}", json=live).status_code == 200
    return flow_id


def test_list_and_segment_joins_enter_their_flows(
    world: tuple[Server, httpx.Client, httpx.Client],
) -> None:
    """Added to a list: its flow runs. A segment: a profile that newly qualifies through its
    data enters; one that qualified when the segment was made does not (Klaviyo's rule)."""
    server, api, admin = world
    (ann, bob) = new_profiles(server, api, 2, plan="gold")
    list_id = new_list(api)
    _group_flow(api, "list", list_id)
    assert change(api, "POST", list_id, [ann]).status_code == 204
    server.settle()
    sent = admin.get("/admin/outbox").json()["data"]
    assert len(sent) == 1, str(admin.get("/admin/flow-runs").json())
    (welcome,) = sent
    assert welcome["profile_id"] == ann and welcome["subject"] == "Welcome (list)"

    plan = {"type": "string", "operator": "equals", "value": "gold"}
    gold = {"type": "profile-property", "property": "properties['plan']", "filter": plan}
    nobody = {**gold, "filter": {**plan, "value": "platinum"}}
    segment = {"condition_groups": [{"conditions": [nobody]}]}
    body = {"data": {"type": "segment", "attributes": {"name": "Gold", "definition": segment}}}
    segment_id = api.post("/api/segments", json=body).json()["data"]["id"]
    server.settle()
    _group_flow(api, "segment", segment_id)  # live before the edit that makes ann and bob join
    gold_only = {"condition_groups": [{"conditions": [gold]}]}
    edit = {"data": {"type": "segment", "id": segment_id, "attributes": {"definition": gold_only}}}
    assert api.patch(f"/api/segments/{segment_id}", json=edit).status_code == 200
    server.settle()  # they joined by the edited definition: no flow enters on that
    members = api.get(f"/api/segments/{segment_id}/relationships/profiles").json()["data"]
    assert {m["id"] for m in members} == {ann, bob}
    (cyd,) = new_profiles(server, api, 1, plan="silver")
    email = api.get(f"/api/profiles/{cyd}").json()["data"]["attributes"]["email"]
    upgrade = event_body(email, profile_attributes={"email": email, "properties": {"plan": "gold"}})
    assert api.post("/api/events", json=upgrade).status_code == 202
    server.settle()
    segment_mail = [m for m in admin.get("/admin/outbox").json()["data"]
                    if m["subject"] == "Welcome (segment)"]  # fmt: skip
    assert [m["profile_id"] for m in segment_mail] == [cyd]
    assert bob not in {r["profile_id"] for r in admin.get("/admin/flow-runs").json()["data"]}


def test_the_flows_status_is_its_actions_status(
    world: tuple[Server, httpx.Client, httpx.Client],
) -> None:
    """An email action created with no status (a draft) sends once the flow is set live, and
    queues without sending once it is set manual (Klaviyo's statuses)."""
    server, api, admin = world
    viewed = _metric(server, api, "Viewed Product")
    definition = {
        "triggers": [{"type": "metric", "id": viewed}],
        "entry_action_id": "mail",
        "actions": [{"temporary_id": "mail", "type": "send-email", "links": {"next": None},
                     "data": {"message": {"subject_line": "Hi"}}}],
    }  # fmt: skip
    body = {"data": {"type": "flow", "attributes": {"name": "s", "definition": definition}}}
    flow_id = api.post("/api/flows", json=body).json()["data"]["id"]
    for status, email in (("live", "sent@example.com"), ("manual", "queued@example.com")):
        patch = {"data": {"type": "flow", "id": flow_id, "attributes": {"status": status}}}
        assert api.patch(f"/api/flows/{flow_id}", json=patch).status_code == 200
        stored = api.get(f"/api/flows/{flow_id}", params={"additional-fields[flow]": "definition"})
        (action,) = stored.json()["data"]["attributes"]["definition"]["actions"]
        assert action["data"]["status"] == status
        _send(api, email, "Viewed Product")
        server.settle()
    outbox = {m["recipient"]: m["status"] for m in admin.get("/admin/outbox").json()["data"]}
    assert outbox == {"sent@example.com": "sent", "queued@example.com": "queued"}


def test_edited_and_deleted_actions_are_what_runs(
    world: tuple[Server, httpx.Client, httpx.Client],
) -> None:
    """PATCH /api/flow-actions/{id} changes what a waiting profile gets next. A profile waits
    for its next step, scheduled when the delay ran: DELETE of that next action ends its run
    (`action_deleted`), and the next profile goes where the deleted action led."""
    server, api, admin = world
    flow_id, _, _ = _live_cart_flow(server, api)
    actions = api.get(f"/api/flows/{flow_id}/flow-actions").json()["data"]
    by_type = {a["attributes"]["definition"]["type"]: a["attributes"]["definition"]
               for a in actions}  # fmt: skip
    item = {"ItemName": "Red Hat"}
    _send(api, "ann@example.com", "Added to Cart", value=80, properties=item)
    server.settle()
    mail = by_type["send-email"]
    mail["data"]["message"]["subject_line"] = "Edited: {{ event.ItemName }}"
    body = {"data": {"type": "flow-action", "id": mail["id"], "attributes": {"definition": mail}}}
    assert api.patch(f"/api/flow-actions/{mail['id']}", json=body).status_code == 200
    assert admin.post("/admin/clock/advance", json={"seconds": 4 * 3600}).status_code == 200
    (message,) = admin.get("/admin/outbox").json()["data"]
    assert message["subject"] == "Edited: Red Hat" and message["recipient"] == "ann@example.com"

    _send(api, "cy@example.com", "Added to Cart", value=80, properties=item)
    server.settle()  # cy waits 4 hours for the split
    split = by_type["conditional-split"]
    assert api.delete(f"/api/flow-actions/{split['id']}").status_code == 204
    _send(api, "dee@example.com", "Added to Cart", value=80, properties=item)
    assert admin.post("/admin/clock/advance", json={"seconds": 4 * 3600}).status_code == 200
    runs = admin.get("/admin/flow-runs", params={"flow_id": flow_id}).json()["data"]
    assert sorted(r["status"] for r in runs) == ["completed", "completed", "exited"]
    (cy,) = [r for r in runs if r["status"] == "exited"]
    assert cy["steps"][-1]["outcome"] == "exited" and cy["steps"][-1]["detail"] == "action_deleted"
    (dee,) = [r for r in runs if r["status"] == "completed" and r["id"] != message["run_id"]]
    assert not {"true", "false"} & {s["outcome"] for s in dee["steps"]}  # no split on its way
    recipients = [m["recipient"] for m in admin.get("/admin/outbox").json()["data"]]
    assert sorted(recipients) == ["ann@example.com", "dee@example.com"]


def test_a_costly_template_skips_its_message_and_processing_goes_on(
    world: tuple[Server, httpx.Client, httpx.Client],
) -> None:
    """A subject that doubles itself forty times through `{% with %}` (flows/render.py's
    bounds): the email is skipped, saying why, and the next event is processed as usual."""
    server, api, admin = world
    viewed = _metric(server, api, "Viewed Product")
    costly = "".join(
        f"{{% with v{n}=v{n - 1}|add:v{n - 1} %}}"
        if n
        else "{% with v0=event.ItemName|add:event.ItemName %}"
        for n in range(40)
    )
    costly += "{{ v39|length }}" + "{% endwith %}" * 40  # fmt: skip
    definition = {
        "triggers": [{"type": "metric", "id": viewed}],
        "entry_action_id": "mail",
        "actions": [{"temporary_id": "mail", "type": "send-email", "links": {"next": None},
                     "data": {"status": "live", "message": {"subject_line": costly}}}],
    }  # fmt: skip
    body = {"data": {"type": "flow", "attributes": {"name": "costly", "definition": definition}}}
    r = api.post("/api/flows", json=body)
    assert r.status_code == 201, r.text
    flow_id = r.json()["data"]["id"]
    live = {"data": {"type": "flow", "id": flow_id, "attributes": {"status": "live"}}}
    assert api.patch(f"/api/flows/{flow_id}", json=live).status_code == 200
    _send(api, "ann@example.com", "Viewed Product", properties={"ItemName": "Shoes"})
    server.settle()
    (message,) = admin.get("/admin/outbox").json()["data"]
    assert message["status"] == "skipped" and "1,000,000 characters" in message["reason"]
    after = _send(api, "bob@example.com", "Placed Order", value=5)
    server.settle()
    assert _outcome(api, after)["outcome"] == "stored"
