"""A log and a store belong together, one processor works a store, and a reset removes exactly
what was accepted before it: the ways the log and the store can disagree (design.md,
invariants 1–3)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import (
    ADMIN,
    bulk_body,
    bulk_event,
    event_body,
    make_env,
    private_client,
    sqlite_only,
)

from trackhouse.backends import LOG_FILE, STORE_FILE

# Resets hold processing in its own process (Processor.reset_account) or in serve's second
# process (through the store: SQLiteStore.reset_account).
PROCESSING = pytest.mark.parametrize("processing", ["thread", "process"])


def _send(server, n: int, prefix: str) -> list[str]:
    """n single creates; their receipt ids."""
    receipts = []
    with private_client(server) as c:
        for i in range(n):
            r = c.post("/api/events", json=event_body(email=f"{prefix}{i}@example.com"))
            assert r.status_code == 202, r.text
            receipts.append(r.headers["Trackhouse-Receipt"])
    return receipts


def _serve_fails(data_dir) -> str:
    """Start `trackhouse serve` expecting it to refuse; what it said."""
    proc = subprocess.run(
        [sys.executable, "-m", "trackhouse", "serve", "--data-dir", str(data_dir), "--port", "0"],
        env=make_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def _remove_log(data_dir) -> None:
    for path in data_dir.glob(LOG_FILE + "*"):  # the file and its -wal / -shm
        path.unlink()


@sqlite_only
def test_a_replaced_log_under_a_kept_store_stops_the_server(start_server, tmp_path):
    """Deleting the log (an operator reclaiming space) and restarting made trackhouse accept
    events it never processed: the store's position was past the new log's head."""
    server = start_server(data_dir=tmp_path / "data")
    _send(server, 15, "before")
    server.settle()
    server.stop()
    _remove_log(server.data_dir)

    said = _serve_fails(server.data_dir)
    assert str(server.data_dir / STORE_FILE) in said and str(server.data_dir / LOG_FILE) in said
    assert "another log" in said and "new data directory" in said


@sqlite_only
def test_a_store_ahead_of_its_log_stops_the_server(start_server, tmp_path):
    """The same log, restored from an older copy: the store has processed entries that copy
    does not have, and events accepted now would be skipped."""
    server = start_server(data_dir=tmp_path / "data")
    _send(server, 3, "early")
    server.settle()
    server.stop()
    old_log = tmp_path / "old-log"
    old_log.mkdir()
    for path in server.data_dir.glob(LOG_FILE + "*"):
        shutil.copy(path, old_log / path.name)
    server.start()
    _send(server, 5, "later")
    server.settle()
    server.stop()
    _remove_log(server.data_dir)
    for path in old_log.iterdir():
        shutil.copy(path, server.data_dir / path.name)

    said = _serve_fails(server.data_dir)
    assert "has processed 8 entries" in said and "ends at entry 3" in said
    assert str(server.data_dir / LOG_FILE) in said


@sqlite_only
def test_a_store_from_before_log_identities_is_checked_against_the_log(start_server, tmp_path):
    """A store written before logs had identities is bound on its first start, but only if
    the newest entry it processed is in the log: here the log was replaced by another that
    has grown past the store's position, which the position alone cannot tell."""
    server = start_server(data_dir=tmp_path / "data")
    _send(server, 3, "mine")
    server.settle()
    server.stop()
    other = start_server(data_dir=tmp_path / "other")
    _send(other, 6, "theirs")
    other.stop()
    store = sqlite3.connect(server.data_dir / STORE_FILE)
    with store:  # as 130c44b left it
        store.execute("DELETE FROM meta WHERE key = 'log_identity'")
    store.close()
    _remove_log(server.data_dir)
    for path in other.data_dir.glob(LOG_FILE + "*"):
        shutil.copy(path, server.data_dir / path.name)

    said = _serve_fails(server.data_dir)
    assert "has processed log entry 3" in said and "the log was replaced" in said


