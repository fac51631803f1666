"""Test control for flows (admin key only): the runs, the outbox, and the flow decisions that
receipts and bulk jobs show.

- `GET /admin/flow-runs` (`flow_id`, `profile_id`, `status` active | completed | exited,
  `limit` 1–1000, default 100): each run's trigger, status, and its steps with their due and
  run times, outcome (the branch taken, `sent`…) and detail; newest first.
- `GET /admin/outbox` (`channel`, `recipient`, `flow_id`, `profile_id`, `status`, `limit`):
  the messages flows rendered — channel, recipient, subject, body, flow, action, status
  (`sent`, `queued` for manual actions, `skipped` with why); oldest first.
  `DELETE /admin/outbox` empties it.
- `GET /admin/webhook-deliveries` (`flow_id`, `profile_id`, `status` pending | delivered |
  failed, `limit`): each delivery's URL, request headers and body, idempotency key, every
  attempt with its status and duration, the next attempt, and the final status.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api import auth
from trackhouse.api.accept import accounts
from trackhouse.api.paging import ascii_int, invalid_parameter
from trackhouse.clock import iso
from trackhouse.store.accounts import ADMIN_SCOPE
from trackhouse.store.base import Outcome, event_id
from trackhouse.store.flows import AttemptRow, DeliveryRow, FlowRunReads, OutboxRow, RunRow, StepRow

MAX_LIMIT = 1000
MAX_VALUE = 256  # characters of a filter value


def flow_reads(request: Request) -> FlowRunReads:
    store = request.app.state.store
    assert isinstance(store, FlowRunReads)
    return store


def decisions_of(request: Request, account_id: str, outcomes: list[Outcome]) -> dict:
    """(entry, event index) → [{flow_id, decision, run_id}] of the outcomes' events."""
    seqs = sorted({o.seq for o in outcomes if o.event_number is not None})
    found = flow_reads(request).decisions(account_id, seqs)
    return {
        key: [{"flow_id": f, "decision": d, "run_id": r} for f, d, r in rows]
        for key, rows in found.items()
    }


def _json(document: Any) -> Response:
    return Response(msgspec.json.encode(document), 200, media_type="application/json")


def _limit(request: Request) -> int:
    text = request.query_params.get("limit", "100")
    value = ascii_int(text)
    if value is None or not 1 <= value <= MAX_LIMIT:
        raise invalid_parameter("limit", f"limit must be 1 to {MAX_LIMIT}.")
    return value


def _filters(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in names:
        value = request.query_params.get(name)
        if value is not None:
            if len(value) > MAX_VALUE or "\x00" in value:
                raise invalid_parameter(name, f"{name} must be at most {MAX_VALUE} characters.")
            found[name] = value
    unknown = set(request.query_params) - {*names, "limit"}
    if unknown:
        name = sorted(unknown)[0][:64]
        raise invalid_parameter(name, f"'{name}' is not a filter here; use {', '.join(names)}.")
    return found


def _step_json(step: StepRow) -> dict[str, Any]:
    return {
        "id": step.id,
        "action_id": step.action_id,
        "scheduled_at": iso(step.due_at),
        "status": step.status,
        "ran_at": None if step.ran_at is None else iso(step.ran_at),
        "outcome": step.outcome,
        "detail": step.detail,
    }


def _run_json(run: RunRow, steps: list[StepRow]) -> dict[str, Any]:
    return {
        "id": run.id,
        "flow_id": run.flow_id,
        "profile_id": run.profile_id,
        "trigger": {
            "type": run.trigger,
            "event_id": None if run.event_number is None else event_id(run.event_number),
            "at": iso(run.anchor),
        },
        "entered_at": iso(run.entered_at),
        "status": run.status,
        "ended_at": None if run.ended_at is None else iso(run.ended_at),
        "reason": run.reason,
        "steps": [_step_json(s) for s in steps],
    }


def outbox_json(row: OutboxRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "channel": row.channel,
        "recipient": row.recipient,
        "subject": row.subject,
        "body": row.body,
        "flow_id": row.flow_id,
        "action_id": row.action_id,
        "run_id": row.run_id,
        "profile_id": row.profile_id,
        "status": row.status,
        "reason": row.reason,
        "at": iso(row.at),
    }


async def get_flow_runs(request: Request) -> Response:
    account_id = auth.private_key_account(request, accounts(request), ADMIN_SCOPE)
    filters = _filters(request, ("flow_id", "profile_id", "status"))
    limit = _limit(request)
    runs = await asyncio.to_thread(
        flow_reads(request).flow_runs, account_id, filters.get("flow_id"),
        filters.get("profile_id"), filters.get("status"), limit,
    )  # fmt: skip
    return _json({"data": [_run_json(run, steps) for run, steps in runs]})


async def get_outbox(request: Request) -> Response:
    account_id = auth.private_key_account(request, accounts(request), ADMIN_SCOPE)
    filters = _filters(request, ("channel", "recipient", "flow_id", "profile_id", "status"))
    limit = _limit(request)
    rows = await asyncio.to_thread(flow_reads(request).outbox, account_id, filters, limit)
    return _json({"data": [outbox_json(r) for r in rows]})


async def delete_outbox(request: Request) -> Response:
    account_id = auth.private_key_account(request, accounts(request), ADMIN_SCOPE)
    _filters(request, ())
    deleted = await asyncio.to_thread(flow_reads(request).clear_outbox, account_id)
    return _json({"deleted": deleted})


def _delivery_json(row: DeliveryRow, attempts: list[AttemptRow]) -> dict[str, Any]:
    return {
        "id": row.id,
        "flow_id": row.flow_id,
        "action_id": row.action_id,
        "run_id": row.run_id,
        "profile_id": row.profile_id,
        "url": row.url,
        "headers": msgspec.json.decode(row.headers),
        "body": row.body,
        "idempotency_key": row.idempotency_key,
        "status": row.status,
        "next_attempt_at": None if row.next_at is None or row.status != "pending"
        else iso(row.next_at),
        "detail": row.detail,
        "attempts": [
            {"n": a.n, "at": iso(a.at), "status": a.status_code,
             "duration_ms": None if a.duration_ms is None else round(a.duration_ms, 3),
             "error": a.error}
            for a in attempts
        ],
    }  # fmt: skip


async def get_webhook_deliveries(request: Request) -> Response:
    account_id = auth.private_key_account(request, accounts(request), ADMIN_SCOPE)
    filters = _filters(request, ("flow_id", "profile_id", "status"))
    limit = _limit(request)
    rows = await asyncio.to_thread(flow_reads(request).deliveries, account_id, filters, limit)
    return _json({"data": [_delivery_json(r, a) for r, a in rows]})
