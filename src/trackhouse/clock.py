"""Each account's clock: real time, real time moved by an offset, or frozen at an instant.

Everything time-based follows it (design.md): the default time of an event sent without one,
the "at most a year ahead" bound, segment conditions relative to now, and flow steps. Tests
set it through `/admin/clock` (api/admin.py), as Stripe's test clocks are set: frozen at an
instant, moved by `advance`, or back to real time. The setting lives in the store, so every
API process and worker of a cluster reads the same one; each process keeps the settings it
read for `REFRESH_SECONDS` (one small query a second, not one per request), and a process
that changes a setting knows it at once. An account that never set its clock has no row and
runs on real time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

# The instants a clock may be set to or advanced to: every date computed from "now" (a year
# ahead for event times, delays, relative segment conditions) stays far from datetime's ends.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)
REFRESH_SECONDS = 1.0
logger = logging.getLogger("trackhouse.clock")


@dataclass(frozen=True, slots=True)
class ClockSetting:
    """`frozen_at` (Unix seconds) when frozen; otherwise real time plus `offset` seconds."""

    frozen_at: float | None = None
    offset: float = 0.0

    def now(self, wall: float) -> float:
        return self.frozen_at if self.frozen_at is not None else wall + self.offset

    @property
    def frozen(self) -> bool:
        return self.frozen_at is not None

    @property
    def real(self) -> bool:
        return self.frozen_at is None and self.offset == 0.0


REAL_TIME = ClockSetting()


class Clocks:
    """The accounts' clock settings as `load` reads them from the store (account → setting,
    real-time accounts left out), kept for `ttl` seconds."""

    def __init__(
        self,
        load: Callable[[], dict[str, ClockSetting]],
        ttl: float = REFRESH_SECONDS,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._wall = wall
        self._settings: dict[str, ClockSetting] = {}
        self._due = 0.0  # time.monotonic() of the next refresh
        self._lock = threading.Lock()

    def refresh(self) -> None:
        settings = self._load()
        with self._lock:
            self._settings = settings
            self._due = time.monotonic() + self._ttl

    def setting(self, account_id: str) -> ClockSetting:
        if time.monotonic() >= self._due:
            if self._ttl <= 0:
                self.refresh()  # exact: the caller needs what the store holds now
            else:
                try:
                    self.refresh()
                except Exception:  # the store unavailable: accepting events must go on
                    logger.warning("the clocks could not be read; kept as they were")
                    self._due = time.monotonic() + self._ttl
        return self._settings.get(account_id, REAL_TIME)

    def now(self, account_id: str) -> float:
        """The account's now, in Unix seconds."""
        return self.setting(account_id).now(self._wall())

    def moment(self, account_id: str) -> datetime:
        return datetime.fromtimestamp(self.now(account_id), UTC)

    def changed(self, account_id: str, setting: ClockSetting) -> None:
        """This process wrote `setting` to the store: known here from now on."""
        with self._lock:
            settings = dict(self._settings)
            if setting.real:
                settings.pop(account_id, None)
            else:
                settings[account_id] = setting
            self._settings = settings


def iso(seconds: float) -> str:
    """An instant as the API writes it (ISO 8601, UTC; fractions only when there are some)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds")
