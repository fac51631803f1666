"""The ASGI application: the route table, the JSON:API error handling around it, and CORS for
`/client/*`."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trackhouse.api import (
    admin,
    bulk,
    clock,
    cors,
    event_reads,
    events,
    flow_admin,
    flows,
    legacy,
    lists,
    metrics,
    openapi,
    profiles,
    receipts,
    segments,
)
from trackhouse.api.backpressure import Backlog
from trackhouse.api.errors import JSONAPI, APIError
from trackhouse.api.ratelimit import RateLimiter
from trackhouse.clock import Clocks
from trackhouse.log import EventLog
from trackhouse.process import ProcessorSignals
from trackhouse.store import StoreUnavailable
from trackhouse.store.accounts import AccountStore
from trackhouse.store.base import Store

logger = logging.getLogger("trackhouse.api")


def _both(path: str, endpoint: Callable, methods: list[str]) -> list[Route]:
    """Klaviyo serves every path with and without a trailing slash (older revisions use it)."""
    return [Route(path, endpoint, methods=methods), Route(path + "/", endpoint, methods=methods)]


# The ingestion hot path: answered straight from this table (FastWrites below).
WRITES: list[Route] = [
    *_both("/api/events", events.create_event, ["POST"]),
    *_both("/client/events", events.create_client_event, ["POST"]),
    *_both("/api/event-bulk-create-jobs", bulk.create_bulk_job, ["POST"]),
    *_both("/client/event-bulk-create", bulk.create_client_bulk, ["POST"]),
]

ROUTES: list[Route] = [
    *WRITES,
    *_both("/api/event-bulk-create-jobs/{job_id}", bulk.get_bulk_job, ["GET"]),
    *_both("/api/track", legacy.track, ["GET", "POST"]),
    *_both("/api/identify", legacy.identify, ["GET", "POST"]),
    *_both("/api/event-receipts/{receipt_id}", receipts.get_receipt, ["GET"]),
    *_both("/api/events", event_reads.get_events, ["GET"]),
    *_both("/api/events/{event_id}", event_reads.get_event, ["GET"]),
    *_both(
        "/api/events/{event_id}/relationships/{related}",
        event_reads.get_event_relationship,
        ["GET"],
    ),
    *_both("/api/events/{event_id}/{related}", event_reads.get_event_related, ["GET"]),
    *_both("/api/metrics", metrics.get_metrics, ["GET"]),
    *_both("/api/metrics/{metric_id}", metrics.get_metric, ["GET"]),
    *_both("/api/metric-aggregates", metrics.query_metric_aggregates, ["POST"]),
    *_both("/api/lists", lists.get_lists, ["GET"]),
    *_both("/api/lists", lists.create_list, ["POST"]),
    *_both("/api/lists/{list_id}", lists.get_list, ["GET"]),
    *_both("/api/lists/{list_id}", lists.update_list, ["PATCH"]),
    *_both("/api/lists/{list_id}", lists.delete_list, ["DELETE"]),
    *_both("/api/lists/{list_id}/profiles", lists.get_list_profiles, ["GET"]),
    *_both("/api/lists/{list_id}/relationships/profiles", lists.get_list_profile_ids, ["GET"]),
    *_both("/api/lists/{list_id}/relationships/profiles", lists.add_list_profiles, ["POST"]),
    *_both("/api/lists/{list_id}/relationships/profiles", lists.remove_list_profiles, ["DELETE"]),
    *_both("/api/segments", segments.get_segments, ["GET"]),
    *_both("/api/segments", segments.create_segment, ["POST"]),
    *_both("/api/segments/{segment_id}", segments.get_segment, ["GET"]),
    *_both("/api/segments/{segment_id}", segments.update_segment, ["PATCH"]),
    *_both("/api/segments/{segment_id}", segments.delete_segment, ["DELETE"]),
    *_both("/api/segments/{segment_id}/profiles", segments.get_segment_profiles, ["GET"]),
    *_both(
        "/api/segments/{segment_id}/relationships/profiles",
        segments.get_segment_profile_ids,
        ["GET"],
    ),
    *_both("/api/profiles/{profile_id}/lists", lists.get_profile_lists, ["GET"]),
    *_both("/api/profiles/{profile_id}/relationships/lists", lists.get_profile_list_ids, ["GET"]),
    *_both("/api/profiles/{profile_id}/segments", segments.get_profile_segments, ["GET"]),
    *_both(
        "/api/profiles/{profile_id}/relationships/segments",
        segments.get_profile_segment_ids,
        ["GET"],
    ),
    *_both("/api/flows", flows.get_flows, ["GET"]),
    *_both("/api/flows", flows.create_flow, ["POST"]),
    *_both("/api/flows/{flow_id}", flows.get_flow, ["GET"]),
    *_both("/api/flows/{flow_id}", flows.update_flow, ["PATCH"]),
    *_both("/api/flows/{flow_id}", flows.delete_flow, ["DELETE"]),
    *_both("/api/flows/{flow_id}/flow-actions", flows.get_flow_actions, ["GET"]),
    *_both("/api/flows/{flow_id}/relationships/flow-actions", flows.get_flow_action_ids, ["GET"]),
    *_both("/api/flow-actions/{action_id}", flows.get_flow_action, ["GET"]),
    *_both("/api/flow-actions/{action_id}", flows.update_flow_action, ["PATCH"]),
    *_both("/api/flow-actions/{action_id}", flows.delete_flow_action, ["DELETE"]),
    *_both("/api/flow-actions/{action_id}/flow", flows.get_action_flow, ["GET"]),
    *_both("/api/flow-actions/{action_id}/relationships/flow", flows.get_action_flow_id, ["GET"]),
    *_both("/api/flow-actions/{action_id}/flow-messages", flows.get_action_messages, ["GET"]),
    *_both(
        "/api/flow-actions/{action_id}/relationships/flow-messages",
        flows.get_action_message_ids,
        ["GET"],
    ),
    *_both("/api/flow-messages/{message_id}", flows.get_flow_message, ["GET"]),
    *_both("/api/flow-messages/{message_id}/flow-action", flows.get_message_action, ["GET"]),
    *_both(
        "/api/flow-messages/{message_id}/relationships/flow-action",
        flows.get_message_action_id,
        ["GET"],
    ),
    *[
        route
        for kind in ("metric", "list", "segment")
        for path, endpoint in (
            (f"/api/{kind}s/{{{kind}_id}}/flow-triggers", flows.flow_triggers(kind)),
            (
                f"/api/{kind}s/{{{kind}_id}}/relationships/flow-triggers",
                flows.flow_trigger_ids(kind),
            ),
        )
        for route in _both(path, endpoint, ["GET"])
    ],
    *_both("/api/profiles", profiles.get_profiles, ["GET"]),
    *_both("/api/profiles/{profile_id}", profiles.get_profile, ["GET"]),
    *_both("/openapi.json", openapi.get_openapi, ["GET"]),
    Route("/admin/wait", admin.wait, methods=["POST"]),
    Route("/admin/reset", admin.reset, methods=["POST"]),
    Route("/admin/clock", clock.get_clock, methods=["GET"]),
    Route("/admin/clock", clock.set_clock, methods=["POST"]),
    Route("/admin/clock/advance", clock.advance_clock, methods=["POST"]),
    Route("/admin/flow-runs", flow_admin.get_flow_runs, methods=["GET"]),
    Route("/admin/outbox", flow_admin.get_outbox, methods=["GET"]),
    Route("/admin/outbox", flow_admin.delete_outbox, methods=["DELETE"]),
    Route("/admin/webhook-deliveries", flow_admin.get_webhook_deliveries, methods=["GET"]),
]


def error_response(error: APIError) -> Response:
    return Response(error.body(), error.status, error.headers, media_type=JSONAPI)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    counted = getattr(request.state, "ratelimit_headers", None)
    if counted and exc.status != 429:
        exc.headers = counted | exc.headers
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        error = APIError(
            405, "method_not_allowed", f'Method "{request.method}" not allowed.', pointer="/data"
        )
        error.headers = dict(exc.headers or {})
    elif exc.status_code == 404:
        error = APIError(404, "not_found", f"No endpoint at {request.url.path[:200]}.")
    else:
        error = APIError(exc.status_code, "error", str(exc.detail))
    return error_response(error)


async def _unavailable(request: Request, exc: Exception) -> Response:
    # The store (a PostgreSQL server gone, a lock held too long) could not answer: nothing was
    # changed, and the same request can be sent again.
    logger.warning("store unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        APIError(
            503,
            "service_unavailable",
            "The store is unavailable; nothing was changed. Retry shortly.",
            headers={"Retry-After": "1"},
        )
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Reaching this is a bug: bad input must be a 4xx. Log it (without the body) and answer in
    # the documented error shape rather than as plain text.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, "error", "An unexpected error occurred."))


class AnswerUnexpected:
    """An exception no handler took becomes a whole JSON:API 500, on a connection that stays
    open for the client's next request.

    Starlette's own last resort, ServerErrorMiddleware (where an `Exception` handler would go),
    re-raises after sending its 500 so that the server can log it, and uvicorn then drops the
    connection without having said `Connection: close`: a pooled client's next request on it
    fails. This sits inside ServerErrorMiddleware and raises only what began a response it
    could not finish, which only closing the connection can end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:
                raise
            response = await _unexpected(Request(scope, receive), exc)
            await response(scope, receive, send)


