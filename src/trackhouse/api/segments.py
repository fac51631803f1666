"""Klaviyo's Segments API: POST/GET /api/segments, GET/PATCH/DELETE /api/segments/{id}, the
members (`…/profiles`, `…/relationships/profiles`) and a profile's segments.

A segment is written by the API process straight into the store, its definition checked
strictly first (segments/definition.py: a 400 with a pointer into it), including what it names:
metrics, lists and segments of the account, and no cycle of segments. Its members are computed
by processing: over the existing profiles in the background (`is_processing` until done),
then kept live as events and profile changes arrive (process/membership.py).

Revisions: creating and deleting segments, and `definition` in answers, exist from 2024-06-15
(as Klaviyo's); `is_active` in a PATCH from 2026-01-15, and alone when it is false. Klaviyo's
daily creation limit (100 a day) is off by default, since it would break test suites
(design.md); TRACKHOUSE_DAILY_LIMITS turns it on.
"""

from __future__ import annotations

import time
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
from trackhouse.ids import short_id
from trackhouse.query.events import sparse
from trackhouse.segments.definition import (
    Definition,
    DefinitionError,
    MembershipCondition,
    MetricCondition,
    depends_on_time,
    groups_of,
    parse_definition,
)
from trackhouse.store.base import ListQuery, SegmentQuery, SegmentRow, Store

SEGMENT_FIELDS = ("created", "definition", "id", "is_active", "is_processing", "is_starred",
                  "name", "updated")  # fmt: skip
SORTS = ("created", "-created", "id", "-id", "name", "-name", "updated", "-updated")
INCLUDES = ("flow-triggers", "tags")
PAGE = 10
MAX_NAME = 1000
DEFINITIONS = date(2024, 6, 15)  # create, delete and `definition` from this revision
ACTIVATION = date(2026, 1, 15)  # `is_active` in a PATCH
POINTER = "/data/attributes/definition"


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    pass


class CreateAttributes(_Wire):
    name: str
    definition: dict[str, Any]
    is_starred: bool | None = None


class CreateData(_Wire):
    type: Literal["segment"]
    attributes: CreateAttributes


class CreateQuery(_Wire):
    data: CreateData


class UpdateAttributes(_Wire):
    name: str | None = None
    definition: dict[str, Any] | None = None
    is_starred: bool | None = None
    is_active: bool | None = None


class UpdateData(_Wire):
    type: Literal["segment"]
    id: str
    attributes: UpdateAttributes


class UpdateQuery(_Wire):
    data: UpdateData


def _name(name: str) -> str:
    pointer = "/data/attributes/name"
    if not name.strip():
        raise invalid("The segment name must not be empty.", pointer)
    if len(name) > MAX_NAME:
        raise invalid(f"The segment name must be at most {MAX_NAME} characters.", pointer)
    if "\x00" in name:
        raise invalid("The segment name must not contain NUL characters.", pointer)
    return name


def _not_found(segment_id: str) -> APIError:
    return APIError(404, "not_found", f"A segment with id {segment_id[:64]} does not exist.")


def _needs(caller: Caller, since: date, what: str) -> None:
    if caller.day < since:
        raise APIError(
            400, "invalid", f"{what} needs revision {since.isoformat()} or later.",
            parameter="revision",
        )  # fmt: skip


def segment_resource(
    row: SegmentRow, base: str, caller: Caller, profile_count: int | None = None,
    included: bool = False,
) -> dict[str, Any]:  # fmt: skip
    url = f"{base}/api/segments/{row.id}"
    attributes: dict[str, Any] = {"name": row.name}
    if caller.day >= DEFINITIONS:
        attributes["definition"] = msgspec.json.decode(row.definition)
    attributes |= {
        "created": row.created,
        "updated": row.updated,
        "is_active": row.is_active,
        "is_processing": row.pending,
        "is_starred": row.is_starred,
    }
    if profile_count is not None:
        attributes["profile_count"] = profile_count
    relationships: dict[str, Any] = {}
    for name in ("profiles", "tags", "flow-triggers"):
        relationships[name] = {
            "links": {"self": f"{url}/relationships/{name}", "related": f"{url}/{name}"}
        }
        if included and name != "profiles":
            relationships[name]["data"] = []
    return {
        "type": "segment",
        "id": row.id,
        "attributes": attributes,
        "relationships": relationships,
        "links": {"self": url},
    }


