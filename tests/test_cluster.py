"""A cluster on PostgreSQL: several API processes and workers sharing one database.

What one process could assume, several must get from the database: identity exact when the
same person arrives through two workers at once, every entry processed once whichever worker
holds its partition (and when one dies), `/admin/wait` and `/admin/reset` covering what every
API process accepted, and an account's rate limit held across API processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import (
    ADMIN,
    BACKENDS,
    NEWEST,
    PRIVATE_KEY,
    Cluster,
    bulk_body,
    bulk_event,
    event_body,
    make_env,
    private_client,
)

from trackhouse.log.postgres import partition_of
from trackhouse.model import ProfileChange, Submission

pytestmark = pytest.mark.skipif("postgres" not in BACKENDS, reason="PostgreSQL backend not run")
PARTITIONS = 16


@pytest.fixture
def cluster(tmp_path: Path, private_postgres):
    """Start a cluster (API processes first, workers added later if asked); stop it after."""
    started: list[Cluster] = []

    def start(api: int = 1, workers: int = 2, **env: str) -> Cluster:
        env.setdefault("TRACKHOUSE_LEASE_SECONDS", "2")
        c = Cluster(
            tmp_path / f"c{len(started)}",
            make_env(**env),
            store_url=private_postgres.new_database(),
            workers=workers,
            api_processes=api,
        )
        started.append(c)
        return c.start()  # type: ignore[return-value]

    yield start
    for c in started:
        c.stop()


def add_worker(c: Cluster) -> subprocess.Popen:
    c.data_dir.mkdir(parents=True, exist_ok=True)
    log = open(c.data_dir / f"worker{len(c.worker_procs)}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "trackhouse", "process", *c.where()],
        env=c.env,
        stdout=log,
        stderr=log,
    )
    c.worker_procs.append(proc)
    return proc


def owned(c: Cluster) -> list[int]:
    """How many partitions each worker holds."""
    rows = c.query(
        "", "SELECT count(*) FROM partition_owners WHERE owner IS NOT NULL GROUP BY owner"
    )
    return sorted(n for (n,) in rows)


def outcome_rows(c: Cluster) -> int:
    return c.query("", "SELECT count(*) FROM outcomes")[0][0]


def test_one_account_is_processed_by_every_worker_and_each_entry_once(cluster):
    c = cluster(workers=2)
    deadline = time.monotonic() + 15
    while owned(c) != [8, 8] and time.monotonic() < deadline:  # the first took all, then shared
        time.sleep(0.1)
    assert owned(c) == [8, 8]
    with private_client(c) as api:
        for j in range(10):
            body = bulk_body(
                [({"email": f"w{j}.{g}@example.com"}, [bulk_event()]) for g in range(100)]
            )
            assert api.post("/api/event-bulk-create-jobs", json=body).status_code == 202
    c.settle()
    assert owned(c) == [8, 8]  # the one account's entries were in both workers' partitions
    parts = c.query("", "SELECT count(DISTINCT partition) FROM log_entries")
    assert parts == [(PARTITIONS,)]
    assert outcome_rows(c) == 1000
    assert c.query("", "SELECT count(*), count(DISTINCT seq) FROM outcomes") == [(1000, 1000)]
    assert c.query("", "SELECT count(*) FROM events") == [(1000,)]


def test_the_same_new_person_through_two_workers_at_once_is_one_profile(cluster):
    """Per person, {phone} in a partition of one worker and {email, phone} in a partition of
    the other, both held back until every entry is in the log and then let go at once: two
    big batches race over the same new people. Each person ends as one profile holding both
    identifiers (a claim that lost the race is redone and finds the winner's profile)."""
    c = cluster(workers=2)
    deadline = time.monotonic() + 15
    while owned(c) != [8, 8] and time.monotonic() < deadline:
        time.sleep(0.1)
    owners = dict(c.query("", "SELECT partition, owner FROM partition_owners"))
    x = 0
    y = next(p for p in range(PARTITIONS) if owners[p] != owners[x])
    c.query("", "INSERT INTO holds SELECT 'test', p, 0, 1e12 FROM unnest(?::int[]) p", ([x, y],))
    people = []
    for n in range(200_000):
        email, phone = f"race{n}@example.com", f"+1415{2000000 + n:07d}"
        a = Submission(account_id="TrkHs1", received_at=0, source="api",
                       profile=ProfileChange(phone_number=phone))  # fmt: skip
        b = Submission(account_id="TrkHs1", received_at=0, source="api",
                       profile=ProfileChange(email=email, phone_number=phone))  # fmt: skip
        if partition_of(a, PARTITIONS) == x and partition_of(b, PARTITIONS) == y:
            people.append((email, phone))
            if len(people) == 100:
                break
    assert len(people) == 100
    with c.client(**{"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": NEWEST}) as api:
        for email, phone in people:
            both = {"email": email, "phone_number": phone}
            for n, attributes in enumerate(({"phone_number": phone}, both)):
                body = event_body(profile_attributes=attributes, metric="Race", unique_id=str(n))
                assert api.post("/api/events", json=body).status_code == 202
    c.query("", "DELETE FROM holds WHERE reset_id = 'test' RETURNING 1")  # go
    c.settle()
    rows = c.query(
        "",
        "SELECT kind, convert_from(value, 'UTF8'), profile_id FROM identifiers"
        " WHERE kind IN ('email', 'phone_number')",
    )
    owner = {(kind, value): pid for kind, value, pid in rows}
    forked = [p for p in people if owner.get(("email", p[0])) != owner.get(("phone_number", p[1]))]
    assert forked == []
    assert c.query("", "SELECT count(*) FROM profiles") == [(len(people),)]
    assert c.query("", "SELECT count(*) FROM events") == [(2 * len(people),)]


def test_wait_and_reset_cover_what_every_api_process_accepted(cluster):
    c = cluster(api=2, workers=2)
    receipts = []
    for n in range(40):  # a new connection each: the kernel spreads them over both processes
        with private_client(c) as api:
            r = api.post("/api/events", json=event_body(email=f"spread{n}@example.com"))
            assert r.status_code == 202
            receipts.append(r.headers["Trackhouse-Receipt"])
    c.settle()
    with private_client(c) as api:
        statuses = Counter(
            api.get(f"/api/event-receipts/{r}").json()["data"]["attributes"]["status"]
            for r in receipts
        )
        assert statuses == {"processed": 40}
        reset = httpx.post(f"{c.url}/admin/reset?timeout=30", headers=ADMIN, timeout=60)
        assert reset.status_code == 200, reset.text
        assert reset.json()["data"]["attributes"]["events"] == 40
        assert all(api.get(f"/api/event-receipts/{r}").status_code == 404 for r in receipts)
        assert api.get("/api/events").json()["data"] == []


def test_a_killed_workers_partitions_are_taken_over_and_nothing_is_applied_twice(cluster):
    c = cluster(workers=0)
    with private_client(c) as api:
        for j in range(30):
            body = bulk_body(
                [({"email": f"k{j}.{g}@example.com"}, [bulk_event()]) for g in range(100)]
            )
            assert api.post("/api/event-bulk-create-jobs", json=body).status_code == 202
    victim, survivor = add_worker(c), add_worker(c)
    deadline = time.monotonic() + 30
    while outcome_rows(c) < 300 and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)  # mid-run, holding half the partitions
    victim.wait()
    c.settle(timeout=60)  # the survivor takes them over once their leases (2 s) run out
    assert survivor.poll() is None
    assert c.query("", "SELECT count(*), count(DISTINCT seq) FROM outcomes") == [(3000, 3000)]
    assert c.query("", "SELECT count(*) FROM events") == [(3000,)]
    heads = dict(c.query("", "SELECT partition, head FROM log_heads"))
    assert dict(c.query("", "SELECT partition, position FROM positions")) == heads


