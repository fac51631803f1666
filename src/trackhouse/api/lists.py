"""Klaviyo's Lists API: POST/GET /api/lists, GET/PATCH/DELETE /api/lists/{id}.

Also its members: `GET /api/lists/{id}/profiles` and `…/relationships/profiles`,
`POST` / `DELETE …/relationships/profiles`, and `GET /api/profiles/{id}/lists` (+
relationships).

Lists are written by the API process straight into the store (a create answers 201 with the
list, and a GET right after finds it). Their members are changed through the log, like
events: a POST or DELETE of members appends one submission per profile and answers 204 once
they are durable; processing applies them in order (docs/segments.md).

Names are 1 to 1,000 characters, without NUL; ids are Klaviyo's 6-character style. Klaviyo's
daily creation limit (150 a day) is off by default, since it would break test suites
(design.md); TRACKHOUSE_DAILY_LIMITS turns it on.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api import members
from trackhouse.api.accept import (
    Caller,
    append,
    identify_caller,
    jsonapi_response,
    now_iso,
    store_of,
)
from trackhouse.api.body import MB, decode_json, read_body, require_json_content_type
from trackhouse.api.errors import APIError, invalid
from trackhouse.api.paging import ListRequest, base_url, invalid_parameter, page_links
from trackhouse.api.ratelimit import check_daily
from trackhouse.api.segments import recompute_dependents
from trackhouse.ids import short_id
from trackhouse.model import ListChange, ProfileChange, Submission
from trackhouse.process.profiles import decode_profile
from trackhouse.query.events import sparse
from trackhouse.store.base import ListQuery, ListRow

LIST_FIELDS = ("created", "id", "name", "opt_in_process", "updated")
SORTS = ("created", "-created", "id", "-id", "name", "-name", "updated", "-updated")
INCLUDES = ("flow-triggers", "tags")
PAGE = 10  # Klaviyo's page size for lists: 1 to 10
MAX_NAME = 1000
OPT_IN = Literal["double_opt_in", "single_opt_in"]
DEFAULT_OPT_IN = "single_opt_in"  # "If not provided, uses account default": ours is single


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    pass


class CreateAttributes(_Wire):
    name: str
    opt_in_process: OPT_IN | None = None


class CreateData(_Wire):
    type: Literal["list"]
    attributes: CreateAttributes


class CreateQuery(_Wire):
    data: CreateData


class UpdateAttributes(_Wire):
    name: str | None = None
    opt_in_process: OPT_IN | None = None


class UpdateData(_Wire):
    type: Literal["list"]
    id: str
    attributes: UpdateAttributes


class UpdateQuery(_Wire):
    data: UpdateData


class ProfileRef(_Wire):
    type: Literal["profile"]
    id: str


class MembersQuery(_Wire):
    data: list[ProfileRef]


MAX_MEMBERS = 1000  # profiles a call adds or removes


def _name(name: str, pointer: str) -> str:
    if not name.strip():
        raise invalid("The list name must not be empty.", pointer)
    if len(name) > MAX_NAME:
        raise invalid(f"The list name must be at most {MAX_NAME} characters.", pointer)
    if "\x00" in name:
        raise invalid("The list name must not contain NUL characters.", pointer)
    return name


def list_resource(
    row: ListRow, base: str, profile_count: int | None = None, included: bool = False
) -> dict[str, Any]:
    url = f"{base}/api/lists/{row.id}"
    attributes: dict[str, Any] = {
        "name": row.name,
        "created": row.created,
        "updated": row.updated,
        "opt_in_process": row.opt_in_process,
    }
    if profile_count is not None:
        attributes["profile_count"] = profile_count
    relationships: dict[str, Any] = {}
    for name in ("profiles", "tags", "flow-triggers"):
        relationships[name] = {
            "links": {"self": f"{url}/relationships/{name}", "related": f"{url}/{name}"}
        }
        if included and name != "profiles":
            relationships[name]["data"] = []  # no tags, and no flows trigger on it yet
    return {
        "type": "list",
        "id": row.id,
        "attributes": attributes,
        "relationships": relationships,
        "links": {"self": url},
    }


def _not_found(list_id: str) -> APIError:
    return APIError(404, "not_found", f"A list with id {list_id[:64]} does not exist.")


def _find(request: Request, caller: Caller) -> ListRow:
    list_id = request.path_params["list_id"]
    found = None
    if members.valid_id(list_id):
        rows = store_of(request).lists(ListQuery(caller.account_id, ids=[list_id], limit=1))
        found = rows[0] if rows else None
    if found is None:
        raise _not_found(list_id)
    return found


def _additional(request: Request) -> bool:
    """`additional-fields[list]=profile_count`."""
    text = request.query_params.get("additional-fields[list]")
    if text is None:
        return False
    wanted = {f.strip() for f in text.split(",") if f.strip()}
    if wanted - {"profile_count"}:
        raise invalid_parameter(
            "additional-fields[list]", "'profile_count' is the only additional field of a list."
        )
    return "profile_count" in wanted


async def create_list(request: Request) -> Response:
    caller = identify_caller(request, scope="lists:write", endpoint_class="list_write")
    require_json_content_type(request)
    attrs = decode_json(await read_body(request, 1 * MB), CreateQuery).data.attributes
    now = now_iso()
    row = ListRow("", _name(attrs.name, "/data/attributes/name"),
                  attrs.opt_in_process or DEFAULT_OPT_IN, now, now)  # fmt: skip
    store = store_of(request)
    limit = request.app.state.daily_limits.get("list")
    if limit is not None:
        since = datetime.fromtimestamp(time.time() - 86400, UTC).isoformat(timespec="seconds")
        recent = store.lists(ListQuery(caller.account_id, created_after=since, sort="created",
                                       limit=limit))  # fmt: skip
        check_daily("list", limit, [r.created for r in recent], time.time())
    while True:  # a random id that is taken: draw another
        list_id = short_id()
        row = ListRow(list_id, row.name, row.opt_in_process, row.created, row.updated)
        if store.add_list(caller.account_id, row):
            break
    resource = list_resource(row, base_url(request))
    fields = ListRequest.fields_of(request, "list")
    return jsonapi_response(201, {"data": sparse(resource, fields)}, caller.headers)


async def get_lists(request: Request) -> Response:
    caller = identify_caller(request, scope="lists:read", endpoint_class="lists")
    q = ListRequest.parse(request, default_size=PAGE, max_size=PAGE, sorts=SORTS,
                          includes=INCLUDES, fields={"list": LIST_FIELDS})  # fmt: skip
    query = ListQuery(caller.account_id, limit=q.size + 1)
    for c in q.filters:
        if members.group_filter(q, query, c):
            continue
        raise q.bad_filter(f"'{c.op}' on '{c.field}' is not supported")
    members.group_order(q, query)
    rows = store_of(request).lists(query)
    page, more = rows[: q.size], len(rows) > q.size
    last = page[-1] if page else None
    next_value = None
    if more and last is not None:
        next_value = [getattr(last, query.sort), last.id]
    base, included = base_url(request), bool(q.include)
    fields = q.fields.get("list")
    document: dict[str, Any] = {
        "data": [sparse(list_resource(r, base, included=included), fields) for r in page],
        "links": page_links(request, next_value),
    }
    if included:
        document["included"] = []
    return jsonapi_response(200, document, caller.headers)


async def get_list(request: Request) -> Response:
    caller = identify_caller(request, scope="lists:read", endpoint_class="lists")
    q = ListRequest.parse(request, default_size=1, max_size=1, includes=INCLUDES,
                          fields={"list": (*LIST_FIELDS, "profile_count")})  # fmt: skip
    counted = _additional(request)
    row = _find(request, caller)
    count = None
    if counted:
        count = store_of(request).list_profile_counts(caller.account_id, [row.id]).get(row.id, 0)
    resource = list_resource(row, base_url(request), count, included=bool(q.include))
    document: dict[str, Any] = {
        "data": sparse(resource, q.fields.get("list")),
        "links": {"self": str(request.url)},
    }
    if q.include:
        document["included"] = []
    return jsonapi_response(200, document, caller.headers)


async def update_list(request: Request) -> Response:
    caller = identify_caller(request, scope="lists:write", endpoint_class="list_write")
    require_json_content_type(request)
    data = decode_json(await read_body(request, 1 * MB), UpdateQuery).data
    list_id = request.path_params["list_id"]
    if data.id != list_id:
        raise APIError(
            409, "conflict", "The id in the body does not match the list in the URL.",
            pointer="/data/id",
        )  # fmt: skip
    row = _find(request, caller)
    changes: dict[str, str] = {}
    if data.attributes.name is not None:
        changes["name"] = _name(data.attributes.name, "/data/attributes/name")
    if data.attributes.opt_in_process is not None:
        changes["opt_in_process"] = data.attributes.opt_in_process
    updated = store_of(request).update_list(caller.account_id, row.id, changes, now_iso())
    if updated is None:  # deleted meanwhile
        raise _not_found(list_id)
    resource = list_resource(updated, base_url(request))
    fields = ListRequest.fields_of(request, "list")
    return jsonapi_response(200, {"data": sparse(resource, fields)}, caller.headers)


async def delete_list(request: Request) -> Response:
    caller = identify_caller(request, scope="lists:write", endpoint_class="list_write")
    row = _find(request, caller)
    if not store_of(request).delete_list(caller.account_id, row.id):  # deleted meanwhile
        raise _not_found(row.id)
    recompute_dependents(store_of(request), caller.account_id, row.id)
    return jsonapi_response(204, None, caller.headers)


# -- members ---------------------------------------------------------------------------------


async def get_list_profiles(request: Request) -> Response:
    caller = identify_caller(request, scope="lists:read", endpoint_class="lists")
    caller.require("profiles:read")
    row = _find(request, caller)
    return await members.members(request, caller, "list", row.id, ids_only=False)


async def get_list_profile_ids(request: Request) -> Response:
    caller = identify_caller(request, scope="lists:read", endpoint_class="lists")
    caller.require("profiles:read")
    row = _find(request, caller)
    return await members.members(request, caller, "list", row.id, ids_only=True)


async def _change_members(request: Request, add: bool) -> Response:
    caller = identify_caller(request, scope="lists:write", endpoint_class="list_members")
    caller.require("profiles:write")
    require_json_content_type(request)
    refs = decode_json(await read_body(request, 1 * MB), MembersQuery).data
    if len(refs) > MAX_MEMBERS:
        raise invalid(f"At most {MAX_MEMBERS} profiles can be changed in one call.", "/data")
    row = _find(request, caller)
    wanted: dict[str, int] = {}  # profile id → its place in the request
    for n, ref in enumerate(refs):
        if not members.valid_id(ref.id):
            raise invalid(f"No profile with id {ref.id[:64]!r} exists.", f"/data/{n}/id")
        wanted.setdefault(ref.id, n)
    store = store_of(request)
    ids = list(wanted)
    found: set[str] = set()
    for start in range(0, len(ids), members.CHUNK):
        chunk = ids[start : start + members.CHUNK]
        docs = store.profiles(caller.account_id, ids=chunk, limit=len(chunk))
        found.update(decode_profile(doc).id for doc in docs)
    for profile_id, n in wanted.items():
        if profile_id not in found:
            raise invalid(f"No profile with id {profile_id[:64]} exists.", f"/data/{n}/id")
    now = time.time()
    change = ListChange(list_id=row.id, add=add)
    submissions = [
        Submission(account_id=caller.account_id, received_at=now, source="list",
                   revision=caller.rules.revision, profile=ProfileChange(id=profile_id),
                   list_change=change)
        for profile_id in wanted
    ]  # fmt: skip
    if submissions:
        await append(request, submissions)
    return jsonapi_response(204, None, caller.headers)


async def add_list_profiles(request: Request) -> Response:
    return await _change_members(request, add=True)


async def remove_list_profiles(request: Request) -> Response:
    return await _change_members(request, add=False)


def _lists_of_profile(request: Request, caller: Caller) -> list[ListRow]:
    store = store_of(request)
    rows: list[ListRow] = members.groups_of_profile(
        request, caller, "list",
        lambda ids: store.lists(ListQuery(caller.account_id, ids=ids, limit=len(ids))),
    )  # fmt: skip
    return rows


async def get_profile_lists(request: Request) -> Response:
    caller = identify_caller(request, scope="lists:read", endpoint_class="profile_groups")
    caller.require("profiles:read")
    fields = ListRequest.fields_of(request, "list")
    ListRequest.parse(request, default_size=1, max_size=1, fields={"list": LIST_FIELDS})
    base = base_url(request)
    data = [sparse(list_resource(r, base), fields) for r in _lists_of_profile(request, caller)]
    document = {"data": data, "links": {"self": str(request.url)}}
    return jsonapi_response(200, document, caller.headers)


async def get_profile_list_ids(request: Request) -> Response:
    caller = identify_caller(request, scope="lists:read", endpoint_class="profile_groups")
    caller.require("profiles:read")
    data = [{"type": "list", "id": r.id} for r in _lists_of_profile(request, caller)]
    document = {"data": data, "links": {"self": str(request.url)}}
    return jsonapi_response(200, document, caller.headers)
