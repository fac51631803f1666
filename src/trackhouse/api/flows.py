"""Klaviyo's Flows API: POST/GET /api/flows, GET/PATCH/DELETE /api/flows/{id}, a flow's
actions (`…/flow-actions`, `…/relationships/flow-actions`), GET /api/flow-actions/{id} with its
flow and messages, GET /api/flow-messages/{id} with its action.

A flow is written by the API process straight into the store, its definition checked strictly
first (flows/definition.py: a 400 with a pointer into it), including what it names: the
trigger's metric, list or segment, the lists of list-update actions and the metrics of its
filters must be the account's. New actions' `temporary_id`s are replaced by ids of their own,
and the answer to the create shows the definition with them. A flow created through the API
starts as `draft` (design.md); PATCH sets the flow's status, and its actions' with it.

Revisions: the Flows API's create, and `definition`, from 2025-01-15 (create_flow is stable
from there); reading and PATCHing flows from the oldest revision served. Klaviyo's daily
creation limit (100 a day) is off by default (design.md); TRACKHOUSE_DAILY_LIMITS turns it on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api import members
from trackhouse.api.accept import Caller, identify_caller, jsonapi_response, now_iso, store_of
from trackhouse.api.body import MB, decode_json, read_body, require_json_content_type
from trackhouse.api.errors import APIError, invalid
from trackhouse.api.paging import ListRequest, base_url, invalid_parameter, page_links
from trackhouse.api.ratelimit import check_daily
from trackhouse.flows import render, webhooks
from trackhouse.flows.definition import (
    MESSAGE_CHANNELS,
    FlowDefinition,
    FlowMetricCondition,
    parse_flow_definition,
    replaced_action,
    with_ids,
    without_action,
)
from trackhouse.ids import short_id
from trackhouse.query.events import sparse
from trackhouse.query.filters import Condition, FilterError, instant
from trackhouse.segments.definition import DefinitionError, MetricCondition
from trackhouse.store.base import FlowActionRow, FlowRow, ListQuery, SegmentQuery, Store

FLOW_FIELDS = ("archived", "created", "id", "name", "status", "trigger_type", "updated")
ACTION_FIELDS = ("created", "definition", "updated")
MESSAGE_FIELDS = ("channel", "created", "definition", "updated")
FLOW_SORTS = tuple(s for f in ("created", "id", "name", "status", "trigger_type", "updated")
                   for s in (f, "-" + f))  # fmt: skip
ACTION_SORTS = tuple(s for f in ("action_type", "created", "id", "status", "updated")
                     for s in (f, "-" + f))  # fmt: skip
PAGE = 50
MAX_NAME = 1000
CREATE = date(2025, 1, 15)  # create_flow and `definition`, stable from this revision
UPDATE_ACTION = date(2025, 10, 15)  # update_flow_action, stable from this revision
DELETE_ACTION = date(2026, 4, 15)  # delete_flow_action
SAVE_ATTEMPTS = 5  # read-modify-write rounds against concurrent edits of one flow
STATUSES = ("draft", "manual", "live")
POINTER = "/data/attributes/definition"


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    pass


class CreateAttributes(_Wire):
    name: str
    definition: dict[str, Any]


class CreateData(_Wire):
    type: Literal["flow"]
    attributes: CreateAttributes


class CreateQuery(_Wire):
    data: CreateData


class UpdateAttributes(_Wire):
    status: str


class UpdateData(_Wire):
    type: Literal["flow"]
    id: str
    attributes: UpdateAttributes


class UpdateQuery(_Wire):
    data: UpdateData


class ActionAttributes(_Wire):
    definition: dict[str, Any]


class ActionData(_Wire):
    type: Literal["flow-action"]
    id: str
    attributes: ActionAttributes


class ActionQuery(_Wire):
    data: ActionData


def _not_found(what: str, found_id: str) -> APIError:
    return APIError(404, "not_found", f"A {what} with id {found_id[:64]} does not exist.")


# -- resources --------------------------------------------------------------------------------


def _links(url: str, name: str) -> dict[str, str]:
    return {"self": f"{url}/relationships/{name}", "related": f"{url}/{name}"}


def flow_resource(
    row: FlowRow, base: str, *, definition: bool = False,
    actions: list[FlowActionRow] | None = None,
) -> dict[str, Any]:  # fmt: skip
    url = f"{base}/api/flows/{row.id}"
    attributes: dict[str, Any] = {
        "name": row.name,
        "status": row.status,
        "archived": row.archived,
        "created": row.created,
        "updated": row.updated,
        "trigger_type": row.trigger_type,
    }
    if definition:
        attributes["definition"] = msgspec.json.decode(row.definition)
    relationships: dict[str, Any] = {
        "flow-actions": {"links": _links(url, "flow-actions")},
        "tags": {"links": _links(url, "tags")},
    }
    if actions is not None:
        relationships["flow-actions"]["data"] = [
            {"type": "flow-action", "id": a.id} for a in actions
        ]
        relationships["tags"]["data"] = []
    return {"type": "flow", "id": row.id, "attributes": attributes,
            "relationships": relationships, "links": {"self": url}}  # fmt: skip


def action_resource(row: FlowActionRow, base: str) -> dict[str, Any]:
    url = f"{base}/api/flow-actions/{row.id}"
    return {
        "type": "flow-action",
        "id": row.id,
        "attributes": {
            "created": row.created,
            "updated": row.updated,
            "definition": msgspec.json.decode(row.definition),
        },
        "relationships": {
            "flow": {"data": {"type": "flow", "id": row.flow_id}, "links": _links(url, "flow")},
            "flow-messages": {
                "data": [{"type": "flow-message", "id": row.message_id}] if row.message_id else [],
                "links": _links(url, "flow-messages"),
            },
        },
        "links": {"self": url},
    }


def message_resource(row: FlowActionRow, base: str) -> dict[str, Any]:
    assert row.message_id is not None
    url = f"{base}/api/flow-messages/{row.message_id}"
    action = msgspec.json.decode(row.definition)
    message = dict((action.get("data") or {}).get("message") or {})
    message["id"] = row.message_id
    return {
        "type": "flow-message",
        "id": row.message_id,
        "attributes": {
            "channel": MESSAGE_CHANNELS[row.type],
            "created": row.created,
            "updated": row.updated,
            "definition": message,
        },
        "relationships": {
            "flow-action": {
                "data": {"type": "flow-action", "id": row.id},
                "links": _links(url, "flow-action"),
            },
            "template": {"links": _links(url, "template")},
        },
        "links": {"self": url},
    }


# -- finding ----------------------------------------------------------------------------------


def _flow(request: Request, caller: Caller, flow_id: str | None = None) -> FlowRow:
    flow_id = flow_id or request.path_params["flow_id"]
    rows = (
        store_of(request).flows(caller.account_id, [flow_id]) if members.valid_id(flow_id) else []
    )
    if not rows:
        raise _not_found("flow", flow_id)
    return rows[0]


def _action(request: Request, caller: Caller, by_message: bool = False) -> FlowActionRow:
    """The action of the path's `action_id` (or, `by_message`, of its `message_id`)."""
    found_id = request.path_params["message_id" if by_message else "action_id"]
    rows = []
    if members.valid_id(found_id):
        key = "message_ids" if by_message else "ids"
        rows = store_of(request).flow_actions(caller.account_id, **{key: [found_id]})
    if not rows:
        raise _not_found("flow message" if by_message else "flow action", found_id)
    return rows[0]


