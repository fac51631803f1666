"""Identifiers in Klaviyo's 26-character ULID style (profiles, receipts, bulk jobs), and its
6-character alphanumeric ones (metrics, lists, public keys: `short_id`).

They are looked up within the caller's account only, so they must be unique, not secret: the
random part comes from a Mersenne Twister seeded by the OS, not from a system call per id as
`ulid.ULID()` makes (15–40 µs an id under load, more than all of a request's limit checks).
The text is ULID's: Crockford base 32 of 48 bits of milliseconds and 80 random bits, written
here ten bits at a time from a table (the library's encoder cost several µs an id).
"""

from __future__ import annotations

import os
import random
import secrets
import string
import time

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in CROCKFORD for b in CROCKFORD]  # every 10-bit value as two characters
_SHIFTS = range(120, -1, -10)  # 13 × 10 bits = the 130 bits of 26 characters, top 2 zero
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)  # a forked child must not repeat the parent's ids


def ulid_text(value: int) -> str:
    """The 26-character text of a 128-bit ULID value."""
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def new_ulid() -> str:
    """A time-ordered ULID string: 48 bits of milliseconds, then 80 random bits."""
    return ulid_text((time.time_ns() // 1_000_000) << 80 | _random.getrandbits(80))


_ALPHANUMERIC = string.ascii_letters + string.digits


def short_id() -> str:
    """Six random letters and digits, as Klaviyo's metric, list and public key ids are; the
    caller inserts it under a unique key and draws again if it is taken."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(6))
