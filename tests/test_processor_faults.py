"""The processor under faults, in-process on real SQLite files: storage errors are retried,
never turned into rejections; a broken entry is rejected alone; the loop never dies."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from trackhouse.log.sqlite import SQLiteLog
from trackhouse.model import Event, ProfileChange, Submission
from trackhouse.process import processor as processor_module
from trackhouse.process.processor import Processor
from trackhouse.store.sqlite import SQLiteStore


def submission(n: int) -> Submission:
    return Submission(
        account_id="acct01",
        received_at=1_700_000_000.0,
        source="api",
        profile=ProfileChange(email=f"user{n}@klaviyo-demo.com"),
        # Big enough that storing it needs new database pages.
        events=[
            Event(
                metric="Viewed",
                time=1_700_000_000,
                unique_id=str(n),
                properties={"padding": "x" * 20_000},
            )
        ],
        receipt_id=f"r{n}",
    )


@pytest.fixture
def parts(tmp_path: Path):
    log = SQLiteLog(tmp_path / "log.sqlite3")
    store = SQLiteStore(tmp_path / "store.sqlite3")
    processor = Processor(log, store)
    yield log, store, processor
    processor.close()
    log.close()
    store.close()


def append(log: SQLiteLog, subs: list[Submission]) -> None:
    asyncio.run(log.append(subs))


def outcomes(store: SQLiteStore, n: int) -> list[str]:
    return [o.outcome for o in store.receipt_outcomes("acct01", f"r{n}")]


def test_full_disk_is_retried_not_rejected(parts):
    log, store, processor = parts
    append(log, [submission(1), submission(2)])
    # The store may not grow: every write fails as on a full disk.
    (pages,) = processor.store.conn.execute("PRAGMA page_count").fetchone()
    processor.store.conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(Exception, match="full"):
        processor.run_once()
    assert processor.position == 0 and outcomes(store, 1) == []
    processor.store.conn.execute("PRAGMA max_page_count = 1073741823")  # space is back
    assert processor.run_once() == 2
    assert outcomes(store, 1) == ["stored"] and outcomes(store, 2) == ["stored"]


def test_the_loop_survives_storage_errors_and_resumes(parts):
    log, store, processor = parts
    (pages,) = processor.store.conn.execute("PRAGMA page_count").fetchone()
    processor.store.conn.execute(f"PRAGMA max_page_count = {pages}")
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, args=(stop,))
    thread.start()
    try:
        append(log, [submission(1)])
        deadline = time.monotonic() + 10
        while processor.last_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert processor.last_error is not None and "full" in processor.last_error
        assert thread.is_alive()
        processor.store.conn.execute("PRAGMA max_page_count = 1073741823")
        deadline = time.monotonic() + 15
        while processor.position < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert outcomes(store, 1) == ["stored"]
        assert processor.last_error is None
    finally:
        stop.set()
        processor.wake.set()
        thread.join(timeout=15)


def test_an_entry_that_breaks_processing_is_rejected_alone(parts, monkeypatch):
    log, store, processor = parts
    real = processor_module.apply_bounded

    def fragile(profile, change, size):
        if change.email == "user2@klaviyo-demo.com":
            raise KeyError("a bug")
        return real(profile, change, size)

    monkeypatch.setattr(processor_module, "apply_bounded", fragile)
    append(log, [submission(1), submission(2), submission(3)])
    assert processor.run_once() == 3
    assert [outcomes(store, n) for n in (1, 2, 3)] == [["stored"], ["rejected"], ["stored"]]
    (detail,) = [o.detail for o in store.receipt_outcomes("acct01", "r2")]
    assert "internal error: KeyError('a bug')" in detail


def test_profile_cache_is_bounded_in_bytes_and_dropping_it_changes_no_answer(parts, monkeypatch):
    """Big profiles fill the cache's byte budget long before its entry count matters; once
    past it the cache is dropped at the batch boundary, and profiles are read back from the
    store: the same person still lands on the same profile."""
    from trackhouse.process import identity

    log, store, processor = parts
    monkeypatch.setattr(identity, "MAX_CACHED_BYTES", 200_000)
    big = {"notes": "y" * 30_000}  # ~30 KB each encoded: the budget holds a handful

    def person(n: int, unique: str) -> Submission:
        return Submission(
            account_id="acct01",
            received_at=1_700_000_000.0,
            source="api",
            profile=ProfileChange(email=f"big{n}@klaviyo-demo.com", properties=big),
            events=[Event(metric="Viewed", time=1_700_000_000, unique_id=unique)],
            receipt_id=f"{unique}-{n}",
        )

    append(log, [person(n, "a") for n in range(10)])
    processor.run_once()
    book = processor.book
    # Ten 30 KB profiles are well past 200 KB, so the batch ended by dropping the cache.
    assert book.cached_bytes() == 0 and not book._profiles and not book._owners
    append(log, [person(n, "b") for n in range(10)])
    processor.run_once()
    first = [store.receipt_outcomes("acct01", f"a-{n}")[0].profile_id for n in range(10)]
    second = [store.receipt_outcomes("acct01", f"b-{n}")[0].profile_id for n in range(10)]
    assert first == second and len(set(first)) == 10
    assert store.outcome_counts() == {"stored": 20, "deduplicated": 0, "rejected": 0}