def _message(request: Request, caller: Caller) -> FlowActionRow:
    return _action(request, caller, by_message=True)


# -- create -----------------------------------------------------------------------------------


def _metrics_named(definition: FlowDefinition) -> set[str]:
    """The metrics of the definition's profile filters (profile-metric conditions)."""
    found = set()
    filters = [definition.profile_filter] + [a.filter for a in definition.actions]
    filters += [f for a in definition.actions for _, f in a.branches]
    for groups in filters:
        for group in groups or ():
            for c in group:
                inner = c.condition if isinstance(c, FlowMetricCondition) else c
                if isinstance(inner, MetricCondition):
                    found.add(inner.metric_id)
    return found


def _refused(detail: str, pointer: str) -> DefinitionError:
    return DefinitionError(pointer, detail)


def _check_references(
    store: Store, account_id: str, definition: FlowDefinition, pointer: str = POINTER
) -> None:
    """What the definition names must be the account's, its webhooks allowed, its templates
    compile: a DefinitionError (pointer, detail: a sentence) otherwise."""
    trigger = definition.trigger
    at = pointer + "/triggers/0/id"
    if trigger.type == "metric" and not store.metrics(account_id, ids=[trigger.id]):
        raise _refused(f"No metric with id {trigger.id[:64]} exists.", at)
    if trigger.type == "list" and not store.lists(ListQuery(account_id, ids=[trigger.id])):
        raise _refused(f"No list with id {trigger.id[:64]} exists.", at)
    if trigger.type == "segment" and not store.segments(SegmentQuery(account_id, ids=[trigger.id])):
        raise _refused(f"No segment with id {trigger.id[:64]} exists.", at)
    for n, action in enumerate(definition.actions):
        if action.type == "list-update":
            list_id = action.raw["data"]["list_id"]
            where = f"{pointer}/actions/{n}/data/list_id"
            exists = isinstance(list_id, str) and store.lists(ListQuery(account_id, ids=[list_id]))
            if not exists:
                raise _refused(f"No list with id {str(list_id)[:64]} exists.", where)
    for n, action in enumerate(definition.actions):
        if action.type == "send-webhook":
            why = webhooks.refused(action.raw["data"]["message"]["url"], resolve=False)
            if why is not None:
                raise _refused(f"This server {why}.", f"{pointer}/actions/{n}/data/message/url")
        message = (action.raw.get("data") or {}).get("message")
        if action.channel and isinstance(message, dict):
            texts = [(k, message.get(k)) for k in ("subject_line", "preview_text", "title", "body")]
            texts += [(f"headers/{k}", v) for k, v in (message.get("headers") or {}).items()]
            for key, text in texts:
                why = render.check(text) if isinstance(text, str) else None
                if why is not None:
                    raise _refused(f"The template does not compile: {why}",
                                  f"{pointer}/actions/{n}/data/message/{key}")  # fmt: skip
    named = sorted(_metrics_named(definition))
    if named:
        known = {m.id for m in store.metrics(account_id, ids=named)}
        for metric_id in named:
            if metric_id not in known:
                raise _refused(f"No metric with id {metric_id[:64]} exists (a profile-metric "
                              "condition names it).", pointer)  # fmt: skip


