"""GET /api/profiles and GET /api/profiles/{id}."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api.accept import identify_caller, jsonapi_response
from trackhouse.api.errors import APIError
from trackhouse.api.paging import ListRequest, base_url, page_links
from trackhouse.query.events import sparse
from trackhouse.query.profiles import profile_resource

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


async def get_profiles(request: Request) -> Response:
    caller = identify_caller(request, scope="profiles:read", endpoint_class="profile")
    query = ListRequest.parse(request, default_size=20, max_size=100, sorts=("id",))
    ids = None
    identifiers = None
    for condition in query.filters:
        values = condition.value if condition.op == "any" else (condition.value,)
        if condition.op not in ("equals", "any") or not all(isinstance(v, str) for v in values):
            raise query.bad_filter(f"'{condition.op}' on '{condition.field}' is not supported")
        if condition.field == "id":
            ids = list(values)
        elif condition.field in IDENTIFIER_FILTERS and identifiers is None:
            kind = IDENTIFIER_FILTERS[condition.field]
            identifiers = (kind, [v.lower() if kind == "email" else v for v in values])
        else:
            raise query.bad_filter(f"'{condition.field}' is not a filterable field")
    after = query.cursor_value(str)
    docs = request.app.state.store.profiles(
        caller.account_id, ids, identifiers, after, query.size + 1
    )
    base = base_url(request)
    resources = [profile_resource(doc, base) for doc in docs[: query.size]]
    more = len(docs) > query.size
    document = {
        "data": [sparse(r, query.fields.get("profile")) for r in resources],
        "links": page_links(request, resources[-1]["id"] if more else None),
    }
    return jsonapi_response(200, document, caller.headers)
