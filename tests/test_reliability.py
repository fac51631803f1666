"""Invariant 1 under fire: clients keep sending while the server is killed and restarted, or
asked to stop. Every event that got a 202 is stored exactly once; a request that got no 202 is
stored whole or not at all. Each test prints the figures it compared (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import NEWEST, PRIVATE_KEY, Server, bulk_body, bulk_event, event_body, make_env

from trackhouse.backends import STORE_FILE

KILLS = int(os.environ.get("TRACKHOUSE_LOAD_KILLS", "20"))
CLIENTS = 4
HEADERS = {
    "Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}",
    "revision": NEWEST,
    "Content-Type": "application/vnd.api+json",
}


@dataclass
class Tally:
    """What the clients sent and what the server said, by event unique_id."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: set[str] = field(default_factory=set)
    # Requests without a 202 (refused, connection dropped, server gone): their events.
    unanswered: list[list[str]] = field(default_factory=list)
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)

    def record(self, uids: list[str], status: int | str) -> None:
        with self.lock:
            self.sent += len(uids)
            self.statuses[status] += 1
            if status == 202:
                self.acknowledged.update(uids)
            else:
                self.unanswered.append(uids)


def send_until(url: str, client_no: int, stop: threading.Event, tally: Tally) -> None:
    """Single creates and small bulk jobs, each event with its own unique_id, until `stop`."""
    rng = random.Random(client_no)
    n = 0
    with httpx.Client(base_url=url, headers=HEADERS, timeout=10, verify=False) as http:
        while not stop.is_set():
            n += 1
            email = f"load{client_no}-{n % 50}@klaviyo-demo.com"
            if rng.random() < 0.7:
                uids = [f"c{client_no}-{n}"]
                path, body = "/api/events", event_body(email=email, unique_id=uids[0])
            else:
                uids = [f"c{client_no}-{n}-{i}" for i in range(20)]
                groups = [
                    ({"email": email}, [bulk_event(unique_id=u) for u in uids[:10]]),
                    ({"email": f"other-{email}"}, [bulk_event(unique_id=u) for u in uids[10:]]),
                ]
                path, body = "/api/event-bulk-create-jobs", bulk_body(groups)
            try:
                status: int | str = http.post(path, json=body).status_code
            except httpx.TransportError as exc:
                status = type(exc).__name__
                time.sleep(0.02)  # the server is down: try again shortly
            tally.record(uids, status)


@contextlib.contextmanager
def clients_sending(url: str, tally: Tally) -> Iterator[None]:
    """CLIENTS threads running `send_until` for as long as the block lasts."""
    stop = threading.Event()
    threads = [
        threading.Thread(target=send_until, args=(url, c, stop, tally)) for c in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join()


def stored_uids(data_dir: Path) -> Counter:
    conn = sqlite3.connect(data_dir / STORE_FILE)
    try:
        return Counter(uid for (uid,) in conn.execute("SELECT dedup_key FROM events"))
    finally:
        conn.close()


def check(tally: Tally, stored: Counter, label: str) -> None:
    lost = tally.acknowledged - stored.keys()
    duplicated = [uid for uid, n in stored.items() if n > 1]
    # Without a 202 a request may have been committed just before the kill, but only whole.
    half_stored = [
        uids for uids in tally.unanswered if 0 < sum(u in stored for u in uids) < len(uids)
    ]
    unacknowledged_stored = sum(1 for uids in tally.unanswered for u in uids if u in stored)
    print(
        f"\n{label}: events sent {tally.sent}, acknowledged {len(tally.acknowledged)},"
        f" stored {sum(stored.values())}, lost {len(lost)}, duplicated {len(duplicated)},"
        f" requests without a 202 {len(tally.unanswered)} (half-stored {len(half_stored)},"
        f" their events stored whole: {unacknowledged_stored}); answers {dict(tally.statuses)}"
    )
    assert not lost, sorted(lost)[:10]
    assert not duplicated, duplicated[:10]
    assert not half_stored, half_stored[:3]
    assert sum(stored.values()) == len(tally.acknowledged) + unacknowledged_stored


def test_sigkill_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", make_env()).start()
    tally = Tally()
    rng = random.Random(int(os.environ.get("TRACKHOUSE_CRASH_SEED", time.time_ns())))
    with clients_sending(server.url, tally):
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.1, 0.5))  # load in flight, processing running
            server.kill()
            server.start()  # the same port and data directory
        time.sleep(0.3)
    try:
        server.settle()
    finally:
        server.stop()
    assert len(tally.acknowledged) > 0
    check(tally, stored_uids(server.data_dir), f"{KILLS} SIGKILLs under load")