def _name(name: str) -> str:
    pointer = "/data/attributes/name"
    if not name.strip():
        raise invalid("The flow name must not be empty.", pointer)
    if len(name) > MAX_NAME:
        raise invalid(f"The flow name must be at most {MAX_NAME} characters.", pointer)
    if "\x00" in name:
        raise invalid("The flow name must not contain NUL characters.", pointer)
    return name


def _needs(caller: Caller, what: str, since: date = CREATE) -> None:
    if caller.day < since:
        raise APIError(400, "invalid", f"{what} needs revision {since.isoformat()} or later.",
                       parameter="revision")  # fmt: skip


def _wants_definition(request: Request, caller: Caller) -> bool:
    text = request.query_params.get("additional-fields[flow]")
    if text is None:
        return False
    wanted = {f.strip() for f in text.split(",") if f.strip()}
    if wanted - {"definition"}:
        raise invalid_parameter("additional-fields[flow]",
                                "'definition' is the only additional field of a flow.")  # fmt: skip
    if wanted:
        _needs(caller, "A flow's definition")
    return bool(wanted)


async def create_flow(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:write", endpoint_class="flow_create")
    _needs(caller, "Creating a flow")
    _wants_definition(request, caller)  # checked; the created flow's definition is answered
    require_json_content_type(request)
    attrs = decode_json(await read_body(request, 1 * MB), CreateQuery).data.attributes
    name = _name(attrs.name)
    try:
        definition = parse_flow_definition(attrs.definition, POINTER)
    except DefinitionError as exc:
        raise invalid(f"Invalid definition: {exc.detail}.", exc.pointer) from None
    store = store_of(request)
    try:
        _check_references(store, caller.account_id, definition)
    except DefinitionError as exc:
        raise invalid(exc.detail, exc.pointer) from None
    limit = request.app.state.daily_limits.get("flow")
    if limit is not None:
        since = datetime.fromtimestamp(time.time() - 86400, UTC).isoformat(timespec="seconds")
        created = [f.created for f in store.flows(caller.account_id) if f.created > since]
        check_daily("flow", limit, created, time.time())
    now = now_iso()
    while True:  # a random id that is taken: draw all of them again
        raw = with_ids(definition, short_id)
        flow = FlowRow(short_id(), name, "draft", False, definition.trigger_type,
                       (definition.trigger.type, definition.trigger.id),
                       msgspec.json.encode(raw).decode(), now, now)  # fmt: skip
        actions = [
            FlowActionRow(
                a.key,
                flow.id,
                a.type,
                a.status,
                msgspec.json.encode(a.raw).decode(),
                short_id() if a.channel else None,
                now,
                now,
            )
            for a in definition.actions
        ]
        if store.add_flow(caller.account_id, flow, actions):
            break
        definition = parse_flow_definition(attrs.definition, POINTER)
    resource = flow_resource(flow, base_url(request), definition=True)
    fields = ListRequest.fields_of(request, "flow")
    return jsonapi_response(201, {"data": sparse(resource, fields)}, caller.headers)


# -- read -------------------------------------------------------------------------------------


def _compare(c: Condition, value: Any, q: ListRequest) -> bool:
    """Whether `value` (a flow's or action's attribute) meets the filter condition."""
    if c.field in ("created", "updated"):
        try:
            wanted = instant(c.value)
        except FilterError as exc:
            raise q.bad_filter(str(exc)) from None
        have = datetime.fromisoformat(value).timestamp()
        return {
            "equals": have == wanted, "greater-than": have > wanted,
            "greater-or-equal": have >= wanted, "less-than": have < wanted,
            "less-or-equal": have <= wanted,
        }[c.op]  # fmt: skip
    if c.op == "any":
        return value in tuple(c.value)  # type: ignore[arg-type]
    if c.field == "archived":
        if not isinstance(c.value, bool):
            raise q.bad_filter("archived must be compared with true or false")
        return bool(value == c.value)
    if not isinstance(c.value, str):
        raise q.bad_filter(f"{c.field} must be compared with a string")
    text, wanted_text = str(value), c.value
    return {
        "equals": text == wanted_text, "contains": wanted_text in text,
        "starts-with": text.startswith(wanted_text), "ends-with": text.endswith(wanted_text),
    }[c.op]  # fmt: skip


def _filtered(
    q: ListRequest, rows: list[Any], allowed: dict[str, tuple[str, ...]],
    value: Callable[[Any, str], Any],
) -> list[Any]:  # fmt: skip
    for c in q.filters:
        if c.op not in allowed.get(c.field, ()):
            raise q.bad_filter(f"'{c.op}' on '{c.field}' is not supported")
        rows = [r for r in rows if _compare(c, value(r, c.field), q)]
    return rows


_TIMES = ("equals", "greater-or-equal", "greater-than", "less-or-equal", "less-than")
FLOW_FILTERS = {
    "id": ("any",), "name": ("contains", "ends-with", "equals", "starts-with"),
    "status": ("equals",), "archived": ("equals",), "created": _TIMES, "updated": _TIMES,
    "trigger_type": ("equals",),
}  # fmt: skip
ACTION_FILTERS = {"id": ("any",), "action_type": ("any", "equals"), "status": ("equals",),
                  "created": _TIMES, "updated": _TIMES}  # fmt: skip


def _page(
    request: Request, q: ListRequest, rows: list[Any], key: Callable[[Any, str], Any]
) -> tuple[list[Any], Any]:
    """The page of `rows` in `q.sort` order (ties by id) after the cursor, and the next one."""
    sort = q.sort or "id"
    field, descending = sort.lstrip("-"), sort.startswith("-")
    rows = sorted(rows, key=lambda r: (key(r, field), r.id), reverse=descending)
    after = q.cursor_value(list)
    if after is not None:
        if len(after) != 2 or not all(isinstance(v, str) for v in after):
            raise invalid_parameter("page[cursor]", "Invalid cursor provided.")
        mark = (after[0], after[1])
        rows = [r for r in rows if ((key(r, field), r.id) < mark if descending
                                    else (key(r, field), r.id) > mark)]  # fmt: skip
    page = rows[: q.size]
    more = len(rows) > q.size
    return page, [str(key(page[-1], field)), page[-1].id] if more and page else None


def _flow_value(row: FlowRow, field: str) -> Any:
    return getattr(row, field)


def _action_value(row: FlowActionRow, field: str) -> Any:
    return row.type if field == "action_type" else getattr(row, field)


async def get_flows(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:read", endpoint_class="flows")
    q = ListRequest.parse(request, default_size=PAGE, max_size=PAGE, sorts=FLOW_SORTS,
                          includes=("flow-actions", "tags"),
                          fields={"flow": FLOW_FIELDS, "flow-action": ACTION_FIELDS,
                                  "tag": ("name",)})  # fmt: skip
    store = store_of(request)
    rows = _filtered(q, store.flows(caller.account_id), FLOW_FILTERS, _flow_value)
    page, next_value = _page(request, q, rows, _flow_value)
    base = base_url(request)
    actions: dict[str, list[FlowActionRow]] = {}
    if "flow-actions" in q.include and page:
        for a in store.flow_actions(caller.account_id, flow_ids=[f.id for f in page]):
            actions.setdefault(a.flow_id, []).append(a)
    included = bool(q.include)
    document: dict[str, Any] = {
        "data": [
            sparse(flow_resource(f, base, actions=actions.get(f.id, []) if included else None),
                   q.fields.get("flow"))
            for f in page
        ],
        "links": page_links(request, next_value),
    }  # fmt: skip
    if included:
        document["included"] = [sparse(action_resource(a, base), q.fields.get("flow-action"))
                                for f in page for a in actions.get(f.id, [])]  # fmt: skip
    return jsonapi_response(200, document, caller.headers)


async def get_flow(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:read", endpoint_class="flows")
    definition = _wants_definition(request, caller)
    q = ListRequest.parse(request, default_size=1, max_size=1, includes=("flow-actions", "tags"),
                          fields={"flow": (*FLOW_FIELDS, "definition"),
                                  "flow-action": ACTION_FIELDS, "tag": ("name",)})  # fmt: skip
    row = _flow(request, caller)
    base = base_url(request)
    actions = None
    if q.include:
        actions = store_of(request).flow_actions(caller.account_id, flow_ids=[row.id])
        if "flow-actions" not in q.include:
            actions = []
    resource = flow_resource(row, base, definition=definition, actions=actions)
    document: dict[str, Any] = {"data": sparse(resource, q.fields.get("flow")),
                                "links": {"self": str(request.url)}}  # fmt: skip
    if actions is not None:
        document["included"] = [sparse(action_resource(a, base), q.fields.get("flow-action"))
                                for a in actions]  # fmt: skip
    return jsonapi_response(200, document, caller.headers)


def _save(
    request: Request, caller: Caller, flow_id: str,
    change: Callable[[FlowRow], tuple[str, dict[str, Any], list[str]]],
    action_status: str | None = None, check_references: bool = True,
) -> FlowRow:  # fmt: skip
    """Apply `change` to the flow (its stored row → its status, its definition, the actions
    to delete) and store the result: the definition checked again as a whole, each action's
    row following it (its status `action_status` when given), all only if no one changed the
    flow meanwhile (else read it again and retry)."""
    store = store_of(request)
    for _ in range(SAVE_ATTEMPTS):
        row = _flow(request, caller, flow_id)
        status, raw, deleted = change(row)
        definition = parse_flow_definition(raw, "", creating=False)
        if check_references:  # (a status change keeps what it names: it may name a list
            _check_references(store, caller.account_id, definition, "")  # deleted since)
        rows = {a.id: a for a in store.flow_actions(caller.account_id, flow_ids=[row.id])}
        now = now_iso()
        actions = []
        for a in definition.actions:
            old = rows.get(a.key)
            if old is None:
                continue  # an action the definition holds without its row: none is added
            data = a.raw.get("data")
            own = data.get("status") if isinstance(data, dict) else None
            actions.append(FlowActionRow(a.key, row.id, a.type, action_status or own or old.status,
                                         msgspec.json.encode(a.raw).decode(), old.message_id,
                                         old.created, now))  # fmt: skip
        encoded = msgspec.json.encode(raw).decode()
        saved = store.update_flow(caller.account_id, row.id, status, now, actions, encoded,
                                  expected=row.definition, deleted=deleted)  # fmt: skip
        if saved is not None:
            return saved
    raise APIError(409, "conflict", "The flow was changed by other requests meanwhile; retry.")


async def update_flow(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:write", endpoint_class="flows")
    require_json_content_type(request)
    data = decode_json(await read_body(request, 64 * 1024), UpdateQuery).data
    flow_id = request.path_params["flow_id"]
    if data.id != flow_id:
        raise APIError(409, "conflict", "The id in the body does not match the flow in the URL.",
                       pointer="/data/id")  # fmt: skip
    status = data.attributes.status
    if status not in STATUSES:
        raise invalid("status must be one of draft, manual, live.", "/data/attributes/status")

    def change(row: FlowRow) -> tuple[str, dict[str, Any], list[str]]:
        definition = msgspec.json.decode(row.definition)
        for action in definition.get("actions", []):  # what processing runs by
            if isinstance(action.get("data"), dict) and "status" in action["data"]:
                action["data"]["status"] = status
        return status, definition, []

    try:
        updated = _save(
            request, caller, flow_id, change, action_status=status, check_references=False
        )
    except DefinitionError as exc:  # stored by a version that checked otherwise
        raise invalid(f"The flow's stored definition is no longer valid: {exc.detail}.",
                      "/data/attributes/status") from None  # fmt: skip
    resource = flow_resource(updated, base_url(request))
    fields = ListRequest.fields_of(request, "flow")
    return jsonapi_response(200, {"data": sparse(resource, fields)}, caller.headers)


def _action_error(exc: DefinitionError, index: int | None) -> APIError:
    """A check of the edited flow that failed, pointing into the request's action when it is
    the action's own, else saying where in the flow."""
    own = f"/actions/{index}"
    if index is not None and (exc.pointer == own or exc.pointer.startswith(own + "/")):
        detail = exc.detail.rstrip(".")
        return invalid(f"Invalid definition: {detail}.", POINTER + exc.pointer[len(own) :])
    where = f" (at {exc.pointer} of the flow's definition)" if exc.pointer else ""
    return invalid(f"The flow would be invalid{where}: {exc.detail.rstrip('.')}.", POINTER)


async def update_flow_action(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:write", endpoint_class="flows")
    _needs(caller, "Updating a flow action", UPDATE_ACTION)
    require_json_content_type(request)
    data = decode_json(await read_body(request, 1 * MB), ActionQuery).data
    action_id = request.path_params["action_id"]
    if data.id != action_id:
        raise APIError(409, "conflict", "The id in the body does not match the flow action in"
                                        " the URL.", pointer="/data/id")  # fmt: skip
    row = _action(request, caller)
    index: list[int | None] = [None]

    def change(flow: FlowRow) -> tuple[str, dict[str, Any], list[str]]:
        raw = replaced_action(msgspec.json.decode(flow.definition), action_id,
                              data.attributes.definition, POINTER)  # fmt: skip
        index[0] = next(n for n, a in enumerate(raw["actions"]) if a.get("id") == action_id)
        return flow.status, raw, []

    try:
        _save(request, caller, row.flow_id, change)
    except DefinitionError as exc:
        if exc.pointer.startswith(POINTER):  # from replaced_action: already the request's
            raise invalid(f"Invalid definition: {exc.detail}.", exc.pointer) from None
        raise _action_error(exc, index[0]) from None
    updated = _action(request, caller)
    resource = action_resource(updated, base_url(request))
    fields = ListRequest.fields_of(request, "flow-action")
    return jsonapi_response(200, {"data": sparse(resource, fields)}, caller.headers)


async def delete_flow_action(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:write", endpoint_class="flows")
    _needs(caller, "Deleting a flow action", DELETE_ACTION)
    row = _action(request, caller)

    def change(flow: FlowRow) -> tuple[str, dict[str, Any], list[str]]:
        raw = without_action(msgspec.json.decode(flow.definition), row.id)
        return flow.status, raw, [row.id]

    try:
        _save(request, caller, row.flow_id, change)
    except DefinitionError as exc:
        detail = exc.detail if not exc.pointer else f"the flow would be invalid at {exc.pointer}"\
                                                    f" of its definition: {exc.detail}"  # fmt: skip
        raise APIError(409, "conflict", f"The flow action cannot be deleted: {detail}.") from None
    return jsonapi_response(204, None, caller.headers)


async def delete_flow(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:write", endpoint_class="flows")
    row = _flow(request, caller)
    if not store_of(request).delete_flow(caller.account_id, row.id):
        raise _not_found("flow", row.id)
    return jsonapi_response(204, None, caller.headers)


# -- actions and messages ---------------------------------------------------------------------


def _related(request: Request, caller: Caller, data: Any) -> Response:
    """A related resource (or its identifier, or a list of them), linked to this request."""
    return jsonapi_response(200, {"data": data, "links": {"self": str(request.url)}},
                            caller.headers)  # fmt: skip


def _flow_actions_page(request: Request, caller: Caller) -> tuple[list[FlowActionRow], Any]:
    q = ListRequest.parse(request, default_size=PAGE, max_size=PAGE, sorts=ACTION_SORTS,
                          fields={"flow-action": ACTION_FIELDS})  # fmt: skip
    row = _flow(request, caller)
    rows = store_of(request).flow_actions(caller.account_id, flow_ids=[row.id])
    rows = _filtered(q, rows, ACTION_FILTERS, _action_value)
    return _page(request, q, rows, _action_value)


async def get_flow_actions(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:read", endpoint_class="flows")
    page, next_value = _flow_actions_page(request, caller)
    base, fields = base_url(request), ListRequest.fields_of(request, "flow-action")
    document = {"data": [sparse(action_resource(a, base), fields) for a in page],
                "links": page_links(request, next_value)}  # fmt: skip
    return jsonapi_response(200, document, caller.headers)


async def get_flow_action_ids(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:read", endpoint_class="flows")
    page, next_value = _flow_actions_page(request, caller)
    document = {"data": [{"type": "flow-action", "id": a.id} for a in page],
                "links": page_links(request, next_value)}  # fmt: skip
    return jsonapi_response(200, document, caller.headers)


async def get_flow_action(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:read", endpoint_class="flows")
    q = ListRequest.parse(request, default_size=1, max_size=1, includes=("flow", "flow-messages"),
                          fields={"flow-action": ACTION_FIELDS, "flow": FLOW_FIELDS,
                                  "flow-message": MESSAGE_FIELDS})  # fmt: skip
    row = _action(request, caller)
    base = base_url(request)
    document: dict[str, Any] = {
        "data": sparse(action_resource(row, base), q.fields.get("flow-action")),
        "links": {"self": str(request.url)},
    }
    if q.include:
        included = []
        if "flow" in q.include:
            flow = _flow(request, caller, row.flow_id)
            included.append(sparse(flow_resource(flow, base), q.fields.get("flow")))
        if "flow-messages" in q.include and row.message_id:
            included.append(sparse(message_resource(row, base), q.fields.get("flow-message")))
        document["included"] = included
    return jsonapi_response(200, document, caller.headers)


async def get_action_flow(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:read", endpoint_class="flows")
    row = _action(request, caller)
    flow = _flow(request, caller, row.flow_id)
    fields = ListRequest.fields_of(request, "flow")
    return _related(request, caller, sparse(flow_resource(flow, base_url(request)), fields))


async def get_action_flow_id(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:read", endpoint_class="flows")
    row = _action(request, caller)
    return _related(request, caller, {"type": "flow", "id": row.flow_id})


async def get_action_messages(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:read", endpoint_class="flows")
    ListRequest.parse(request, default_size=PAGE, max_size=PAGE,
                      fields={"flow-message": MESSAGE_FIELDS})  # fmt: skip
    row = _action(request, caller)
    fields = ListRequest.fields_of(request, "flow-message")
    data = [sparse(message_resource(row, base_url(request)), fields)] if row.message_id else []
    return _related(request, caller, data)


async def get_action_message_ids(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:read", endpoint_class="flows")
    row = _action(request, caller)
    data = [{"type": "flow-message", "id": row.message_id}] if row.message_id else []
    return _related(request, caller, data)


async def get_flow_message(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:read", endpoint_class="flows")
    q = ListRequest.parse(request, default_size=1, max_size=1, includes=("flow-action",),
                          fields={"flow-message": MESSAGE_FIELDS,
                                  "flow-action": ACTION_FIELDS})  # fmt: skip
    row = _message(request, caller)
    base = base_url(request)
    document: dict[str, Any] = {
        "data": sparse(message_resource(row, base), q.fields.get("flow-message")),
        "links": {"self": str(request.url)},
    }
    if q.include:
        document["included"] = [sparse(action_resource(row, base), q.fields.get("flow-action"))]
    return jsonapi_response(200, document, caller.headers)


async def get_message_action(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:read", endpoint_class="flows")
    row = _message(request, caller)
    fields = ListRequest.fields_of(request, "flow-action")
    return _related(request, caller, sparse(action_resource(row, base_url(request)), fields))


async def get_message_action_id(request: Request) -> Response:
    caller = identify_caller(request, scope="flows:read", endpoint_class="flows")
    row = _message(request, caller)
    return _related(request, caller, {"type": "flow-action", "id": row.id})


# -- flows triggered by a metric, list or segment ---------------------------------------------

_TRIGGERS = {  # path kind → (trigger type, scope, rate-limit class, what it is called)
    "metric": ("metric", "metrics:read", "metrics", "metric"),
    "list": ("list", "lists:read", "flow_triggers", "list"),
    "segment": ("segment", "segments:read", "flow_triggers", "segment"),
}


def _triggered(request: Request, kind: str) -> tuple[Caller, list[FlowRow]]:
    """The flows whose trigger is the path's metric, list or segment (which must exist)."""
    trigger, scope, endpoint_class, what = _TRIGGERS[kind]
    caller = identify_caller(request, scope="flows:read", endpoint_class=endpoint_class)
    caller.require(scope)
    found_id = request.path_params[f"{kind}_id"]
    store = store_of(request)
    exists = members.valid_id(found_id) and bool(
        store.metrics(caller.account_id, ids=[found_id]) if kind == "metric"
        else store.lists(ListQuery(caller.account_id, ids=[found_id])) if kind == "list"
        else store.segments(SegmentQuery(caller.account_id, ids=[found_id]))
    )  # fmt: skip
    if not exists:
        raise _not_found(what, found_id)
    return caller, [f for f in store.flows(caller.account_id) if f.trigger == (trigger, found_id)]


def flow_triggers(kind: str) -> Callable[[Request], Any]:
    """GET /api/{kind}s/{id}/flow-triggers: the flows it triggers."""

    async def endpoint(request: Request) -> Response:
        caller, flows = _triggered(request, kind)
        ListRequest.parse(request, default_size=1, max_size=1, fields={"flow": FLOW_FIELDS})
        fields, base = ListRequest.fields_of(request, "flow"), base_url(request)
        return _related(request, caller, [sparse(flow_resource(f, base), fields) for f in flows])

    return endpoint


def flow_trigger_ids(kind: str) -> Callable[[Request], Any]:
    """GET /api/{kind}s/{id}/relationships/flow-triggers: their ids."""

    async def endpoint(request: Request) -> Response:
        caller, flows = _triggered(request, kind)
        return _related(request, caller, [{"type": "flow", "id": f.id} for f in flows])

    return endpoint
