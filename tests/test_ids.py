"""trackhouse's own ULID writer agrees with the python-ulid library, and its ids are
time-ordered, unique, and in Klaviyo's 26-character style."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from trackhouse.ids import new_ulid, ulid_text


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_ulid_text_is_the_librarys_encoding(value: int) -> None:
    assert ulid_text(value) == str(ULID.from_int(value))


def test_new_ulids_are_unique_and_carry_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_ulid() for _ in range(100_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in (ids[0], ids[-1]):
        assert len(text) == 26
        assert before <= ULID.from_str(text).milliseconds <= after
    # Ids from different milliseconds sort in time order.
    stamps = [ULID.from_str(text).milliseconds for text in ids[::1000]]
    assert stamps == sorted(stamps)