def _find(request: Request, caller: Caller) -> SegmentRow:
    segment_id = request.path_params["segment_id"]
    found = None
    if members.valid_id(segment_id):
        rows = store_of(request).segments(
            SegmentQuery(caller.account_id, ids=[segment_id], limit=1)
        )
        found = rows[0] if rows else None
    if found is None:
        raise _not_found(segment_id)
    return found


def _conditions(definition: Definition) -> list[tuple[str, Any]]:
    """Each condition with its pointer."""
    return [
        (f"{POINTER}/condition_groups/{g}/conditions/{n}", c)
        for g, group in enumerate(definition.groups)
        for n, c in enumerate(group)
    ]


def _check_references(
    store: Store, account_id: str, definition: Definition, segment_id: str | None
) -> None:
    """Metrics, lists and segments named must be the account's; no segment may come to name
    itself through others (a cycle would never settle)."""
    conditions = _conditions(definition)
    metric_ids = {c.metric_id for _, c in conditions if isinstance(c, MetricCondition)}
    known_metrics = (
        {m.id for m in store.metrics(account_id, ids=sorted(metric_ids))} if metric_ids else set()
    )
    wanted = sorted(groups_of(definition))
    lists = (
        {r.id for r in store.lists(ListQuery(account_id, ids=wanted, limit=len(wanted)))}
        if wanted
        else set()
    )
    segments: dict[str, set[str]] = {}
    for row in _all_segments(store, account_id):
        try:
            segments[row.id] = groups_of(parse_definition(msgspec.json.decode(row.definition)))
        except (DefinitionError, msgspec.DecodeError):
            segments[row.id] = set()
    for pointer, c in conditions:
        if isinstance(c, MetricCondition) and c.metric_id not in known_metrics:
            raise invalid(f"No metric with id {c.metric_id[:64]} exists.", pointer + "/metric_id")
        if isinstance(c, MembershipCondition):
            for n, group_id in enumerate(c.group_ids):
                if group_id not in lists and group_id not in segments:
                    detail = f"No list or segment with id {group_id[:64]} exists."
                    raise invalid(detail, f"{pointer}/group_ids/{n}")
                if segment_id is not None and _reaches(segments, group_id, segment_id):
                    detail = f"Segment {group_id} depends on this segment: a cycle of segments."
                    raise invalid(detail, f"{pointer}/group_ids/{n}")


def _reaches(graph: dict[str, set[str]], start: str, target: str) -> bool:
    seen: set[str] = set()
    todo = [start]
    while todo:
        at = todo.pop()
        if at == target:
            return True
        if at not in seen:
            seen.add(at)
            todo.extend(graph.get(at, ()))
    return False


def _all_segments(store: Store, account_id: str) -> list[SegmentRow]:
    rows: list[SegmentRow] = []
    after = None
    while True:
        page = store.segments(SegmentQuery(account_id, after=after, limit=500))
        rows += page
        if len(page) < 500:
            return rows
        after = ("", page[-1].id)


def recompute_dependents(store: Store, account_id: str, group_id: str) -> None:
    """A list or segment is gone: the active segments that named it are computed again (their
    members were evaluated with it; processing does not look again at unchanged profiles)."""
    for row in _all_segments(store, account_id):
        if not row.is_active:
            continue
        try:
            named = groups_of(parse_definition(msgspec.json.decode(row.definition)))
        except (DefinitionError, msgspec.DecodeError):
            continue
        if group_id in named:
            store.update_segment(account_id, row.id, {"is_active": True}, now_iso())


def restart_relative(store: Store, account_id: str) -> list[str]:
    """The clock moved (test control): the account's active segments whose definitions are
    relative to now are computed again over every profile, with the cause "time" (those being
    computed already are left to finish). Their ids."""
    due = []
    for row in _all_segments(store, account_id):
        if not row.is_active or row.pending:
            continue
        try:
            definition = parse_definition(msgspec.json.decode(row.definition))
        except (DefinitionError, msgspec.DecodeError):
            continue
        if depends_on_time(definition):
            due.append((account_id, row.id, row.version))
    if due:
        store.start_sweeps(due)
    return [segment_id for _, segment_id, _ in due]


def _definition(store: Store, account_id: str, raw: dict[str, Any],
                segment_id: str | None) -> str:  # fmt: skip
    """The definition checked, as it is stored (JSON)."""
    try:
        definition = parse_definition(raw, POINTER)
    except DefinitionError as exc:
        raise invalid(f"Invalid definition: {exc.detail}.", exc.pointer) from None
    _check_references(store, account_id, definition, segment_id)
    return msgspec.json.encode(raw).decode()


