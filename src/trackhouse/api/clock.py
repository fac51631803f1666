"""Test control: the admin key's account's clock (trackhouse/clock.py), as Stripe's test
clocks are set.

- `GET /admin/clock` → `{"now": ISO 8601, "frozen": bool}`.
- `POST /admin/clock` with `{"now": ISO 8601}` freezes the clock there; `{"frozen": false}`
  returns it to real time; `{"frozen": true}` freezes it where it is; `{"now": …, "frozen":
  false}` sets it running from there.
- `POST /admin/clock/advance` with `{"seconds": N}` or `{"to": ISO 8601}` first waits for
  processing as `/admin/wait` does, then moves now by exactly that much (a running clock goes
  on running from there) and runs what falls due on the way, in time order: the flow steps
  and webhook attempts (retries too) due by then (each as of its own due time,
  flows/runner.py), then the segments whose
  definitions are relative to now are computed again (with the cause "time"); all waited for.
  It answers with the clock and what ran (at most 1,000 flow steps listed). Advances at once
  add up: each moves the clock from where it finds it (compare-and-set in the store).

The clock only goes forward through `advance`; `POST /admin/clock` may set any instant from
1970 to 3000 (every date computed from now stays far from the calendar's ends).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api import auth
from trackhouse.api.accept import accounts
from trackhouse.api.admin import caught_up, drain, timeout_param
from trackhouse.api.body import decode_json, read_body, require_json_content_type
from trackhouse.api.errors import APIError, invalid
from trackhouse.api.flow_admin import flow_reads
from trackhouse.api.segments import restart_relative
from trackhouse.clock import EARLIEST, LATEST, REAL_TIME, Clocks, ClockSetting, iso
from trackhouse.store.accounts import ADMIN_SCOPE
from trackhouse.store.base import Store

MAX_BODY = 4096
MAX_RAN = 1000  # flow steps listed in an advance's answer
# An advance moves the clock from what it read (compare-and-set); when another call moved it
# meanwhile, it reads it again after a short random pause, this many times at most (then 409:
# of N advances at once, one can lose N - 1 times).
MOVE_ATTEMPTS = 50


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    pass


class SetClock(_Wire):
    now: str | None = None
    frozen: bool | None = None


class Advance(_Wire):
    seconds: float | None = None
    to: str | None = None


def _clocks(request: Request) -> Clocks:
    clocks: Clocks = request.app.state.clocks
    return clocks


def _instant(text: str, pointer: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise invalid(f"'{text[:64]}' is not an ISO 8601 date-time.", pointer) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        moment = LATEST  # an offset past year 9999: out of range below
    if not EARLIEST <= moment < LATEST:
        raise invalid("The clock can be set from 1970 up to (not including) 3000.", pointer)
    return moment.timestamp()


def _answer(setting: ClockSetting, extra: dict[str, Any] | None = None) -> Response:
    document = {"now": iso(setting.now(time.time())), "frozen": setting.frozen, **(extra or {})}
    return Response(msgspec.json.encode(document), 200, media_type="application/json")


def _store_setting(
    request: Request, account_id: str, setting: ClockSetting, expected: ClockSetting | None = None
) -> bool:
    """Set the account's clock (only if it is still `expected`, when given); whether it was."""
    store: Store = request.app.state.store
    if expected is None:
        store.set_clock(account_id, setting)
    elif not store.move_clock(account_id, expected, setting):
        return False  # another advance or set moved it meanwhile
    _clocks(request).changed(account_id, setting)
    processor = request.app.state.processor
    if processor is not None:
        processor.wake.set()
    return True


def _advanced(
    before: ClockSetting, seconds: float | None, to: float | None
) -> tuple[float, float, ClockSetting]:
    """(the clock's now, where the advance takes it, the setting that does) from `before`."""
    start = before.now(time.time())
    if seconds is not None:
        target = start + seconds
        if target >= LATEST.timestamp():
            raise invalid("The clock can be advanced up to (not including) 3000.", "/seconds")
    else:
        assert to is not None
        target = to
        if target < start:
            raise invalid(
                f"`to` is before the clock's now ({iso(start)}): the clock only goes forward "
                "here; POST /admin/clock sets it anywhere.", "/to",
            )  # fmt: skip
    if before.frozen:
        return start, target, ClockSetting(target)
    return start, target, ClockSetting(None, before.offset + (target - start))