def test_an_accounts_rate_limit_holds_within_10_percent_across_two_api_processes(cluster):
    """40 creates a second for the account, 2 API processes, clients spreading their
    connections over both. Counted by the second each accepted request was received in (the
    server's clock, from the log): no whole second admits more than 44 (the limit + 10 %),
    and every second in which the clients offered well over 40 admits at least 36."""
    c = cluster(api=2, workers=1, TRACKHOUSE_RATE_LIMITS="create=40/s,100000/m")
    time.sleep(2.5)  # both API processes have seen each other
    offered: Counter[int] = Counter()
    lock = threading.Lock()
    stop = time.time() + 4.2

    def client(n: int) -> None:
        sent = 0
        while time.time() < stop:
            with private_client(c) as api:  # a new connection: either process
                for _ in range(5):
                    sent += 1
                    body = event_body(email="limited@example.com", unique_id=f"{n}-{sent}")
                    at = int(time.time())
                    api.post("/api/events", json=body)
                    with lock:
                        offered[at] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = Counter(
        int(second) for (second,) in c.query("", "SELECT floor(received_at) FROM log_entries")
    )
    seconds = sorted(admitted)[1:-1]  # whole seconds only
    assert len(seconds) >= 3
    assert all(admitted[s] <= 44 for s in seconds), dict(admitted)
    busy = [s for s in seconds if offered[s] >= 60]
    assert busy and all(admitted[s] >= 36 for s in busy), (dict(admitted), dict(offered))


def test_retention_deletes_processed_entries_only_and_receipts_and_jobs_stay_readable(cluster):
    c = cluster(workers=1, TRACKHOUSE_LOG_RETENTION="0")
    c.query("", "INSERT INTO holds SELECT 'test', p, 0, 1e12 FROM generate_series(0, 7) p")
    with private_client(c) as api:
        receipts = []
        for n in range(40):
            r = api.post("/api/events", json=event_body(email=f"kept{n}@example.com"))
            receipts.append(r.headers["Trackhouse-Receipt"])
        body = bulk_body([({"email": f"job{g}@example.com"}, [bulk_event()]) for g in range(20)])
        job = api.post("/api/event-bulk-create-jobs", json=body).json()["data"]["id"]
        held = c.query("", "SELECT count(*) FROM log_entries WHERE partition < 8")[0][0]
        assert held > 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and c.query(
            "", "SELECT count(*) FROM log_entries WHERE partition >= 8"
        ) != [(0,)]:
            time.sleep(0.2)
        # Processed entries are gone; the held (unprocessed) ones are all still there.
        assert c.query("", "SELECT count(*) FROM log_entries WHERE partition >= 8") == [(0,)]
        assert c.query("", "SELECT count(*) FROM log_entries WHERE partition < 8") == [(held,)]
        c.query("", "DELETE FROM holds WHERE reset_id = 'test' RETURNING 1")
        c.settle()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and c.query("", "SELECT count(*) FROM log_entries") != [
            (0,)
        ]:
            time.sleep(0.2)
        assert c.query("", "SELECT count(*) FROM log_entries") == [(0,)]
        for receipt in receipts:
            attributes = api.get(f"/api/event-receipts/{receipt}").json()["data"]["attributes"]
            assert attributes["status"] == "processed"
            assert [o["outcome"] for o in attributes["outcomes"]] == ["stored"]
        status = api.get(f"/api/event-bulk-create-jobs/{job}").json()["data"]["attributes"]
        assert status["status"] == "complete" and status["completed_count"] == 20, status