@sqlite_only
def test_a_store_from_before_log_identities_binds_to_its_own_log(start_server, tmp_path):
    server = start_server(data_dir=tmp_path / "data")
    _send(server, 3, "mine")
    server.settle()
    server.stop()
    store = sqlite3.connect(server.data_dir / STORE_FILE)
    with store:
        store.execute("DELETE FROM meta WHERE key = 'log_identity'")
    store.close()
    server.start()
    receipts = _send(server, 1, "again")
    server.settle()
    with private_client(server) as c:
        assert c.get(f"/api/event-receipts/{receipts[0]}").status_code == 200


def test_process_needs_an_existing_data_directory(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trackhouse", "process", "--data-dir", str(tmp_path / "typo")],
        env=make_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "no data directory" in proc.stderr
    assert not (tmp_path / "typo").exists()


def test_the_same_log_and_store_start_again(start_server, tmp_path):
    server = start_server(data_dir=tmp_path / "data")
    _send(server, 2, "a")
    server.settle()
    server.stop()
    server.start()
    receipts = _send(server, 2, "b")
    server.settle()
    with private_client(server) as c:
        r = c.get(f"/api/event-receipts/{receipts[-1]}")
    assert r.json()["data"]["attributes"]["status"] == "processed"


@sqlite_only
def test_a_second_processor_on_a_store_exits_at_once_naming_the_first(start_server):
    """A `trackhouse process` beside a `serve` that processes used to leave the server's
    processor looping on a unique-key error forever, /admin/wait answering 503."""
    server = start_server()
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "trackhouse", "process", "--data-dir", str(server.data_dir)],
        env=make_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert time.monotonic() - started < 10
    assert f"process {server.proc.pid} on " in proc.stderr
    assert "one processor per store" in proc.stderr
    # The server goes on processing as before.
    receipts = _send(server, 3, "after")
    server.settle(timeout=10)
    with private_client(server) as c:
        assert (
            c.get(f"/api/event-receipts/{receipts[-1]}").json()["data"]["attributes"]["status"]
            == "processed"
        )