def test_sigterm_finishes_in_flight_requests_and_loses_nothing(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", make_env()).start()
    tally = Tally()
    # One request still arriving when SIGTERM comes: its body trickles in over a second.
    slow_uid = "slow-in-flight"
    body = json.dumps(event_body(email="slow@klaviyo-demo.com", unique_id=slow_uid)).encode()
    piece = len(body) // 4 + 1
    slow: dict[str, object] = {}
    first_chunk_sent = threading.Event()

    def trickle():  # type: ignore[no-untyped-def]
        for n, i in enumerate(range(0, len(body), piece)):
            if n == 1:
                first_chunk_sent.set()  # headers and the first chunk are written
            yield body[i : i + piece]
            time.sleep(0.3)

    def send_slowly() -> None:
        headers = dict(HEADERS, **{"Content-Length": str(len(body))})
        try:
            slow["status"] = httpx.post(
                f"{server.url}/api/events", content=trickle(), headers=headers, timeout=30
            ).status_code
        except httpx.TransportError as exc:
            slow["status"] = repr(exc)

    with clients_sending(server.url, tally):
        time.sleep(1.0)
        sender = threading.Thread(target=send_slowly)
        sender.start()
        assert first_chunk_sent.wait(10), slow
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        exit_code = server.proc.wait(timeout=60)
        sender.join()
    assert exit_code == 0
    assert slow["status"] == 202, slow
    tally.record([slow_uid], 202)
    # The processor finished its batch and stopped: what remains is picked up on restart.
    server.start()
    try:
        server.settle()
    finally:
        server.stop()
    check(tally, stored_uids(server.data_dir), "SIGTERM under load")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_backlog_past_its_bound_gets_503_and_nothing_is_logged(tmp_path: Path) -> None:
    """With processing stopped, the log may run at most --max-backlog entries ahead; past it
    writes are refused (503, Retry-After) without being logged, and accepted again as soon as
    processing catches up."""
    server = Server(tmp_path / "data", make_env(), args=["--no-process", "--max-backlog", "20"])
    server.start()
    try:
        with server.client(**HEADERS) as http:
            for n in range(20):
                r = http.post("/api/events", json=event_body(unique_id=f"b{n}"))
                assert r.status_code == 202, r.text
            refused = http.post("/api/events", json=event_body(unique_id="b20"))
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            error = refused.json()["errors"][0]
            assert error["code"] == "service_unavailable" and "behind" in error["detail"]
            bulk = http.post(
                "/api/event-bulk-create-jobs",
                json=bulk_body([({"email": "late@klaviyo-demo.com"}, [bulk_event()])]),
            )
            assert bulk.status_code == 503
            assert len(server.log_entries()) == 20
            # Reads go on meanwhile.
            assert http.get("/api/metrics").status_code == 200
            # Processing catches up in another process; writes are accepted again.
            processor = subprocess.Popen(
                [sys.executable, "-m", "trackhouse", "process", "--data-dir", str(server.data_dir)]
            )
            try:
                server.settle()
                deadline = time.monotonic() + 10
                while (
                    r := http.post("/api/events", json=event_body(unique_id="b21"))
                ).status_code == 503:
                    assert time.monotonic() < deadline, r.text
                    time.sleep(0.1)
                assert r.status_code == 202, r.text
            finally:
                processor.terminate()
                assert processor.wait(timeout=30) == 0
    finally:
        server.stop()


OVERLOAD_SECONDS = float(os.environ.get("TRACKHOUSE_OVERLOAD_SECONDS", "10"))


def test_overload_is_refused_with_bounded_memory_and_recovers(tmp_path: Path) -> None:
    """Bulk load from 8 clients, far more than one core can process, with processing in the
    server: the backlog bound turns the excess into 503s, memory stays bounded, and once the
    load stops everything acknowledged is processed and writes are accepted again."""
    server = Server(tmp_path / "data", make_env(), args=["--max-backlog", "200"]).start()
    assert server.proc is not None
    idle = rss_mb(server.proc.pid)
    tally = Tally()
    stop = threading.Event()
    big = [bulk_event(unique_id=None, properties={"padding": "x" * 2000}) for _ in range(100)]

    def flood(client_no: int) -> None:
        n = 0
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30, verify=False) as http:
            while not stop.is_set():
                n += 1
                events = [dict(e, unique_id=f"o{client_no}-{n}-{i}") for i, e in enumerate(big)]
                groups = [({"email": f"flood{client_no}-{n % 500}@klaviyo-demo.com"}, events)]
                status = http.post(
                    "/api/event-bulk-create-jobs", json=bulk_body(groups)
                ).status_code
                tally.record([e["unique_id"] for e in events], status)
                if status == 503:
                    time.sleep(0.01)  # a well-behaved client would wait Retry-After; these push

    clients = [threading.Thread(target=flood, args=(c,)) for c in range(8)]
    for t in clients:
        t.start()
    peak = idle
    deadline = time.monotonic() + OVERLOAD_SECONDS
    while time.monotonic() < deadline:
        peak = max(peak, rss_mb(server.proc.pid))
        time.sleep(0.2)
    stop.set()
    for t in clients:
        t.join()
    try:
        server.settle(timeout=120)
        with server.client(**HEADERS) as http:  # recovered by itself
            r = http.post("/api/events", json=event_body(unique_id="after-overload"))
            assert r.status_code == 202, r.text
            tally.record(["after-overload"], 202)
        server.settle()
        after = rss_mb(server.proc.pid)
    finally:
        server.stop()
    print(
        f"\noverload for {OVERLOAD_SECONDS:.0f} s: answers {dict(tally.statuses)};"
        f" RSS idle {idle:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB"
    )
    assert tally.statuses[503] > 0, "the load never reached the bound: not an overload test"
    assert set(tally.statuses) == {202, 503}, tally.statuses
    assert peak < 400, f"RSS reached {peak:.0f} MB"
    check(tally, stored_uids(server.data_dir), "overload")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own, 16 MB, that the test can fill and then grow. (Remounting it
    read-only is refused while SQLite holds its files open for writing, so a read-only disk
    is not simulated; it fails the same commit path as a full one.)"""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


def fill_until_refused(url: str, tally: Tally, prefix: str, limit: int = 400) -> httpx.Response:
    """Bulk jobs of ~200 KB until the server refuses one; that answer."""
    padding = "p" * 20_000
    with httpx.Client(base_url=url, headers=HEADERS, timeout=30, verify=False) as http:
        for n in range(limit):
            uids = [f"{prefix}-{n}-{i}" for i in range(10)]
            events = [bulk_event(unique_id=u, properties={"padding": padding}) for u in uids]
            r = http.post(
                "/api/event-bulk-create-jobs",
                json=bulk_body([({"email": f"{prefix}@klaviyo-demo.com"}, events)]),
            )
            tally.record(uids, r.status_code)
            if r.status_code != 202:
                return r
    raise AssertionError(f"{limit} bulk jobs fitted on the small disk")


def test_full_disk_refuses_writes_with_503_serves_reads_and_recovers(small_disk: Path) -> None:
    server = Server(small_disk / "data", make_env()).start()
    tally = Tally()
    try:
        refused = fill_until_refused(server.url, tally, "full")
        assert refused.status_code == 503, refused.text
        error = refused.json()["errors"][0]
        assert error["code"] == "service_unavailable", error
        assert int(refused.headers["Retry-After"]) >= 1
        with server.client(**HEADERS) as http:
            assert http.get("/api/metrics").status_code == 200  # reads go on
            assert http.get("/api/events").status_code == 200
            remount(small_disk, "size=256m")  # space returns
            deadline = time.monotonic() + 30
            late = event_body(unique_id="after-full")
            while (r := http.post("/api/events", json=late)).status_code == 503:
                assert time.monotonic() < deadline, r.text
                time.sleep(0.2)
            assert r.status_code == 202, r.text
            tally.record(["after-full"], 202)
        server.settle()
    finally:
        server.stop()
    assert set(tally.statuses) == {202, 503}, tally.statuses
    check(tally, stored_uids(server.data_dir), "full disk")


def test_locked_log_refuses_writes_with_503_and_recovers(tmp_path: Path) -> None:
    """Another process holds the log's write lock longer than the writer waits for it."""
    server = Server(tmp_path / "data", make_env()).start()
    tally = Tally()
    locker = sqlite3.connect(server.data_dir / "log.sqlite3", isolation_level=None)
    try:
        with server.client(**HEADERS) as http:
            locker.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            refused = http.post("/api/events", json=event_body(unique_id="while-locked"))
            waited = time.monotonic() - started
            tally.record(["while-locked"], refused.status_code)
            assert refused.status_code == 503, refused.text
            assert refused.json()["errors"][0]["code"] == "service_unavailable"
            locker.execute("ROLLBACK")
            r = http.post("/api/events", json=event_body(unique_id="after-lock"))
            assert r.status_code == 202, r.text
            tally.record(["after-lock"], 202)
        server.settle()
    finally:
        locker.close()
        server.stop()
    print(f"\nlocked log: refused after {waited:.1f} s")
    check(tally, stored_uids(server.data_dir), "locked log")
