"""Refusing writes while processing is too far behind.

The log may run at most `max_entries` entries ahead of the processed position. Past that,
writes are refused with 503 and `Retry-After` before anything is logged, rather than letting
the backlog, and with it the accept→stored lag, grow without bound; they are accepted again
as soon as processing catches up. Reads are never refused for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from trackhouse.api.errors import APIError

DEFAULT_MAX_BACKLOG = 1_000_000  # log entries (a single create is one; a bulk job one a profile)
RETRY_AFTER_SECONDS = 2


class Backlog:
    def __init__(self, behind: Callable[[], int], max_entries: int) -> None:
        self.behind = behind  # log entries committed and not processed yet
        self.max_entries = max_entries

    def check(self) -> None:
        """Raise the 503 when the backlog has reached its bound."""
        behind = self.behind()
        if behind >= self.max_entries:
            raise APIError(
                503,
                "service_unavailable",
                f"Processing is {behind:,} log entries behind (the bound is "
                f"{self.max_entries:,}); nothing was stored. Retry shortly.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )


class Polled:
    """A figure read from the database at most every `interval` seconds (the backlog of a
    cluster, or of processing in another process): a stale answer is off by what changed
    within the interval."""

    def __init__(self, read: Callable[[], int], interval: float = 0.25) -> None:
        self.read = read
        self.interval = interval
        self._value = read()
        self._at = time.monotonic()

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self._at >= self.interval:
            self._value, self._at = self.read(), now
        return self._value


class ClusterBacklog:
    """A cluster's backlog: read from the database at most every `interval` seconds, plus
    what this process has appended since. Exact with one API process; with several, each
    misses the others' appends of the last interval."""

    def __init__(
        self, read: Callable[[], int], appended: Callable[[], int], interval: float = 0.25
    ) -> None:
        self.read = read
        self.appended = appended
        self.interval = interval
        self._at = -float("inf")
        self._value = self._base = 0

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self._at >= self.interval:
            self._base = self.appended()
            self._value, self._at = self.read(), now
        return self._value + self.appended() - self._base
