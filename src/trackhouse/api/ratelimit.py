"""Klaviyo's rate limits: fixed burst (1 s) and steady (1 min) windows per account and class.

A throttled request gets 429 `throttled` with an integer `Retry-After`; every other response
carries `RateLimit-Limit/-Remaining/-Reset` for the steady window (reference § 2.6).

With several API processes (a PostgreSQL cluster), each process counts alone and admits its
share of every limit: the limit split over the live API processes (`share()`: this process's
rank among them and their number; the remainder goes to the lowest ranks), so the cluster never
admits more than the limit. Behind a load balancer that spreads an account's requests evenly
(round robin) the account gets its whole limit; one that sends them all to one process gets
that process's share only. A limit smaller than the number of processes admits one request
per process.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from trackhouse.api.errors import APIError


@dataclass(frozen=True, slots=True)
class Limit:
    burst: int  # per second
    steady: int  # per minute


# Per endpoint class, from x-klaviyo-ratelimit in the OpenAPI files.
DEFAULT_LIMITS: dict[str, Limit] = {
    "create": Limit(350, 3500),  # POST /api/events, /client/events, legacy track/identify
    "bulk": Limit(10, 150),  # POST /api/event-bulk-create-jobs, /client/event-bulk-create
    "job": Limit(350, 3500),  # GET /api/event-bulk-create-jobs/{id}, /api/event-receipts/{id}
    "profile": Limit(75, 700),  # GET /api/profiles, /api/profiles/{id}
    "events": Limit(350, 3500),  # GET /api/events
    "event": Limit(10, 150),  # GET /api/events/{id}
    "event_related": Limit(350, 3500),  # GET /api/events/{id}/metric|profile, relationships
    "metrics": Limit(10, 150),  # GET /api/metrics, /api/metrics/{id}
    "aggregates": Limit(3, 60),  # POST /api/metric-aggregates
    "lists": Limit(75, 750),  # GET /api/lists, /api/lists/{id}
    "list_write": Limit(10, 150),  # POST /api/lists, PATCH and DELETE /api/lists/{id}
    "list_members": Limit(10, 150),  # POST and DELETE /api/lists/{id}/relationships/profiles
    # GET /api/profiles/{id}/lists|segments and their relationships
    "profile_groups": Limit(3, 60),
    "segments": Limit(75, 750),  # GET /api/segments, /api/segments/{id}, members
    "segment_count": Limit(1, 15),  # GET /api/segments/{id} with profile_count
    "segment_write": Limit(1, 15),  # POST /api/segments, PATCH /api/segments/{id}
    "segment_delete": Limit(3, 60),  # DELETE /api/segments/{id}
    "flow_create": Limit(1, 15),  # POST /api/flows
    "flows": Limit(3, 60),  # the other flow, flow-action and flow-message endpoints
    # GET /api/lists|segments/{id}/flow-triggers and their relationships (metrics': "metrics")
    "flow_triggers": Limit(3, 60),
}

_SPEC = re.compile(r"^\s*(\w+)\s*=\s*(\d+)\s*/\s*s\s*,\s*(\d+)\s*/\s*m\s*$")


def parse_limits(text: str | None) -> dict[str, Limit] | None:
    """`TRACKHOUSE_RATE_LIMITS`: "on" (default), "off" (None), or overrides such as
    "bulk=2/s,5/m;create=100/s,1000/m"."""
    if text is None or text.strip().lower() in ("", "on", "true", "1"):
        return dict(DEFAULT_LIMITS)
    if text.strip().lower() in ("off", "false", "0", "none"):
        return None
    limits = dict(DEFAULT_LIMITS)
    for part in text.split(";"):
        match = _SPEC.match(part)
        if not match or match.group(1) not in DEFAULT_LIMITS:
            raise ValueError(
                f"bad rate limit {part!r}: expected CLASS=N/s,N/m with CLASS one of "
                + ", ".join(DEFAULT_LIMITS)
            )
        limits[match.group(1)] = Limit(int(match.group(2)), int(match.group(3)))
    return limits


def share_of(limit: int, rank: int, count: int) -> int:
    """This process's part of `limit` when `count` processes split it; never 0, or a client
    whose connection lands on that process could never get through (so a limit below the
    number of processes admits one request per process)."""
    return max(1, limit // count + (1 if rank < limit % count else 0))


class RateLimiter:
    def __init__(
        self,
        limits: dict[str, Limit],
        clock: Callable[[], float] = time.time,
        share: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.share = share  # (rank, count) of this process among the live API processes
        # (account, class) -> [burst window, burst count, steady window, steady count]
        self._windows: dict[tuple[str, str], list[int]] = {}

    def hit(self, account_id: str, endpoint_class: str) -> dict[str, str]:
        """Count one request, or raise 429; returns the headers for the response."""
        limit = self.limits[endpoint_class]
        if self.share is not None:
            rank, count = self.share()
            if count > 1:
                limit = Limit(
                    share_of(limit.burst, rank, count), share_of(limit.steady, rank, count)
                )
        now = self.clock()
        second, minute = int(now), int(now // 60)
        w = self._windows.get((account_id, endpoint_class))
        if w is None:
            if len(self._windows) > 100_000:  # bound memory: drop every stale window
                self._windows = {k: v for k, v in self._windows.items() if v[2] == minute}
            w = self._windows[(account_id, endpoint_class)] = [second, 0, minute, 0]
        if w[0] != second:
            w[0], w[1] = second, 0
        if w[2] != minute:
            w[2], w[3] = minute, 0
        minute_reset = (minute + 1) * 60 - now
        if w[3] >= limit.steady:
            raise _throttled(minute_reset)
        if w[1] >= limit.burst:
            raise _throttled(second + 1 - now)
        w[1] += 1
        w[3] += 1
        return {
            "RateLimit-Limit": str(limit.steady),
            "RateLimit-Remaining": str(limit.steady - w[3]),
            "RateLimit-Reset": str(math.ceil(minute_reset)),
        }


def _throttled(wait: float) -> APIError:
    seconds = max(1, math.ceil(wait))
    unit = "second" if seconds == 1 else "seconds"
    return APIError(
        429,
        "throttled",
        f"Request was throttled. Expected available in {seconds} {unit}.",
        headers={"Retry-After": str(seconds)},
    )


# Klaviyo's daily creation limits (reference/segments-flows.md §§ 1–3), off by default: test
# suites create far more than a day's worth (design.md). TRACKHOUSE_DAILY_LIMITS: "off"
# (default), "on" (Klaviyo's), or e.g. "list=3,segment=2".
KLAVIYO_DAILY_LIMITS = {"list": 150, "segment": 100, "flow": 100}
_DAILY_SPEC = re.compile(r"^\s*(list|segment|flow)\s*=\s*(\d{1,6})\s*$")


def parse_daily_limits(text: str | None) -> dict[str, int]:
    """What may be created per account in any 24 hours, by kind; empty when off."""
    if text is None or text.strip().lower() in ("", "off", "false", "0", "none"):
        return {}
    if text.strip().lower() in ("on", "true", "1"):
        return dict(KLAVIYO_DAILY_LIMITS)
    limits = {}
    for part in text.split(","):
        match = _DAILY_SPEC.match(part)
        if not match:
            raise ValueError(f"bad daily limit {part!r}: expected list=N, segment=N or flow=N")
        limits[match.group(1)] = int(match.group(2))
    return limits


def check_daily(kind: str, limit: int, created: list[str], now: float) -> None:
    """429 when `created` (ISO 8601 times of the account's `kind`s made in the last 24 hours,
    oldest first, at most `limit` of them) has reached the limit; Retry-After is when the
    oldest leaves the window."""
    if len(created) < limit:
        return
    oldest = datetime.fromisoformat(created[0]).timestamp()
    error = _throttled(oldest + 86400 - now)
    error.detail = f"At most {limit} {kind}s can be created in a day. " + error.detail
    raise error
