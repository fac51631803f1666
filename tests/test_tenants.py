"""Invariant 5: a key of one account never reads, counts, pages into or alters another's data."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import (
    ADMIN_KEY,
    NEWEST,
    PRIVATE_KEY,
    bulk_body,
    bulk_event,
    event_body,
    single_error,
)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    from conftest import Server, make_env

    server = Server(tmp_path_factory.mktemp("tenants"), make_env()).start()
    out = subprocess.run(
        [sys.executable, "-m", "trackhouse", "accounts", "create", "--public-key", "OthR22"]
        + [*server.where()],
        capture_output=True,
        text=True,
        check=True,
    )
    other_key = out.stdout.split("private key:")[1].strip()
    a = server.client(Authorization=f"Klaviyo-API-Key {PRIVATE_KEY}", revision=NEWEST)
    b = server.client(Authorization=f"Klaviyo-API-Key {other_key}", revision=NEWEST)
    receipt_a = a.post("/api/events", json=event_body(email="a@klaviyo-demo.com", metric="A only"))
    job_a = a.post(
        "/api/event-bulk-create-jobs",
        json=bulk_body([({"email": "a2@klaviyo-demo.com"}, [bulk_event("A only")] * 1)]),
    )
    for n in range(3):
        assert (
            b.post(
                "/api/events", json=event_body(email=f"b{n}@klaviyo-demo.com", metric="B only")
            ).status_code
            == 202
        )
    server.settle()
    yield server, a, b, receipt_a.headers["Trackhouse-Receipt"], job_a.json()["data"]["id"]
    a.close()
    b.close()
    server.stop()


def test_lists_show_only_the_callers_data(two):
    _, a, b, _, _ = two
    assert {m["attributes"]["name"] for m in b.get("/api/metrics").json()["data"]} == {"B only"}
    assert {m["attributes"]["name"] for m in a.get("/api/metrics").json()["data"]} == {"A only"}
    events_b = b.get("/api/events").json()["data"]
    assert len(events_b) == 3
    emails_b = {p["attributes"]["email"] for p in b.get("/api/profiles").json()["data"]}
    assert emails_b == {"b0@klaviyo-demo.com", "b1@klaviyo-demo.com", "b2@klaviyo-demo.com"}


def test_ids_of_another_account_are_not_found(two):
    _, a, b, receipt_a, job_a = two
    event_a = a.get("/api/events").json()["data"][0]
    profile_a = event_a["relationships"]["profile"]["data"]["id"]
    metric_a = event_a["relationships"]["metric"]["data"]["id"]
    for path in (
        f"/api/events/{event_a['id']}",
        f"/api/events/{event_a['id']}/profile",
        f"/api/events/{event_a['id']}/relationships/metric",
        f"/api/profiles/{profile_a}",
        f"/api/metrics/{metric_a}",
        f"/api/event-receipts/{receipt_a}",
        f"/api/event-bulk-create-jobs/{job_a}",
    ):
        assert single_error(b.get(path), 404)["code"] == "not_found", path
    # Filters naming the other account's ids find nothing, and count nothing.
    assert (
        b.get("/api/events", params={"filter": f'equals(profile_id,"{profile_a}")'}).json()["data"]
        == []
    )
    assert (
        b.get("/api/profiles", params={"filter": 'equals(email,"a@klaviyo-demo.com")'}).json()[
            "data"
        ]
        == []
    )
    body = {
        "data": {
            "type": "metric-aggregate",
            "attributes": {
                "metric_id": metric_a,
                "measurements": ["count"],
                "filter": [
                    "greater-or-equal(datetime,2020-01-01T00:00:00Z)",
                    "less-than(datetime,2030-01-01T00:00:00Z)",
                ],
                "interval": "month",
            },
        }
    }
    assert single_error(b.post("/api/metric-aggregates", json=body), 400)["source"][
        "pointer"
    ].endswith("/metric_id")


def test_a_cursor_from_another_account_pages_only_the_callers_data(two):
    _, a, b, _, _ = two
    first_a = a.get("/api/events", params={"page[size]": 1}).json()
    cursor = first_a["links"]["next"].split("page%5Bcursor%5D=")[1]
    page_b = b.get("/api/events", params={"page[size]": 10, "page[cursor]": cursor}).json()
    metric_ids = {e["relationships"]["metric"]["data"]["id"] for e in page_b["data"]}
    metrics_b = {m["id"] for m in b.get("/api/metrics").json()["data"]}
    assert metric_ids and metric_ids <= metrics_b


def test_public_key_writes_land_in_its_own_account(two):
    server, a, b, _, _ = two
    with server.client(revision=NEWEST) as c:
        r = c.post(
            "/client/events?company_id=OthR22",
            json=event_body(email="c@klaviyo-demo.com", metric="B client"),
        )
        assert r.status_code == 202
    server.settle()
    assert "B client" in {m["attributes"]["name"] for m in b.get("/api/metrics").json()["data"]}
    assert "B client" not in {m["attributes"]["name"] for m in a.get("/api/metrics").json()["data"]}


def test_flows_and_clocks_are_the_accounts_own(two):
    """A flow, its actions and messages, and the clock: another account's key finds none of
    them, cannot trigger a flow on the first account's metric, and keeps its own clock."""
    server, a, b, _, _ = two
    metric_a = a.get("/api/events").json()["data"][0]["relationships"]["metric"]["data"]["id"]
    definition = {
        "triggers": [{"type": "metric", "id": metric_a}],
        "entry_action_id": "mail",
        "actions": [{"temporary_id": "mail", "type": "send-email", "links": {"next": None},
                     "data": {"status": "live", "message": {"subject_line": "A"}}}],
    }  # fmt: skip
    body = {"data": {"type": "flow", "attributes": {"name": "A's", "definition": definition}}}
    r = a.post("/api/flows", json=body)
    assert r.status_code == 201, r.text
    flow_id = r.json()["data"]["id"]
    (action,) = r.json()["data"]["attributes"]["definition"]["actions"]
    message = a.get(f"/api/flow-actions/{action['id']}").json()["data"]["relationships"]
    message_id = message["flow-messages"]["data"][0]["id"]
    paths = [f"/api/flows/{flow_id}", f"/api/flows/{flow_id}/flow-actions",
             f"/api/flow-actions/{action['id']}", f"/api/flow-messages/{message_id}"]  # fmt: skip
    for path in paths:
        assert single_error(b.get(path), 404)["code"] == "not_found", path
    live = {"data": {"type": "flow", "id": flow_id, "attributes": {"status": "live"}}}
    assert single_error(b.patch(f"/api/flows/{flow_id}", json=live), 404)
    assert b.delete(f"/api/flows/{flow_id}").status_code == 404
    assert flow_id not in {f["id"] for f in b.get("/api/flows").json()["data"]}
    error = single_error(b.post("/api/flows", json=body), 400)  # A's metric is not B's
    assert error["source"]["pointer"].endswith("/triggers/0/id")
    # A's admin key sets A's clock; B's account stays on real time (B has no admin key here:
    # its events are timed by its own clock, which is real).
    admin = server.client(Authorization=f"Klaviyo-API-Key {ADMIN_KEY}")
    with admin:
        assert admin.post("/admin/clock", json={"now": "2026-01-01T00:00:00Z"}).status_code == 200
        try:
            r = b.post("/api/events", json=event_body(email="b0@klaviyo-demo.com", metric="B t"))
            server.settle()
            receipt = b.get(f"/api/event-receipts/{r.headers['Trackhouse-Receipt']}").json()
            (outcome,) = receipt["data"]["attributes"]["outcomes"]
            moment = b.get(f"/api/events/{outcome['event_id']}").json()["data"]["attributes"]
            assert not moment["datetime"].startswith("2026-01-01")
        finally:
            admin.post("/admin/clock", json={"frozen": False})
