"""Scale-out benchmark: the accept path and processing on PostgreSQL against SQLite, same run.

    .venv/bin/python bench/cluster.py [--runs 3] [--duration 5] [--connections 64]
    .venv/bin/python bench/cluster.py --smoke        # 1 run of 1 s: does every target work?

Each run, for each target in turn (interleaved across runs), on fresh data:
1. accept: `trackhouse serve --no-process --no-rate-limits` (1 API process, or `--workers 2`),
   pinned to core 0, under wrk on core 1 posting ~1 KB create-event bodies (bench/wrk/post.lua,
   the same bodies as bench/ingest.py) at --connections for --duration: requests/s, p99;
2. processing: then `trackhouse process` (1 or 2 workers, unpinned) drains what was accepted:
   log entries/s from the first to the last processed, timed by polling the positions.

Targets: SQLite (the embedded default: its one processor); PostgreSQL with A API processes and
W workers ("postgres A+W") for A and W of 1 and 2. PostgreSQL is a private server
(tests/private_postgres.py: initdb into a temp dir, synchronous_commit and fsync on), unpinned:
on this 2-core machine it shares the cores with everything else, which is what limits the
2-process figures. Ratios are to SQLite's median of the same run. Writes the "Scale-out" section
of bench/RESULTS.md and the raw figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from ingest import (  # noqa: E402  (the ingest benchmark's bodies, wrk driver and report helpers)
    ADMIN_KEY,
    CLIENT_CORE,
    LUA,
    PRIVATE_KEY,
    PUBLIC_KEY,
    RESULTS,
    SERVER_CORE,
    Measurement,
    ensure_wrk,
    free_port,
    parse_wrk,
    replace_section,
    single_template,
)
from private_postgres import PrivatePostgres  # noqa: E402

RAW = BENCH / "cluster-results.json"
TARGETS = ("sqlite", "postgres 1+1", "postgres 1+2", "postgres 2+1", "postgres 2+2")
PROFILES = 10_000


@dataclass
class Run:
    target: str
    run: int
    accept_rps: float = 0.0
    accept_p99_ms: float = 0.0
    non_202: int = 0
    entries: int = 0
    process_entries_per_s: float = 0.0


class Deployment:
    """One target's processes on fresh data."""

    def __init__(
        self, target: str, pg: PrivatePostgres, work: Path, py_spy: Path | None = None
    ) -> None:
        self.target = target
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cluster-", dir=work))
        self.url = None if target == "sqlite" else pg.new_database()
        self.where = ["--data-dir", str(self.dir)] if self.url is None else ["--store", self.url]
        # "postgres A+W": A API processes, W workers
        api, _, workers = target.partition(" ")[2].partition("+")
        self.api_processes = int(api or 1)
        self.workers = int(workers or 1)
        self.env = dict(
            os.environ,
            TRACKHOUSE_PUBLIC_KEY=PUBLIC_KEY,
            TRACKHOUSE_PRIVATE_KEY=PRIVATE_KEY,
            TRACKHOUSE_ADMIN_KEY=ADMIN_KEY,
            TRACKHOUSE_MAX_BACKLOG="0",
        )
        self.procs: list[subprocess.Popen] = []
        self.spies: list[subprocess.Popen] = []  # they write their profile once the worker ends
        self.py_spy = py_spy

    def _spawn(self, command: list[str], name: str) -> subprocess.Popen:
        out = open(self.dir / f"{name}.out", "wb")  # noqa: SIM115 (the child holds it)
        proc = subprocess.Popen(command, env=self.env, stdout=out, stderr=out)
        self.procs.append(proc)
        return proc

    def serve(self) -> None:
        command = ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "trackhouse", "serve"]
        command += [*self.where, "--port", str(self.port), "--no-process", "--no-rate-limits"]
        if self.api_processes > 1:
            command += ["--workers", str(self.api_processes)]
        self._spawn(command, "serve")
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                time.sleep(1.0 if self.api_processes > 1 else 0)  # every child listening
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.target} did not start: {(self.dir / 'serve.out').read_text()}")

    def process(self) -> None:
        for n in range(self.workers):
            worker = self._spawn(
                [sys.executable, "-m", "trackhouse", "process", *self.where], f"w{n}"
            )
            if self.py_spy is not None and n == 0:  # the first worker's profile, until it stops
                self.record(worker.pid, "worker")

    def record(self, pid: int, what: str, seconds: float | None = None) -> None:
        """py-spy's profile of a process, into --py-spy's FILE.<target>.<what>."""
        name = self.target.replace(" ", "-").replace("+", "_")
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        command = [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
        command += ["--output", f"{self.py_spy}.{name}.{what}", "--gil", "--threads"]
        if seconds is not None:
            command += ["--duration", str(max(1, int(seconds)))]
        self.spies.append(self._spawn(command, f"py-spy-{what}"))

    def progress(self) -> tuple[int, int]:
        """(processed, logged) log entries."""
        if self.url is None:
            with sqlite3.connect(self.dir / "store.sqlite3") as store:
                row = store.execute("SELECT seq FROM positions").fetchone()
            with sqlite3.connect(self.dir / "log.sqlite3") as log:
                (head,) = log.execute("SELECT count(*) FROM entries").fetchone()
            return (row[0] if row else 0), head
        with psycopg.connect(self.url) as conn:
            ((done, head),) = conn.execute(
                "SELECT sum(p.position), sum(h.head) FROM positions p JOIN log_heads h"
                " USING (partition)"
            ).fetchall()
        return int(done), int(head)

    def stop(self) -> None:
        for proc in self.procs:
            if proc not in self.spies:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def one_run(args: argparse.Namespace, target: str, run: int, pg: PrivatePostgres) -> Run:
    result = Run(target, run)
    d = Deployment(target, pg, args.work, args.py_spy)
    try:
        d.serve()
        body = args.work / "body.json"
        body.write_text(single_template(datetime.now(UTC)))
        wrk = [
            "taskset", "-c", CLIENT_CORE, args.wrk, f"-t{min(4, args.connections)}",
            f"-c{args.connections}", f"-d{args.duration:g}s", "--latency", "--timeout", "10s",
            "-s", str(LUA), f"http://127.0.0.1:{d.port}/api/events",
            "--", str(body), PRIVATE_KEY, str(PROFILES), f"{target[:2]}{run}",
        ]  # fmt: skip
        if args.py_spy is not None and d.api_processes == 1:  # the API process under load
            d.record(d.procs[0].pid, "api", args.duration)
        done = subprocess.run(wrk, capture_output=True, text=True, timeout=args.duration + 120)
        m = Measurement("single", target, args.connections, run)
        parse_wrk(done.stdout, m)
        result.accept_rps, result.accept_p99_ms, result.non_202 = m.rps, m.p99_ms, m.non_202
        _, result.entries = d.progress()
        started = time.monotonic()
        d.process()
        first = None
        while True:
            processed, head = d.progress()
            now = time.monotonic()
            if processed and first is None:
                first = (now, processed)
            if processed >= head:
                break
            if now - started > 600:
                raise RuntimeError(f"{target}: processing did not finish")
            time.sleep(0.02)
        if first is not None and now > first[0]:
            result.process_entries_per_s = (head - first[1]) / (now - first[0])
    finally:
        d.stop()
    print(
        f"  {target:14} run {run}: accept {result.accept_rps:8,.0f} req/s"
        f" (p99 {result.accept_p99_ms:.1f} ms, non-202 {result.non_202});"
        f" processing {result.process_entries_per_s:8,.0f} entries/s over {result.entries:,}",
        flush=True,
    )
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def report(args: argparse.Namespace, runs: list[Run], command: str) -> str:
    def of(target: str, attr: str) -> list[float]:
        return [getattr(r, attr) for r in runs if r.target == target]

    base = {a: median(of("sqlite", a)) or math.nan for a in ("accept_rps", "process_entries_per_s")}
    lines = [
        "## Scale-out: PostgreSQL against SQLite (bench/cluster.py)",
        "",
        f"`{command}` — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()},"
        f" {os.cpu_count()} cores, Python {platform.python_version()}; {args.runs} runs of"
        f" {args.duration:g} s at {args.connections} connections, targets interleaved. API"
        " processes on core 0, wrk on core 1, PostgreSQL and workers unpinned (they share the"
        " two cores). Medians (min–max); ratios to SQLite's median of the same run.",
        "",
        "| target | accept req/s | ratio | p99 ms | processing entries/s | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for target in args.targets:
        acc, proc, p99 = (
            of(target, "accept_rps"),
            of(target, "process_entries_per_s"),
            of(target, "accept_p99_ms"),
        )
        lines.append(
            f"| {target} | {median(acc):,.0f} ({min(acc):,.0f}–{max(acc):,.0f})"
            f" | {median(acc) / base['accept_rps']:.2f}× | {median(p99):.1f}"
            f" | {median(proc):,.0f} ({min(proc):,.0f}–{max(proc):,.0f})"
            f" | {median(proc) / base['process_entries_per_s']:.2f}× |"
        )
    lines += [
        "",
        "Targets (issue 11): PostgreSQL accept ≥ 0.7× and processing ≥ 0.5× SQLite's. Every"
        " answer counted is a 202 (durably logged); non-202 answers:"
        f" {sum(r.non_202 for r in runs)}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="1 run of 1 s; no report written")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--json", type=Path, default=RAW)
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"some of: {', '.join(TARGETS)}"
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        help="py-spy profiles into FILE.<target>.<api|worker>: the first worker of each"
        " target, and its API process under load (one API process only)",
    )
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",")]
    if unknown := set(args.targets) - set(TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.smoke:
        args.runs, args.duration = 1, 1.0
    args.wrk = ensure_wrk()
    if args.wrk is None:
        print("wrk is missing (apt-get install wrk)", file=sys.stderr)
        return 1
    command = "python bench/cluster.py " + " ".join(argv if argv is not None else sys.argv[1:])
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as work:
        args.work = Path(work)
        pg = PrivatePostgres().start()
        try:
            for run in range(1, args.runs + 1):
                for target in args.targets:
                    runs.append(one_run(args, target, run, pg))
        finally:
            pg.close()
    markdown = report(args, runs, command.strip())
    print(markdown)
    if not args.smoke:
        replace_section(args.results, "cluster", markdown)
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1) + "\n")
    return 0 if all(r.non_202 == 0 and r.accept_rps > 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
