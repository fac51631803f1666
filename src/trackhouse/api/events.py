"""POST /api/events (create_event) and POST /client/events (create_client_event)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api import translate
from trackhouse.api.accept import (
    RECEIPT_HEADER,
    Caller,
    append,
    identify_caller,
    jsonapi_response,
)
from trackhouse.api.body import MB, decode_json, read_body, require_json_content_type
from trackhouse.api.wire import EventCreate, FlatEventCreate
from trackhouse.ids import new_ulid
from trackhouse.model import Submission

MAX_BODY = 5 * MB


def parse_create_event(
    body: bytes, caller: Caller, received_at: float, source: str, now: float | None = None
) -> Submission:
    """The canonical submission of one create-event body, by the caller's revision; `now` is
    the account's clock (received_at when not given)."""
    rules = caller.rules
    now = int(received_at if now is None else now)
    where = "/data/attributes"
    if rules.jsonapi_relationships:
        attrs = decode_json(body, EventCreate).data.attributes
        profile = translate.jsonapi_profile(
            attrs.profile.data,
            where + "/profile/data",
            rules,
            meta_places=rules.profile_meta_places,
            from_client=source == "client",
        )
        event = translate.jsonapi_event(attrs, where, rules, now)
    else:
        flat = decode_json(body, FlatEventCreate).data.attributes
        profile = translate.dollar_profile(
            flat.profile, where + "/profile", from_client=source == "client"
        )
        event = translate.flat_event(flat, where, rules, now)
    return Submission(
        account_id=caller.account_id,
        received_at=received_at,
        source=source,
        revision=rules.revision,
        profile=profile,
        events=[event],
        metric_cap=rules.metric_cap,
        receipt_id=new_ulid(),
    )


async def _create(request: Request, caller: Caller, source: str) -> Response:
    require_json_content_type(request)
    received_at = time.time()
    body = await read_body(request, MAX_BODY)
    now = request.app.state.clocks.now(caller.account_id)
    submission = parse_create_event(body, caller, received_at, source, now)
    await append(request, [submission])
    headers = caller.headers | {RECEIPT_HEADER: submission.receipt_id or ""}
    return jsonapi_response(202, headers=headers)


async def create_event(request: Request) -> Response:
    caller = identify_caller(request, scope="events:write", endpoint_class="create")
    return await _create(request, caller, "api")


async def create_client_event(request: Request) -> Response:
    caller = identify_caller(request, scope=None, endpoint_class="create", public=True)
    return await _create(request, caller, "client")