@sqlite_only
def test_the_processing_claim_is_released_when_its_process_dies(start_server):
    server = start_server("--no-process")
    first = subprocess.Popen(
        [sys.executable, "-m", "trackhouse", "process", "--data-dir", str(server.data_dir)],
        env=make_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        receipts = _send(server, 2, "claim")
        server.settle(timeout=20)
        first.kill()  # SIGKILL: no chance to release anything itself
        first.wait()
        second = subprocess.Popen(
            [sys.executable, "-m", "trackhouse", "process", "--data-dir", str(server.data_dir)],
            env=make_env(),
        )
        try:
            receipts += _send(server, 2, "claim2")
            server.settle(timeout=20)
        finally:
            second.terminate()
            second.wait(timeout=15)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 0


def _bulk_jobs(server, jobs: int, groups: int, prefix: str) -> list[str]:
    """Bulk jobs of `groups` one-event profile groups each (a log entry a group); their ids."""
    ids = []
    with private_client(server) as c:
        for j in range(jobs):
            body = bulk_body(
                [({"email": f"{prefix}{j}.{g}@example.com"}, [bulk_event()]) for g in range(groups)]
            )
            r = c.post("/api/event-bulk-create-jobs", json=body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["data"]["id"])
    return ids


@PROCESSING
def test_reset_deletes_exactly_what_was_accepted_before_it(start_server, processing):
    """Processing behind (the store locked from outside, more than a batch waiting), a reset
    starts, and 20 events are accepted a second later: those 20 must survive the reset. Before,
    whichever ran first after the lock went — the reset's catching up or the processor — took
    them into its batch, and the reset deleted them."""
    server = start_server("--processing", processing)
    before = _send(server, 10, "old")
    server.settle()
    blocker = server.lock_store()  # the processor's writes now wait
    jobs = _bulk_jobs(server, 12, 100, "stuck")  # 1,200 entries: more than one batch
    result: dict[str, httpx.Response] = {}

    def reset() -> None:
        result["reset"] = httpx.post(
            f"{server.url}/admin/reset?timeout=60", headers=ADMIN, timeout=90
        )

    thread = threading.Thread(target=reset)
    thread.start()
    time.sleep(1.0)
    after = _send(server, 20, "new")  # accepted while the reset waits
    blocker.release()
    thread.join(timeout=90)
    assert result["reset"].status_code == 200, result["reset"].text
    assert result["reset"].json()["data"]["attributes"]["events"] == 10 + 1200
    server.settle()
    with private_client(server) as c:
        for receipt in before:
            assert c.get(f"/api/event-receipts/{receipt}").status_code == 404
        for job in jobs:
            assert c.get(f"/api/event-bulk-create-jobs/{job}").status_code == 404
        for receipt in after:
            r = c.get(f"/api/event-receipts/{receipt}")
            assert r.status_code == 200, r.text
            (outcome,) = r.json()["data"]["attributes"]["outcomes"]
            assert outcome["outcome"] == "stored"
        events = c.get("/api/events", params={"page[size]": 100}).json()["data"]
    assert len(events) == 20


@PROCESSING
def test_reset_with_storage_stuck_answers_503_by_its_timeout_and_deletes_nothing(
    start_server, processing
):
    server = start_server("--processing", processing)
    receipts = _send(server, 3, "kept")
    server.settle()
    blocker = server.lock_store()
    try:
        started = time.monotonic()
        # Nothing waiting: the reset's own delete is what cannot get the store.
        idle = httpx.post(f"{server.url}/admin/reset?timeout=1", headers=ADMIN, timeout=60)
        idle_seconds = time.monotonic() - started
        _send(server, 1, "pending")
        started = time.monotonic()
        behind = httpx.post(f"{server.url}/admin/reset?timeout=1", headers=ADMIN, timeout=60)
        behind_seconds = time.monotonic() - started
    finally:
        blocker.release()
    for r, seconds in ((idle, idle_seconds), (behind, behind_seconds)):
        assert r.status_code == 503, r.text
        assert r.json()["errors"][0]["code"] == "service_unavailable"
        assert seconds < 5  # the timeout asked for, not SQLite's own 30 s
    server.settle()
    with private_client(server) as c:
        for receipt in receipts:
            assert c.get(f"/api/event-receipts/{receipt}").status_code == 200
        assert len(c.get("/api/events").json()["data"]) == 4


@PROCESSING
def test_concurrent_resets_take_turns_and_processing_goes_on(start_server, processing):
    """Two resets waiting at once, at different log heads: each deletes what was there at
    its call, neither waits for ever, and processing goes on after them."""
    server = start_server("--processing", processing)
    blocker = server.lock_store()
    results: list[httpx.Response] = []

    def reset() -> None:
        results.append(
            httpx.post(f"{server.url}/admin/reset?timeout=60", headers=ADMIN, timeout=90)
        )

    threads = []
    for n in range(3):
        _send(server, 5, f"wave{n}.")
        thread = threading.Thread(target=reset)
        thread.start()
        threads.append(thread)
        time.sleep(0.5)
    survivors = _send(server, 5, "survivor.")
    blocker.release()
    for thread in threads:
        thread.join(timeout=90)
    assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
    assert sum(r.json()["data"]["attributes"]["events"] for r in results) == 15
    server.settle(timeout=20)
    with private_client(server) as c:
        for receipt in survivors:
            assert c.get(f"/api/event-receipts/{receipt}").status_code == 200
        assert len(c.get("/api/events").json()["data"]) == 5


@pytest.mark.parametrize("timeout", ["nan", "١٠", "1e3", "-1", "301", "9" * 400])
def test_admin_timeouts_are_ascii_seconds_within_bounds(server, timeout):
    r = httpx.post(f"{server.url}/admin/wait", params={"timeout": timeout}, headers=ADMIN)
    assert r.status_code == 400
    assert r.json()["errors"][0]["source"] == {"parameter": "timeout"}
