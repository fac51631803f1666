"""Segments benchmark (issue 12), on the embedded store, pinned to one core.

    .venv/bin/python bench/segments.py [--part live,new,members,instructions] [--runs 3]
        [--profiles 20000] [--events 200000]                  # live
        [--big-profiles 1000000] [--big-events 10000000]     # new, members
        [--ingest 100000] [--dir DIR]

- live: the processor over `--events` events (in bulk groups of 10, over `--profiles`
  people) into a store where the same people already have as many events (processed first,
  untimed, with the same segments: their memberships exist; then checkpointed), with no
  segment, then with 20
  live segments (10 on profile properties, 10 counting or summing a metric's events, some
  with metric filters). Runs alternate; the ratio of the medians of their processing times is
  reported (target ≤ 1.3), on the clock and of CPU time.
- instructions: the live part's work counted in instructions by valgrind (Debian's
  `valgrind`; `--cache-sim=no`), which the shared VM's noise does not move: each case is run
  twice in a subprocess, with and without the timed drain, and the difference is its count
  (`--events`/`--profiles` scaled down by 10 by default: valgrind runs ~50× slower).
- new: a store of `--big-events` events and `--big-profiles` profiles (bench/read.py's, built
  once under --dir and copied for each run). The processor's own loop (`Processor.run`, as in
  `trackhouse serve`) processes `--ingest` events appended at once: first with no segment (the
  ingestion rate alone), then right after a new segment is created (a property and a metric
  condition), while its members are computed over every profile in the background. Reported:
  both ingestion rates and their ratio (target ≥ 0.8), and the time until the segment is no
  longer processing (target < 60 s).
- members: that store with its computed segment served by `trackhouse serve --no-process`;
  GET /api/segments/{id}/profiles (page size 100) at random places in the member list (by
  cursor), one at a time from the other core: p50 / p99 (target p99 < 20 ms), beside a
  baseline request that touches no store.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process import append, drain, submissions
from read import ACCOUNT, build_sqlite, percentile, serve_and_measure

from trackhouse.api.paging import encode_cursor
from trackhouse.backends import LOG_FILE, STORE_FILE
from trackhouse.log.sqlite import SCHEMA as LOG_SCHEMA
from trackhouse.log.sqlite import SQLiteLog
from trackhouse.model import ProfileChange, Submission, encode_submission
from trackhouse.process.processor import Processor
from trackhouse.server import collect_less
from trackhouse.store.base import EVENTS_PER_ENTRY, SegmentRow
from trackhouse.store.sqlite import SQLiteStore

CREATED = "2026-11-23T00:00:00+00:00"
METRICS = {"Viewed Product": "MVIEW0", "Added to Cart": "MCART0", "Placed Order": "MORDR0"}


def _segment(n: int, conditions: list[dict]) -> SegmentRow:
    definition = {"condition_groups": [{"conditions": [c]} for c in conditions]}
    return SegmentRow(f"SEG{n:03d}", f"Segment {n}", msgspec.json.encode(definition).decode(),
                      True, False, CREATED, CREATED, pending=False)  # fmt: skip


def _prop(key: str, f: dict) -> dict:
    return {"type": "profile-property", "property": key, "filter": f}


def _metric(metric_id: str, measurement: str, op: str, value: float, **extra: object) -> dict:
    return {"type": "profile-metric", "metric_id": metric_id, "measurement": measurement,
            "measurement_filter": {"type": "numeric", "operator": op, "value": value},
            "timeframe_filter": {"type": "date", "operator": "alltime"}, **extra}  # fmt: skip


def twenty_segments() -> list[SegmentRow]:
    """10 on properties, 10 on metrics: what a store with a few campaigns' segments keeps."""
    brand = [{"property": "Brand", "filter": {"type": "string", "operator": "equals",
                                              "value": "Kids Book"}}]  # fmt: skip
    props = [
        _prop("properties['plan']", {"type": "string", "operator": "equals", "value": "trial"}),
        _prop("first_name", {"type": "string", "operator": "starts-with", "value": "Sa"}),
        _prop("email", {"type": "string", "operator": "ends-with", "value": "@klaviyo-demo.com"}),
        _prop("properties['plan']", {"type": "existence", "operator": "is-set"}),
        _prop("first_name", {"type": "string", "operator": "contains", "value": "ar"}),
        _prop("email", {"type": "string", "operator": "regex", "value": "^user1[0-9]*@"}),
        _prop("properties['plan']", {"type": "string", "operator": "not-equals", "value": "pro"}),
        _prop("location['country']", {"type": "existence", "operator": "is-set"}),
        _prop("last_name", {"type": "existence", "operator": "not-set"}),
        _prop("properties['plan']", {"type": "string", "operator": "in",
                                     "value": ["trial", "free"]}),
    ]  # fmt: skip
    ids = list(METRICS.values())
    metrics = [
        _metric(ids[n % 3], "count" if n % 2 else "sum", "greater-than", n, **(
            {"metric_filters": brand} if n % 4 == 0 else {}))
        for n in range(10)
    ]  # fmt: skip
    return [_segment(n, [c]) for n, c in enumerate(props + metrics)]


