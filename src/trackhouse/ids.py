"""Identifiers in Klaviyo's 26-character ULID style (profiles, receipts, bulk jobs).

They are looked up within the caller's account only, so they must be unique, not secret: the
random part comes from a Mersenne Twister seeded by the OS, not from a system call per id as
`ulid.ULID()` makes (which cost 15–40 µs an id under load, more than the rest of accepting a
request's checks together).
"""

from __future__ import annotations

import random
import time

from ulid import ULID

_random = random.Random()


def new_ulid() -> str:
    """A time-ordered ULID string: 48 bits of milliseconds, then 80 random bits."""
    millis = time.time_ns() // 1_000_000
    return str(ULID.from_bytes(millis.to_bytes(6, "big") + _random.getrandbits(80).to_bytes(10)))
