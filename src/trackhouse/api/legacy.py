"""The legacy v1 Track and Identify API (seed 001): /api/track and /api/identify.

GET `?data=<base64 JSON>` or POST form field `data=`; the body answers `1` (accepted, in the
log) or `0` (refused), as it historically did, with status 200. We add a `Trackhouse-Error`
header saying why a request was refused, so nothing is refused silently. `i=1` answers a
1×1 GIF instead, for `<img>` pixels.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api import limits, translate
from trackhouse.api.accept import RECEIPT_HEADER, accounts, append, rate_limit
from trackhouse.api.body import JSON_TYPES, MB, decode_any_json, read_body
from trackhouse.api.errors import APIError
from trackhouse.api.revision import OLDEST_SERVED, rules_for
from trackhouse.ids import new_ulid
from trackhouse.model import Event, Submission

MAX_BODY = 1 * MB
# The legacy API shares the oldest revision's limits: 300 properties, time after 2000,
# 200 metrics per account.
RULES = rules_for(OLDEST_SERVED, "legacy-v1")
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


class Refused(Exception):
    """The payload is not acceptable: the answer is `0`."""


def _answer(request: Request, ok: bool, headers: dict[str, str], status: int = 200) -> Response:
    if request.query_params.get("i") == "1":
        return Response(PIXEL, status, headers, media_type="image/gif")
    return Response(b"1" if ok else b"0", status, headers, media_type="text/html")


def _header_text(text: str) -> str:
    """Printable ASCII only: the reason may quote keys the client chose."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:200]


def _refused(request: Request, reason: str) -> Response:
    return _answer(request, False, {"Trackhouse-Error": _header_text(reason)})


def decode_data(data: str) -> dict[str, Any]:
    """`data` is base64 of JSON (GET) or JSON itself (form POST)."""
    text = data.strip()
    if text.startswith("{"):
        raw = text.encode()
    else:
        # A `+` that was not URL-encoded arrives as a space; a space is never base64.
        text = text.replace(" ", "+")
        try:
            padded = text + "=" * (-len(text) % 4)
            raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise Refused("data is neither JSON nor base64-encoded JSON") from None
    try:
        payload = decode_any_json(raw)
    except ValueError:
        raise Refused("data does not decode to valid JSON") from None
    if not isinstance(payload, dict):
        raise Refused("data must be a JSON object")
    return payload


def _object(payload: dict[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Refused(f"{key} must be a JSON object")
    return value


# A number sent as a string: ASCII only (float() would also take "١٢" and full-width digits).
_NUMBER = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*", re.ASCII)


def _ascii_number(value: Any) -> Any:
    if isinstance(value, str) and not _NUMBER.fullmatch(value):
        raise ValueError("not a number")
    return value


def track_submission(
    payload: dict[str, Any], account_id: str, received_at: float, now: float | None = None
) -> Submission:
    """`now`: the account's clock (received_at when not given)."""
    now = received_at if now is None else now
    name = payload.get("event")
    if not isinstance(name, str):
        raise Refused("event (the metric name) is required")
    profile = translate.dollar_profile(
        _object(payload, "customer_properties"), "/customer_properties", from_client=True
    )
    properties = dict(_object(payload, "properties"))
    event_id = properties.pop("$event_id", None)
    value = properties.pop("$value", None)
    limits.check_event_properties(properties, "/properties", RULES.max_event_properties)
    if value is not None:
        if isinstance(value, bool):
            raise Refused("$value must be a number")
        try:
            value = float(_ascii_number(value))
        except (TypeError, ValueError, OverflowError):
            raise Refused("$value must be a number") from None
        if not math.isfinite(value):
            raise Refused("$value must be a finite number")
    if event_id is not None and (
        isinstance(event_id, bool) or not isinstance(event_id, str | int | float)
    ):
        raise Refused("$event_id must be a string or a number")
    moment = payload.get("time")
    if moment is None:
        seconds = int(now)
    else:
        if isinstance(moment, bool) or not isinstance(moment, int | float | str):
            raise Refused("time must be a UNIX timestamp in seconds")
        try:
            moment = datetime.fromtimestamp(int(float(_ascii_number(moment))), UTC)
        except (ValueError, OverflowError, OSError):
            raise Refused("time must be a UNIX timestamp in seconds") from None
        seconds = limits.check_event_time(moment, RULES.min_event_year, "/time", now)
    event = Event(
        metric=limits.check_metric_name(name, "/event"),
        properties=properties,
        time=seconds,
        value=value,
        unique_id=limits.check_unique_id(None if event_id is None else str(event_id), "/$event_id"),
    )
    return Submission(
        account_id=account_id,
        received_at=received_at,
        source="track",
        profile=profile,
        events=[event],
        metric_cap=RULES.metric_cap,
        receipt_id=new_ulid(),
    )


def identify_submission(payload: dict[str, Any], account_id: str, received_at: float) -> Submission:
    profile = translate.dollar_profile(
        _object(payload, "properties"), "/properties", from_client=True
    )
    return Submission(
        account_id=account_id,
        received_at=received_at,
        source="identify",
        profile=profile,
        receipt_id=new_ulid(),
    )


async def _handle(request: Request, kind: str) -> Response:
    received_at = time.time()
    try:
        if request.method == "GET":
            data = request.query_params.get("data")
        else:
            body = await read_body(request, MAX_BODY)
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media in JSON_TYPES:
                data = body.decode("utf-8", errors="strict")
            else:
                text = body.decode("utf-8", errors="strict")
                try:
                    form = parse_qs(text, max_num_fields=256)
                except ValueError:
                    raise Refused("the form has too many fields") from None
                data = (form.get("data") or [""])[0]
        if not data:
            raise Refused("the data parameter is required")
        payload = decode_data(data)
        token = payload.get("token")
        if not isinstance(token, str) or not accounts(request).account_exists(token):
            raise Refused("unknown token (public API key)")
        headers = rate_limit(request, token, "create")
        if kind == "track":
            now = request.app.state.clocks.now(token)
            submission = track_submission(payload, token, received_at, now)
        else:
            submission = identify_submission(payload, token, received_at)
        await append(request, [submission])
    except Refused as exc:
        return _refused(request, str(exc))
    except UnicodeDecodeError:
        return _refused(request, "the request body is not valid UTF-8")
    except APIError as exc:
        # A broken limit (400) is refused like any bad payload, with the historical status
        # 200; throttling, oversize and storage errors keep their status and Retry-After.
        status = 200 if exc.status == 400 else exc.status
        reason = f"{exc.detail} ({exc.pointer})" if exc.pointer else exc.detail
        return _answer(
            request, False, exc.headers | {"Trackhouse-Error": _header_text(reason)}, status
        )
    # Its outcome (a 201st metric is rejected, say) is at GET /api/event-receipts/{id}.
    return _answer(request, True, headers | {RECEIPT_HEADER: submission.receipt_id or ""})


async def track(request: Request) -> Response:
    return await _handle(request, "track")


async def identify(request: Request) -> Response:
    return await _handle(request, "identify")