def _additional(request: Request) -> bool:
    text = request.query_params.get("additional-fields[segment]")
    if text is None:
        return False
    wanted = {f.strip() for f in text.split(",") if f.strip()}
    if wanted - {"profile_count"}:
        raise invalid_parameter(
            "additional-fields[segment]",
            "'profile_count' is the only additional field of a segment.",
        )
    return "profile_count" in wanted


async def create_segment(request: Request) -> Response:
    caller = identify_caller(request, scope="segments:write", endpoint_class="segment_write")
    _needs(caller, DEFINITIONS, "Creating a segment")
    require_json_content_type(request)
    attrs = decode_json(await read_body(request, 1 * MB), CreateQuery).data.attributes
    store = store_of(request)
    name = _name(attrs.name)
    limit = request.app.state.daily_limits.get("segment")
    if limit is not None:
        since = datetime.fromtimestamp(time.time() - 86400, UTC).isoformat(timespec="seconds")
        recent = store.segments(SegmentQuery(caller.account_id, created_after=since,
                                             sort="created", limit=limit))  # fmt: skip
        check_daily("segment", limit, [r.created for r in recent], time.time())
    now = now_iso()
    while True:  # a random id that is taken: draw another
        segment_id = short_id()
        definition = _definition(store, caller.account_id, attrs.definition, segment_id)
        row = SegmentRow(segment_id, name, definition, True, bool(attrs.is_starred), now, now,
                         pending=True, cursor="")  # fmt: skip
        if store.add_segment(caller.account_id, row):
            break
    processor = request.app.state.processor
    if processor is not None:
        processor.wake.set()  # its computation starts at once
    resource = segment_resource(row, base_url(request), caller)
    fields = ListRequest.fields_of(request, "segment")
    return jsonapi_response(201, {"data": sparse(resource, fields)}, caller.headers)


async def get_segments(request: Request) -> Response:
    caller = identify_caller(request, scope="segments:read", endpoint_class="segments")
    q = ListRequest.parse(request, default_size=PAGE, max_size=PAGE, sorts=SORTS,
                          includes=INCLUDES, fields={"segment": SEGMENT_FIELDS})  # fmt: skip
    query = SegmentQuery(caller.account_id, limit=q.size + 1)
    for c in q.filters:
        if members.group_filter(q, query, c):
            continue
        if (c.field == "is_active" and c.op in ("equals", "any")) or (
            c.field == "is_starred" and c.op == "equals"
        ):
            values = list(c.value) if c.op == "any" else [c.value]  # type: ignore[arg-type]
            if not values or not all(isinstance(v, bool) for v in values):
                raise q.bad_filter(f"{c.field} must be compared with true or false")
            if len(set(values)) == 1:
                setattr(query, c.field, values[0])
        else:
            raise q.bad_filter(f"'{c.op}' on '{c.field}' is not supported")
    members.group_order(q, query)
    rows = store_of(request).segments(query)
    page, more = rows[: q.size], len(rows) > q.size
    next_value = None
    if more and page:
        next_value = [getattr(page[-1], query.sort), page[-1].id]
    base, included = base_url(request), bool(q.include)
    fields = q.fields.get("segment")
    document: dict[str, Any] = {
        "data": [sparse(segment_resource(r, base, caller, included=included), fields)
                 for r in page],
        "links": page_links(request, next_value),
    }  # fmt: skip
    if included:
        document["included"] = []
    return jsonapi_response(200, document, caller.headers)


async def get_segment(request: Request) -> Response:
    counted = _additional(request)
    caller = identify_caller(request, scope="segments:read",
                             endpoint_class="segment_count" if counted else "segments")  # fmt: skip
    q = ListRequest.parse(request, default_size=1, max_size=1, includes=INCLUDES,
                          fields={"segment": (*SEGMENT_FIELDS, "profile_count")})  # fmt: skip
    row = _find(request, caller)
    count = None
    if counted:
        count = store_of(request).segment_profile_counts(caller.account_id, [row.id]).get(row.id, 0)
    resource = segment_resource(row, base_url(request), caller, count, included=bool(q.include))
    document: dict[str, Any] = {
        "data": sparse(resource, q.fields.get("segment")),
        "links": {"self": str(request.url)},
    }
    if q.include:
        document["included"] = []
    return jsonapi_response(200, document, caller.headers)


