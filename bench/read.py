"""Read benchmark: GET /api/events latency over a store of 10,000,000 events, 1,000,000 profiles.

    .venv/bin/python bench/read.py [--events 10000000] [--profiles 1000000] [--requests 2000]

Builds (once; reused when --dir already holds it) a store in trackhouse's own SQLite schema,
written directly rather than through the processor so that it takes minutes, not an hour: the
read path is what is measured. Then serves it with `trackhouse serve --no-process
--no-rate-limits` pinned to core 0, and from core 1 sends, one at a time:

- baseline: a request the server answers without touching the store (a 404);
- by profile: GET /api/events?filter=equals(profile_id,"…") for random profiles (~10 events);
- by metric and time: GET /api/events?filter=equals(metric_id,"…"),greater-or-equal(datetime,…),
  less-than(datetime,…)&page[size]=200 over random windows holding at least 200 events.

Reports p50 / p99 of each, and each as a ratio to the baseline's.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec

from trackhouse.backends import LOG_FILE, STORE_FILE
from trackhouse.process.profiles import Profile, encode_profile
from trackhouse.store.sqlite import SCHEMA

ACCOUNT = "BENCH1"
PRIVATE_KEY = "pk_bench0000000000000000000000000000"
START = 1_600_000_000
SPAN = 365 * 24 * 3600  # events spread over a year
EVENT_INDEXES = ("events_dedup", "events_time", "events_profile_time", "events_metric_time")


def build(path: Path, events: int, profiles: int, metrics: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(SCHEMA)
    for index in EVENT_INDEXES:  # build the indexes once at the end: much faster
        conn.execute(f"DROP INDEX {index}")
    now = "2026-11-23T00:00:00+00:00"
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO metrics VALUES (?, ?, ?, 'api', ?)",
        [(f"M{m:05d}", ACCOUNT, f"Metric {m}", now) for m in range(metrics)],
    )
    batch = []
    for p in range(profiles):
        pid = f"01P{p:023d}"
        email = f"user{p}@klaviyo-demo.com"
        doc = Profile(id=pid, account_id=ACCOUNT, identifiers={"email": email},
                      attributes={"first_name": "Sarah"}, created=now, updated=now)  # fmt: skip
        batch.append((pid, doc, email))
        if len(batch) == 50_000 or p == profiles - 1:
            conn.executemany(
                "INSERT INTO profiles VALUES (?, ?, ?, ?, ?, NULL)",
                [(pid, ACCOUNT, encode_profile(doc), now, now) for pid, doc, _ in batch],
            )
            conn.executemany(
                "INSERT INTO identifiers VALUES (?, 'email', ?, ?)",
                [(ACCOUNT, email, pid) for pid, _, email in batch],
            )
            batch = []
    conn.execute("COMMIT")
    rng = random.Random(7)
    encode = msgspec.json.Encoder().encode
    t0 = time.perf_counter()
    for start in range(0, events, 100_000):
        rows = []
        for i in range(start, min(events, start + 100_000)):
            properties = {"ProductID": i, "ProductName": "Winnie the Pooh", "Brand": "Kids Book",
                          "Categories": ["Books", "Children"], "Price": 9.99}  # fmt: skip
            rows.append((
                i + 1, ACCOUNT, f"01P{rng.randrange(profiles):023d}",
                f"M{rng.randrange(metrics):05d}",
                START + i * SPAN // events, str(i), 9.99, "USD", 0, encode(properties), 0.0,
            ))  # fmt: skip
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        conn.execute("COMMIT")
        print(f"\r  {start + len(rows):,} events ({time.perf_counter() - t0:.0f} s)", end="")
    print("\n  building indexes…")
    conn.executescript(SCHEMA)
    conn.execute("ANALYZE")
    conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def measure(client: httpx.Client, urls: list[str], expect: int) -> list[float]:
    times = []
    for url in urls:
        started = time.perf_counter()
        r = client.get(url)
        times.append(time.perf_counter() - started)
        assert r.status_code == expect, (url, r.status_code, r.text[:300])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--metrics", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--dir", type=Path, default=Path(tempfile.gettempdir()) / "trackhouse-read-bench"
    )
    args = parser.parse_args()
    data = args.dir / f"{args.events}-{args.profiles}-{args.metrics}"
    if not (data / "ready").exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        print(f"building {args.events:,} events, {args.profiles:,} profiles in {data}")
        build(data / STORE_FILE, args.events, args.profiles, args.metrics)
        sqlite3.connect(data / LOG_FILE).close()
        (data / "ready").touch()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TRACKHOUSE_PUBLIC_KEY=ACCOUNT, TRACKHOUSE_PRIVATE_KEY=PRIVATE_KEY)
    server = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "trackhouse", "serve", "--data-dir", str(data),
         "--port", str(port), "--no-process", "--no-rate-limits"],
        env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": "2026-10-15"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for _ in range(100):
                try:
                    client.get("/nope")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            rng = random.Random(11)
            n = args.requests
            window = max(1, 300 * SPAN * args.metrics // args.events)  # ~300 events a window
            by_profile = [
                f'/api/events?filter=equals(profile_id,"01P{rng.randrange(args.profiles):023d}")'
                for _ in range(n)
            ]
            by_metric = []
            for _ in range(n):
                start = START + rng.randrange(SPAN - window)
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
                until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + window))
                by_metric.append(
                    f'/api/events?filter=equals(metric_id,"M{rng.randrange(args.metrics):05d}"),'
                    f"greater-or-equal(datetime,{since}),less-than(datetime,{until})&page[size]=200"
                )
            for warm in (["/nope"] * 100, by_profile[:100], by_metric[:100]):
                measure(client, warm, 404 if warm[0] == "/nope" else 200)
            page = client.get(by_metric[0]).json()
            assert len(page["data"]) == 200, len(page["data"])
            results = {
                "baseline (404, no store)": measure(client, ["/nope"] * n, 404),
                "by profile_id": measure(client, by_profile, 200),
                "by metric_id + datetime range, 200 per page": measure(client, by_metric, 200),
            }
    finally:
        server.terminate()
        server.wait()
    print(f"# read benchmark, {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()},"
          f" {os.cpu_count()} cores (server on core 0, client on core 1);"
          f" Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")  # fmt: skip
    print(f"# {args.events:,} events, {args.profiles:,} profiles, {args.metrics} metrics;"
          f" {args.requests} requests each, one at a time")  # fmt: skip
    base_p50 = statistics.median(results["baseline (404, no store)"])
    for name, times in results.items():
        p50, p99 = statistics.median(times) * 1000, percentile(times, 0.99) * 1000
        ratio = p50 / 1000 / base_p50
        print(f"{name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms (p50 {ratio:.1f}× baseline)")


if __name__ == "__main__":
    main()
