"""Invariant 1: 202 means durable. And what `serve` does on first start and with pinned keys."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
import pytest
from conftest import NEWEST, PRIVATE_KEY, bulk_body, bulk_event, event_body

from trackhouse.log import BulkJob, LogUnavailable
from trackhouse.log.sqlite import SQLiteLog
from trackhouse.model import Event, ProfileChange, Submission


def test_event_acknowledged_then_sigkill_is_in_the_log_after_restart(start_server, tmp_path):
    data = tmp_path / "killed"
    server = start_server(data_dir=data)
    headers = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": NEWEST}
    with server.client(**headers) as c:
        r = c.post("/api/events", json=event_body(email="durable@klaviyo-demo.com", unique_id="d1"))
        assert r.status_code == 202
        receipt = r.headers["Trackhouse-Receipt"]
        job = c.post(
            "/api/event-bulk-create-jobs",
            json=bulk_body([({"email": "durable@klaviyo-demo.com"}, [bulk_event(unique_id="d2")])]),
        )
        assert job.status_code == 202
    server.kill()  # SIGKILL right after the 202s: no shutdown code runs

    restarted = start_server(data_dir=data)
    assert restarted.receipt(receipt).events[0].unique_id == "d1"
    with restarted.client(**headers) as c:
        status = c.get(f"/api/event-bulk-create-jobs/{job.json()['data']['id']}")
    assert status.status_code == 200
    assert status.json()["data"]["attributes"]["total_count"] == 1


def test_concurrent_acknowledged_events_are_all_logged(start_server):
    """Group commit batches concurrent requests; each 202 still means its own event is in."""
    server = start_server()
    headers = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": NEWEST}

    async def send_all() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as c:
            bodies = [event_body(email=f"c{i}@klaviyo-demo.com") for i in range(200)]
            responses = await asyncio.gather(*(c.post("/api/events", json=b) for b in bodies))
        assert {r.status_code for r in responses} == {202}
        return [r.headers["Trackhouse-Receipt"] for r in responses]

    receipts = asyncio.run(send_all())
    server.kill()
    logged = {s.receipt_id: s.profile.email for s in server.log_entries()}
    assert len(logged) == 200
    assert sorted(logged[r] for r in receipts) == sorted(
        f"c{i}@klaviyo-demo.com" for i in range(200)
    )


def _submission(n: int) -> Submission:
    return Submission(
        account_id="acct01",
        received_at=0.0,
        source="api",
        profile=ProfileChange(email=f"u{n}@klaviyo-demo.com"),
        events=[Event(metric="M", time=1_700_000_000 + n)],
        receipt_id=str(n),
    )


def test_log_refuses_instead_of_acknowledging_when_it_cannot_commit(tmp_path: Path):
    log = SQLiteLog(tmp_path / "log.sqlite3")

    async def scenario() -> None:
        await log.append([_submission(1)])
        # A storage fault: another connection holds the write lock past the busy timeout.
        blocker = sqlite3.connect(tmp_path / "log.sqlite3", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        log._writer.execute("PRAGMA busy_timeout=100")
        try:
            await log.append([_submission(2)])
        except LogUnavailable:
            pass
        else:
            raise AssertionError("append succeeded while the log could not be written")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await log.append([_submission(3)])  # recovers by itself

    asyncio.run(scenario())
    assert [e.submission.receipt_id for e in log.read(0, 0, 10)] == ["1", "3"]
    log.close()


def test_jobs_sharing_one_group_commit_each_point_at_their_own_entries(tmp_path: Path):
    """The writer inserts a whole batch in one statement and works out each bulk job's first
    log position from the batch's last one; with jobs and single creates interleaved in one
    commit, every job must still name exactly its own entries."""
    log = SQLiteLog(tmp_path / "log.sqlite3")
    commits: list[int] = []
    commit = log._commit
    log._commit = lambda batch: commits.append(len(batch)) or commit(batch)  # type: ignore[method-assign]
    jobs = [
        BulkJob(f"job{k}", "acct01", "2026-11-29T00:00:00+00:00", k + 1, k + 1) for k in range(3)
    ]

    def job_entries(k: int) -> list[Submission]:
        return [
            msgspec.structs.replace(_submission(100 * k + g), job_id=f"job{k}", receipt_id=None)
            for g in range(k + 1)
        ]

    async def scenario() -> None:
        # Hold the write lock so that the first append waits in the writer while the rest
        # queue up behind it; they then go in as one batch.
        blocker = sqlite3.connect(tmp_path / "log.sqlite3", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        first = asyncio.create_task(log.append([_submission(1)]))
        await asyncio.sleep(0.2)
        rest = []
        for k, job in enumerate(jobs):
            rest.append(asyncio.create_task(log.append([_submission(10 + k)])))
            rest.append(asyncio.create_task(log.append(job_entries(k), job)))
        await asyncio.sleep(0.2)
        blocker.execute("ROLLBACK")
        blocker.close()
        await asyncio.gather(first, *rest)

    asyncio.run(scenario())
    assert commits == [1, 6]  # the jobs did share a commit, with single creates between them
    entries = {e.seq: e.submission for e in log.read(0, 0, 100)}
    for k, job in enumerate(jobs):
        stored = log.get_job("acct01", job.id)
        assert stored is not None
        own = [entries[stored.first_seq + g] for g in range(job.submission_count)]
        assert {s.job_id for s in own} == {job.id}
        assert sorted(s.profile.email for s in own) == sorted(
            s.profile.email for s in job_entries(k)
        )
    assert log.committed == len(entries) == 1 + 3 + 6
    log.close()


def test_log_on_a_read_only_database_refuses_then_recovers(tmp_path: Path):
    """A read-only disk, injected at the storage layer: SQLite's `query_only` makes every
    write fail with SQLITE_READONLY, as a read-only file system would. (A tmpfs cannot be
    remounted read-only while SQLite holds its files open for writing.) The HTTP layer maps the
    LogUnavailable to a 503, as the full-disk test in test_reliability.py shows end to end."""
    log = SQLiteLog(tmp_path / "log.sqlite3")

    async def scenario() -> None:
        await log.append([_submission(1)])
        log._writer.execute("PRAGMA query_only=1")
        with pytest.raises(LogUnavailable, match="readonly"):
            await log.append([_submission(2)])
        assert log.read(0, 0, 10)[-1].submission.receipt_id == "1"  # reads go on
        log._writer.execute("PRAGMA query_only=0")
        await log.append([_submission(3)])

    asyncio.run(scenario())
    assert [e.submission.receipt_id for e in log.read(0, 0, 10)] == ["1", "3"]
    assert log.committed == 2  # the refused write left no position behind
    log.close()


def test_first_start_creates_an_account_and_prints_its_keys(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKHOUSE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trackhouse", "serve", "--data-dir", str(tmp_path / "d")]
        + ["--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert "listening on http://127.0.0.1:" in lines[0]
    port = int(lines[0].rsplit(":", 1)[1])
    assert port > 0  # the real port, not the 0 that was asked for
    public = lines[2].split()[2]
    private = lines[3].split()[2]
    assert len(public) == 6 and public.isalnum()
    assert private.startswith("pk_")
    # The second start keeps the account and never shows the private key again.
    again = subprocess.run(
        [sys.executable, "-m", "trackhouse", "keys", "list", "--data-dir", str(tmp_path / "d")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert public in again.stdout and private not in again.stdout


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failing_log_writer_refuses_appends_instead_of_hanging(tmp_path: Path):
    log = SQLiteLog(tmp_path / "log.sqlite3")

    def broken(batch):
        raise MemoryError("simulated")

    log._commit = broken  # an error no commit path expects

    async def scenario() -> None:
        for _ in range(2):  # the first kills the writer; the second must not wait for it
            try:
                await asyncio.wait_for(log.append([_submission(1)]), timeout=5)
            except LogUnavailable:
                continue
            raise AssertionError("append succeeded with a broken writer")

    asyncio.run(scenario())
    log.close()
