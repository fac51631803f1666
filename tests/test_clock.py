"""The account's clock (test control, issue 13): GET/POST /admin/clock and
POST /admin/clock/advance, on both backends. Everything time-based follows it: the time of an
event sent without one, the "at most a year ahead" bound, and segments relative to now."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import ADMIN, PUBLIC_KEY, Server, event_body, single_error
from test_segments import definition, members, new_segment


@pytest.fixture
def admin(server: Server) -> Iterator[httpx.Client]:
    """An admin client; the clock is back on real time after the test (the server is shared)."""
    with server.client(**ADMIN) as client:
        yield client
        assert client.post("/admin/clock", json={"frozen": False}).status_code == 200


def _now(answer: httpx.Response) -> datetime:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) >= {"now", "frozen"}
    return datetime.fromisoformat(body["now"])


def _event_time(server: Server, api: httpx.Client, receipt_id: str) -> str:
    server.settle()
    r = api.get(f"/api/event-receipts/{receipt_id}")
    assert r.status_code == 200, r.text
    (event,) = r.json()["data"]["attributes"]["outcomes"]
    assert event["outcome"] == "stored", event
    r = api.get(f"/api/events/{event['event_id']}")
    assert r.status_code == 200, r.text
    moment: str = r.json()["data"]["attributes"]["datetime"]
    return moment


def test_real_time_until_set(admin: httpx.Client) -> None:
    r = admin.get("/admin/clock")
    assert r.json()["frozen"] is False
    assert abs(_now(r).timestamp() - time.time()) < 5


def test_frozen_clock_times_events_sent_without_time(
    server: Server, api: httpx.Client, admin: httpx.Client
) -> None:
    r = admin.post("/admin/clock", json={"now": "2026-01-01T00:00:00Z"})
    assert r.json() == {"now": "2026-01-01T00:00:00+00:00", "frozen": True}
    time.sleep(1.1)  # frozen: real time passing does not move it
    assert admin.get("/admin/clock").json()["now"] == "2026-01-01T00:00:00+00:00"
    email = f"clock-{uuid.uuid4().hex[:8]}@example.com"
    r = api.post("/api/events", json=event_body(email))
    assert r.status_code == 202, r.text
    assert _event_time(server, api, r.headers["Trackhouse-Receipt"]) == "2026-01-01T00:00:00+00:00"
    # The legacy Track API too.
    payload = {"token": PUBLIC_KEY, "event": "Clocked", "customer_properties": {"$email": email}}
    data = base64.b64encode(json.dumps(payload).encode()).decode()
    r = api.get("/api/track", params={"data": data})
    assert r.status_code == 200 and r.text == "1"


def test_a_year_ahead_is_a_year_ahead_of_the_clock(api: httpx.Client, admin: httpx.Client) -> None:
    admin.post("/admin/clock", json={"now": "2025-01-01T00:00:00Z"})
    ahead = event_body(time="2026-02-01T00:00:00Z")  # in real time's past, over a year ahead
    error = single_error(api.post("/api/events", json=ahead), 400)
    assert error["source"]["pointer"] == "/data/attributes/time"
    within = event_body(time="2025-12-01T00:00:00Z")
    assert api.post("/api/events", json=within).status_code == 202


def test_advance_moves_now_by_exactly_that_much(admin: httpx.Client) -> None:
    admin.post("/admin/clock", json={"now": "2026-03-01T12:00:00Z"})
    r = admin.post("/admin/clock/advance", json={"seconds": 3600.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["from"] == "2026-03-01T12:00:00+00:00"
    assert body["now"] == "2026-03-01T13:00:00.500000+00:00" and body["frozen"] is True
    assert isinstance(body["ran"], list)
    r = admin.post("/admin/clock/advance", json={"to": "2026-03-08T00:00:00+01:00"})
    assert r.json()["now"] == "2026-03-07T23:00:00+00:00"
    assert admin.post("/admin/clock/advance", json={"seconds": 0}).json()["now"] == (
        "2026-03-07T23:00:00+00:00"
    )


def test_a_running_clock_runs_from_where_it_was_set(admin: httpx.Client) -> None:
    r = admin.post("/admin/clock", json={"now": "2030-06-01T00:00:00Z", "frozen": False})
    assert r.json()["frozen"] is False
    time.sleep(1.2)
    moved = _now(admin.get("/admin/clock"))
    assert timedelta(seconds=1) <= moved - datetime(2030, 6, 1, tzinfo=UTC) < timedelta(seconds=10)
    # advance on a running clock: an offset, and it keeps running
    r = admin.post("/admin/clock/advance", json={"seconds": 86400})
    assert r.json()["frozen"] is False
    assert timedelta(days=1) <= _now(r) - moved < timedelta(days=1, seconds=10)
    # {"frozen": true}: frozen where it is; {"frozen": false}: real time again
    frozen = admin.post("/admin/clock", json={"frozen": True}).json()
    assert frozen["frozen"] is True and frozen["now"].startswith("2030-06-02")
    real = admin.post("/admin/clock", json={"frozen": False})
    assert real.json()["frozen"] is False and abs(_now(real).timestamp() - time.time()) < 5


@pytest.mark.parametrize("frozen", [True, False])
def test_advances_at_once_add_up(server: Server, admin: httpx.Client, frozen: bool) -> None:
    """Each advance moves the clock from where it finds it: 8 of an hour each, sent at once
    (on threads: the server's handlers overlap), move it 8 hours, frozen or running."""
    admin.post("/admin/clock", json={"now": "2031-01-01T00:00:00Z", "frozen": frozen})
    start = _now(admin.get("/admin/clock"))

    def advance(_: int) -> int:
        with server.client(**ADMIN) as c:
            return c.post("/admin/clock/advance", json={"seconds": 3600}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(advance, range(8))) == [200] * 8
    moved = _now(admin.get("/admin/clock")) - start
    if frozen:
        assert moved == timedelta(hours=8)
    else:  # and the seconds the calls took
        assert timedelta(hours=8) <= moved < timedelta(hours=8, seconds=30)


BAD_SETTINGS: list[tuple[Any, str]] = [
    ({}, ""),
    ({"now": "yesterday"}, "/now"),
    ({"now": "1969-12-31T23:59:59Z"}, "/now"),
    ({"now": "3000-01-01T00:00:00Z"}, "/now"),
    ({"now": "9999-12-31T23:59:59-23:59"}, "/now"),
    ({"now": 1700000000}, "/now"),
    ({"frozen": "no"}, "/frozen"),
    ({"now": "2026-01-01T00:00:00Z", "speed": 2}, "/speed"),
    ([], "/data"),  # (msgspec's root-level errors point at /data, as for JSON:API bodies)
]


@pytest.mark.parametrize(("body", "pointer"), BAD_SETTINGS)
def test_bad_settings_are_400s(admin: httpx.Client, body: Any, pointer: str) -> None:
    error = single_error(admin.post("/admin/clock", json=body), 400)
    assert error["source"]["pointer"] == pointer
    assert admin.get("/admin/clock").json()["frozen"] is False  # nothing was changed


BAD_ADVANCES: list[tuple[Any, str]] = [
    ({}, ""),
    ({"seconds": 1, "to": "2026-01-02T00:00:00Z"}, ""),
    ({"seconds": -1}, "/seconds"),
    ({"seconds": 1e300}, "/seconds"),
    ({"seconds": "60"}, "/seconds"),
    ({"seconds": True}, "/seconds"),
    ({"to": "2025-12-31T23:59:59Z"}, "/to"),  # before now
    ({"to": "not a date"}, "/to"),
    ({"to": "3000-01-01T00:00:00Z"}, "/to"),
]


@pytest.mark.parametrize(("body", "pointer"), BAD_ADVANCES)
def test_bad_advances_are_400s(admin: httpx.Client, body: Any, pointer: str) -> None:
    admin.post("/admin/clock", json={"now": "2026-01-01T00:00:00Z"})
    error = single_error(admin.post("/admin/clock/advance", json=body), 400)
    assert error["source"]["pointer"] == pointer
    assert admin.get("/admin/clock").json()["now"] == "2026-01-01T00:00:00+00:00"


def test_only_admin_keys(server: Server, api: httpx.Client) -> None:
    """The private key (no trackhouse:admin scope) can neither read nor set the clock."""
    assert api.get("/admin/clock").status_code == 403
    assert api.post("/admin/clock", json={"now": "2026-01-01T00:00:00Z"}).status_code == 403
    assert api.post("/admin/clock/advance", json={"seconds": 1}).status_code == 403
    with server.client() as anonymous:
        assert anonymous.get("/admin/clock").status_code == 401


def test_advance_computes_segments_relative_to_now(
    server: Server, api: httpx.Client, admin: httpx.Client
) -> None:
    """A profile that viewed a product "in the last day" leaves the segment when the clock is
    advanced two days, with no new event: the advance computes the segment again."""
    admin.post("/admin/clock", json={"now": "2026-05-01T10:00:00Z"})
    metric = f"Viewed {uuid.uuid4().hex[:8]}"
    email = f"relative-{uuid.uuid4().hex[:8]}@example.com"
    r = api.post("/api/events", json=event_body(email, metric=metric))
    assert r.status_code == 202
    server.settle()
    receipt = api.get(f"/api/event-receipts/{r.headers['Trackhouse-Receipt']}").json()
    (event,) = receipt["data"]["attributes"]["outcomes"]
    profile_id = event["profile_id"]
    metric_id = api.get(f"/api/events/{event['event_id']}/metric").json()["data"]["id"]
    last_day = {"type": "date", "operator": "in-the-last", "unit": "day", "quantity": 1}
    viewed = {
        "type": "profile-metric",
        "metric_id": metric_id,
        "measurement": "count",
        "measurement_filter": {"type": "numeric", "operator": "greater-than", "value": 0},
        "timeframe_filter": last_day,
    }
    segment_id = new_segment(api, definition([viewed]))["id"]
    server.settle()
    assert members(api, segment_id, [profile_id]) == {profile_id}
    r = admin.post("/admin/clock/advance", json={"seconds": 3600})  # still within the day
    assert members(api, segment_id, [profile_id]) == {profile_id}
    r = admin.post("/admin/clock/advance", json={"seconds": 2 * 86400})
    assert r.status_code == 200, r.text
    assert {"type": "segment-computation", "id": segment_id,
            "at": "2026-05-03T11:00:00+00:00"} in r.json()["ran"]  # fmt: skip
    assert members(api, segment_id, [profile_id]) == set()  # waited for: no settle needed
    assert api.delete(f"/api/segments/{segment_id}").status_code == 204


def test_reset_returns_the_clock_to_real_time(start_server) -> None:
    server: Server = start_server()
    with server.client(**ADMIN) as admin:
        admin.post("/admin/clock", json={"now": "2026-01-01T00:00:00Z"})
        assert admin.post("/admin/reset").status_code == 200
        r = admin.get("/admin/clock")
        assert r.json()["frozen"] is False and abs(_now(r).timestamp() - time.time()) < 5
