"""Every parameter that becomes an integer or a date is checked at the edge: an id that cannot
exist is a 404, any other value out of range a 400 naming the parameter — never a 500. Times in
filters mean the same instant however they are written. (The property-based sweep over every
endpoint is tests/test_parameter_extremes.py; these pin the cases found by hand.)"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest
from conftest import NEWEST, PRIVATE_KEY, event_body, single_error

# 11 base-62 characters, the shape of Klaviyo's event ids: most are past 2**63.
BIG_IDS = ["zzzzzzzzzzz", "ZZZZZZZZZZZ", "a0000000000", "9zzzzzzzzzz"]


@pytest.mark.parametrize("event_id", BIG_IDS)
@pytest.mark.parametrize(
    "suffix", ["", "/metric", "/profile", "/relationships/metric", "/relationships/profile"]
)
def test_an_event_id_past_any_rowid_is_a_404(api, event_id, suffix):
    error = single_error(api.get(f"/api/events/{event_id}{suffix}"), 404)
    assert error["code"] == "not_found"


def test_legacy_event_paths_with_a_big_id_are_a_404(api):
    for suffix in ("", "/metrics/", "/profiles/", "/relationships/metrics/"):
        r = api.get(f"/api/events/zzzzzzzzzzz{suffix}", headers={"revision": "2023-02-22"})
        single_error(r, 404)


def _cursor(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "value",
    [[2**64, 1, "next"], [1, 2**63, "prev"], [-(2**63) - 1, 0, "next"], [1.5, 2, "next"]],
)
def test_an_event_cursor_out_of_range_is_a_400(api, value):
    error = single_error(api.get("/api/events", params={"page[cursor]": _cursor(value)}), 400)
    assert error["source"] == {"parameter": "page[cursor]"}


@pytest.mark.parametrize(
    "condition",
    [
        "greater-than(timestamp,1e20)",
        "greater-than(timestamp,9223372036854775807)",
        "less-than(timestamp,-1e300)",
        "greater-or-equal(timestamp,99999999999999999999999999)",
        "less-than(datetime,253402300800)",
    ],
)
def test_an_event_filter_time_out_of_range_is_a_400(api, condition):
    error = single_error(api.get("/api/events", params={"filter": condition}), 400)
    assert error["source"] == {"parameter": "filter"}


@pytest.mark.parametrize(
    "condition",
    [
        "greater-or-equal(datetime,0001-01-01T00:00:00+05:00)",
        "less-than(datetime,9999-12-31T23:59:59-05:00)",
        "greater-than(timestamp,-62135596800)",
        "less-or-equal(timestamp,253402300799)",
        "greater-or-equal(datetime,'0001-01-01T00:00:00+14:00')",
    ],
)
def test_event_filter_times_at_the_ends_of_the_calendar_are_answered(api, condition):
    r = api.get("/api/events", params={"filter": condition, "page[size]": 1})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "condition",
    [
        "greater-than(created,0001-01-01T00:00:00+05:00)",
        "less-than(updated,9999-12-31T23:59:59-05:00)",
        "less-or-equal(created,9999-12-31T23:59:59-14:00)",
        "greater-or-equal(updated,0001-01-01T00:00:00+14:00)",
    ],
)
def test_profile_filter_dates_at_the_ends_of_the_calendar_are_answered(server, api, condition):
    assert api.post("/api/events", json=event_body()).status_code == 202
    server.settle()
    r = api.get("/api/profiles", params={"filter": condition})
    assert r.status_code == 200, r.text
    assert r.json()["data"]  # every profile is inside such a range


@pytest.mark.parametrize(
    "condition",
    [
        "greater-than(created,9999-12-31T23:59:59-14:00)",
        "less-than(updated,0001-01-01T00:00:00+14:00)",
        "greater-or-equal(updated,9999-12-31T00:00:00+00:00)",
    ],
)
def test_profile_filter_dates_past_the_ends_of_the_calendar_select_nothing(api, condition):
    r = api.get("/api/profiles", params={"filter": condition})
    assert r.status_code == 200, r.text
    assert r.json()["data"] == []


@pytest.mark.parametrize("size", ["٥", "５", "1e1", "+5", " ", "99999999999999999999999"])
@pytest.mark.parametrize("path", ["/api/events", "/api/profiles"])
def test_page_size_is_ascii_digits_only(api, path, size):
    error = single_error(api.get(path, params={"page[size]": size}), 400)
    assert error["source"] == {"parameter": "page[size]"}


def test_a_quoted_datetime_without_offset_is_utc_whatever_the_servers_zone(start_server):
    """It was read in the server's local zone: 6 matches with TZ=UTC, 2 with New York's."""
    server = start_server(TZ="America/New_York")
    hours = [1, 3, 5, 7, 9, 11, 13, 15]  # 2024-05-01, UTC
    with server.client(Authorization=f"Klaviyo-API-Key {PRIVATE_KEY}", revision=NEWEST) as api:
        for hour in hours:
            moment = datetime(2024, 5, 1, hour, tzinfo=UTC).isoformat()
            body = event_body(time=moment, unique_id=f"h{hour}")
            assert api.post("/api/events", json=body).status_code == 202
        server.settle()
        counts = {}
        for written in (
            '"2024-05-01T06:00:00"',
            "'2024-05-01T06:00:00'",
            "2024-05-01T06:00:00",
            "2024-05-01T06:00:00Z",
            '"2024-05-01T02:00:00-04:00"',
        ):
            r = api.get("/api/events", params={"filter": f"greater-or-equal(datetime,{written})"})
            assert r.status_code == 200, r.text
            counts[written] = len(r.json()["data"])
    assert set(counts.values()) == {5}, counts


@pytest.mark.parametrize("revision", ["1999-01-01", "2022-10-16", "0001-01-01"])
def test_a_revision_before_the_first_one_is_a_400(api, revision):
    error = single_error(
        api.post("/api/events", json=event_body(), headers={"revision": revision}), 400
    )
    assert error["source"] == {"parameter": "revision"}
    assert "before the earliest" in error["detail"]


def test_retired_revisions_from_the_first_one_fall_forward_or_410(api):
    """2022-10-17 is served as the oldest revision served (its flat shapes), or 410."""
    flat = {
        "data": {
            "type": "event",
            "attributes": {
                "profile": {"$email": "retired@example.com"},
                "metric": {"name": "Retired"},
                "properties": {},
            },
        }
    }
    r = api.post("/api/events", json=flat, headers={"revision": "2022-10-17"})
    assert r.status_code == 202, r.text
    r = api.post(
        "/api/events",
        json=flat,
        headers={"revision": "2022-10-17", "X-Klaviyo-Revision-Fall-Forward-Opt-Out": "1"},
    )
    single_error(r, 410)


def test_event_uuids_are_time_based_stable_and_distinct(server, api):
    tag = uuid.uuid4().hex[:8]
    moment = datetime(2024, 6, 1, 12, 30, 15, tzinfo=UTC)
    for n in range(3):
        body = event_body(
            email=f"uuid.{tag}@example.com", time=moment.isoformat(), unique_id=f"{tag}{n}"
        )
        assert api.post("/api/events", json=body).status_code == 202
    server.settle()
    (profile,) = api.get(
        "/api/profiles", params={"filter": f'equals(email,"uuid.{tag}@example.com")'}
    ).json()["data"]
    params = {"filter": f'equals(profile_id,"{profile["id"]}")'}
    events = api.get("/api/events", params=params).json()["data"]
    assert len(events) == 3
    uuids = [uuid.UUID(e["attributes"]["uuid"]) for e in events]
    assert len(set(uuids)) == 3
    for u, e in zip(uuids, events, strict=True):
        assert u.version == 1 and u.variant == uuid.RFC_4122
        # A version-1 timestamp counts 100 ns since 1582-10-15.
        seconds = (u.time - 0x01B21DD213814000) / 10_000_000
        assert seconds == e["attributes"]["timestamp"] == moment.timestamp()
        again = api.get(f"/api/events/{e['id']}").json()["data"]["attributes"]["uuid"]
        assert again == str(u)
