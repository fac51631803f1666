"""What every write endpoint does around its own parsing: who, which revision, how fast, and
the durable append that must succeed before anything is acknowledged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api import auth
from trackhouse.api.backpressure import Backlog
from trackhouse.api.errors import JSONAPI, APIError
from trackhouse.api.ratelimit import RateLimiter
from trackhouse.api.revision import RevisionRules, parse_revision
from trackhouse.log import BulkJob, EventLog, LogOverloaded, LogUnavailable
from trackhouse.model import Submission
from trackhouse.store.accounts import AccountStore
from trackhouse.store.base import Store

# Every accepted submission that is not a bulk job names itself in this response header; its
# outcome is then at GET /api/event-receipts/{id} (api/receipts.py).
RECEIPT_HEADER = "Trackhouse-Receipt"


@dataclass(frozen=True, slots=True)
class Caller:
    account_id: str
    day: date
    rules: RevisionRules
    headers: dict[str, str]  # rate-limit headers for the response
    scopes: frozenset[str] = frozenset()  # of the private key; none for a public key

    def require(self, scope: str) -> None:
        """Reading related or included resources needs their read scope too."""
        if scope not in self.scopes:
            raise APIError(
                403,
                "permission_denied",
                f"The API key does not have the required scope '{scope}' for this request.",
            )


def accounts(request: Request) -> AccountStore:
    return request.app.state.accounts


def event_log(request: Request) -> EventLog:
    return request.app.state.log


def rate_limit(request: Request, account_id: str, endpoint_class: str) -> dict[str, str]:
    limiter: RateLimiter | None = request.app.state.limiter
    if limiter is None:
        return {}
    headers = limiter.hit(account_id, endpoint_class)
    # Kept for the error handler: a counted request that then fails still reports its window.
    request.state.ratelimit_headers = headers
    return headers


def identify_caller(
    request: Request, *, scope: str | None, endpoint_class: str, public: bool = False
) -> Caller:
    """Authenticate (private key with `scope`, or `?company_id=` when `public`), read the
    revision header and count the request against its rate limit, in that order."""
    store = accounts(request)
    scopes: frozenset[str] = frozenset()
    if public:
        account_id = auth.public_key_account(request, store)
    else:
        assert scope is not None
        key = auth.private_key(request, store, scope)
        account_id, scopes = key.account_id, key.scopes
    opt_out = request.headers.get("x-klaviyo-revision-fall-forward-opt-out", "").strip() == "1"
    day, rules = parse_revision(request.headers.get("revision"), opt_out)
    headers = rate_limit(request, account_id, endpoint_class)
    return Caller(account_id, day, rules, headers, scopes)


async def append(request: Request, submissions: list[Submission], job: BulkJob | None = None):
    """Commit to the log; only after this returns may the request be acknowledged."""
    backlog: Backlog | None = request.app.state.backlog
    if backlog is not None:
        backlog.check()
    try:
        await event_log(request).append(submissions, job)
    except LogOverloaded:
        raise APIError(
            503,
            "service_unavailable",
            "trackhouse is accepting events faster than it can store them; retry shortly.",
            headers={"Retry-After": "1"},
        ) from None
    except LogUnavailable:
        raise APIError(
            503,
            "service_unavailable",
            "The event log cannot be written right now (storage unavailable); nothing was "
            "stored. Retry shortly.",
            headers={"Retry-After": "5"},
        ) from None


def jsonapi_response(
    status: int, document: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Response:
    if document is None:
        return Response(status_code=status, headers=headers)
    return Response(msgspec.json.encode(document), status, headers, media_type=JSONAPI)


def absolute_url(request: Request, path: str) -> str:
    return str(request.base_url).rstrip("/") + path


def now_iso() -> str:
    """Now, as the API writes created and updated times (ISO 8601, UTC, to the second)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store