def pin() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})


def live_run(
    root: Path, prefill: list, subs: list, segments: list[SegmentRow], timed: bool = True
) -> tuple[float, float]:
    """Seconds to process `subs` into a store holding `segments`, after `prefill` (untimed)
    made the profiles and their first events and memberships: on the clock, and of CPU (the
    process's). `timed` false: everything but the timed drain."""
    log, store = SQLiteLog(root / LOG_FILE), SQLiteStore(root / STORE_FILE)
    processor = Processor(log, store)
    try:
        with processor.store.transaction():
            for name, metric_id in METRICS.items():
                processor.store.add_metric(metric_id, "BENCH1", name, "api", CREATED)
        for row in segments:
            assert store.add_segment("BENCH1", row)
        append(log, prefill)
        drain(processor, log.head())
        append(log, subs)
        # The prefill's writes (with segments: 300,000 joins) are checkpointed out of the WAL
        # before the clock starts, so that neither run pays in its window for untimed work.
        for name in (STORE_FILE, LOG_FILE):
            conn = sqlite3.connect(root / name)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
        started, cpu = time.perf_counter(), time.process_time()
        if timed:
            drain(processor, log.head())
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        processor.close()
        log.close()
        store.close()


def part_live(args: argparse.Namespace) -> None:
    prefill = submissions(0, args.events, args.profiles, time.time())
    subs = submissions(args.events, args.events, args.profiles, time.time())
    times: dict[str, list[float]] = {"no segment": [], "20 live segments": []}
    cpus: dict[str, list[float]] = {name: [] for name in times}
    for run in range(args.runs):
        for name in times:
            with tempfile.TemporaryDirectory(dir=args.dir) as root:
                segments = twenty_segments() if name != "no segment" else []
                seconds, cpu = live_run(Path(root), prefill, subs, segments)
            times[name].append(seconds)
            cpus[name].append(cpu)
            print(f"  run {run + 1} {name}: {seconds:.2f} s ({args.events / seconds:,.0f} ev/s),"
                  f" CPU {cpu:.2f} s")  # fmt: skip
    base, with_segments = (statistics.median(v) for v in times.values())
    cpu_base, cpu_with = (statistics.median(v) for v in cpus.values())
    print(f"live: {args.events:,} events over {args.profiles:,} profiles that have as many"
          " already (and their memberships); median "
          f"{base:.2f} s without segments, {with_segments:.2f} s with 20: "
          f"{with_segments / base:.2f}× (target ≤ 1.3×); CPU {cpu_base:.2f} s and"
          f" {cpu_with:.2f} s: {cpu_with / cpu_base:.2f}×")  # fmt: skip


