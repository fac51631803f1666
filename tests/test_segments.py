"""Segments (api/segments.py, process/membership.py), on both backends: a definition computed
over the existing profiles in the background, then kept live as events, profile changes and
list changes are processed; members with `joined_group_at`, a profile's segments; strict
definitions; revision gating; the official Python SDK. Every answer is validated against
Klaviyo's published response schemas."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import PRIVATE_KEY, Server, event_body
from klaviyo_api import KlaviyoAPI
from openapi import validate_response
from test_list_members import change, new_list, new_profiles

SPEC = "2026-07-15"


def tag() -> str:
    return uuid.uuid4().hex[:10]


def prop(name: str, filter_: dict[str, Any]) -> dict[str, Any]:
    return {"type": "profile-property", "property": f"properties['{name}']", "filter": filter_}


def definition(*groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {"condition_groups": [{"conditions": list(g)} for g in groups]}


def new_segment(api: httpx.Client, defn: dict[str, Any], name: str | None = None) -> dict:
    body = {
        "data": {
            "type": "segment",
            "attributes": {"name": name or f"Seg {tag()}", "definition": defn},
        }
    }
    r = api.post("/api/segments", json=body)
    assert r.status_code == 201, r.text
    validate_response(SPEC, "create_segment", 201, r.json())
    return r.json()["data"]


def members(api: httpx.Client, segment_id: str, among: list[str] | None = None) -> set[str]:
    """The segment's members (of those `among`: the shared account has many profiles)."""
    params = {"page[size]": "100"}
    if among is not None:
        params["filter"] = "any(profile_id,[" + ",".join(f'"{i}"' for i in among) + "])"
    r = api.get(f"/api/segments/{segment_id}/profiles", params=params)
    assert r.status_code == 200, r.text
    validate_response(SPEC, "get_profiles_for_segment", 200, r.json())
    return {d["id"] for d in r.json()["data"]}


def identify(api: httpx.Client, email: str, **properties: Any) -> None:
    body = event_body(email, profile_attributes={"email": email, "properties": properties})
    assert api.post("/api/events", json=body).status_code == 202


def test_computed_over_existing_profiles_then_kept_live(server: Server, api: httpx.Client) -> None:
    plan = f"plan-{tag()}"
    gold = new_profiles(server, api, 3, plan=plan, tier="gold")
    silver = new_profiles(server, api, 2, plan=plan, tier="silver")
    defn = definition(
        [prop("plan", {"type": "string", "operator": "equals", "value": plan})],
        [prop("tier", {"type": "string", "operator": "equals", "value": "gold"})],
    )
    created = new_segment(api, defn)
    segment_id = created["id"]
    assert created["attributes"]["definition"] == defn
    assert created["attributes"]["is_active"] is True
    server.settle()
    got = api.get(
        f"/api/segments/{segment_id}", params={"additional-fields[segment]": "profile_count"}
    )
    validate_response(SPEC, "get_segment", 200, got.json())
    assert got.json()["data"]["attributes"]["is_processing"] is False
    assert got.json()["data"]["attributes"]["profile_count"] == 3
    assert members(api, segment_id) == set(gold)

    # A silver profile turns gold: it joins; a gold one turns silver: it leaves.
    email = api.get(f"/api/profiles/{silver[0]}").json()["data"]["attributes"]["email"]
    identify(api, email, plan=plan, tier="gold")
    email = api.get(f"/api/profiles/{gold[0]}").json()["data"]["attributes"]["email"]
    identify(api, email, plan=plan, tier="silver")
    server.settle()
    assert members(api, segment_id) == {*gold[1:], silver[0]}
    r = api.get(f"/api/profiles/{silver[0]}/segments")
    validate_response(SPEC, "get_segments_for_profile", 200, r.json())
    assert segment_id in {d["id"] for d in r.json()["data"]}
    r = api.get(f"/api/profiles/{gold[0]}/relationships/segments")
    assert segment_id not in {d["id"] for d in r.json()["data"]}


def test_metric_conditions_count_events(server: Server, api: httpx.Client) -> None:
    metric = f"Ordered {tag()}"
    emails = [f"buyer{n}-{tag()}@example.com" for n in range(3)]
    for n, email in enumerate(emails):  # 0, 1 and 2 orders
        for k in range(n):
            body = event_body(
                email,
                metric=metric,
                properties={"Brand": "Acme" if k else "Other"},
                value=10.0 * (k + 1),
                unique_id=tag(),
            )
            assert api.post("/api/events", json=body).status_code == 202
        identify(api, email)
    server.settle()
    metrics = api.get("/api/metrics").json()["data"]
    metric_id = next(m["id"] for m in metrics if m["attributes"]["name"] == metric)
    ids = {
        e: api.get("/api/profiles", params={"filter": f'equals(email,"{e}")'}).json()["data"][0][
            "id"
        ]
        for e in emails
    }
    twice = {
        "type": "profile-metric",
        "metric_id": metric_id,
        "measurement": "count",
        "measurement_filter": {"type": "numeric", "operator": "greater-than-or-equal", "value": 2},
        "timeframe_filter": {"type": "date", "operator": "alltime"},
    }
    segment_id = new_segment(api, definition([twice]))["id"]
    acme = dict(
        twice,
        measurement_filter={"type": "numeric", "operator": "equals", "value": 1},
        metric_filters=[
            {
                "property": "Brand",
                "filter": {"type": "string", "operator": "equals", "value": "acme"},
            }
        ],
    )
    acme_id = new_segment(api, definition([acme]))["id"]
    server.settle()
    assert members(api, segment_id) == {ids[emails[2]]}
    assert members(api, acme_id) == {ids[emails[2]]}
    # Live: the second buyer's second order.
    body = event_body(emails[1], metric=metric, properties={"Brand": "Acme"}, unique_id=tag())
    assert api.post("/api/events", json=body).status_code == 202
    server.settle()
    assert members(api, segment_id) == {ids[emails[1]], ids[emails[2]]}
    assert members(api, acme_id) == {ids[emails[1]], ids[emails[2]]}


