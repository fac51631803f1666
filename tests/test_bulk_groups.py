"""A bulk job's rejected events are pointed at by their profile group's index in the request,
not by log positions: with several writers (the scale-out log) a job's groups need not be
consecutive entries. In-process, on real SQLite files."""

from __future__ import annotations

import asyncio
from pathlib import Path

from trackhouse.api.bulk import rejected_events
from trackhouse.log import BulkJob
from trackhouse.log.sqlite import SQLiteLog
from trackhouse.model import Event, ProfileChange, Submission
from trackhouse.process.processor import Processor
from trackhouse.store.sqlite import SQLiteStore


def group(n: int, job_id: str | None, *, metric_cap: int | None = None) -> Submission:
    return Submission(
        account_id="acct01",
        received_at=1_700_000_000.0,
        source="api",
        profile=ProfileChange(email=f"group{n}@example.com"),
        events=[Event(metric=f"Metric {n}", time=1_700_000_000 + n)],
        metric_cap=metric_cap,
        job_id=job_id,
        job_group=None if job_id is None else n,
        receipt_id=None if job_id else f"r{n}",
    )


def test_rejected_events_point_at_their_group_when_its_entries_are_not_consecutive(
    tmp_path: Path,
) -> None:
    log = SQLiteLog(tmp_path / "log.sqlite3")
    store = SQLiteStore(tmp_path / "store.sqlite3")
    processor = Processor(log, store)
    try:
        job = BulkJob("job1", "acct01", "2023-11-14T22:13:20+00:00", 2, 2)
        # Group 1 sits two entries after group 0: another writer's entry came between them.
        # Its event is refused (a metric cap of 0 forbids the new metric).
        entries = [group(0, "job1"), group(7, None), group(1, "job1", metric_cap=0)]
        asyncio.run(log.append(entries, job))
        assert processor.run_once() == 3
        logged = log.get_job("acct01", "job1")
        assert logged is not None
        outcomes = store.job_outcomes("acct01", "job1")
        assert [o.outcome for o in outcomes] == ["stored", "rejected"]
        assert [o.seq - logged.first_seq for o in outcomes] == [0, 2]  # not consecutive
        (rejected,) = rejected_events(logged, outcomes)
        assert (
            rejected["pointer"]
            == "/data/attributes/events-bulk-create/data/1/attributes/events/data/0"
        )
        assert "0 metrics" in (rejected["detail"] or "")
    finally:
        processor.close()
        log.close()
        store.close()


def test_a_store_from_before_groups_gets_the_column_and_old_rows_point_by_position(
    tmp_path: Path,
) -> None:
    import sqlite3

    from trackhouse.store.base import Outcome

    conn = sqlite3.connect(tmp_path / "store.sqlite3")
    conn.execute(  # as 130c44b made it
        "CREATE TABLE outcomes (seq INTEGER PRIMARY KEY, account_id TEXT NOT NULL,"
        " job_id TEXT, receipt_id TEXT, profile_id TEXT, results BLOB NOT NULL)"
    )
    conn.close()
    store = SQLiteStore(tmp_path / "store.sqlite3")
    try:
        assert store.job_outcomes("acct01", "job1") == []  # the column is back
    finally:
        store.close()
    job = BulkJob("job1", "acct01", "2023-11-14T22:13:20+00:00", 3, 3, first_seq=10)
    old = Outcome(12, 4, "rejected", None, None, "why", job_group=None)
    (rejected,) = rejected_events(job, [old])
    assert (
        rejected["pointer"] == "/data/attributes/events-bulk-create/data/2/attributes/events/data/4"
    )
