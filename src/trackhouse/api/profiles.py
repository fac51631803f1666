"""GET /api/profiles/{id}."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api.accept import absolute_url, identify_caller, jsonapi_response
from trackhouse.api.errors import APIError
from trackhouse.query.profiles import profile_resource


async def get_profile(request: Request) -> Response:
    caller = identify_caller(request, scope="profiles:read", endpoint_class="profile")
    profile_id = request.path_params["profile_id"]
    resource = profile_resource(request.app.state.store, caller.account_id, profile_id)
    if resource is None:
        raise APIError(404, "not_found", f"A profile with id {profile_id[:64]} does not exist.")
    url = absolute_url(request, f"/api/profiles/{profile_id}")
    resource["links"] = {"self": url}
    return jsonapi_response(200, {"data": resource, "links": {"self": url}}, caller.headers)