async def update_segment(request: Request) -> Response:
    caller = identify_caller(request, scope="segments:write", endpoint_class="segment_write")
    require_json_content_type(request)
    data = decode_json(await read_body(request, 1 * MB), UpdateQuery).data
    segment_id = request.path_params["segment_id"]
    if data.id != segment_id:
        raise APIError(
            409, "conflict", "The id in the body does not match the segment in the URL.",
            pointer="/data/id",
        )  # fmt: skip
    attrs = data.attributes
    if attrs.definition is not None:
        _needs(caller, DEFINITIONS, "Changing a segment's definition")
    if attrs.is_active is not None:
        _needs(caller, ACTIVATION, "is_active")
        others = (attrs.name, attrs.definition, attrs.is_starred)
        if attrs.is_active is False and any(v is not None for v in others):
            raise invalid("Deactivating a segment must be the only change in the request.",
                          "/data/attributes/is_active")  # fmt: skip
    row = _find(request, caller)
    store = store_of(request)
    changes: dict[str, Any] = {}
    if attrs.name is not None:
        changes["name"] = _name(attrs.name)
    if attrs.definition is not None:
        changes["definition"] = _definition(store, caller.account_id, attrs.definition, row.id)
    if attrs.is_starred is not None:
        changes["is_starred"] = attrs.is_starred
    if attrs.is_active is not None and attrs.is_active != row.is_active:
        changes["is_active"] = attrs.is_active
    updated = row
    if changes:
        found = store.update_segment(caller.account_id, row.id, changes, now_iso())
        if found is None:  # deleted meanwhile
            raise _not_found(segment_id)
        updated = found
        processor = request.app.state.processor
        if processor is not None and updated.pending:
            processor.wake.set()
    resource = segment_resource(updated, base_url(request), caller)
    fields = ListRequest.fields_of(request, "segment")
    return jsonapi_response(200, {"data": sparse(resource, fields)}, caller.headers)


async def delete_segment(request: Request) -> Response:
    caller = identify_caller(request, scope="segments:write", endpoint_class="segment_delete")
    _needs(caller, DEFINITIONS, "Deleting a segment")
    row = _find(request, caller)
    if not store_of(request).delete_segment(caller.account_id, row.id):
        raise _not_found(row.id)
    recompute_dependents(store_of(request), caller.account_id, row.id)
    return jsonapi_response(204, None, caller.headers)


# -- members ---------------------------------------------------------------------------------


async def get_segment_profiles(request: Request) -> Response:
    caller = identify_caller(request, scope="segments:read", endpoint_class="segments")
    caller.require("profiles:read")
    row = _find(request, caller)
    return await members.members(request, caller, "segment", row.id, ids_only=False)


async def get_segment_profile_ids(request: Request) -> Response:
    caller = identify_caller(request, scope="segments:read", endpoint_class="segments")
    caller.require("profiles:read")
    row = _find(request, caller)
    return await members.members(request, caller, "segment", row.id, ids_only=True)


def _segments_of_profile(request: Request, caller: Caller) -> list[SegmentRow]:
    store = store_of(request)
    rows: list[SegmentRow] = members.groups_of_profile(
        request, caller, "segment",
        lambda ids: store.segments(SegmentQuery(caller.account_id, ids=ids, limit=len(ids))),
    )  # fmt: skip
    return rows


async def get_profile_segments(request: Request) -> Response:
    caller = identify_caller(request, scope="segments:read", endpoint_class="profile_groups")
    caller.require("profiles:read")
    fields = ListRequest.fields_of(request, "segment")
    ListRequest.parse(request, default_size=1, max_size=1, fields={"segment": SEGMENT_FIELDS})
    base = base_url(request)
    data = [sparse(segment_resource(r, base, caller), fields)
            for r in _segments_of_profile(request, caller)]  # fmt: skip
    document = {"data": data, "links": {"self": str(request.url)}}
    return jsonapi_response(200, document, caller.headers)


async def get_profile_segment_ids(request: Request) -> Response:
    caller = identify_caller(request, scope="segments:read", endpoint_class="profile_groups")
    caller.require("profiles:read")
    data = [{"type": "segment", "id": r.id} for r in _segments_of_profile(request, caller)]
    document = {"data": data, "links": {"self": str(request.url)}}
    return jsonapi_response(200, document, caller.headers)
