"""Faults across hosts: PostgreSQL, two API processes and two workers, each in a network
namespace of its own (veth into one bridge), under load from several clients, with at least
20 faults at random moments — SIGKILL of an API process or a worker, `pg_ctl -m immediate` of
PostgreSQL, a worker's or an API host's link cut and restored. Afterwards: every acknowledged
event is stored exactly once, every logged entry has its outcome (nothing half-applied), and
no person has two profiles.

Needs root and `ip netns` (iproute2); skipped where either is missing.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
from conftest import ADMIN_KEY, BACKENDS, NEWEST, PRIVATE_KEY, event_body, make_env
from private_postgres import PrivatePostgres

pytestmark = pytest.mark.skipif(
    "postgres" not in BACKENDS or os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs the PostgreSQL backend, root and ip netns",
)
SEED = int(os.environ.get("TRACKHOUSE_FAULT_SEED", random.randrange(1 << 30)))
FAULTS = int(os.environ.get("TRACKHOUSE_FAULTS", "24"))
SUBNET = "10.77.{}.{}"
HEADERS = {
    "Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}",
    "revision": NEWEST,
    "Content-Type": "application/vnd.api+json",
}


def sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


@dataclass
class Hosts:
    """Network namespaces on one bridge (in a namespace of its own); the test's own
    namespace joins as the clients' host."""

    tag: str
    octet: int
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.switch = f"thsw{self.tag}"
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        self._host_n = 1
        self.client = self._plug(None, "c")  # the root namespace: where the clients run

    def address(self, n: int) -> str:
        return SUBNET.format(self.octet, n)

    def _plug(self, netns: str | None, short: str) -> str:
        n = self._host_n
        self._host_n += 1
        outer, inner = f"th{self.tag}{short}o", f"th{self.tag}{short}i"
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", outer, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", outer, "master", "br0", "up")
        prefix = [] if netns is None else ["ip", "netns", "exec", netns]
        if netns is not None:
            sh("ip", "link", "set", inner, "netns", netns)
            sh(*prefix, "ip", "link", "set", "lo", "up")
        sh(*prefix, "ip", "addr", "add", f"{self.address(n)}/24", "dev", inner)
        sh(*prefix, "ip", "link", "set", inner, "up")
        return self.address(n)

    def add(self, short: str) -> tuple[str, str]:
        """A new host: its namespace and address."""
        name = f"th{self.tag}{short}"
        sh("ip", "netns", "add", name)
        self.names.append(name)
        return name, self._plug(name, short)

    def cut(self, short: str, down: bool) -> None:
        sh(
            "ip",
            "-n",
            self.switch,
            "link",
            "set",
            f"th{self.tag}{short}o",
            "down" if down else "up",
        )

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("ip", "link", "del", f"th{self.tag}co")
        for name in [*self.names, self.switch]:
            with contextlib.suppress(subprocess.CalledProcessError):
                sh("ip", "netns", "del", name)