def run_once(segments: bool, timed: bool, events: int, profiles: int) -> None:
    """The live part's work once (for `part_instructions`), with fixed event times."""
    prefill = submissions(0, events, profiles, 1_764_000_000.0)
    subs = submissions(events, events, profiles, 1_764_000_000.0)
    with tempfile.TemporaryDirectory() as root:
        live_run(Path(root), prefill, subs, twenty_segments() if segments else [], timed)


def part_instructions(args: argparse.Namespace) -> None:
    events, profiles = args.events // 10, args.profiles // 10

    def count(segments: bool, timed: bool) -> int:
        command = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
                   "--cachegrind-out-file=/dev/null", sys.executable, __file__, "--run-once",
                   f"{int(segments)},{int(timed)},{events},{profiles}"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": "0"})  # fmt: skip
        found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        assert found, done.stderr[-2000:]
        return int(found.group(1).replace(",", ""))

    counts = {}
    for segments in (False, True):
        counts[segments] = count(segments, True) - count(segments, False)
    base, with_segments = counts[False], counts[True]
    print(f"instructions: {events:,} events over {profiles:,} profiles that have as many"
          f" already; {base / 1e9:.3f} G without segments, {with_segments / 1e9:.3f} G with 20:"
          f" {with_segments / base:.3f}× (target ≤ 1.3×)")  # fmt: skip


NEW_DEFINITION = {"condition_groups": [
    {"conditions": [_prop("first_name", {"type": "string", "operator": "equals",
                                          "value": "Sarah"})]},
    {"conditions": [_metric("M00000", "count", "greater-than-or-equal", 1)]},
]}  # fmt: skip


def big_store(args: argparse.Namespace) -> Path:
    base = Path(args.dir) / f"segments-{args.big_events}-{args.big_profiles}"
    if not (base / STORE_FILE).exists():
        base.mkdir(parents=True, exist_ok=True)
        print(f"building {args.big_events:,} events, {args.big_profiles:,} profiles in {base}")
        build_sqlite(base / STORE_FILE, args.big_events, args.big_profiles, 20)
    return base


def start_after_built_events(root: Path) -> None:
    """The built store's events are numbered 1…N, not by log entries: a log whose first entry
    comes after them (one placeholder entry, processed already) numbers new events apart."""
    store = sqlite3.connect(root / STORE_FILE, isolation_level=None)
    (top,) = store.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()
    first = top // EVENTS_PER_ENTRY + 1
    store.execute("INSERT OR REPLACE INTO positions VALUES ('processor', ?)", (first,))
    store.close()
    log = sqlite3.connect(root / LOG_FILE, isolation_level=None)
    log.executescript(LOG_SCHEMA)
    placeholder = Submission(account_id=ACCOUNT, received_at=0.0, source="api",
                             profile=ProfileChange(email="placeholder@example.com"))  # fmt: skip
    log.execute("INSERT INTO entries VALUES (?, ?, NULL, NULL, ?)",
                (first, ACCOUNT, encode_submission(placeholder)))  # fmt: skip
    log.close()


def ingest(root: Path, segment: SegmentRow | None, subs: list) -> tuple[float, float | None]:
    """The processor's own loop over `subs`, appended at once (after `segment` is created):
    (events/s, seconds until the segment was computed)."""
    start_after_built_events(root)
    log, store = SQLiteLog(root / LOG_FILE), SQLiteStore(root / STORE_FILE)
    processor = Processor(log, store)
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, args=(stop,))
    try:
        started = time.perf_counter()
        if segment is not None:
            assert store.add_segment(ACCOUNT, segment)
        append(log, subs, chunk=1000)
        head = log.head()
        thread.start()
        while processor.position < head:
            time.sleep(0.01)
        ingested = time.perf_counter() - started
        computed = None
        if segment is not None:
            while store.segments_pending():
                time.sleep(0.05)
            computed = time.perf_counter() - started
        events = sum(len(s.events) for s in subs)
        return events / ingested, computed
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        processor.close()
        log.close()
        store.close()


