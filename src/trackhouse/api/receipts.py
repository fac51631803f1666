"""GET /api/event-receipts/{id}: what became of one accepted submission (an extension).

Every acceptance that is not a bulk job — a 202 from POST /api/events, /client/events and
/client/event-bulk-create, a `1` from Track and Identify — carries a `Trackhouse-Receipt`
header; this shows whether that submission is still queued or, once processed, each event's
outcome (an identify's profile change has one), and what each flow the event could trigger
decided: `entered`, or skipped with the reason (flows/entry.py).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api.accept import absolute_url, event_log, identify_caller, jsonapi_response
from trackhouse.api.errors import APIError
from trackhouse.api.flow_admin import decisions_of
from trackhouse.store.base import Outcome, event_id


def outcome_json(o: Outcome, flows: dict | None = None) -> dict:
    """One event's outcome; with `flows` (decisions_of), what each flow it could trigger
    decided (entered, or skipped and why), when there were any."""
    found = {
        "outcome": o.outcome,
        "profile_id": o.profile_id,
        "event_id": None if o.event_number is None else event_id(o.event_number),
        "detail": o.detail,
    }
    decided = (flows or {}).get((o.seq, o.idx))
    if decided:
        found["flows"] = decided
    return found


async def get_receipt(request: Request) -> Response:
    caller = identify_caller(request, scope="events:read", endpoint_class="job")
    receipt_id = request.path_params["receipt_id"]
    store = request.app.state.store
    # Outcomes first: a processed entry may have left the log since (retention).
    outcomes = store.receipt_outcomes(caller.account_id, receipt_id)
    if not outcomes:
        seq = event_log(request).receipt_seq(caller.account_id, receipt_id)
        if seq is None or seq <= store.reset_position(caller.account_id):  # never, or reset
            raise APIError(404, "not_found", f"A receipt with id {receipt_id[:64]} does not exist.")
    flows = decisions_of(request, caller.account_id, outcomes)
    url = absolute_url(request, f"/api/event-receipts/{receipt_id}")
    document = {
        "data": {
            "type": "event-receipt",
            "id": receipt_id,
            "attributes": {
                "status": "processed" if outcomes else "queued",
                "outcomes": [outcome_json(o, flows) for o in outcomes],
            },
            "links": {"self": url},
        },
        "links": {"self": url},
    }
    return jsonapi_response(200, document, caller.headers)
