"""GET /api/events, GET /api/events/{id}, its related metric and profile, and relationships.

Revisions before 2023-07-15 get the older shapes (see `query/events.py`) and the older paths:
`…/{id}/metrics/`, `…/{id}/profiles/`, `…/{id}/relationships/{metrics|profiles}/`.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api.accept import Caller, identify_caller, jsonapi_response
from trackhouse.api.errors import APIError
from trackhouse.api.paging import ListRequest, base_url, invalid_parameter, is_int64, page_links
from trackhouse.query.events import EventEncoder, event_resource, metric_resource, sparse
from trackhouse.query.filters import Condition, FilterError, instant
from trackhouse.query.profiles import profile_resource
from trackhouse.store.base import EventQuery, EventRow, Store, event_number

EVENT_FIELDS = ("datetime", "event_properties", "id", "timestamp", "uuid")
LEGACY_EVENT_FIELDS = (*EVENT_FIELDS, "metric_id", "profile_id")
METRIC_FIELDS = ("created", "id", "integration", "name", "updated")
LOCATION = ("address1", "address2", "city", "country", "ip", "latitude", "longitude", "region")
PROFILE_FIELDS = (
    "created", "email", "external_id", "first_name", "id", "image", "last_event_date",
    "last_name", "locale", "location", "organization", "phone_number", "properties", "title",
    "updated", *(f"location.{name}" for name in (*LOCATION, "timezone", "zip")),
)  # fmt: skip
SORTS = ("datetime", "-datetime", "timestamp", "-timestamp")
RANGE_OPERATORS = ("greater-than", "greater-or-equal", "less-than", "less-or-equal", "equals")


def _store(request: Request) -> Store:
    return request.app.state.store


def _include_names(caller: Caller) -> tuple[str, ...]:
    if caller.rules.jsonapi_relationships:
        return ("metric", "profile", "attributions")
    return ("metrics", "profiles")


def _seconds(condition: Condition) -> float:
    try:
        return instant(condition.value)
    except FilterError as exc:
        raise invalid_parameter("filter", f"Invalid filter: '{condition.field}': {exc}.") from None


def event_query(
    account_id: str, filters: list[Condition], size: int, sort: str | None
) -> EventQuery:
    query = EventQuery(account_id, limit=size + 1, descending=(sort or "").startswith("-"))
    for c in filters:
        if c.field in ("metric_id", "profile_id") and c.op == "equals":
            if not isinstance(c.value, str):
                raise invalid_parameter("filter", f"Invalid filter: {c.field} must be a string.")
            setattr(query, c.field, c.value)
        elif c.field in ("profile", "metric") and c.op == "has":
            pass  # every stored event has both
        elif c.field in ("datetime", "timestamp") and c.op in RANGE_OPERATORS:
            x = _seconds(c)
            # Times are whole seconds: turn every bound into since <= time < until.
            if c.op in ("greater-or-equal", "equals", "greater-than"):
                low = math.floor(x) + 1 if c.op == "greater-than" else math.ceil(x)
                query.since = low if query.since is None else max(query.since, low)
            if c.op in ("less-than", "less-or-equal", "equals"):
                high = math.ceil(x) if c.op == "less-than" else math.floor(x) + 1
                query.until = high if query.until is None else min(query.until, high)
        else:
            raise invalid_parameter(
                "filter",
                f"Invalid filter: '{c.op}' is not a valid operator for the field '{c.field}'.",
            )
    return query


def _included(
    request: Request, caller: Caller, rows: list[EventRow], include: list[str], q: ListRequest
) -> list[dict[str, Any]]:
    store, base = _store(request), base_url(request)
    included: list[dict[str, Any]] = []
    if {"metric", "metrics"} & set(include):
        caller.require("metrics:read")
        ids = sorted({r.metric_id for r in rows})
        included += [
            sparse(metric_resource(m, base), q.fields.get("metric"))
            for m in store.metrics(caller.account_id, ids=ids, limit=len(ids) or 1)
        ]
    if {"profile", "profiles"} & set(include):
        caller.require("profiles:read")
        ids = sorted({r.profile_id for r in rows})
        included += [
            sparse(profile_resource(doc, base), q.fields.get("profile"))
            for doc in store.profiles(caller.account_id, ids=ids, limit=len(ids) or 1)
        ]
    return included


def _parse(request: Request, caller: Caller, **list_options: Any) -> ListRequest:
    legacy = not caller.rules.jsonapi_relationships
    return ListRequest.parse(
        request,
        includes=_include_names(caller),
        fields={
            "event": LEGACY_EVENT_FIELDS if legacy else EVENT_FIELDS,
            "metric": METRIC_FIELDS,
            "profile": PROFILE_FIELDS,
        },
        **list_options,
    )


async def get_events(request: Request) -> Response:
    caller = identify_caller(request, scope="events:read", endpoint_class="events")
    q = _parse(request, caller, default_size=200, max_size=1000, sorts=SORTS)
    query = event_query(caller.account_id, q.filters, q.size, q.sort)
    cursor = q.cursor_value(list)
    backwards = False
    if cursor is not None:
        if (
            len(cursor) != 3
            or not all(is_int64(v) for v in cursor[:2])
            or cursor[2] not in ("next", "prev")
        ):
            raise invalid_parameter("page[cursor]", "Invalid cursor provided.")
        query.after = (cursor[0], cursor[1])
        backwards = cursor[2] == "prev"
        if backwards:
            query.descending = not query.descending
    rows = _store(request).events(query)
    more = len(rows) > q.size
    rows = rows[: q.size]
    if backwards:
        rows.reverse()
    first = [rows[0].time, rows[0].number, "prev"] if rows else None
    last = [rows[-1].time, rows[-1].number, "next"] if rows else None
    next_value = last if (more and not backwards) or (backwards and rows) else None
    prev_value = first if (cursor is not None and not backwards) or (backwards and more) else None
    document: dict[str, Any] = {
        "data": _event_resources(request, caller, rows, q.fields.get("event")),
        "links": page_links(request, next_value, prev_value),
    }
    if q.include:
        document["included"] = _included(request, caller, rows, q.include, q)
    return jsonapi_response(200, document, caller.headers)


def _event_resources(
    request: Request, caller: Caller, rows: list[EventRow], fields: set[str] | None
) -> list[Any]:
    base, legacy = base_url(request), not caller.rules.jsonapi_relationships
    if fields is None:  # the whole resource: encoded at once, without building dicts
        encode = EventEncoder(base, legacy=legacy)
        return [encode(r) for r in rows]
    return [sparse(event_resource(r, base, legacy=legacy), fields) for r in rows]


def _event(request: Request, caller: Caller) -> EventRow:
    event_id = request.path_params["event_id"]
    number = event_number(event_id)
    row = None if number is None else _store(request).event(caller.account_id, number)
    if row is None:
        raise APIError(404, "not_found", f"An event with id {event_id[:64]} does not exist.")
    return row


async def get_event(request: Request) -> Response:
    caller = identify_caller(request, scope="events:read", endpoint_class="event")
    q = _parse(request, caller, default_size=1, max_size=1)
    row = _event(request, caller)
    document: dict[str, Any] = {
        "data": _event_resources(request, caller, [row], q.fields.get("event"))[0],
        "links": {"self": str(request.url)},
    }
    if q.include:
        document["included"] = _included(request, caller, [row], q.include, q)
    return jsonapi_response(200, document, caller.headers)


# Which related resource each path names, by revision: singular from 2023-07-15, plural before.
RELATED = {"metric": ("metric", True), "profile": ("profile", True),
           "metrics": ("metric", False), "profiles": ("profile", False)}  # fmt: skip


def _related_kind(request: Request, caller: Caller) -> str:
    name = request.path_params["related"]
    kind, current = RELATED.get(name, (None, None))
    if kind is None or current != caller.rules.jsonapi_relationships:
        raise APIError(404, "not_found", f"No endpoint at {request.url.path[:200]}.")
    return kind


async def get_event_related(request: Request) -> Response:
    """GET /api/events/{id}/metric|profile (…/metrics/, …/profiles/ before 2023-07-15)."""
    caller = identify_caller(request, scope="events:read", endpoint_class="event_related")
    kind = _related_kind(request, caller)
    caller.require(f"{kind}s:read")
    row = _event(request, caller)
    store, base = _store(request), base_url(request)
    data: Any
    if kind == "metric":
        (metric,) = store.metrics(caller.account_id, ids=[row.metric_id], limit=1)
        data = sparse(metric_resource(metric, base), ListRequest.fields_of(request, "metric"))
    else:
        (doc,) = store.profiles(caller.account_id, ids=[row.profile_id], limit=1)
        data = sparse(profile_resource(doc, base), ListRequest.fields_of(request, "profile"))
    if not caller.rules.jsonapi_relationships:  # before 2023-07-15: a collection
        data = [data]
    links = {"self": str(request.url)}
    return jsonapi_response(200, {"data": data, "links": links}, caller.headers)


async def get_event_relationship(request: Request) -> Response:
    """GET /api/events/{id}/relationships/metric|profile: just the related resource's id."""
    caller = identify_caller(request, scope="events:read", endpoint_class="event_related")
    kind = _related_kind(request, caller)
    caller.require(f"{kind}s:read")
    row = _event(request, caller)
    data: Any = {"type": kind, "id": row.metric_id if kind == "metric" else row.profile_id}
    if not caller.rules.jsonapi_relationships:
        data = [data]
    links = {"self": str(request.url)}
    return jsonapi_response(200, {"data": data, "links": links}, caller.headers)
