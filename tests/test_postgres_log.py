"""The PostgreSQL log itself (log/postgres.py), driven directly: many concurrent appends through
its two writer threads, single and bulk, over a private PostgreSQL. Every partition's
positions are 1..n with no gap or repeat (invariant 1's readers never skip an entry), every
submission is in the log exactly once, each batch's entry numbers ascend in the order it was
sent (a bulk job's groups come back in the order they were sent), and a job's first_seq is its
first group's number."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from trackhouse.log import BulkJob
from trackhouse.log.postgres import WRITERS, PostgresLog
from trackhouse.model import ProfileChange, Submission
from trackhouse.store.postgres import migrate


def submission(n: int, job: str | None = None, group: int | None = None) -> Submission:
    return Submission(
        account_id="A1", received_at=time.time(), source="api", receipt_id=f"r{n}",
        profile=ProfileChange(email=f"person{n}@klaviyo-demo.com"), job_id=job, job_group=group,
    )  # fmt: skip


def test_concurrent_appends_number_entries_without_gaps_in_batch_order(private_postgres) -> None:
    url = private_postgres.new_database()
    partitions = migrate(url)
    log = PostgresLog(url, partitions)
    assert WRITERS > 1 and len(log._threads) == WRITERS  # the concurrency under test
    jobs = [f"J{j}" for j in range(20)]
    try:

        async def send() -> None:
            singles = [log.append([submission(n)]) for n in range(400)]
            bulks = [
                log.append(
                    [submission(1000 + 100 * j + g, job_id, g) for g in range(30)],
                    BulkJob(job_id, "A1", "2026-12-02T00:00:00+00:00", 30, 30),
                )
                for j, job_id in enumerate(jobs)
            ]
            await asyncio.gather(*singles, *bulks)

        asyncio.run(send())
        entries = [e for p in range(partitions) for e in log.read(p, 0, 10_000)]
        stored_jobs = {job_id: log.get_job("A1", job_id) for job_id in jobs}
    finally:
        log.close()

    assert len(entries) == 400 + 20 * 30
    receipts = [e.submission.receipt_id for e in entries]
    assert len(set(receipts)) == len(receipts)  # each exactly once
    assert len({e.seq for e in entries}) == len(entries)
    by_partition: dict[int, list[int]] = defaultdict(list)
    for e in entries:
        by_partition[e.partition].append(e.position)
    for positions in by_partition.values():
        assert sorted(positions) == list(range(1, len(positions) + 1))
    # A job's groups were numbered in the order they were sent, the first one first_seq.
    for job_id in jobs:
        groups = sorted((e for e in entries if e.submission.job_id == job_id), key=lambda e: e.seq)
        assert [e.submission.job_group for e in groups] == list(range(30))
        job = stored_jobs[job_id]
        assert job is not None and job.first_seq == groups[0].seq
