"""Read benchmark: GET /api/events latency over a store of 10,000,000 events, 1,000,000 profiles,
on SQLite and on PostgreSQL in the same run.

    .venv/bin/python bench/read.py [--events 10000000] [--profiles 1000000] [--requests 2000]
                                   [--backend both|sqlite|postgres]

Builds (once each; reused when --dir already holds it) a store in each backend's own schema
with the same rows, written directly rather than through the processor so that it takes
minutes, not an hour: the read path is what is measured. SQLite: a data directory. PostgreSQL:
a private server (tests/private_postgres.py) whose cluster is kept under --dir, loaded with
COPY, indexes built afterwards, ANALYZEd and VACUUMed; one run for each `--pg-shared-buffers`.
Before it is measured, each store is read into memory as a server's working set would be after
a while (this machine's page cache drops files it has not read lately): SQLite's file read
through once, PostgreSQL's events table and the two indexes the reads use loaded into its
shared buffers with pg_prewarm. Then serves each with `trackhouse serve
--no-process --no-rate-limits` (and `--store` for PostgreSQL) pinned to core 0, PostgreSQL's
server pinned to core 0 too, and from core 1 sends, one at a time:

- baseline: a request the server answers without touching the store (a 404);
- by profile: GET /api/events?filter=equals(profile_id,"…") for random profiles (~10 events);
- by metric and time: GET /api/events?filter=equals(metric_id,"…"),greater-or-equal(datetime,…),
  less-than(datetime,…)&page[size]=200 over random windows holding at least 200 events.

The same requests on both backends. Reports p50 / p99 of each, each as a ratio to the same
backend's baseline, and PostgreSQL's p99 as a ratio to SQLite's.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import psycopg

from trackhouse.backends import LOG_FILE, STORE_FILE
from trackhouse.process.profiles import Profile, encode_profile
from trackhouse.store.postgres import migrate
from trackhouse.store.postgres.schema import SCHEMA as PG_SCHEMA
from trackhouse.store.sqlite import SCHEMA

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from private_postgres import PrivatePostgres

ACCOUNT = "BENCH1"
PRIVATE_KEY = "pk_bench0000000000000000000000000000"
START = 1_600_000_000
SPAN = 365 * 24 * 3600  # events spread over a year
EVENT_INDEXES = ("events_dedup", "events_time", "events_profile_time", "events_metric_time")
NOW = "2026-11-23T00:00:00+00:00"


def profile_rows(profiles: int) -> Iterator[tuple[str, bytes, str]]:
    """(profile id, encoded document, email) of every profile."""
    for p in range(profiles):
        pid = f"01P{p:023d}"
        email = f"user{p}@klaviyo-demo.com"
        doc = Profile(id=pid, account_id=ACCOUNT, identifiers={"email": email},
                      attributes={"first_name": "Sarah"}, created=NOW, updated=NOW)  # fmt: skip
        yield pid, encode_profile(doc), email


def event_rows(events: int, profiles: int, metrics: int) -> Iterator[tuple]:
    """Every event, as both schemas' events columns in order: number, account, profile,
    metric, time, dedup key, value, currency, backfill, properties (JSON), received at."""
    rng = random.Random(7)
    encode = msgspec.json.Encoder().encode
    for i in range(events):
        properties = {"ProductID": i, "ProductName": "Winnie the Pooh", "Brand": "Kids Book",
                      "Categories": ["Books", "Children"], "Price": 9.99}  # fmt: skip
        yield (
            i + 1, ACCOUNT, f"01P{rng.randrange(profiles):023d}", f"M{rng.randrange(metrics):05d}",
            START + i * SPAN // events, str(i), 9.99, "USD", 0, encode(properties), 0.0,
        )  # fmt: skip


def progress(done: int, started: float) -> None:
    print(f"\r  {done:,} events ({time.perf_counter() - started:.0f} s)", end="")


def build_sqlite(path: Path, events: int, profiles: int, metrics: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(SCHEMA)
    for index in EVENT_INDEXES:  # build the indexes once at the end: much faster
        conn.execute(f"DROP INDEX {index}")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO metrics VALUES (?, ?, ?, 'api', ?)",
        [(f"M{m:05d}", ACCOUNT, f"Metric {m}", NOW) for m in range(metrics)],
    )
    conn.executemany(
        "INSERT INTO profiles VALUES (?, ?, ?, ?, ?, NULL)",
        ((pid, ACCOUNT, doc, NOW, NOW) for pid, doc, _ in profile_rows(profiles)),
    )
    conn.executemany(
        "INSERT INTO identifiers VALUES (?, 'email', ?, ?)",
        ((ACCOUNT, email, pid) for pid, _, email in profile_rows(profiles)),
    )
    conn.execute("COMMIT")
    t0 = time.perf_counter()
    rows = event_rows(events, profiles, metrics)
    done = 0
    while batch := [row for _, row in zip(range(100_000), rows, strict=False)]:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)", batch)
        conn.execute("COMMIT")
        done += len(batch)
        progress(done, t0)
    print("\n  building indexes…")
    conn.executescript(SCHEMA)
    conn.execute("ANALYZE")
    conn.close()


def build_postgres(url: str, events: int, profiles: int, metrics: int) -> None:
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        # Indexes and the dedup key's constraint are built once at the end: much faster.
        constraint = "events_account_id_profile_id_metric_id_dedup_key_key"
        conn.execute(f"ALTER TABLE events DROP CONSTRAINT {constraint}")
        for index in ("events_time", "events_profile_time", "events_metric_time"):
            conn.execute(f"DROP INDEX {index}")
        with conn.cursor() as cur:
            with cur.copy("COPY metrics FROM STDIN") as copy:
                for m in range(metrics):
                    copy.write_row((f"M{m:05d}", ACCOUNT, f"Metric {m}".encode(), b"api", NOW))
            with cur.copy("COPY profiles FROM STDIN") as copy:
                for pid, doc, _ in profile_rows(profiles):
                    copy.write_row((pid, ACCOUNT, doc, NOW, NOW, None, 1))
            with cur.copy("COPY identifiers FROM STDIN") as copy:
                for pid, _, email in profile_rows(profiles):
                    copy.write_row((ACCOUNT, "email", email.encode(), pid))
            t0 = time.perf_counter()
            with cur.copy("COPY events FROM STDIN") as copy:
                for done, row in enumerate(event_rows(events, profiles, metrics), 1):
                    n, a, p, m, t, key, v, currency, backfill, props, r = row
                    copy.write_row((n, a, p, m, t, key.encode(), v, currency.encode(),
                                    bool(backfill), props, r))  # fmt: skip
                    if done % 100_000 == 0:
                        progress(done, t0)
        print("\n  building indexes…")
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(
            f"ALTER TABLE events ADD CONSTRAINT {constraint}"
            " UNIQUE (account_id, profile_id, metric_id, dedup_key)"
        )
        conn.execute("SET client_min_messages = warning")  # "already exists"
        conn.execute(PG_SCHEMA)  # the dropped indexes, built now
        conn.execute("VACUUM (ANALYZE) events")
        conn.execute("VACUUM (ANALYZE)")


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


def requests(args: argparse.Namespace) -> dict[str, list[str]]:
    """The requests of each kind, the same for every backend."""
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
    return {
        "baseline (404, no store)": ["/nope"] * n,
        "by profile_id": by_profile,
        "by metric_id + datetime range, 200 per page": by_metric,
    }


def serve_and_measure(
    store: list[str], kinds: dict[str, list[str]], page_rows: int = 200
) -> dict[str, list[float]]:
    """Serve a store (`--data-dir D` or `--store URL`) on core 0; each kind's latencies. The
    third kind's first answer must hold `page_rows` resources (a full page)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TRACKHOUSE_PUBLIC_KEY=ACCOUNT, TRACKHOUSE_PRIVATE_KEY=PRIVATE_KEY)
    server = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "trackhouse", "serve", *store,
         "--port", str(port), "--no-process", "--no-rate-limits"],
        env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": "2026-10-15"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for _ in range(300):
                try:
                    client.get("/nope")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            for urls in kinds.values():  # warm up
                measure(client, urls[:100], 404 if urls[0] == "/nope" else 200)
            metric_kind = list(kinds.values())[2]
            page = client.get(metric_kind[0]).json()
            assert len(page["data"]) == page_rows, len(page["data"])
            return {
                name: measure(client, urls, 404 if urls[0] == "/nope" else 200)
                for name, urls in kinds.items()
            }
    finally:
        server.terminate()
        server.wait()