class FastWrites:
    """POSTs to the write endpoints go straight to their handlers, found in a dict, instead of
    through Starlette's middleware stack and its route-by-route regex scan: the same handlers
    and the same JSON:API errors, for a fifth less time per request (bench/RESULTS.md).
    Everything under `/client/` gets its CORS headers here (`cors`). Everything else is
    Starlette's."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state
        # path → (handler, whether its answers carry CORS headers)
        self.endpoints = {
            route.path: (route.endpoint, route.path.startswith(cors.CLIENT_PREFIX))
            for route in WRITES
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        write = self.endpoints.get(path)
        if write is None or scope["method"] != "POST":
            if path.startswith(cors.CLIENT_PREFIX):
                await cors.answer(self.app, scope, receive, send, route=write is not None)
            else:
                await self.app(scope, receive, send)
            return
        endpoint, client = write
        scope["app"] = self.app
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except APIError as exc:
            response = await _api_error(request, exc)
        except HTTPException as exc:
            response = await _http_error(request, exc)
        except StoreUnavailable as exc:
            response = await _unavailable(request, exc)
        except Exception as exc:
            response = await _unexpected(request, exc)
        if client:
            response.raw_headers.extend(cors.ANSWER_HEADERS)
        await response(scope, receive, send)


def build_app(
    log: EventLog,
    accounts: AccountStore,
    store: Store,
    processor: ProcessorSignals | None,
    limiter: RateLimiter | None,
    backlog: Backlog | None = None,
    daily_limits: dict[str, int] | None = None,
) -> FastWrites:
    app = Starlette(
        routes=ROUTES,
        exception_handlers={
            APIError: _api_error,
            HTTPException: _http_error,
            StoreUnavailable: _unavailable,
        },
        middleware=[Middleware(AnswerUnexpected)],
    )
    app.state.log = log
    app.state.accounts = accounts
    app.state.store = store
    app.state.clocks = Clocks(store.clock_settings)  # the accounts' clocks (test control)
    app.state.processor = processor  # here or serve's second process; None: elsewhere
    app.state.limiter = limiter  # None: rate limits off
    app.state.backlog = backlog  # None: no bound on how far processing may fall behind
    app.state.daily_limits = daily_limits or {}  # kind → creations a day (empty: off)
    return FastWrites(app)
