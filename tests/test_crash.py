"""Invariants 2 and 3: processing SIGKILLed at random points still gives every acknowledged
event exactly one outcome, and stores exactly the events it should."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

from conftest import PRIVATE_KEY, bulk_body, bulk_event, sqlite_only

from trackhouse.backends import LOG_FILE, STORE_FILE
from trackhouse.log.sqlite import log_head
from trackhouse.store.sqlite import SQLiteStore

REQUESTS = int(os.environ.get("TRACKHOUSE_CRASH_REQUESTS", "100"))  # × 1,000 events
GROUPS, EVENTS = 100, 10  # per request: 100 profiles × 10 events
PROFILES = REQUESTS * GROUPS // 2  # each profile appears in two requests
MIN_KILLS = 5


def load_body(request: int) -> dict:
    groups = []
    for g in range(GROUPS):
        email = f"user{(request * GROUPS + g) % PROFILES}@klaviyo-demo.com"
        # Events 8 and 9 repeat the unique_id and metric of events 0 and 1: 2 duplicates in 10.
        events = [
            bulk_event(
                "Viewed" if i % 2 == 0 else "Ordered",
                unique_id=f"{request}-{i % 8}",
                properties={"i": i, "padding": "x" * 200},
            )
            for i in range(EVENTS)
        ]
        groups.append(({"email": email}, events))
    return bulk_body(groups)


def position(data_dir) -> int:
    conn = sqlite3.connect(data_dir / STORE_FILE)
    try:
        row = conn.execute("SELECT seq FROM positions WHERE name = 'processor'").fetchone()
    except sqlite3.OperationalError:  # the processor has not created its tables yet
        return 0
    finally:
        conn.close()
    return row[0] if row else 0


@sqlite_only  # the cluster's faults: tests/test_cluster_faults.py
def test_processing_killed_at_random_points_stores_each_acknowledged_event_once(start_server):
    server = start_server("--no-process")
    acknowledged = 0
    headers = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": "2024-10-15"}
    with server.client(**headers) as api:
        for request in range(REQUESTS):
            r = api.post("/api/event-bulk-create-jobs", json=load_body(request))
            assert r.status_code == 202, r.text
            acknowledged += r.json()["data"]["attributes"]["total_count"]
    server.stop()
    data = server.data_dir
    head = log_head(data / LOG_FILE)

    rng = random.Random(int(os.environ.get("TRACKHOUSE_CRASH_SEED", time.time_ns())))
    kills = 0
    positions = []
    command = [sys.executable, "-m", "trackhouse", "process", "--data-dir", str(data)]
    while position(data) < head:
        proc = subprocess.Popen(command)
        if kills < MIN_KILLS * 4:  # after that, let it finish
            # Random points: mostly mid-batch once processing moves (however fast this machine
            # is), sometimes during start-up.
            if rng.random() < 0.8:
                started = position(data)
                deadline = time.monotonic() + 30
                while position(data) == started and time.monotonic() < deadline:
                    time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            positions.append(position(data))
            continue
        while position(data) < head and proc.poll() is None:
            time.sleep(0.05)
        proc.terminate()
        proc.wait(timeout=30)

    store = SQLiteStore(data / STORE_FILE)
    outcomes = store.outcome_counts()
    store.close()
    with_outcome = sum(outcomes.values())
    conn = sqlite3.connect(data / STORE_FILE)
    (entries,) = conn.execute("SELECT count(*) FROM outcomes").fetchone()  # one row per entry
    (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
    (profiles,) = conn.execute("SELECT count(*) FROM profiles").fetchone()
    conn.close()
    expected_stored = acknowledged * 8 // 10
    print(
        f"\ncrash test: {kills} SIGKILLs at positions {positions} of {head};"
        f" acknowledged {acknowledged}, with an outcome {with_outcome},"
        f" stored {outcomes.get('stored', 0)} (expected {expected_stored}),"
        f" deduplicated {outcomes.get('deduplicated', 0)}, rejected {outcomes.get('rejected', 0)},"
        f" events table {events}, profiles {profiles} (expected {PROFILES})"
    )
    assert kills >= MIN_KILLS
    assert entries == head  # one outcome row per log entry (seq is its primary key)…
    assert with_outcome == acknowledged  # …holding one outcome per event
    assert outcomes == {
        "stored": expected_stored,
        "deduplicated": acknowledged - expected_stored,
        "rejected": 0,
    }
    assert events == expected_stored
    assert profiles == PROFILES
