"""Exactly once for flows (design.md invariant 3, issue 13): workers SIGKILLed at random while
thousands of profiles move through delays and webhooks. Afterwards every run completed, every
step of every run ran exactly once, and every webhook reached the receiver at least once with
one idempotency key per step (and none that is not a step's).

The flow: a metric trigger, a 1-hour delay, a webhook to a receiver in the test (which answers
503 to the first attempt of about one step in ten, so that retries are made across kills too),
another 1-hour delay, an update-profile. The clock is frozen and moved by jumps
(`POST /admin/clock`), so the steps of every profile come due at once while the workers die.
On SQLite one worker at a time (`trackhouse process`, restarted after each kill); on
PostgreSQL two, on the one database.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import pytest
from conftest import ADMIN, PRIVATE_KEY, Server, bulk_body, bulk_event

from trackhouse.backends import STORE_FILE

PROFILES = int(os.environ.get("TRACKHOUSE_FLOW_CRASH_PROFILES", "2000"))
MIN_KILLS = 5
START = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
API = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": "2026-10-15"}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a sender killed mid-answer
            super().handle_error(request, client_address)


class Receiver:
    """Records every whole POST's idempotency key and body; answers 503 to the first attempt of the
    steps whose key hashes into one tenth, 200 otherwise."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[str, bytes]] = []
        self.refused: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request: nothing arrived
                    self.close_connection = True
                    return
                key = self.headers.get("Idempotency-Key", "")
                with receiver.lock:
                    receiver.received.append((key, body))
                    first = key not in receiver.refused
                    refuse = first and hashlib.sha256(key.encode()).digest()[0] < 26
                    if refuse:
                        receiver.refused.add(key)
                self.send_response(503 if refuse else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Workers:
    """`trackhouse process` workers of the server, killed and replaced at random."""

    def __init__(self, server: Server, count: int, seed: int) -> None:
        self.server, self.count = server, count
        self.rng = random.Random(seed)
        self.procs: list[subprocess.Popen] = []
        self.kills = 0
        self.died_alone: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._kill_at_random, daemon=True)
        while len(self.procs) < count:
            self._start()

    def _start(self) -> None:
        command = [sys.executable, "-m", "trackhouse", "process", *self.server.where()]
        self.server.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.server.data_dir / f"worker{len(self.procs)}-{self.kills}.log", "w")  # noqa: SIM115
        self.procs.append(subprocess.Popen(command, env=self.server.env, stdout=log, stderr=log))

    def _kill_at_random(self) -> None:
        while not self.stop.wait(self.rng.uniform(0.3, 1.5)):
            for proc in [p for p in self.procs if p.poll() is not None]:
                self.died_alone.append(proc.returncode)  # not killed here: a bug
                self.procs.remove(proc)
                self._start()
            victim = self.rng.choice(self.procs)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            self.kills += 1
            self.procs.remove(victim)
            self._start()

    def start_killing(self) -> None:
        self.thread.start()

    def stop_killing(self) -> None:
        self.stop.set()
        self.thread.join()

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _settle(server: Server) -> None:
    """Wait for processing and for every step and attempt due (workers are dying meanwhile:
    /admin/wait answers 503 while they catch up, and is asked again)."""
    deadline = time.monotonic() + 300
    while True:
        r = httpx.post(f"{server.url}/admin/wait?timeout=20", headers=ADMIN, timeout=40)
        if r.status_code == 200:
            return
        assert r.status_code == 503 and time.monotonic() < deadline, r.text


def _set_clock(admin: httpx.Client, at: datetime) -> None:
    r = admin.post("/admin/clock", json={"now": at.isoformat()})
    assert r.status_code == 200, r.text


def _flow(api: httpx.Client, metric_id: str, url: str) -> str:
    definition = {
        "triggers": [{"type": "metric", "id": metric_id}],
        "entry_action_id": "wait",
        "actions": [
            {"temporary_id": "wait", "type": "time-delay", "links": {"next": "hook"},
             "data": {"unit": "hours", "value": 1}},
            {"temporary_id": "hook", "type": "send-webhook", "links": {"next": "again"},
             "data": {"message": {"url": url, "body": '{"email": "{{ person.email }}"}',
                                  "name": "Crash hook"}}},
            {"temporary_id": "again", "type": "time-delay", "links": {"next": "mark"},
             "data": {"unit": "hours", "value": 1}},
            {"temporary_id": "mark", "type": "update-profile", "links": {"next": None},
             "data": {"profile_operations": [{
                 "operator": "update", "property_type": "boolean", "property_key": "crash_done",
                 "property_value": True}]}},
        ],
    }  # fmt: skip
    body = {"data": {"type": "flow", "attributes": {"name": "Crash", "definition": definition}}}
    r = api.post("/api/flows", json=body)
    assert r.status_code == 201, r.text
    flow_id: str = r.json()["data"]["id"]
    live = {"data": {"type": "flow", "id": flow_id, "attributes": {"status": "live"}}}
    assert api.patch(f"/api/flows/{flow_id}", json=live).status_code == 200
    return flow_id


