"""Klaviyo's Lists API (api/lists.py), on both backends: create, read, page, filter, sort,
rename and delete lists, through raw HTTP and the official Python SDK, every answer validated
against Klaviyo's published response schemas; bad input answered 4xx with a pointer."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest
from conftest import PRIVATE_KEY, Server
from klaviyo_api import KlaviyoAPI
from openapi import validate_response

SPEC = "2026-07-15"


def new_list(api: httpx.Client, name: str, **attributes: Any) -> dict[str, Any]:
    body = {"data": {"type": "list", "attributes": {"name": name, **attributes}}}
    r = api.post("/api/lists", json=body)
    assert r.status_code == 201, r.text
    validate_response(SPEC, "create_list", 201, r.json())
    return r.json()["data"]


def tag() -> str:
    return uuid.uuid4().hex[:10]


def test_create_read_rename_delete(api: httpx.Client) -> None:
    name = f"Newsletter {tag()}"
    created = new_list(api, name, opt_in_process="double_opt_in")
    list_id = created["id"]
    assert len(list_id) == 6 and list_id.isalnum()
    attributes = created["attributes"]
    assert attributes["name"] == name and attributes["opt_in_process"] == "double_opt_in"
    assert attributes["created"] == attributes["updated"]
    assert created["links"]["self"].endswith(f"/api/lists/{list_id}")

    r = api.get(f"/api/lists/{list_id}", params={"additional-fields[list]": "profile_count"})
    assert r.status_code == 200, r.text
    validate_response(SPEC, "get_list", 200, r.json())
    assert r.json()["data"]["attributes"]["profile_count"] == 0
    assert "profile_count" not in api.get(f"/api/lists/{list_id}").json()["data"]["attributes"]

    body = {"data": {"type": "list", "id": list_id, "attributes": {"name": name + " (renamed)"}}}
    r = api.patch(f"/api/lists/{list_id}", json=body)
    assert r.status_code == 200, r.text
    validate_response(SPEC, "update_list", 200, r.json())
    renamed = r.json()["data"]["attributes"]
    assert renamed["name"] == name + " (renamed)"
    assert renamed["opt_in_process"] == "double_opt_in"  # untouched
    assert renamed["created"] == attributes["created"]

    assert api.delete(f"/api/lists/{list_id}").status_code == 204
    assert api.get(f"/api/lists/{list_id}").status_code == 404
    assert api.delete(f"/api/lists/{list_id}").status_code == 404


def test_a_list_defaults_to_single_opt_in(api: httpx.Client) -> None:
    assert new_list(api, f"Plain {tag()}")["attributes"]["opt_in_process"] == "single_opt_in"


def test_pages_filters_and_sorts(api: httpx.Client) -> None:
    prefix = f"Page {tag()}"
    made = [new_list(api, f"{prefix} {n:02d}") for n in (3, 1, 12, 7, 5, 9, 2, 11, 4, 8, 6, 10)]
    names = [m["attributes"]["name"] for m in made]
    wanted = "any(name,[" + ",".join(f'"{n}"' for n in names) + "])"
    seen: list[str] = []
    url: str | None = "/api/lists"
    params: dict[str, str] | None = {"filter": wanted, "sort": "-name", "page[size]": "5"}
    while url is not None:
        r = api.get(url, params=params)
        assert r.status_code == 200, r.text
        document = r.json()
        validate_response(SPEC, "get_lists", 200, document)
        assert len(document["data"]) <= 5
        seen += [d["attributes"]["name"] for d in document["data"]]
        url, params = document["links"].get("next"), None
    assert seen == sorted(names, reverse=True)

    by_id = api.get("/api/lists", params={"filter": f'equals(id,"{made[0]["id"]}")'}).json()
    assert [d["id"] for d in by_id["data"]] == [made[0]["id"]]
    assert (
        api.get("/api/lists", params={"filter": 'equals(name,"no such list")'}).json()["data"] == []
    )
    newest = made[-1]["attributes"]["created"]
    later = api.get("/api/lists", params={"filter": f"greater-than(created,{newest})"}).json()
    assert all(d["attributes"]["created"] > newest for d in later["data"])

    sparse = api.get("/api/lists", params={"filter": wanted, "fields[list]": "name"}).json()
    assert all(set(d["attributes"]) == {"name"} for d in sparse["data"])
    included = api.get("/api/lists", params={"filter": wanted, "include": "tags"}).json()
    assert included["included"] == [] and included["data"][0]["relationships"]["tags"]["data"] == []


def test_lists_belong_to_their_account(server: Server, api: httpx.Client) -> None:
    mine = new_list(api, f"Mine {tag()}")
    public_key = "L" + uuid.uuid4().hex[:5]
    out = subprocess.run(
        [sys.executable, "-m", "trackhouse", "accounts", "create", "--public-key", public_key,
         *server.where()],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    other_key = out.stdout.split("private key:")[1].strip()
    headers = {"Authorization": f"Klaviyo-API-Key {other_key}"}
    assert api.get(f"/api/lists/{mine['id']}", headers=headers).status_code == 404
    assert api.delete(f"/api/lists/{mine['id']}", headers=headers).status_code == 404
    listed = api.get("/api/lists", headers=headers, params={"filter": f'equals(id,"{mine["id"]}")'})
    assert listed.json()["data"] == []
    assert api.get(f"/api/lists/{mine['id']}").status_code == 200


BAD_BODIES = [
    ({"data": {"type": "list", "attributes": {}}}, "/data/attributes"),  # name missing
    ({"data": {"type": "list", "attributes": {"name": ""}}}, "/data/attributes/name"),
    ({"data": {"type": "list", "attributes": {"name": "   "}}}, "/data/attributes/name"),
    ({"data": {"type": "list", "attributes": {"name": "x" * 1001}}}, "/data/attributes/name"),
    ({"data": {"type": "list", "attributes": {"name": "a\u0000b"}}}, "/data/attributes/name"),
    ({"data": {"type": "list", "attributes": {"name": 7}}}, "/data/attributes/name"),
    ({"data": {"type": "list", "attributes": {"name": "x", "opt_in_process": "triple"}}},
     "/data/attributes/opt_in_process"),
    ({"data": {"type": "list", "attributes": {"name": "x", "color": "red"}}},
     "/data/attributes/color"),
    ({"data": {"type": "lists", "attributes": {"name": "x"}}}, "/data/type"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "pointer"), BAD_BODIES)
def test_bad_create_bodies(api: httpx.Client, body: dict[str, Any], pointer: str) -> None:
    r = api.post("/api/lists", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["source"]["pointer"] == pointer


@pytest.mark.parametrize(
    ("params", "parameter"),
    [({"page[size]": "11"}, "page[size]"), ({"page[size]": "0"}, "page[size]"),
     ({"sort": "opt_in_process"}, "sort"), ({"filter": "equals(opt_in_process,\"x\")"}, "filter"),
     ({"filter": "greater-than(name,\"x\")"}, "filter"), ({"filter": "equals(id,3)"}, "filter"),
     ({"filter": "greater-than(created,99999999999999)"}, "filter"),
     ({"page[cursor]": "bm9wZQ"}, "page[cursor]"), ({"include": "profiles"}, "include"),
     ({"fields[list]": "profile_count"}, "fields[list]")],
)  # fmt: skip
def test_bad_list_parameters(api: httpx.Client, params: dict[str, str], parameter: str) -> None:
    r = api.get("/api/lists", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["source"]["parameter"] == parameter


def test_bad_updates(api: httpx.Client) -> None:
    list_id = new_list(api, f"Target {tag()}")["id"]
    wrong_id = {"data": {"type": "list", "id": "ZZZZZZ", "attributes": {"name": "x"}}}
    assert api.patch(f"/api/lists/{list_id}", json=wrong_id).status_code == 409
    missing = {"data": {"type": "list", "id": "ZZZZZZ", "attributes": {"name": "x"}}}
    assert api.patch("/api/lists/ZZZZZZ", json=missing).status_code == 404
    empty = {"data": {"type": "list", "id": list_id, "attributes": {"name": ""}}}
    r = api.patch(f"/api/lists/{list_id}", json=empty)
    assert r.status_code == 400 and r.json()["errors"][0]["source"]["pointer"].endswith("/name")
    for odd in ("x" * 65, "%00abc", "a%2Fb"):
        assert api.get(f"/api/lists/{odd}").status_code == 404, odd
    extra = api.get(f"/api/lists/{list_id}", params={"additional-fields[list]": "members"})
    assert extra.status_code == 400


def test_official_python_sdk(server: Server) -> None:
    sdk = KlaviyoAPI(PRIVATE_KEY, test_host=server.url, max_retries=0)
    name = f"SDK {tag()}"
    created = sdk.Lists.create_list({"data": {"type": "list", "attributes": {"name": name}}})
    list_id = created.data.id
    assert created.data.attributes.name == name
    got = sdk.Lists.get_list(list_id, additional_fields_list=["profile_count"])
    assert got.data.attributes.profile_count == 0
    page = sdk.Lists.get_lists(filter=f'equals(name,"{name}")')
    assert [d.id for d in page.data] == [list_id]
    sdk.Lists.update_list(
        list_id, {"data": {"type": "list", "id": list_id, "attributes": {"name": name + "!"}}}
    )
    assert sdk.Lists.get_list(list_id).data.attributes.name == name + "!"
    sdk.Lists.delete_list(list_id)
    assert sdk.Lists.get_lists(filter=f'equals(id,"{list_id}")').data == []
