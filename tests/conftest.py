"""Every test talks to a real `trackhouse serve` process over real HTTP, on real SQLite and on
a real (private) PostgreSQL: the `server` and `start_server` fixtures are parametrized over
both backends. TRACKHOUSE_TEST_BACKENDS=sqlite (or postgres) runs one of them only."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from private_postgres import PrivatePostgres

from trackhouse.backends import LOG_FILE, STORE_FILE
from trackhouse.model import Submission, decode_submission

BACKENDS = os.environ.get("TRACKHOUSE_TEST_BACKENDS", "sqlite,postgres").split(",")
# For the official SDKs' tests, also a cluster: 2 API processes and 2 workers on PostgreSQL.
WITH_CLUSTER = [*BACKENDS, "cluster"] if "postgres" in BACKENDS else BACKENDS

PRIVATE_KEY = "pk_0123456789abcdef0123456789abcdef01"
PUBLIC_KEY = "TrkHs1"
ADMIN_KEY = "pk_adm1n0000000000000000000000000000"
ADMIN = {"Authorization": f"Klaviyo-API-Key {ADMIN_KEY}"}  # headers of test control
NEWEST = "2026-10-15"  # what klaviyo-api 25 sends


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class StoreLock:
    _rollback: Any
    _close: Any

    def release(self) -> None:
        self._rollback()
        self._close()


# Tests of what only the embedded backend has (its files, its one-processor claim, its upgrades).
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@dataclass
class Server:
    """A running `trackhouse serve` subprocess."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    args: list[str] = field(default_factory=list)  # extra `trackhouse serve` options
    proc: subprocess.Popen | None = None
    store_url: str | None = None  # PostgreSQL; None: SQLite under data_dir

    @property
    def backend(self) -> str:
        return "sqlite" if self.store_url is None else "postgres"

    def where(self) -> list[str]:
        """The `trackhouse` options that name this server's data."""
        if self.store_url is not None:
            return ["--store", self.store_url]
        return ["--data-dir", str(self.data_dir)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trackhouse", "serve", *self.where()]
            + ["--port", str(self.port), *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                httpx.get(self.url + "/", timeout=0.5)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def query(self, sqlite_file: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple]:
        """Rows of a query on the backend's own tables (`?` placeholders on both)."""
        if self.store_url is not None:
            with psycopg.connect(self.store_url) as conn:
                cur = conn.execute(sql.replace("?", "%s"), args)
                return cur.fetchall() if cur.description else []
        conn = sqlite3.connect(self.data_dir / sqlite_file)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def lock_store(self) -> StoreLock:
        """Hold the store's writes from outside, as another writer would: processing (and a
        reset's delete) waits until `release()`. Reads go on."""
        if self.store_url is not None:
            pg = psycopg.connect(self.store_url)
            pg.execute("LOCK TABLE events IN EXCLUSIVE MODE")
            return StoreLock(pg.rollback, pg.close)
        lite = sqlite3.connect(self.data_dir / STORE_FILE, timeout=30)
        lite.execute("BEGIN IMMEDIATE")
        return StoreLock(lite.rollback, lite.close)

    def log_entries(self) -> list[Submission]:
        """Everything committed to the log so far, in the order it was given entry numbers."""
        if self.store_url is not None:
            rows = self.query("", "SELECT submission FROM log_entries ORDER BY seq")
        else:
            rows = self.query(LOG_FILE, "SELECT submission FROM entries ORDER BY seq")
        return [decode_submission(bytes(blob)) for (blob,) in rows]

    def raw_profile(self, profile_id: str) -> bytes:
        """A profile's stored document, as the store holds it."""
        (doc,) = self.query(STORE_FILE, "SELECT doc FROM profiles WHERE id = ?", (profile_id,))[0]
        return bytes(doc)

    def receipt(self, receipt_id: str) -> Submission:
        """The logged submission of a single create, by its receipt id."""
        found = [s for s in self.log_entries() if s.receipt_id == receipt_id]
        assert len(found) == 1, f"{len(found)} log entries for receipt {receipt_id}"
        return found[0]

    def settle(self, timeout: float = 60) -> None:
        """Wait (POST /admin/wait) until everything accepted so far is processed."""
        r = httpx.post(
            f"{self.url}/admin/wait?timeout={timeout}",
            headers={"Authorization": f"Klaviyo-API-Key {ADMIN_KEY}"},
            timeout=timeout + 10,
        )
        assert r.status_code == 200, r.text

    def client(self, **headers: str) -> httpx.Client:
        # Plain HTTP: verify=False only skips building an unused TLS context (~60 ms a client).
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, verify=False)


@dataclass
class Cluster(Server):
    """`serve --workers 2 --no-process` (two API processes on one port) and two
    `trackhouse process` workers, all on one PostgreSQL database."""

    workers: int = 2
    api_processes: int = 2
    worker_procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> Server:
        if "--no-process" not in self.args:
            self.args += ["--workers", str(self.api_processes), "--no-process"]
        super().start()
        while len(self.worker_procs) < self.workers:
            self.worker_procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "trackhouse", "process", *self.where()],
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return self

    def stop(self) -> None:
        for proc in self.worker_procs:
            proc.terminate()
        for proc in self.worker_procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.worker_procs.clear()
        super().stop()


