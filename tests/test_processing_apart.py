"""`serve` processing in a second process (process/child.py): the default where there are two
cores, so that accepting and processing each get one. The child is woken through a pipe, is
started again when it dies, stops when the server stops however it stops, and a reset in the
API process holds it through the store (SQLiteStore.reset_account)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN, event_body, private_client, sqlite_only


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _processor_of(server) -> int:
    """The pid of the server's second process (`trackhouse process --signals-fd`)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for pid in _children(server.proc.pid):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"process" in command and b"--signals-fd" in command:
                return pid
        time.sleep(0.05)
    raise AssertionError("the server has no processing child")


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited; its parent (killed) is not there to reap it
            return True
        time.sleep(0.05)
    return False


def _send(server, email: str) -> None:
    with private_client(server) as c:
        r = c.post("/api/events", json=event_body(email=email))
        assert r.status_code == 202, r.text


def _profiles(server) -> set[str]:
    server.settle()
    with private_client(server) as c:
        data = c.get("/api/profiles", params={"page[size]": 100}).json()["data"]
    return {p["attributes"]["email"] for p in data}


def test_serve_processes_in_a_second_process_and_says_so(start_server):
    server = start_server("--processing", "process")
    child = _processor_of(server)
    assert child != server.proc.pid
    _send(server, "apart@example.com")
    assert _profiles(server) == {"apart@example.com"}
    server.stop()
    assert server.proc.returncode == 0
    assert _gone(child, 10)
    banner = server.proc.stdout.read()
    assert "processing:  in a second process" in banner


def test_auto_is_the_second_process_on_two_cores_and_a_thread_on_one(start_server):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this machine gives the tests one core")
    two = start_server("--processing", "auto")
    assert _processor_of(two)
    # One core (as taskset gives): processing stays in the serving process.
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    try:
        one = start_server("--processing", "auto")  # it inherits this process's affinity
    finally:
        os.sched_setaffinity(0, affinity)
    assert _children(one.proc.pid) == []
    _send(one, "one@example.com")
    assert _profiles(one) == {"one@example.com"}
    one.stop()
    assert "processing:  in this process" in one.proc.stdout.read()


def test_the_second_process_stops_when_the_server_is_killed(start_server):
    server = start_server("--processing", "process")
    child = _processor_of(server)
    server.kill()  # SIGKILL: the pipe closes with the process
    assert _gone(child, 10)
    server.start()  # the same data: processing claims the store again
    _send(server, "after@example.com")
    assert "after@example.com" in _profiles(server)


def test_a_second_process_that_dies_is_started_again(start_server):
    server = start_server("--processing", "process")
    child = _processor_of(server)
    _send(server, "before@example.com")
    server.settle()
    os.kill(child, signal.SIGKILL)
    assert _gone(child, 5)
    _send(server, "while-down@example.com")
    assert _profiles(server) == {"before@example.com", "while-down@example.com"}
    assert _processor_of(server) != child


@pytest.mark.parametrize("processing", ["thread", "process"])
def test_reset_holds_processing_wherever_it_runs(start_server, processing):
    """What was accepted before the reset is deleted, what comes after is kept, and the
    processor forgets the deleted profiles (the same email is a new profile afterwards)."""
    server = start_server("--processing", processing)
    _send(server, "kept-apart@example.com")
    server.settle()
    with private_client(server) as c:
        (before,) = c.get("/api/profiles").json()["data"]
    r = httpx.post(f"{server.url}/admin/reset", headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["attributes"]["profiles"] == 1
    _send(server, "kept-apart@example.com")
    server.settle()
    with private_client(server) as c:
        (after,) = c.get("/api/profiles").json()["data"]
    assert after["id"] != before["id"]


@sqlite_only
def test_reset_works_with_processing_in_trackhouse_process(start_server, tmp_path):
    """`serve --no-process` and `trackhouse process` on the embedded store: the reset holds
    that other process through the store (it answered 409 before)."""
    import subprocess
    import sys

    server = start_server("--no-process")
    worker = subprocess.Popen(
        [sys.executable, "-m", "trackhouse", "process", *server.where()], env=server.env
    )
    try:
        _send(server, "elsewhere@example.com")
        assert _profiles(server) == {"elsewhere@example.com"}
        r = httpx.post(f"{server.url}/admin/reset", headers=ADMIN, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["attributes"]["events"] == 1
        _send(server, "elsewhere2@example.com")
        assert _profiles(server) == {"elsewhere2@example.com"}
    finally:
        worker.terminate()
        worker.wait(30)