def test_membership_of_lists_and_segments(server: Server, api: httpx.Client) -> None:
    list_id = new_list(api)
    a, b = new_profiles(server, api, 2)
    in_list = new_segment(
        api,
        definition(
            [{"type": "profile-group-membership", "is_member": True, "group_ids": [list_id]}]
        ),
    )["id"]
    outside = new_segment(
        api,
        definition(
            [{"type": "profile-group-membership", "is_member": False, "group_ids": [in_list]}]
        ),
    )["id"]
    server.settle()
    assert members(api, in_list) == set()
    assert members(api, outside, among=[a, b]) == {a, b}
    assert change(api, "POST", list_id, [a]).status_code == 204
    server.settle()
    assert members(api, in_list) == {a}
    assert members(api, outside, among=[a, b]) == {b}
    # A cycle of segments is refused.
    body = {
        "data": {
            "type": "segment",
            "id": in_list,
            "attributes": {
                "definition": definition(
                    [
                        {
                            "type": "profile-group-membership",
                            "is_member": True,
                            "group_ids": [outside],
                        }
                    ]
                )
            },
        }
    }
    r = api.patch(f"/api/segments/{in_list}", json=body)
    assert r.status_code == 400, r.text
    pointer = r.json()["errors"][0]["source"]["pointer"]
    assert pointer == "/data/attributes/definition/condition_groups/0/conditions/0/group_ids/0"


def test_edit_deactivate_and_delete(server: Server, api: httpx.Client) -> None:
    plan = f"plan-{tag()}"
    (a,) = new_profiles(server, api, 1, plan=plan, score=5)
    five = definition(
        [prop("score", {"type": "numeric", "operator": "equals", "value": 5})],
        [prop("plan", {"type": "string", "operator": "equals", "value": plan})],
    )
    segment_id = new_segment(api, five)["id"]
    server.settle()
    assert members(api, segment_id) == {a}
    six = definition([prop("score", {"type": "numeric", "operator": "equals", "value": 6})])
    body = {
        "data": {
            "type": "segment",
            "id": segment_id,
            "attributes": {"definition": six, "is_starred": True, "name": "Six"},
        }
    }
    r = api.patch(f"/api/segments/{segment_id}", json=body)
    assert r.status_code == 200, r.text
    validate_response(SPEC, "update_segment", 200, r.json())
    assert r.json()["data"]["attributes"]["is_starred"] is True
    server.settle()
    assert members(api, segment_id) == set()

    off = {"data": {"type": "segment", "id": segment_id, "attributes": {"is_active": False}}}
    assert api.patch(f"/api/segments/{segment_id}", json=off).status_code == 200
    mixed = {
        "data": {
            "type": "segment",
            "id": segment_id,
            "attributes": {"is_active": False, "name": "x"},
        }
    }
    assert api.patch(f"/api/segments/{segment_id}", json=mixed).status_code == 400
    listed = api.get("/api/segments", params={"filter": "equals(is_active,false)"})
    validate_response(SPEC, "get_segments", 200, listed.json())
    assert segment_id in {d["id"] for d in listed.json()["data"]}

    assert api.delete(f"/api/segments/{segment_id}").status_code == 204
    assert api.get(f"/api/segments/{segment_id}").status_code == 404
    assert api.get(f"/api/segments/{segment_id}/profiles").status_code == 404


def test_revision_gating(api: httpx.Client) -> None:
    defn = definition([prop("x", {"type": "existence", "operator": "is-set"})])
    body = {"data": {"type": "segment", "attributes": {"name": "Old", "definition": defn}}}
    r = api.post("/api/segments", json=body, headers={"revision": "2024-02-15"})
    assert r.status_code == 400 and r.json()["errors"][0]["source"]["parameter"] == "revision"
    segment_id = new_segment(api, defn)["id"]
    old = api.get(f"/api/segments/{segment_id}", headers={"revision": "2024-02-15"})
    assert old.status_code == 200 and "definition" not in old.json()["data"]["attributes"]
    assert (
        api.delete(f"/api/segments/{segment_id}", headers={"revision": "2024-02-15"}).status_code
        == 400
    )