def private_client(server: Server) -> httpx.Client:
    """A client for /api/* with the private key and the newest revision."""
    return server.client(
        Authorization=f"Klaviyo-API-Key {PRIVATE_KEY}",
        revision=NEWEST,
        **{"Content-Type": "application/vnd.api+json"},
    )


def make_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TRACKHOUSE_PRIVATE_KEY=PRIVATE_KEY,
        TRACKHOUSE_PUBLIC_KEY=PUBLIC_KEY,
        TRACKHOUSE_ADMIN_KEY=ADMIN_KEY,
        TRACKHOUSE_RATE_LIMITS="off",
        TRACKHOUSE_ALLOW_HTTP_WEBHOOKS="1",  # the tests' webhook receivers are on loopback
    )
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """One private PostgreSQL server for the session; each server gets a database of its own."""
    pg = PrivatePostgres().start()
    yield pg
    pg.close()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _store_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    if backend == "sqlite":
        return None
    return request.getfixturevalue("private_postgres").new_database()


def _server_class(backend: str) -> type[Server]:
    return Cluster if backend == "cluster" else Server


@pytest.fixture
def start_server(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start servers with custom settings, on the backend of the test's parameter; all are
    stopped after the test. The same `data_dir` again means the same data (a restart).
    They process in a thread unless a test says otherwise: serve's default on two cores, a
    second process, takes about a second to start (its imports) before the first event is
    processed, which every test that starts a server would wait for. That default is what
    the shared `server`, tests/test_processing_apart.py and the reset tests run."""
    started: list[Server] = []
    urls: dict[Path, str | None] = {}

    def start(*args: str, data_dir: Path | None = None, **env: str) -> Server:
        if not {"--processing", "--no-process", "--workers"} & set(args):
            args = (*args, "--processing", "thread")
        data = data_dir or tmp_path / f"data{len(started)}"
        if data not in urls:
            urls[data] = _store_url(backend, request)
        server = _server_class(backend)(
            data, make_env(**env), args=list(args), store_url=urls[data]
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, backend: str, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """One shared server per backend (rate limits off) for tests that only add data."""
    url = _store_url(backend, request)
    s = _server_class(backend)(tmp_path_factory.mktemp("shared"), make_env(), store_url=url)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    """A client for /api/* with the private key and the newest revision."""
    with private_client(server) as c:
        yield c


def event_body(
    email: str = "sarah.mason@klaviyo-demo.com", metric: str = "Viewed Product", **attributes: Any
) -> dict[str, Any]:
    """A create-event body in the current (2024-02-15 on) JSON:API shape."""
    profile_attributes = attributes.pop("profile_attributes", {"email": email})
    body = {
        "data": {
            "type": "event",
            "attributes": {
                "properties": attributes.pop("properties", {"Brand": "Kids Book"}),
                "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
                "profile": {"data": {"type": "profile", "attributes": profile_attributes}},
            },
        }
    }
    body["data"]["attributes"].update(attributes)
    return body


def bulk_body(groups: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> dict[str, Any]:
    """A bulk-create body: each group is (profile attributes, [event attributes])."""
    return {
        "data": {
            "type": "event-bulk-create-job",
            "attributes": {
                "events-bulk-create": {
                    "data": [
                        {
                            "type": "event-bulk-create",
                            "attributes": {
                                "profile": {"data": {"type": "profile", "attributes": profile}},
                                "events": {
                                    "data": [{"type": "event", "attributes": e} for e in events]
                                },
                            },
                        }
                        for profile, events in groups
                    ]
                }
            },
        }
    }


def bulk_event(metric: str = "Ordered Product", **attributes: Any) -> dict[str, Any]:
    return {
        "properties": attributes.pop("properties", {}),
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        **attributes,
    }


def single_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The one JSON:API error of a response, checked for Klaviyo's error shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/vnd.api+json")
    errors = response.json()["errors"]
    assert len(errors) == 1
    error = errors[0]
    assert {"id", "status", "code", "title", "detail", "source"} <= error.keys()
    assert error["status"] == status
    return error
