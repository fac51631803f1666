"""List members (api/lists.py, process/membership.py), on both backends: adding and removing
profiles through the log, reading members with `joined_group_at` (filters, sorts, pages), a
profile's lists, through raw HTTP and the official Python SDK, every answer validated against
Klaviyo's published response schemas."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from conftest import PRIVATE_KEY, Server, event_body
from klaviyo_api import KlaviyoAPI
from openapi import validate_response

SPEC = "2026-07-15"


def tag() -> str:
    return uuid.uuid4().hex[:10]


def new_list(api: httpx.Client, name: str | None = None) -> str:
    body = {"data": {"type": "list", "attributes": {"name": name or f"Members {tag()}"}}}
    r = api.post("/api/lists", json=body)
    assert r.status_code == 201, r.text
    return r.json()["data"]["id"]


def new_profiles(server: Server, api: httpx.Client, count: int, **properties: Any) -> list[str]:
    """Profiles made by one event each; their ids, in the order made."""
    emails = [f"m{n}-{tag()}@example.com" for n in range(count)]
    for email in emails:
        body = event_body(
            email,
            profile_attributes={"email": email, "properties": properties},
        )
        assert api.post("/api/events", json=body).status_code == 202
    server.settle()
    ids = []
    for email in emails:
        r = api.get("/api/profiles", params={"filter": f'equals(email,"{email}")'})
        ids.append(r.json()["data"][0]["id"])
    return ids


def refs(ids: list[str]) -> dict[str, Any]:
    return {"data": [{"type": "profile", "id": i} for i in ids]}


def change(api: httpx.Client, method: str, list_id: str, ids: list[str]) -> httpx.Response:
    return api.request(method, f"/api/lists/{list_id}/relationships/profiles", json=refs(ids))


def member_ids(api: httpx.Client, list_id: str, **params: str) -> list[str]:
    r = api.get(f"/api/lists/{list_id}/relationships/profiles", params=params)
    assert r.status_code == 200, r.text
    validate_response(SPEC, "get_profile_ids_for_list", 200, r.json())
    return [d["id"] for d in r.json()["data"]]


def test_add_read_and_remove_members(server: Server, api: httpx.Client) -> None:
    list_id = new_list(api)
    a, b, c = new_profiles(server, api, 3)
    r = change(api, "POST", list_id, [a, b])
    assert r.status_code == 204, r.text
    server.settle()
    assert sorted(member_ids(api, list_id)) == sorted([a, b])

    r = api.get(f"/api/lists/{list_id}/profiles")
    assert r.status_code == 200, r.text
    validate_response(SPEC, "get_profiles_for_list", 200, r.json())
    members = r.json()["data"]
    assert {m["id"] for m in members} == {a, b}
    for m in members:
        assert m["type"] == "profile" and m["attributes"]["email"].endswith("@example.com")
        assert m["attributes"]["joined_group_at"].endswith("+00:00")
    count = api.get(f"/api/lists/{list_id}", params={"additional-fields[list]": "profile_count"})
    assert count.json()["data"]["attributes"]["profile_count"] == 2

    # Adding a member again keeps the time it first joined.
    joined = {m["id"]: m["attributes"]["joined_group_at"] for m in members}
    assert change(api, "POST", list_id, [a, c]).status_code == 204
    server.settle()
    again = api.get(f"/api/lists/{list_id}/profiles").json()["data"]
    assert {m["id"]: m["attributes"]["joined_group_at"] for m in again if m["id"] != c} == joined

    r = api.get(f"/api/profiles/{a}/lists")
    assert r.status_code == 200, r.text
    validate_response(SPEC, "get_lists_for_profile", 200, r.json())
    assert [d["id"] for d in r.json()["data"]] == [list_id]
    r = api.get(f"/api/profiles/{a}/relationships/lists")
    validate_response(SPEC, "get_list_ids_for_profile", 200, r.json())
    assert r.json()["data"] == [{"type": "list", "id": list_id}]

    assert change(api, "DELETE", list_id, [a, b]).status_code == 204
    server.settle()
    assert member_ids(api, list_id) == [c]
    assert api.get(f"/api/profiles/{a}/lists").json()["data"] == []


def test_members_page_sort_and_filter(server: Server, api: httpx.Client) -> None:
    list_id = new_list(api)
    ids = new_profiles(server, api, 5)
    for profile_id in ids:  # one call each: joined times ascend with the calls
        assert change(api, "POST", list_id, [profile_id]).status_code == 204
        server.settle()
    seen: list[str] = []
    url: str | None = f"/api/lists/{list_id}/profiles"
    params: dict[str, str] | None = {"page[size]": "2", "sort": "joined_group_at"}
    while url is not None:
        r = api.get(url, params=params)
        assert r.status_code == 200, r.text
        document = r.json()
        assert len(document["data"]) <= 2
        seen += [d["id"] for d in document["data"]]
        url, params = document["links"].get("next"), None
    joined = {
        d["id"]: d["attributes"]["joined_group_at"]
        for d in api.get(f"/api/lists/{list_id}/profiles").json()["data"]
    }
    assert sorted(seen) == sorted(ids)
    assert seen == sorted(ids, key=lambda i: (joined[i], i))
    assert member_ids(api, list_id, sort="-joined_group_at") == seen[::-1]

    email = api.get(f"/api/profiles/{ids[2]}").json()["data"]["attributes"]["email"]
    assert member_ids(api, list_id, filter=f'equals(email,"{email.upper()}")') == [ids[2]]
    last = joined[seen[-1]]
    after = member_ids(api, list_id, filter=f"greater-or-equal(joined_group_at,{last})")
    assert seen[-1] in after and all(joined[i] >= last for i in after)
    assert member_ids(api, list_id, filter=f"less-than(joined_group_at,{seen and last})") == [
        i for i in seen if joined[i] < last
    ]
    assert member_ids(api, list_id, filter='equals(push_token,"abc")') == []


BAD = [
    ({"data": [{"type": "profile"}]}, "/data/0"),
    ({"data": [{"type": "event", "id": "x"}]}, "/data/0/type"),
    ({"data": {"type": "profile", "id": "x"}}, "/data"),
    ({"data": [{"type": "profile", "id": "NOPE" * 4}]}, "/data/0/id"),
    ({"data": [{"type": "profile", "id": ""}]}, "/data/0/id"),
    ({"data": [{"type": "profile", "id": "a\x00b"}]}, "/data/0/id"),
    ({"data": [{"type": "profile", "id": "x" * 5000}]}, "/data/0/id"),
]


@pytest.mark.parametrize(("body", "pointer"), BAD)
def test_bad_member_changes(api: httpx.Client, body: dict[str, Any], pointer: str) -> None:
    list_id = new_list(api)
    for method in ("POST", "DELETE"):
        r = api.request(method, f"/api/lists/{list_id}/relationships/profiles", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["source"]["pointer"] == pointer


def test_member_limits_and_missing_lists(server: Server, api: httpx.Client) -> None:
    list_id = new_list(api)
    too_many = refs([f"P{n}" for n in range(1001)])
    r = api.post(f"/api/lists/{list_id}/relationships/profiles", json=too_many)
    assert r.status_code == 400 and r.json()["errors"][0]["source"]["pointer"] == "/data"
    (profile_id,) = new_profiles(server, api, 1)
    assert change(api, "POST", "NoList", [profile_id]).status_code == 404
    assert api.get("/api/lists/NoList/profiles").status_code == 404
    assert api.get("/api/profiles/NoProfile/lists").status_code == 404
    for params in ({"page[size]": "101"}, {"sort": "email"}, {"filter": 'equals(name,"x")'},
                   {"page[cursor]": "bad"}, {"filter": 'any(_kx,["a"])'}):  # fmt: skip
        assert api.get(f"/api/lists/{list_id}/profiles", params=params).status_code == 400


def test_a_deleted_list_loses_its_members(server: Server, api: httpx.Client) -> None:
    list_id = new_list(api)
    (profile_id,) = new_profiles(server, api, 1)
    assert change(api, "POST", list_id, [profile_id]).status_code == 204
    server.settle()
    assert api.delete(f"/api/lists/{list_id}").status_code == 204
    assert api.get(f"/api/profiles/{profile_id}/lists").json()["data"] == []


def test_official_python_sdk(server: Server, api: httpx.Client) -> None:
    sdk = KlaviyoAPI(PRIVATE_KEY, test_host=server.url, max_retries=0)
    list_id = new_list(api)
    a, b = new_profiles(server, api, 2)
    sdk.Lists.add_profiles_to_list(list_id, refs([a, b]))
    server.settle()
    page = sdk.Lists.get_profiles_for_list(list_id, sort="joined_group_at")
    assert {p.id for p in page.data} == {a, b}
    assert all(p.attributes.joined_group_at is not None for p in page.data)
    ids = sdk.Lists.get_profile_ids_for_list(list_id)
    assert {d.id for d in ids.data} == {a, b}
    assert [d.id for d in sdk.Profiles.get_lists_for_profile(a).data] == [list_id]
    sdk.Lists.remove_profiles_from_list(list_id, refs([a]))
    server.settle()
    assert [d.id for d in sdk.Lists.get_profile_ids_for_list(list_id).data] == [b]