@dataclass
class Proc:
    netns: str
    command: list[str]
    env: dict[str, str]
    log: str
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.log, "a")  # noqa: SIM115 (the child holds it)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *self.command],
            env=self.env,
            stdout=out,
            stderr=out,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Tally:
    sent: int = 0
    acknowledged: set[str] = field(default_factory=set)
    statuses: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def person(n: int) -> dict[str, str]:
    """One of 40 people, sent by email alone or by external id and email: the two land in
    different partitions (the first identifier picks it), so two workers may create the
    same new person at once, and still one profile must result."""
    p = n % 40
    email = f"fault{p}@example.com"
    return {"email": email} if (n // 40) % 2 else {"external_id": f"ext-{p}", "email": email}


def load(urls: list[str], client: int, stop: threading.Event, tally: Tally) -> None:
    n = 0
    while not stop.is_set():
        url = urls[n % len(urls)]
        uid = f"c{client}-{n}"
        body = event_body(profile_attributes=person(n), metric="Fault", unique_id=uid)
        with tally.lock:
            tally.sent += 1
        try:
            r = httpx.post(f"{url}/api/events", json=body, headers=HEADERS, timeout=4)
            status = r.status_code
        except httpx.HTTPError:
            status = 0  # no answer: not acknowledged (it may or may not be stored)
        with tally.lock:
            tally.statuses[status] += 1
            if status == 202:
                tally.acknowledged.add(uid)
        if status != 202:
            time.sleep(0.05)
        n += 1


def test_faults_across_hosts_lose_nothing_acknowledged_and_fork_no_one(tmp_path):
    rng = random.Random(SEED)
    hosts = Hosts(tag=f"{os.getpid() % 1000}", octet=rng.randrange(10, 250))
    procs: dict[str, Proc] = {}
    pg = None
    try:
        db_ns, db_ip = hosts.add("db")
        pg = PrivatePostgres(netns=db_ns, host=db_ip).start()
        url = pg.new_database()
        env = make_env(TRACKHOUSE_LEASE_SECONDS="3")
        serve = [sys.executable, "-m", "trackhouse", "serve", "--store", url, "--no-process"]
        process = [sys.executable, "-m", "trackhouse", "process", "--store", url]
        subprocess.run([*serve[:3], "migrate", "--store", url], check=True, env=env)
        api_urls = []
        for short in ("a1", "a2"):
            ns, ip = hosts.add(short)
            procs[short] = Proc(
                ns, [*serve, "--host", ip, "--port", "8080"], env, str(tmp_path / f"{short}.log")
            )
            api_urls.append(f"http://{ip}:8080")
        for short in ("w1", "w2"):
            ns, _ = hosts.add(short)
            procs[short] = Proc(ns, process, env, str(tmp_path / f"{short}.log"))
        for p in procs.values():
            p.start()
        for api_url in api_urls:
            _wait_up(api_url)

        tally = Tally()
        stop = threading.Event()
        clients = [threading.Thread(target=load, args=(api_urls, c, stop, tally)) for c in range(6)]
        for t in clients:
            t.start()
        faults: Counter = Counter()
        restarts = [0]
        try:
            for _ in range(FAULTS):
                time.sleep(rng.uniform(0.3, 1.5))
                for p in procs.values():  # as a supervisor (systemd's Restart=) would
                    if p.proc is not None and p.proc.poll() is not None:
                        restarts[0] += 1
                        p.start()
                kind = rng.choice(
                    ["kill api", "kill worker", "crash postgres", "cut worker", "cut api"]
                )
                faults[kind] += 1
                if kind == "kill api" or kind == "kill worker":
                    p = procs[rng.choice(["a1", "a2"] if kind == "kill api" else ["w1", "w2"])]
                    p.kill()
                    time.sleep(rng.uniform(0.1, 1.0))
                    p.start()
                elif kind == "crash postgres":
                    pg.crash()
                    time.sleep(rng.uniform(0.1, 1.0))
                    pg.start()
                else:
                    short = rng.choice(["w1", "w2"] if kind == "cut worker" else ["a1", "a2"])
                    hosts.cut(short, down=True)
                    time.sleep(rng.uniform(0.5, 4.0))
                    hosts.cut(short, down=False)
        finally:
            stop.set()
            for t in clients:
                t.join()
        for short in procs:
            hosts.cut(short, down=False)
        for p in procs.values():
            if p.proc is not None and p.proc.poll() is not None:
                restarts[0] += 1
                p.start()
        _settle(api_urls)

        rows = _query(
            url,
            "SELECT convert_from(dedup_key, 'UTF8'), count(*) FROM events GROUP BY dedup_key",
        )
        stored = dict(rows)
        lost = tally.acknowledged - set(stored)
        duplicated = [k for k, n in stored.items() if n > 1]
        owners = {
            (kind, value): pid
            for kind, value, pid in _query(
                url, "SELECT kind, convert_from(value, 'UTF8'), profile_id FROM identifiers"
            )
        }
        # A person (an email) with two profiles, or whose external id is on another one.
        emails = {v for (k, v) in owners if k == "email"}
        (profiles,) = _query(url, "SELECT count(*) FROM profiles")[0]
        forked = [
            p
            for p in range(40)
            if ("external_id", f"ext-{p}") in owners
            and owners[("external_id", f"ext-{p}")]
            != owners.get(("email", f"fault{p}@example.com"))
        ] + ["extra profiles"] * (profiles - len(emails))
        (entries,) = _query(url, "SELECT count(*) FROM log_entries")[0]
        (outcomes,) = _query(url, "SELECT count(*) FROM outcomes")[0]
        (unapplied,) = _query(
            url,
            "SELECT count(*) FROM log_entries e WHERE NOT EXISTS"
            " (SELECT 1 FROM outcomes o WHERE o.seq = e.seq)",
        )[0]
        print(
            f"\nfaults across hosts (seed {SEED}): {sum(faults.values())} faults {dict(faults)};"
            f" sent {tally.sent}, acknowledged {len(tally.acknowledged)}, stored {len(stored)},"
            f" lost {len(lost)}, duplicated {len(duplicated)}, forked profiles {len(forked)};"
            f" log entries {entries}, outcomes {outcomes}, answers {dict(tally.statuses)};"
            f" processes that exited and were started again {restarts[0]}"
        )
        assert sum(faults.values()) >= 20
        assert len(tally.acknowledged) > 100
        assert lost == set()
        assert duplicated == []
        assert forked == []
        assert unapplied == 0 and entries == outcomes
    finally:
        for p in procs.values():
            p.stop()
        if pg is not None:
            pg.close()
        hosts.close()


def _query(url: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url + "/", timeout=1)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def _settle(urls: list[str]) -> None:
    """Wait for processing of everything logged, retrying while the cluster recovers."""
    deadline = time.monotonic() + 120
    for n in range(10**6):
        url = urls[n % len(urls)]
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.post(
                f"{url}/admin/wait?timeout=20",
                headers={"Authorization": f"Klaviyo-API-Key {ADMIN_KEY}"},
                timeout=30,
            )
            if r.status_code == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError("processing did not catch up within 120 s of the last fault")
        time.sleep(1)