PREWARMED = ("events", "events_metric_time", "events_profile_time")  # what the reads use


@contextlib.contextmanager
def postgres_store(args: argparse.Namespace, name: str, shared_buffers: str) -> Iterator[str]:
    """The private PostgreSQL server holding the built store (built on first use), with the
    relations the reads use loaded into its shared buffers (pg_prewarm), as a server that
    has been answering such reads holds them; its URL."""
    root = args.dir / f"pg-{name}"
    fresh = not (root / "ready").exists()
    if fresh:
        shutil.rmtree(root, ignore_errors=True)
    pg = PrivatePostgres(keep=root, settings={"shared_buffers": shared_buffers})
    pg.start()
    try:
        if fresh:
            url = pg.new_database()
            print(f"building {args.events:,} events, {args.profiles:,} profiles in {url} ({root})")
            build_postgres(url, args.events, args.profiles, args.metrics)
            (root / "ready").write_text(url.rsplit("/", 1)[1])
        url = pg.url((root / "ready").read_text())
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            for relation in PREWARMED:
                conn.execute("SELECT pg_prewarm(%s)", (relation,))
        pg.pin("0")
        yield url
    finally:
        pg.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--metrics", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--backend", choices=("both", "sqlite", "postgres"), default="both")
    parser.add_argument(
        "--pg-shared-buffers",
        default="128MB,4GB",
        help="the private PostgreSQL's shared_buffers: one run each (128MB is its default)",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path(tempfile.gettempdir()) / "trackhouse-read-bench"
    )
    args = parser.parse_args()
    if 300 * SPAN * args.metrics // args.events >= SPAN:
        parser.error("--events must be at least 300 × --metrics (a window holds ~300 events)")
    name = f"{args.events}-{args.profiles}-{args.metrics}"
    kinds = requests(args)
    results: dict[str, dict[str, list[float]]] = {}
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    if args.backend in ("both", "sqlite"):
        data = args.dir / name
        if not (data / "ready").exists():
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            print(f"building {args.events:,} events, {args.profiles:,} profiles in {data}")
            build_sqlite(data / STORE_FILE, args.events, args.profiles, args.metrics)
            sqlite3.connect(data / LOG_FILE).close()
            (data / "ready").touch()
        with open(data / STORE_FILE, "rb") as store:  # into the page cache, as a server's is
            while store.read(1 << 24):
                pass
        results["sqlite"] = serve_and_measure(["--data-dir", str(data)], kinds)
    version = ""
    if args.backend in ("both", "postgres"):
        for shared_buffers in args.pg_shared_buffers.split(","):
            with postgres_store(args, name, shared_buffers) as url:
                with psycopg.connect(url) as conn:
                    version = conn.execute("SHOW server_version").fetchone()[0]
                backend = f"postgres {shared_buffers}"
                results[backend] = serve_and_measure(["--store", url], kinds)
    print(f"# read benchmark, {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()},"
          f" {os.cpu_count()} cores (server on core 0, client on core 1);"
          f" Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")  # fmt: skip
    if version:
        print(f"# PostgreSQL {version}: a private server, pinned to core 0 with trackhouse;"
              f" 'postgres B': shared_buffers B, {', '.join(PREWARMED)} prewarmed")  # fmt: skip
    print(f"# {args.events:,} events, {args.profiles:,} profiles, {args.metrics} metrics;"
          f" {args.requests} requests each, one at a time")  # fmt: skip
    for backend, measured in results.items():
        base_p50 = statistics.median(measured["baseline (404, no store)"])
        for kind, times in measured.items():
            p50, p99 = statistics.median(times) * 1000, percentile(times, 0.99) * 1000
            line = f"{backend}, {kind}: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            line += f" (p50 {p50 / 1000 / base_p50:.1f}× baseline"
            if backend.startswith("postgres") and "sqlite" in results:
                sqlite_p99 = percentile(results["sqlite"][kind], 0.99)
                line += f"; p99 {p99 / 1000 / sqlite_p99:.2f}× SQLite's"
            print(line + ")")


if __name__ == "__main__":
    main()
