"""The Flows API (api/flows.py, flows/definition.py) on both backends: flows created from
Klaviyo's own definitions with `temporary_id`s, answered with real ids; reads of flows, their
actions and messages; status changes; strict definitions refused with a pointer; revision
gating; the official Python SDK. Every answer is validated against Klaviyo's published
response schemas. (Running flows is not in here yet.)"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import PRIVATE_KEY, Server, event_body, single_error
from klaviyo_api import KlaviyoAPI
from openapi import validate_request, validate_response

SPEC = "2026-07-15"


def _metric_id(server: Server, api: httpx.Client, name: str) -> str:
    r = api.post("/api/events", json=event_body(metric=name))
    assert r.status_code == 202
    server.settle()
    receipt = api.get(f"/api/event-receipts/{r.headers['Trackhouse-Receipt']}").json()
    (outcome,) = receipt["data"]["attributes"]["outcomes"]
    metric: str = api.get(f"/api/events/{outcome['event_id']}/metric").json()["data"]["id"]
    return metric


@pytest.fixture
def metrics(server: Server, api: httpx.Client) -> tuple[str, str]:
    """(Added to Cart, Placed Order) metric ids of the shared account."""
    return _metric_id(server, api, "Added to Cart"), _metric_id(server, api, "Placed Order")


def abandoned_cart(cart: str, placed: str) -> dict[str, Any]:
    """A realistic definition: a metric trigger filtered on $value, a 4-hour delay, a
    conditional split on orders since the flow started, a webhook and an email."""
    placed_since_start = {
        "type": "profile-metric",
        "metric_id": placed,
        "measurement": "count",
        "measurement_filter": {"type": "numeric", "operator": "greater-than", "value": 0},
        "timeframe_filter": {"type": "date", "operator": "flow-start"},
    }
    return {
        "triggers": [{
            "type": "metric", "id": cart,
            "trigger_filter": {"condition_groups": [{"conditions": [{
                "type": "metric-property", "metric_id": cart, "field": "$value",
                "filter": {"type": "numeric", "operator": "greater-than", "value": 50},
            }]}]},
        }],
        "profile_filter": None,
        "entry_action_id": "wait",
        "reentry_criteria": {"duration": 7, "unit": "day"},
        "actions": [
            {"temporary_id": "wait", "type": "time-delay", "links": {"next": "ordered"},
             "data": {"unit": "hours", "value": 4, "timezone": "profile"}},
            {"temporary_id": "ordered", "type": "conditional-split",
             "links": {"next_if_true": None, "next_if_false": "hook"},
             "data": {"profile_filter": {"condition_groups": [
                 {"conditions": [placed_since_start]}]}}},
            {"temporary_id": "hook", "type": "send-webhook", "links": {"next": "mail"},
             "data": {"status": "live", "message": {
                 "url": "https://hooks.example.com/cart", "headers": {"X-Shop": "demo"},
                 "body": '{"email": "{{ person.email }}"}', "name": "Cart hook"}}},
            {"temporary_id": "mail", "type": "send-email", "links": {"next": None},
             "data": {"status": "live", "message": {
                 "from_email": "shop@example.com", "from_label": "Shop",
                 "subject_line": "You left {{ event.ItemName }}", "preview_text": "Still there",
                 "smart_sending_enabled": True, "name": "Cart email"}}},
        ],
    }  # fmt: skip


def create(api: httpx.Client, definition: dict[str, Any], name: str | None = None) -> dict:
    body = {"data": {"type": "flow",
                     "attributes": {"name": name or f"Flow {uuid.uuid4().hex[:8]}",
                                    "definition": definition}}}  # fmt: skip
    validate_request(SPEC, "create_flow", body)
    r = api.post("/api/flows", json=body)
    assert r.status_code == 201, r.text
    validate_response(SPEC, "create_flow", 201, r.json())
    data: dict = r.json()["data"]
    return data


def test_create_answers_real_ids_and_starts_as_draft(
    api: httpx.Client, metrics: tuple[str, str]
) -> None:
    flow = create(api, abandoned_cart(*metrics))
    attributes = flow["attributes"]
    assert attributes["status"] == "draft" and attributes["archived"] is False
    assert attributes["trigger_type"] == "Metric"
    definition = attributes["definition"]
    ids = [a["id"] for a in definition["actions"]]
    assert len(set(ids)) == 4 and not {"wait", "ordered", "hook", "mail"} & set(ids)
    assert all("temporary_id" not in a for a in definition["actions"])
    wait, ordered, hook, mail = definition["actions"]
    assert definition["entry_action_id"] == wait["id"]
    assert wait["links"] == {"next": ordered["id"]}
    assert ordered["links"] == {"next_if_true": None, "next_if_false": hook["id"]}
    assert hook["links"] == {"next": mail["id"]} and mail["links"] == {"next": None}
    assert wait["data"]["value"] == 4 and hook["data"]["message"]["headers"] == {"X-Shop": "demo"}

    # The flow, with and without its definition; its actions; their messages.
    r = api.get(f"/api/flows/{flow['id']}")
    validate_response(SPEC, "get_flow", 200, r.json())
    assert "definition" not in r.json()["data"]["attributes"]
    r = api.get(f"/api/flows/{flow['id']}", params={"additional-fields[flow]": "definition"})
    assert r.json()["data"]["attributes"]["definition"] == definition
    r = api.get(f"/api/flows/{flow['id']}/flow-actions")
    validate_response(SPEC, "get_actions_for_flow", 200, r.json())
    assert sorted(a["id"] for a in r.json()["data"]) == sorted(ids)
    r = api.get(f"/api/flows/{flow['id']}/relationships/flow-actions")
    validate_response(SPEC, "get_action_ids_for_flow", 200, r.json())
    assert sorted(a["id"] for a in r.json()["data"]) == sorted(ids)
    r = api.get(f"/api/flow-actions/{hook['id']}", params={"include": "flow,flow-messages"})
    validate_response(SPEC, "get_flow_action", 200, r.json())
    assert r.json()["data"]["attributes"]["definition"] == hook
    (message_ref,) = r.json()["data"]["relationships"]["flow-messages"]["data"]
    assert {i["type"] for i in r.json()["included"]} == {"flow", "flow-message"}
    r = api.get(f"/api/flow-messages/{message_ref['id']}")
    validate_response(SPEC, "get_flow_message", 200, r.json())
    attributes = r.json()["data"]["attributes"]
    assert attributes["channel"] == "webhook"
    assert attributes["definition"]["url"] == "https://hooks.example.com/cart"
    r = api.get(f"/api/flow-messages/{message_ref['id']}/flow-action")
    validate_response(SPEC, "get_action_for_flow_message", 200, r.json())
    assert r.json()["data"]["id"] == hook["id"]
    r = api.get(f"/api/flow-actions/{wait['id']}/flow-messages")
    validate_response(SPEC, "get_flow_action_messages", 200, r.json())
    assert r.json()["data"] == []  # a delay sends nothing
    r = api.get(f"/api/flow-actions/{mail['id']}/relationships/flow")
    validate_response(SPEC, "get_flow_id_for_flow_action", 200, r.json())
    assert r.json()["data"] == {"type": "flow", "id": flow["id"]}


def test_status_changes_the_flow_and_its_actions(
    api: httpx.Client, metrics: tuple[str, str]
) -> None:
    flow = create(api, abandoned_cart(*metrics))
    body = {"data": {"type": "flow", "id": flow["id"], "attributes": {"status": "live"}}}
    r = api.patch(f"/api/flows/{flow['id']}", json=body)
    assert r.status_code == 200, r.text
    validate_response(SPEC, "update_flow", 200, r.json())
    assert r.json()["data"]["attributes"]["status"] == "live"
    assert "definition" not in r.json()["data"]["attributes"]  # never in a PATCH's answer
    actions = api.get(f"/api/flows/{flow['id']}/flow-actions").json()["data"]
    statuses = {a["attributes"]["definition"]["data"].get("status") for a in actions}
    assert statuses == {"live", None}  # (a delay and a split have no status of their own)
    bad = {"data": {"type": "flow", "id": flow["id"], "attributes": {"status": "paused"}}}
    assert single_error(api.patch(f"/api/flows/{flow['id']}", json=bad), 400)["source"] == {
        "pointer": "/data/attributes/status"
    }
    other = {"data": {"type": "flow", "id": "XXXXXX", "attributes": {"status": "live"}}}
    assert api.patch(f"/api/flows/{flow['id']}", json=other).status_code == 409
    # Deleted: the flow and its actions are gone.
    assert api.delete(f"/api/flows/{flow['id']}").status_code == 204
    assert api.get(f"/api/flows/{flow['id']}").status_code == 404
    assert api.get(f"/api/flow-actions/{actions[0]['id']}").status_code == 404
    assert api.delete(f"/api/flows/{flow['id']}").status_code == 404


def test_listing_filters_sorts_and_pages(api: httpx.Client, metrics: tuple[str, str]) -> None:
    tag = uuid.uuid4().hex[:8]
    made = [create(api, abandoned_cart(*metrics), name=f"{tag} {n}") for n in range(3)]
    r = api.get("/api/flows", params={"filter": f'starts-with(name,"{tag}")', "sort": "-name",
                                      "page[size]": "2"})  # fmt: skip
    assert r.status_code == 200, r.text
    validate_response(SPEC, "get_flows", 200, r.json())
    first = r.json()
    assert [f["attributes"]["name"] for f in first["data"]] == [f"{tag} 2", f"{tag} 1"]
    second = api.get(first["links"]["next"]).json()
    assert [f["attributes"]["name"] for f in second["data"]] == [f"{tag} 0"]
    assert "next" not in second["links"]
    ids = ",".join(f'"{f["id"]}"' for f in made[:2])
    r = api.get("/api/flows", params={"filter": f"any(id,[{ids}])", "include": "flow-actions"})
    validate_response(SPEC, "get_flows", 200, r.json())
    assert {f["id"] for f in r.json()["data"]} == {f["id"] for f in made[:2]}
    assert len(r.json()["included"]) == 8
    mine = f'starts-with(name,"{tag}")'
    r = api.get("/api/flows", params={"filter": f'equals(status,"draft"),{mine}'})
    assert {f["id"] for f in r.json()["data"]} == {f["id"] for f in made}  # new flows: drafts
    r = api.get("/api/flows", params={"filter": f'equals(status,"live"),{mine}'})
    assert r.json()["data"] == []
    error = single_error(api.get("/api/flows", params={"filter": 'equals(color,"red")'}), 400)
    assert error["source"] == {"parameter": "filter"}
    assert single_error(api.get("/api/flows", params={"page[size]": "51"}), 400)


def _mutate(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    return change


D = "/data/attributes/definition"
BAD: list[tuple[str, Callable[[dict[str, Any]], Any], str, str]] = [
    ("unknown key on an action", lambda d: d["actions"][0].update(colour="red"),
     f"{D}/actions/0", "unknown key 'colour'"),
    ("unknown key in data", lambda d: d["actions"][0]["data"].update(speed=2),
     f"{D}/actions/0/data", "unknown key 'speed'"),
    ("two triggers", lambda d: d["triggers"].append(copy.deepcopy(d["triggers"][0])),
     f"{D}/triggers", "exactly one trigger"),
    ("entry is not an action", lambda d: d.update(entry_action_id="nowhere"),
     f"{D}/entry_action_id", "one of the flow's actions"),
    ("a link to nowhere", lambda d: d["actions"][3]["links"].update(next="nowhere"),
     f"{D}/actions/3/links/next", "one of the flow's actions"),
    ("a cycle", lambda d: d["actions"][3]["links"].update(next="wait"),
     f"{D}/actions/3/links/next", "cycle"),
    ("a given id", lambda d: d["actions"][0].update(id="12345"),
     f"{D}/actions/0/id", "temporary_id"),
    ("a repeated temporary id", lambda d: d["actions"][3].update(temporary_id="wait"),
     f"{D}/actions/3/temporary_id", "another action"),
    ("price drop", lambda d: d["triggers"][0].update(type="price-drop"),
     f"{D}/triggers/0/type", "not supported"),
    ("an A/B test", lambda d: d["actions"].append({"temporary_id": "ab", "type": "ab-test",
                                                    "data": {}}),
     f"{D}/actions/4/type", "not supported"),
    ("multi-branch links", lambda d: d["actions"].append({
        "temporary_id": "mb", "type": "multi-branch-split", "links": {"next": "zzz"},
        "data": {"name": "b", "branches": [{"branch_id": "e", "is_else": True}]}}),
     f"{D}/actions/4/links", "through its branches"),
    ("code", lambda d: d["actions"].append({"temporary_id": "c", "type": "code"}),
     f"{D}/actions/4/type", "not supported"),
    ("whatsapp", lambda d: d["actions"].append({"temporary_id": "w", "type": "send-whatsapp"}),
     f"{D}/actions/4/type", "not supported"),
    ("weeks", lambda d: d["actions"][0]["data"].update(unit="weeks"),
     f"{D}/actions/0/data/unit", "must be one of days, hours, minutes"),
    ("a delay as a string", lambda d: d["actions"][0]["data"].update(value="4"),
     f"{D}/actions/0/data/value", "integer"),
    ("a century's delay", lambda d: d["actions"][0]["data"].update(unit="days", value=36500),
     f"{D}/actions/0/data/value", "ten years"),
    ("a negative delay", lambda d: d["actions"][0]["data"].update(value=-1),
     f"{D}/actions/0/data/value", "0 or more"),
    ("no time zone", lambda d: d["actions"][0]["data"].update(timezone="Mars/Olympus"),
     f"{D}/actions/0/data/timezone", "values the specification lists"),
    ("a bad time of day", lambda d: d["actions"][0]["data"].update(delay_until_time="25:00"),
     f"{D}/actions/0/data/delay_until_time", "time of day"),
    ("an ftp webhook", lambda d: d["actions"][2]["data"]["message"].update(url="ftp://x/y"),
     f"{D}/actions/2/data/message/url", "http or https"),
    ("a header on two lines", lambda d: d["actions"][2]["data"]["message"].update(
        headers={"X-A": "1\r\nX-B: 2"}),
     f"{D}/actions/2/data/message/headers/X-A", "one line"),
    ("a split without both links", lambda d: d["actions"][1]["links"].pop("next_if_true"),
     f"{D}/actions/1/links", "next_if_true"),
    ("a trigger filter on another metric", lambda d: d["triggers"][0]["trigger_filter"][
        "condition_groups"][0]["conditions"][0].update(metric_id="OTHER"),
     f"{D}/triggers/0/trigger_filter/condition_groups/0/conditions/0/metric_id",
     "trigger's metric"),
    ("an unknown metric", lambda d: d["triggers"][0].update(id="NOSUCH", trigger_filter=None),
     f"{D}/triggers/0/id", "No metric"),
    ("a consent condition", lambda d: d.update(profile_filter={"condition_groups": [{
        "conditions": [{"type": "profile-marketing-consent", "consent": {}}]}]}),
     f"{D}/profile_filter/condition_groups/0/conditions/0/type", "not supported"),
    ("a sample over 100", lambda d: d.update(profile_filter={"condition_groups": [{
        "conditions": [{"type": "profile-sample", "percentage": 101}]}]}),
     f"{D}/profile_filter/condition_groups/0/conditions/0/percentage", "0 and 100"),
    ("reentry in months", lambda d: d.update(reentry_criteria={"duration": 1, "unit": "month"}),
     f"{D}/reentry_criteria/unit", ""),
    ("a template nested 5,000 deep", lambda d: d["actions"][3]["data"]["message"].update(
        subject_line="{% if 1 %}" * 5000 + "{% endif %}" * 5000),
     f"{D}/actions/3/data/message/subject_line", "nested more than 50 deep"),
    ("a lorem tag", lambda d: d["actions"][2]["data"]["message"].update(
        body="{% lorem 999999999 w %}"),
     f"{D}/actions/2/data/message/body", "not supported"),
    ("a list-update to no list", lambda d: d["actions"][3].update(
        type="list-update", data={"name": "Add", "on_execution": True, "list_id": "NOLIST"}),
     f"{D}/actions/3/data/list_id", "No list"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "change", "pointer", "detail"), BAD, ids=[b[0] for b in BAD])
def test_bad_definitions_are_400s_with_a_pointer(
    api: httpx.Client, metrics: tuple[str, str], case: str,
    change: Callable[[dict[str, Any]], Any], pointer: str, detail: str,
) -> None:  # fmt: skip
    definition = abandoned_cart(*metrics)
    change(definition)
    body = {"data": {"type": "flow", "attributes": {"name": case, "definition": definition}}}
    before = len(api.get("/api/flows", params={"filter": f'equals(name,"{case}")'}).json()["data"])
    error = single_error(api.post("/api/flows", json=body), 400)
    assert error["source"] == {"pointer": pointer}, error
    assert detail in error["detail"], error
    after = api.get("/api/flows", params={"filter": f'equals(name,"{case}")'}).json()["data"]
    assert len(after) == before  # nothing stored


def test_revision_gating(api: httpx.Client, metrics: tuple[str, str]) -> None:
    attributes = {"name": "old", "definition": abandoned_cart(*metrics)}
    body = {"data": {"type": "flow", "attributes": attributes}}
    error = single_error(api.post("/api/flows", json=body, headers={"revision": "2024-10-15"}),
                         400)  # fmt: skip
    assert error["source"] == {"parameter": "revision"}
    assert api.post("/api/flows", json=body, headers={"revision": "2025-01-15"}).status_code == 201


def test_scopes(server: Server, metrics: tuple[str, str]) -> None:
    with server.client(revision=SPEC) as anonymous:
        assert anonymous.get("/api/flows").status_code == 401


def test_official_python_sdk(server: Server, metrics: tuple[str, str]) -> None:
    sdk = KlaviyoAPI(PRIVATE_KEY, test_host=server.url, max_retries=0)
    created = sdk.Flows.create_flow(
        {"data": {"type": "flow", "attributes": {"name": "SDK cart",
                                                 "definition": abandoned_cart(*metrics)}}}
    )  # fmt: skip
    flow_id = created.data.id
    assert created.data.attributes.status == "draft"
    got = sdk.Flows.get_flow(flow_id, additional_fields_flow=["definition"])
    assert got.data.attributes.trigger_type == "Metric"
    actions = sdk.Flows.get_actions_for_flow(flow_id)
    assert len(actions.data) == 4
    sdk.Flows.update_flow(flow_id, {"data": {"type": "flow", "id": flow_id,
                                             "attributes": {"status": "manual"}}})  # fmt: skip
    assert sdk.Flows.get_flow(flow_id).data.attributes.status == "manual"
    listed = sdk.Flows.get_flows(filter=f'any(id,["{flow_id}"])')
    assert [f.id for f in listed.data] == [flow_id]
    sdk.Flows.delete_flow(flow_id)


def _action_body(action: dict[str, Any]) -> dict[str, Any]:
    body = {"data": {"type": "flow-action", "id": action["id"],
                     "attributes": {"definition": action}}}  # fmt: skip
    validate_request(SPEC, "update_flow_action", body)
    return body


def test_an_action_is_updated_within_its_flow(api: httpx.Client, metrics: tuple[str, str]) -> None:
    flow = create(api, abandoned_cart(*metrics))
    wait, ordered, hook, mail = flow["attributes"]["definition"]["actions"]
    changed = copy.deepcopy(wait)
    changed["data"]["value"] = 2
    r = api.patch(f"/api/flow-actions/{wait['id']}", json=_action_body(changed))
    assert r.status_code == 200, r.text
    validate_response(SPEC, "update_flow_action", 200, r.json())
    assert r.json()["data"]["attributes"]["definition"]["data"]["value"] == 2
    # The flow's definition (what processing runs by) follows, and so do its action reads.
    r = api.get(f"/api/flows/{flow['id']}", params={"additional-fields[flow]": "definition"})
    stored = r.json()["data"]["attributes"]["definition"]
    assert stored["actions"][0] == changed and stored["actions"][1:] == [ordered, hook, mail]
    assert api.get(f"/api/flow-actions/{wait['id']}").json()["data"]["attributes"][
        "definition"] == changed  # fmt: skip

    # A message's content: the flow-message shows it.
    changed_mail = copy.deepcopy(mail)
    changed_mail["data"]["message"]["subject_line"] = "Still want {{ event.ItemName }}?"
    r = api.patch(f"/api/flow-actions/{mail['id']}", json=_action_body(changed_mail))
    assert r.status_code == 200, r.text
    (message_ref,) = api.get(f"/api/flow-actions/{mail['id']}/relationships/flow-messages"
                             ).json()["data"]  # fmt: skip
    message = api.get(f"/api/flow-messages/{message_ref['id']}").json()["data"]
    assert message["attributes"]["definition"]["subject_line"] == "Still want {{ event.ItemName }}?"

    # Refused, saying where: a bad value, a link out of the flow, a cycle, a type change, a
    # template that does not compile, an id that is not the URL's; nothing changes.
    refusals: list[tuple[dict[str, Any], str]] = []
    bad = copy.deepcopy(wait)
    bad["data"]["unit"] = "fortnights"
    refusals.append((bad, "/data/attributes/definition/data/unit"))
    bad = copy.deepcopy(wait)
    bad["links"]["next"] = "nowhere"
    refusals.append((bad, "/data/attributes/definition/links/next"))
    bad = copy.deepcopy(mail)
    bad["links"]["next"] = wait["id"]  # wait → … → mail → wait
    refusals.append((bad, "/data/attributes/definition/links/next"))
    bad = {**copy.deepcopy(wait), "type": "send-sms"}
    refusals.append((bad, "/data/attributes/definition/type"))
    bad = copy.deepcopy(mail)
    bad["data"]["message"]["subject_line"] = "{% if %}"
    refusals.append((bad, "/data/attributes/definition/data/message/subject_line"))
    bad = {**copy.deepcopy(wait), "id": mail["id"]}
    refusals.append((bad, "/data/attributes/definition/id"))
    bad = {**copy.deepcopy(wait), "surprise": 1}
    refusals.append((bad, "/data/attributes/definition"))
    for definition, pointer in refusals:
        body = {
            "data": {
                "type": "flow-action",
                "id": wait["id"] if definition["type"] != "send-email" else mail["id"],
                "attributes": {"definition": definition},
            }
        }
        target = body["data"]["id"]
        error = single_error(api.patch(f"/api/flow-actions/{target}", json=body), 400)
        assert error["source"]["pointer"].startswith(pointer), (definition, error)
    r = api.get(f"/api/flows/{flow['id']}", params={"additional-fields[flow]": "definition"})
    assert r.json()["data"]["attributes"]["definition"]["actions"][0] == changed

    # The URL's id and the body's must agree; an action of no flow of this account is a 404.
    body = _action_body(changed)
    body["data"]["id"] = mail["id"]
    assert api.patch(f"/api/flow-actions/{wait['id']}", json=body).status_code == 409
    assert api.patch("/api/flow-actions/NOSUCH", json={"data": {
        "type": "flow-action", "id": "NOSUCH", "attributes": {"definition": changed}}}
    ).status_code == 404  # fmt: skip
    error = single_error(api.patch(f"/api/flow-actions/{wait['id']}", json=_action_body(changed),
                                   headers={"revision": "2025-07-15"}), 400)  # fmt: skip
    assert error["source"] == {"parameter": "revision"}


def test_deleting_an_action_relinks_its_flow(api: httpx.Client, metrics: tuple[str, str]) -> None:
    flow = create(api, abandoned_cart(*metrics))
    wait, ordered, hook, mail = flow["attributes"]["definition"]["actions"]

    def stored() -> dict[str, Any]:
        r = api.get(f"/api/flows/{flow['id']}", params={"additional-fields[flow]": "definition"})
        definition: dict[str, Any] = r.json()["data"]["attributes"]["definition"]
        return definition

    # A split with two ways on cannot go; the webhook between the split and the email can.
    both_ways = {**ordered, "links": {"next_if_true": mail["id"], "next_if_false": hook["id"]}}
    assert api.patch(f"/api/flow-actions/{ordered['id']}",
                     json=_action_body(both_ways)).status_code == 200  # fmt: skip
    error = single_error(api.delete(f"/api/flow-actions/{ordered['id']}"), 409)
    assert "branch" in error["detail"]
    assert api.delete(f"/api/flow-actions/{hook['id']}").status_code == 204
    definition = stored()
    assert [a["id"] for a in definition["actions"]] == [wait["id"], ordered["id"], mail["id"]]
    assert definition["actions"][1]["links"] == {"next_if_true": mail["id"],
                                                 "next_if_false": mail["id"]}  # fmt: skip
    assert api.get(f"/api/flow-actions/{hook['id']}").status_code == 404
    r = api.get(f"/api/flows/{flow['id']}/relationships/flow-actions")
    assert sorted(a["id"] for a in r.json()["data"]) == sorted([wait["id"], ordered["id"],
                                                                mail["id"]])  # fmt: skip
    # The entry action: the flow then starts where it led; the split, now one way on, goes.
    assert api.delete(f"/api/flow-actions/{wait['id']}").status_code == 204
    assert stored()["entry_action_id"] == ordered["id"]
    assert api.delete(f"/api/flow-actions/{ordered['id']}").status_code == 204
    definition = stored()
    assert definition["entry_action_id"] == mail["id"] and definition["actions"] == [mail]
    assert api.delete(f"/api/flow-actions/{ordered['id']}").status_code == 404
    error = single_error(api.delete(f"/api/flow-actions/{mail['id']}",
                                    headers={"revision": "2026-01-15"}), 400)  # fmt: skip
    assert error["source"] == {"parameter": "revision"}
    assert api.delete(f"/api/flow-actions/{mail['id']}").status_code == 204
    definition = stored()
    assert definition["actions"] == [] and definition["entry_action_id"] is None


def test_flows_triggered_by_a_metric_list_or_segment(
    server: Server, api: httpx.Client, metrics: tuple[str, str]
) -> None:
    cart, placed = metrics
    by_cart = create(api, abandoned_cart(cart, placed))["id"]
    r = api.post("/api/lists", json={"data": {"type": "list", "attributes": {"name": "Trig"}}})
    list_id = r.json()["data"]["id"]
    by_list = create(api, {"triggers": [{"type": "list", "id": list_id}], "actions": [],
                           "entry_action_id": None})["id"]  # fmt: skip
    r = api.get(f"/api/metrics/{cart}/flow-triggers")
    assert r.status_code == 200, r.text
    validate_response(SPEC, "get_flows_triggered_by_metric", 200, r.json())
    assert by_cart in [f["id"] for f in r.json()["data"]] and by_list not in r.text
    r = api.get(f"/api/metrics/{cart}/relationships/flow-triggers")
    validate_response(SPEC, "get_ids_for_flows_triggered_by_metric", 200, r.json())
    assert {"type": "flow", "id": by_cart} in r.json()["data"]
    r = api.get(f"/api/lists/{list_id}/flow-triggers", params={"fields[flow]": "name"})
    validate_response(SPEC, "get_flows_triggered_by_list", 200, r.json())
    assert [(f["id"], list(f["attributes"])) for f in r.json()["data"]] == [(by_list, ["name"])]
    r = api.get(f"/api/lists/{list_id}/relationships/flow-triggers")
    validate_response(SPEC, "get_ids_for_flows_triggered_by_list", 200, r.json())
    assert r.json()["data"] == [{"type": "flow", "id": by_list}]
    for path in ("metrics/NOSUCH", "lists/NOSUCH", "segments/NOSUCH"):
        assert api.get(f"/api/{path}/flow-triggers").status_code == 404
    sdk = KlaviyoAPI(PRIVATE_KEY, test_host=server.url, max_retries=0)
    assert by_cart in [f.id for f in sdk.Metrics.get_flows_triggered_by_metric(cart).data]
    assert [f.id for f in sdk.Lists.get_flows_triggered_by_list(list_id).data] == [by_list]
    api.delete(f"/api/flows/{by_list}")
    assert api.get(f"/api/lists/{list_id}/flow-triggers").json()["data"] == []
