"""GET /api/profiles and GET /api/profiles/{id}."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api.accept import identify_caller, jsonapi_response
from trackhouse.api.errors import APIError
from trackhouse.api.event_reads import PROFILE_FIELDS
from trackhouse.api.paging import ListRequest, base_url, page_links
from trackhouse.identifiers import identifier_key
from trackhouse.query.events import sparse
from trackhouse.query.filters import MAX_SECONDS, MIN_SECONDS, Condition, FilterError, instant
from trackhouse.query.profiles import profile_resource
from trackhouse.store.base import ProfileQuery

# Klaviyo's filterable profile fields, and the identifier kind each one looks up.
IDENTIFIER_FILTERS = {
    "email": "email",
    "phone_number": "phone_number",
    "external_id": "external_id",
    "_kx": "_kx",
}


async def get_profile(request: Request) -> Response:
    caller = identify_caller(request, scope="profiles:read", endpoint_class="profile")
    profile_id = request.path_params["profile_id"]
    store = request.app.state.store
    doc = store.profile(caller.account_id, profile_id)
    if doc is None:
        raise APIError(404, "not_found", f"A profile with id {profile_id[:64]} does not exist.")
    resource = profile_resource(doc, base_url(request))
    fields = ListRequest.fields_of(request, "profile")
    return jsonapi_response(
        200,
        {"data": sparse(resource, fields), "links": {"self": str(request.url)}},
        caller.headers,
    )


SORTS = ("id", "-id", "created", "-created", "updated", "-updated")
TIME_OPERATORS = ("greater-than", "greater-or-equal", "less-than", "less-or-equal")


def _iso(seconds: int) -> str:
    # Stored times are real, so a bound clamped to datetime's range selects the same profiles.
    seconds = min(max(seconds, MIN_SECONDS), MAX_SECONDS)
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def time_bound(q: Any, condition: Condition, name: str | None = None) -> None:
    """A time filter as bounds on stored whole-second ISO strings: `q.{name}_since` (>=) and
    `q.{name}_until` (<); `name` is the filter's field unless given."""
    if not isinstance(condition.value, datetime | str):
        raise APIError(
            400,
            "invalid",
            f"Invalid filter: {condition.field} needs a datetime.",
            parameter="filter",
        )
    try:
        x = instant(condition.value)
    except FilterError as exc:
        raise APIError(
            400, "invalid", f"Invalid filter: {condition.field}: {exc}.", parameter="filter"
        ) from None
    low = {"greater-or-equal": math.ceil(x), "greater-than": math.floor(x) + 1}
    high = {"less-than": math.ceil(x), "less-or-equal": math.floor(x) + 1}
    name = name or condition.field
    if condition.op in low:
        setattr(q, f"{name}_since", _iso(low[condition.op]))
    else:
        setattr(q, f"{name}_until", _iso(high[condition.op]))


async def get_profiles(request: Request) -> Response:
    caller = identify_caller(request, scope="profiles:read", endpoint_class="profile")
    query = ListRequest.parse(
        request,
        default_size=20,
        max_size=100,
        sorts=SORTS,
        fields={"profile": PROFILE_FIELDS},
    )
    order = ProfileQuery(sort=(query.sort or "id").lstrip("-"))
    order.descending = (query.sort or "").startswith("-")
    ids = None
    identifiers = None
    for condition in query.filters:
        if condition.field in ("created", "updated") and condition.op in TIME_OPERATORS:
            time_bound(order, condition)
            continue
        given = condition.value if isinstance(condition.value, tuple) else (condition.value,)
        values = [v for v in given if isinstance(v, str)]
        if condition.op not in ("equals", "any") or len(values) != len(given):
            raise query.bad_filter(f"'{condition.op}' on '{condition.field}' is not supported")
        if condition.field == "id":
            ids = values
        elif condition.field in IDENTIFIER_FILTERS and identifiers is None:
            # Compared as identity resolution compares them: "+1 415 555 0100" finds the
            # profile whose phone number was written so, stored as +14155550100.
            kind = IDENTIFIER_FILTERS[condition.field]
            identifiers = (kind, [identifier_key(kind, v) for v in values])
        else:
            raise query.bad_filter(f"'{condition.field}' is not a filterable field")
    after = query.cursor_value(str)
    docs = request.app.state.store.profiles(
        caller.account_id, ids, identifiers, after, query.size + 1, order
    )
    base = base_url(request)
    resources = [profile_resource(doc, base) for doc in docs[: query.size]]
    next_value = None
    if len(docs) > query.size:
        last = resources[-1]
        next_value = (
            last["id"] if order.sort == "id" else f"{last['attributes'][order.sort]}|{last['id']}"
        )
    document = {
        "data": [sparse(r, query.fields.get("profile")) for r in resources],
        "links": page_links(request, next_value),
    }
    return jsonapi_response(200, document, caller.headers)
