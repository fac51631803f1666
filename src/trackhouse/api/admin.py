"""Test control (an extension, not Klaviyo's): wait for processing, reset an account (its
clock too: api/clock.py).

Guarded by keys with the `trackhouse:admin` scope, which ordinary keys never have.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api import auth
from trackhouse.api.accept import accounts, event_log, jsonapi_response
from trackhouse.api.errors import APIError
from trackhouse.clock import REAL_TIME, Clocks
from trackhouse.process.processor import Processor
from trackhouse.store import ResetElsewhere
from trackhouse.store.accounts import ADMIN_SCOPE
from trackhouse.store.base import Store
from trackhouse.store.flows import FlowRunReads

MAX_WAIT_SECONDS = 300.0


# ASCII digits only: float() would also take "١٠", "nan" and "1e3".
_SECONDS = re.compile(r"\d{1,6}(?:\.\d{1,6})?", re.ASCII)


def timeout_param(request: Request) -> float:
    text = request.query_params.get("timeout", "30").strip()
    seconds = float(text) if _SECONDS.fullmatch(text) else -1.0
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise APIError(400, "invalid", "timeout must be 0 to 300 seconds.", parameter="timeout")
    return seconds


def _behind(heads: dict[int, int], positions: dict[int, int]) -> bool:
    return any(positions.get(p, 0) < head for p, head in heads.items())


async def caught_up(
    request: Request, seconds: float, account_id: str | None = None
) -> tuple[int, int]:
    """Wait until everything committed to the log when called — by any API process — is
    processed, in every partition, no segment's members are still being computed and no flow
    step or webhook attempt that is due waits to run;
    (position, head) summed over the partitions."""
    store: Store = request.app.state.store
    heads = await asyncio.to_thread(event_log(request).heads)
    processor = request.app.state.processor
    deadline = time.monotonic() + seconds
    while _behind(heads, positions := await asyncio.to_thread(store.positions)):
        if processor is not None:
            processor.hurry.set()
        if time.monotonic() >= deadline:
            position, head = sum(positions.values()), sum(heads.values())
            trouble = processor and processor.last_error
            raise APIError(
                503,
                "service_unavailable",
                f"Processing has reached log position {position} of {head}; "
                + (f"it is retrying after: {trouble}" if trouble else "still working."),
                headers={"Retry-After": "1"},
            )
        await asyncio.sleep(0.01)
    await drain(request, store.segments_pending, deadline,
                "The members of {} segment(s) are still being computed.")  # fmt: skip
    if isinstance(store, FlowRunReads):
        waiting = "{} flow step(s) or webhook attempt(s) that are due have not run yet."
        clocks = request.app.state.clocks
        await drain(request, lambda: _flow_work_due(store, clocks, account_id), deadline, waiting)
    return sum(positions.values()), sum(heads.values())


async def drain(request: Request, count: Callable[[], int], deadline: float, detail: str) -> None:
    """Wake processing until `count()` is 0; past `deadline`, 503 with `detail` (of the count)."""
    processor = request.app.state.processor
    while left := await asyncio.to_thread(count):
        if processor is not None:
            processor.wake.set()
            processor.hurry.set()
            processor.deliveries_wake.set()
        if time.monotonic() >= deadline:
            raise APIError(503, "service_unavailable", detail.format(left),
                           headers={"Retry-After": "1"})  # fmt: skip
        await asyncio.sleep(0.01)


def _flow_work_due(reads: FlowRunReads, clocks: Clocks, account_id: str | None) -> int:
    """Flow steps and webhook attempts that are due: the account's on its clock (another
    tenant's backlog or failing webhook does not hold its wait), or every account's."""
    if account_id is None:
        wall = time.time()
        return reads.steps_due_now(wall) + reads.deliveries_due_now(wall)
    now = clocks.now(account_id)
    return reads.steps_due(account_id, now) + reads.deliveries_due(account_id, now)


def _status(position: int, head: int) -> dict:
    return {
        "data": {
            "type": "processing-status",
            "id": "processor",
            "attributes": {"processed_position": position, "log_position": head},
        }
    }


async def wait(request: Request) -> Response:
    account_id = auth.private_key_account(request, accounts(request), ADMIN_SCOPE)
    position, head = await caught_up(request, timeout_param(request), account_id)
    return jsonapi_response(200, _status(position, head))


async def reset(request: Request) -> Response:
    """Delete the admin key's account's events, profiles, metrics and outcomes (after
    processing what was accepted before the call, so nothing reappears afterwards)."""
    account_id = auth.private_key_account(request, accounts(request), ADMIN_SCOPE)
    processor = request.app.state.processor
    store: Store = request.app.state.store
    # Everything accepted before this call is processed, then deleted; what arrives meanwhile
    # is processed after the reset, and kept (processing is held at the log's heads).
    deadline = time.monotonic() + timeout_param(request)
    try:
        if isinstance(processor, Processor) and event_log(request).partitions == 1:
            _, deleted = await asyncio.to_thread(processor.reset_account, account_id, deadline)
        else:  # the store coordinates a processor in another process, or a cluster's workers
            if processor is not None:  # serve's second process: on with what it has, at once
                processor.wake.set()
                processor.hurry.set()
            try:
                deleted = await asyncio.to_thread(store.reset_account, account_id, deadline)
            finally:
                if processor is not None:  # held no longer: what came meanwhile, at once
                    processor.wake.set()
    except ResetElsewhere:
        raise APIError(
            409, "conflict", "Processing runs in another process; reset the account there."
        ) from None
    except TimeoutError as exc:
        raise APIError(
            503,
            "service_unavailable",
            f"The account was not reset: {exc}. Nothing was deleted; retry shortly.",
            headers={"Retry-After": "1"},
        ) from None
    request.app.state.clocks.changed(account_id, REAL_TIME)  # its row went with the rest
    return jsonapi_response(
        200, {"data": {"type": "account-reset", "id": account_id, "attributes": deleted}}
    )