async def get_clock(request: Request) -> Response:
    account_id = auth.private_key_account(request, accounts(request), ADMIN_SCOPE)
    _clocks(request).refresh()  # exact: another API process may have set it
    return _answer(_clocks(request).setting(account_id))


async def set_clock(request: Request) -> Response:
    account_id = auth.private_key_account(request, accounts(request), ADMIN_SCOPE)
    require_json_content_type(request)
    body = decode_json(await read_body(request, MAX_BODY), SetClock)
    if body.now is None and body.frozen is None:
        raise invalid("Give `now` (an ISO 8601 date-time), `frozen` (true or false), or both.",
                      "")  # fmt: skip
    wall = time.time()
    if body.now is not None:
        at = _instant(body.now, "/now")
        setting = ClockSetting(at) if body.frozen is not False else ClockSetting(None, at - wall)
    elif body.frozen:
        _clocks(request).refresh()
        setting = ClockSetting(_clocks(request).setting(account_id).now(wall))
    else:
        setting = REAL_TIME
    await asyncio.to_thread(_store_setting, request, account_id, setting)
    return _answer(setting)


async def advance_clock(request: Request) -> Response:
    account_id = auth.private_key_account(request, accounts(request), ADMIN_SCOPE)
    require_json_content_type(request)
    body = decode_json(await read_body(request, MAX_BODY), Advance)
    seconds = timeout_param(request)
    deadline = time.monotonic() + seconds
    if (body.seconds is None) == (body.to is None):
        raise invalid("Give exactly one of `seconds` (how far to move) and `to` (an ISO 8601 "
                      "date-time).", "")  # fmt: skip
    if body.seconds is not None and (not math.isfinite(body.seconds) or body.seconds < 0):
        raise invalid("`seconds` must be a number of seconds, 0 or more.", "/seconds")
    wanted_to = None if body.to is None else _instant(body.to, "/to")
    await caught_up(request, seconds, account_id)
    clocks = _clocks(request)
    for _ in range(MOVE_ATTEMPTS):
        clocks.refresh()
        before = clocks.setting(account_id)
        start, target, setting = _advanced(before, body.seconds, wanted_to)
        if await asyncio.to_thread(_store_setting, request, account_id, setting, before):
            break
        await asyncio.sleep(random.uniform(0, 0.01))
    else:
        raise APIError(409, "conflict", "The clock kept being moved by other calls meanwhile; "
                       "read it and retry.")  # fmt: skip
    await _steps_done(request, account_id, target, deadline)
    store: Store = request.app.state.store
    restarted = await asyncio.to_thread(restart_relative, store, account_id)
    await _steps_done(request, account_id, target, deadline)
    steps = await asyncio.to_thread(flow_reads(request).steps_ran, account_id, start, target,
                                    MAX_RAN)  # fmt: skip
    ran: list[dict[str, Any]] = [
        {"type": "flow-step", "id": str(s.id), "at": iso(s.ran_at or target), "run_id": s.run_id,
         "action_id": s.action_id, "outcome": s.outcome}
        for s in steps
    ]  # fmt: skip
    ran += [{"type": "segment-computation", "id": segment_id, "at": iso(target)}
            for segment_id in restarted]  # fmt: skip
    return _answer(setting, {"from": iso(start), "ran": ran})


async def _steps_done(request: Request, account_id: str, until: float, deadline: float) -> None:
    """Wait until processing has caught up and no flow step or webhook attempt of the account
    is due by `until` (their effects may give processing more to do, so both again)."""
    reads = flow_reads(request)

    def due() -> int:
        return reads.steps_due(account_id, until) + reads.deliveries_due(account_id, until)

    while True:
        await caught_up(request, max(0.0, deadline - time.monotonic()), account_id)
        if not await asyncio.to_thread(due):
            return
        await drain(request, due, deadline,
                    "{} flow step(s) or webhook attempt(s) due by then have not run.")  # fmt: skip