def test_killed_workers_run_every_flow_step_once_and_deliver_every_webhook(
    start_server, receiver: Receiver
) -> None:
    seed = int(os.environ.get("TRACKHOUSE_FLOW_CRASH_SEED", random.randrange(1 << 30)))
    server: Server = start_server("--no-process", TRACKHOUSE_LEASE_SECONDS="2",
                                  TRACKHOUSE_WEBHOOK_LEASE_SECONDS="12")  # fmt: skip
    workers = Workers(server, 1 if server.backend == "sqlite" else 2, seed)
    try:
        with server.client(**API) as api, server.client(**ADMIN) as admin:
            _set_clock(admin, START)
            seed_body = bulk_body([({"email": "seed@example.com"},
                                    [bulk_event("Crash Cart", backfill=True)])])  # fmt: skip
            assert api.post("/api/event-bulk-create-jobs", json=seed_body).status_code == 202
            _settle(server)
            (metric,) = api.get("/api/metrics").json()["data"]
            flow_id = _flow(api, metric["id"], receiver.url)

            workers.start_killing()
            for start in range(0, PROFILES, 500):
                groups = [({"email": f"crash{n}@example.com"}, [bulk_event("Crash Cart")])
                          for n in range(start, min(start + 500, PROFILES))]  # fmt: skip
                r = api.post("/api/event-bulk-create-jobs", json=bulk_body(groups))
                assert r.status_code == 202, r.text
            _settle(server)  # every profile entered and waits in the first delay
            for at in (
                timedelta(hours=1, seconds=1),
                timedelta(hours=2, seconds=2),
                timedelta(days=2),
            ):  # the webhooks, the second delay, the retries
                _set_clock(admin, START + at)
                _settle(server)
            workers.stop_killing()
            _settle(server)
    finally:
        workers.close()

    def rows(sql: str) -> list[tuple]:
        return server.query(STORE_FILE, sql)

    runs = rows("SELECT status, count(*) FROM flow_runs GROUP BY status")
    steps = rows("SELECT run_id, action_id, count(*), min(status), max(status) FROM flow_steps"
                 " GROUP BY run_id, action_id")  # fmt: skip
    deliveries = rows("SELECT idempotency_key, status, profile_id, body FROM webhook_deliveries")
    keys_sent = Counter(key for key, _ in receiver.received)
    print(f"\nflow crash test (seed {seed}, {server.backend}): {workers.kills} SIGKILLs;"
          f" runs {dict(runs)}; {len(steps)} steps; {len(deliveries)} deliveries;"
          f" {len(receiver.received)} requests received,"
          f" {len(receiver.refused)} refused once")  # fmt: skip
    assert workers.kills >= MIN_KILLS and workers.died_alone == []
    assert dict(runs) == {"completed": PROFILES}
    per_run = Counter(run_id for run_id, *_ in steps)
    assert len(per_run) == PROFILES and set(per_run.values()) == {4}  # four actions each…
    assert {(n, low, high) for _, _, n, low, high in steps} == {(1, "done", "done")}  # …once
    assert len(deliveries) == PROFILES and {s for _, s, _, _ in deliveries} == {"delivered"}
    keys = {key for key, *_ in deliveries}
    assert len(keys) == PROFILES  # one key per step
    assert set(keys_sent) == keys  # each arrived, and nothing else did
    assert all(keys_sent[k] >= 2 for k in receiver.refused)  # refused once, then sent again
    bodies = {key: msgspec.json.decode(body)["email"] for key, body in receiver.received}
    stored = {key: msgspec.json.decode(body)["email"] for key, _, _, body in deliveries}
    assert bodies == stored and len(set(stored.values())) == PROFILES
    with server.client(**API) as api:
        r = api.get("/api/profiles", params={"filter": 'equals(email,"crash7@example.com")'})
        assert r.json()["data"][0]["attributes"]["properties"]["crash_done"] is True
    assert flow_id