BAD_DEFINITIONS = [
    ({"condition_groups": []}, "/data/attributes/definition/condition_groups"),
    (
        definition([{"type": "profile-postal-code-distance"}]),
        "/data/attributes/definition/condition_groups/0/conditions/0/type",
    ),
    (
        definition([prop("x", {"type": "string", "operator": "equals", "value": "a", "z": 1})]),
        "/data/attributes/definition/condition_groups/0/conditions/0/filter/z",
    ),
    (
        definition(
            [
                {
                    "type": "profile-metric",
                    "metric_id": "NoSuch",
                    "measurement": "count",
                    "measurement_filter": {"type": "numeric", "operator": "equals", "value": 1},
                    "timeframe_filter": {"type": "date", "operator": "alltime"},
                }
            ]
        ),
        "/data/attributes/definition/condition_groups/0/conditions/0/metric_id",
    ),
    (
        definition(
            [{"type": "profile-group-membership", "is_member": True, "group_ids": ["Nope"]}]
        ),
        "/data/attributes/definition/condition_groups/0/conditions/0/group_ids/0",
    ),
    (
        definition([prop("$extra", {"type": "existence", "operator": "is-set"})]),
        "/data/attributes/definition/condition_groups/0/conditions/0/property",
    ),
]


@pytest.mark.parametrize(("defn", "pointer"), BAD_DEFINITIONS)
def test_bad_definitions(api: httpx.Client, defn: dict[str, Any], pointer: str) -> None:
    body = {"data": {"type": "segment", "attributes": {"name": "Bad", "definition": defn}}}
    r = api.post("/api/segments", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["source"]["pointer"] == pointer


def test_official_python_sdk(server: Server, api: httpx.Client) -> None:
    sdk = KlaviyoAPI(PRIVATE_KEY, test_host=server.url, max_retries=0)
    plan = f"plan-{tag()}"
    ids = new_profiles(server, api, 2, plan=plan)
    defn = definition([prop("plan", {"type": "string", "operator": "equals", "value": plan})])
    created = sdk.Segments.create_segment(
        {"data": {"type": "segment", "attributes": {"name": "SDK", "definition": defn}}}
    )
    segment_id = created.data.id
    server.settle()
    page = sdk.Segments.get_profiles_for_segment(segment_id)
    assert {p.id for p in page.data} == set(ids)
    assert all(p.attributes.joined_group_at is not None for p in page.data)
    got = sdk.Segments.get_segment(segment_id)
    assert got.data.attributes.is_processing is False and got.data.attributes.is_active is True
    # (Other tests' segments of the shared account may hold the profile too.)
    assert segment_id in {s.id for s in sdk.Profiles.get_segments_for_profile(ids[0]).data}
    listed = sdk.Segments.get_segments(filter=f'equals(id,"{segment_id}")')
    assert [s.id for s in listed.data] == [segment_id]
    sdk.Segments.delete_segment(segment_id)


def test_relative_dates_stop_matching_as_time_passes(start_server) -> None:
    """No new event: the periodic sweep (TRACKHOUSE_SEGMENT_SWEEP, here 1 s) computes a
    segment relative to now again, and a profile whose date fell out of "the last hour"
    leaves it."""
    server: Server = start_server(TRACKHOUSE_SEGMENT_SWEEP="1")
    with server.client(
        Authorization=f"Klaviyo-API-Key {PRIVATE_KEY}", revision="2026-10-15"
    ) as api:
        soon = datetime.now(UTC) - timedelta(seconds=3600 - 4)
        (a,) = new_profiles(server, api, 1, renewed=soon.isoformat())
        last_hour = {"type": "date", "operator": "in-the-last", "unit": "hour", "quantity": 1}
        segment_id = new_segment(api, definition([prop("renewed", last_hour)]))["id"]
        server.settle()
        assert members(api, segment_id) == {a}
        deadline = time.monotonic() + 30
        while members(api, segment_id) and time.monotonic() < deadline:
            time.sleep(0.5)
            server.settle()
        assert members(api, segment_id) == set()


def test_daily_creation_limits_when_turned_on(start_server) -> None:
    """Off by default (the shared server's tests create dozens a day); TRACKHOUSE_DAILY_LIMITS
    gives each account its number of lists and segments in any 24 hours, then 429."""
    server: Server = start_server(TRACKHOUSE_DAILY_LIMITS="list=2,segment=1")
    headers = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": "2026-10-15"}
    with server.client(**headers) as api:
        new_list(api)
        new_list(api)
        r = api.post("/api/lists", json={"data": {"type": "list", "attributes": {"name": "3"}}})
        assert r.status_code == 429, r.text
        assert r.json()["errors"][0]["code"] == "throttled"
        assert 86000 < int(r.headers["Retry-After"]) <= 86400
        defn = definition([prop("x", {"type": "existence", "operator": "is-set"})])
        new_segment(api, defn)
        body = {"data": {"type": "segment", "attributes": {"name": "2", "definition": defn}}}
        assert api.post("/api/segments", json=body).status_code == 429
