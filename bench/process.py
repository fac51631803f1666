"""Processing benchmark: events/s into a store already holding N events, and accept→stored lag.

    .venv/bin/python bench/process.py [--prefill 1000000] [--measure 200000] [--rate 10000]

Pinned to one core. Three phases, in one run:
1. baseline: the same event rows inserted by a bare `executemany` into an empty copy of the
   events table with its dedup index (what SQLite alone costs: the ceiling);
2. throughput: the processor over `--measure` events appended to a log, into a store that
   already holds `--prefill` events (put there by the processor itself);
3. lag: events appended at a steady `--rate` per second while the processor runs its own loop
   (`Processor.run`, as in `trackhouse serve`: woken by log commits, lingering up to 100 ms for
   a batch once caught up); the lag of an event is the time from its log commit (what a 202
   waits for) to its batch's commit.
The processor runs with the collector settings the server uses (`server.collect_less`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

import msgspec

from trackhouse.log.sqlite import SQLiteLog
from trackhouse.model import Event, ProfileChange, Submission
from trackhouse.process.processor import Processor
from trackhouse.server import collect_less
from trackhouse.store.sqlite import SCHEMA, SQLiteStore

GROUP = 10  # events per submission (one bulk profile group)


def submissions(start: int, count: int, profiles: int, now: float) -> list[Submission]:
    out = []
    for n in range(start // GROUP, (start + count) // GROUP):
        out.append(
            Submission(
                account_id="BENCH1",
                received_at=now,
                source="api",
                profile=ProfileChange(
                    email=f"user{n % profiles}@klaviyo-demo.com",
                    attributes={"first_name": "Sarah"},
                    properties={"plan": "trial"},
                ),
                events=[
                    Event(
                        metric=("Viewed Product", "Added to Cart", "Placed Order")[i % 3],
                        properties={
                            "ProductID": n * GROUP + i,
                            "ProductName": "Winnie the Pooh",
                            "Brand": "Kids Book",
                            "Categories": ["Books", "Children"],
                            "Price": 9.99,
                        },
                        time=1_700_000_000 + n,
                        value=9.99,
                        unique_id=f"{n}-{i}",
                    )
                    for i in range(GROUP)
                ],
            )
        )
    return out


def append(log: SQLiteLog, subs: list[Submission], chunk: int = 100) -> None:
    async def run() -> None:
        for i in range(0, len(subs), chunk):
            await log.append(subs[i : i + chunk])

    asyncio.run(run())


def drain(processor: Processor, head: int) -> None:
    while processor.position < head:
        processor.run_once()


def baseline(subs: list[Submission], path: Path) -> float:
    """Events/s of bare executemany inserts of the same rows (one transaction per 5,000)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    encode = msgspec.json.Encoder().encode
    rows = [
        (seq * 1000 + i, s.account_id, s.profile.email, e.metric, e.time, e.unique_id, e.value,
         None, False, encode(e.properties), s.received_at)
        for seq, s in enumerate(subs, 1)
        for i, e in enumerate(s.events)
    ]  # fmt: skip
    started = time.perf_counter()
    for i in range(0, len(rows), 5000):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows[i : i + 5000])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


def lag_run(log: SQLiteLog, processor: Processor, rate: int, seconds: float) -> list[float]:
    """Append `rate` events/s for `seconds` while processing; each event's lag in seconds."""
    committed: dict[int, float] = {}  # submission seq -> log commit time
    lags: list[float] = []
    start_seq = log.head()

    def produce() -> None:
        per_tick = max(1, rate // GROUP // 20)  # 20 appends a second
        n = 10_000_000
        ticks = int(seconds * 20)
        t0 = time.perf_counter()
        for tick in range(ticks):
            subs = submissions(n * GROUP, per_tick * GROUP, 50_000, time.time())
            n += per_tick
            append(log, subs, chunk=len(subs))
            head = log.head()
            now = time.perf_counter()
            for seq in range(head - len(subs) + 1, head + 1):
                committed[seq] = now
            time.sleep(max(0.0, t0 + (tick + 1) / 20 - time.perf_counter()))

    # The processor runs its own loop, as in `trackhouse serve` (woken by log commits, lingering
    # for a batch once caught up); each batch's commit time is recorded as it happens.
    batches: list[tuple[int, int, float]] = []  # first seq, last seq, commit time
    commit = processor._commit

    def timed_commit(partition, entries, apply) -> None:  # type: ignore[no-untyped-def]
        commit(partition, entries, apply)
        batches.append((entries[0].seq, entries[-1].seq, time.perf_counter()))

    processor._commit = timed_commit  # type: ignore[method-assign]
    log.on_commit(processor.wake.set)
    halt = threading.Event()
    runner = threading.Thread(target=processor.run, args=(halt,), name="processor")
    runner.start()
    producer = threading.Thread(target=produce)
    producer.start()
    producer.join()
    while processor.position < log.head():
        time.sleep(0.01)
    halt.set()
    processor.hurry.set()
    processor.wake.set()
    runner.join()
    processor._commit = commit  # type: ignore[method-assign]
    for first, last, done in batches:
        for seq in range(max(first, start_seq + 1), last + 1):
            if seq in committed:
                lags += [done - committed[seq]] * GROUP
    return lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prefill", type=int, default=1_000_000)
    parser.add_argument("--measure", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=10_000, help="events/s for the lag phase")
    parser.add_argument("--lag-seconds", type=float, default=20)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: tmp)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    work = args.dir or Path(tempfile.mkdtemp(prefix="trackhouse-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# processing benchmark, {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, pinned to 1;"
          f" Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")  # fmt: skip

    measured = submissions(args.prefill, args.measure, 20_000, time.time())
    base = baseline(measured, work / "baseline.sqlite3")
    print(f"baseline: bare executemany of the event rows: {base:,.0f} events/s")

    log = SQLiteLog(work / "log.sqlite3")
    store = SQLiteStore(work / "store.sqlite3")
    processor = Processor(log, store)
    collect_less()  # the collector settings `trackhouse serve` and `trackhouse process` use
    t = time.perf_counter()
    for start in range(0, args.prefill, 100_000):
        append(log, submissions(start, min(100_000, args.prefill - start), 100_000, time.time()))
        drain(processor, log.head())
    print(f"prefill: {args.prefill:,} events processed in {time.perf_counter() - t:.0f} s")

    append(log, measured)
    started = time.perf_counter()
    drain(processor, log.head())
    elapsed = time.perf_counter() - started
    rate = args.measure / elapsed
    print(
        f"throughput: {args.measure:,} events into a store of {args.prefill:,}:"
        f" {rate:,.0f} events/s ({elapsed:.1f} s); ratio to baseline {rate / base:.2f}"
    )

    lags = sorted(lag_run(log, processor, args.rate, args.lag_seconds))
    if lags:
        p50 = statistics.median(lags)
        p99 = lags[int(len(lags) * 0.99) - 1]
        print(
            f"lag at {args.rate:,} events/s for {args.lag_seconds:.0f} s: accept→stored"
            f" p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms"
        )
    processor.close()
    log.close()
    store.close()


if __name__ == "__main__":
    main()