def part_new(args: argparse.Namespace) -> Path:
    base = big_store(args)
    subs = submissions(0, args.ingest, args.big_profiles, time.time())
    work = Path(args.dir) / "segments-work"
    rates: dict[str, list[float]] = {"alone": [], "while computing": []}
    computed: list[float] = []
    definition = msgspec.json.encode(NEW_DEFINITION).decode()
    segment = SegmentRow("NEWSEG", "New", definition, True, False, CREATED, CREATED,
                         pending=True, cursor="")  # fmt: skip
    for run in range(args.runs):
        for name in rates:
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(base, work)
            for f in (work / STORE_FILE).parent.glob("*"):  # read the copy into the cache
                with open(f, "rb") as stream:
                    while stream.read(1 << 24):
                        pass
            rate, seconds = ingest(work, segment if name != "alone" else None, subs)
            rates[name].append(rate)
            if seconds is not None:
                computed.append(seconds)
            print(f"  run {run + 1} {name}: {rate:,.0f} ev/s"
                  + (f", segment computed in {seconds:.1f} s" if seconds else ""))  # fmt: skip
    alone, during = (statistics.median(v) for v in rates.values())
    print(f"new: {args.ingest:,} events into {args.big_events:,} events / {args.big_profiles:,}"
          f" profiles: {alone:,.0f} ev/s alone, {during:,.0f} ev/s while a new segment is"
          f" computed: {during / alone:.2f}× (target ≥ 0.8×); computed in median"
          f" {statistics.median(computed):.1f} s (target < 60 s)")  # fmt: skip
    return work


def part_members(args: argparse.Namespace, work: Path) -> None:
    """Member pages of the computed segment of the last run of `new`."""
    store = SQLiteStore(work / STORE_FILE)
    try:
        count = store.segment_profile_counts(ACCOUNT, ["NEWSEG"]).get("NEWSEG", 0)
        # Cursors at random members: (joined at, profile id) of a sampled row.
        rows = store._all(
            "SELECT joined_at, profile_id FROM segment_members WHERE account_id = ?"
            " AND segment_id = 'NEWSEG'", (ACCOUNT,),
        )  # fmt: skip
    finally:
        store.close()
    assert count > 0, "the new segment has no members"
    rng = random.Random(5)
    pages = [f"/api/segments/NEWSEG/profiles?page[size]=100&page[cursor]="
             f"{encode_cursor(list(rng.choice(rows)))}" for _ in range(args.requests)]  # fmt: skip
    kinds = {"baseline (404, no store)": ["/nope"] * args.requests,
             "first page": ["/api/segments/NEWSEG/profiles?page[size]=100"] * args.requests,
             "a page at a random member": pages}  # fmt: skip
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})  # the client on the other core than the server
    results = serve_and_measure(["--data-dir", str(work)], kinds, page_rows=100)
    print(f"members: segment of {count:,} members; one request at a time")
    base = statistics.median(results["baseline (404, no store)"])
    for name, times in results.items():
        p50, p99 = statistics.median(times), percentile(times, 0.99)
        print(f"  {name}: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
              f" ({p50 / base:.1f}× baseline p50)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="live,new,members")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--big-profiles", type=int, default=1_000_000)
    parser.add_argument("--big-events", type=int, default=10_000_000)
    parser.add_argument("--ingest", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--run-once", help=argparse.SUPPRESS)  # part_instructions' worker
    args = parser.parse_args()
    if args.run_once:
        segments, timed, events, profiles = (int(v) for v in args.run_once.split(","))
        collect_less()
        run_once(bool(segments), bool(timed), events, profiles)
        return
    parts = set(args.part.split(","))
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    pin()
    collect_less()
    print(f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}")  # fmt: skip
    if "live" in parts:
        part_live(args)
    if "instructions" in parts:
        part_instructions(args)
    work = None
    if "new" in parts:
        work = part_new(args)
    if "members" in parts:
        part_members(args, work or Path(args.dir) / "segments-work")


if __name__ == "__main__":
    main()
