"""Memory benchmark: the server's RSS after 10,000,000 events stored (target: under 300 MB).

    .venv/bin/python bench/memory.py [--events 10000000] [--profiles 1000000] [--threads 4]
    .venv/bin/python bench/memory.py --smoke        # 20,000 events over 2,000 profiles

Starts `trackhouse serve --no-rate-limits` (the processor in the serving process, the default)
on a fresh data directory, pinned to core 0 (`taskset -c 0`); this script, the client, pins
itself to core 1. It sends `--events` events through POST /api/event-bulk-create-jobs, 1,000 a
request (100 profiles × 10 events, every event with its own `unique_id` and ~300 bytes of
properties), over `--profiles` profiles (`user{n}@klaviyo-demo.com`), from `--threads`
keep-alive connections. Every answer must be a 202; a 503 is retried with the same body after
its Retry-After, and counted. Then POST /admin/wait until everything accepted is stored.

The server's VmRSS (and VmHWM, the peak) are read from /proc/PID/status: right after start-up
(idle: the same-run baseline), at every `--step` events accepted (1,000,000 by default), when
everything is sent, and when everything is stored (the final figure, against the target). At
the end the events in the store are counted (they must equal the events sent) and the data
directory is measured. Writes the "memory" section of bench/RESULTS.md (`--results`).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

# bench/ is not a package: its helpers (and the tests' body helpers) by path, as run_all.sh does.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import bulk_body, bulk_event
from ingest import (
    ADMIN_KEY,
    BULK_PATH,
    PRIVATE_KEY,
    PUBLIC_KEY,
    RESULTS,
    free_port,
    git_state,
    machine,
    replace_section,
)

SERVER_CORE, CLIENT_CORE = 0, 1
GROUPS, GROUP_EVENTS = 100, 10  # profiles × events in one request
REQUEST_EVENTS = GROUPS * GROUP_EVENTS
TARGET_BYTES = 300 * 10**6  # "under 300 MB"
TARGET_EVENTS = 10_000_000  # the target is stated at this many stored events
MB = 10**6
HEADERS = {
    "Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}",
    "revision": "2026-10-15",
    "Content-Type": "application/vnd.api+json",
}
WAIT_SECONDS = 300  # /admin/wait's longest wait; it answers 503 when processing is not done


# -- bodies ------------------------------------------------------------------------------------

PLACEHOLDER = re.compile(r"\{\{(U|P\d+)\}\}")


class BulkBody:
    """A bulk-create body of GROUPS profiles × GROUP_EVENTS events, compiled once into the
    literal pieces between its placeholders: {{U}} (the request number, in every `unique_id`)
    and {{P<g>}} (the number of group g's profile). Filling it is one join."""

    def __init__(self, now: datetime) -> None:
        properties = {
            "ProductID": 0,  # set per event below
            "SKU": "WINNIEPOOH-HC",
            "ProductName": "Winnie the Pooh",
            "Brand": "Kids Book",
            "Categories": ["Books", "Children", "Classics"],
            "Price": 9.99,
            "Quantity": 1,
            "ProductURL": "http://www.example.com/path/to/product",
            "ImageURL": "http://www.example.com/path/to/product/image.png",
        }
        groups = []
        for g in range(GROUPS):
            profile = {"email": "user{{P" + str(g) + "}}@klaviyo-demo.com", "first_name": "Sarah"}
            events = [
                bulk_event(
                    metric=("Viewed Product", "Added to Cart", "Placed Order")[i % 3],
                    properties=properties | {"ProductID": 100_000 + g * GROUP_EVENTS + i},
                    time=now.isoformat(timespec="seconds"),
                    value=9.99,
                    unique_id="m{{U}}-" + f"{g}-{i}",
                )
                for i in range(GROUP_EVENTS)
            ]
            groups.append((profile, events))
        self.properties_bytes = len(json.dumps(properties | {"ProductID": 100_000}))
        parts = PLACEHOLDER.split(json.dumps(bulk_body(groups)))
        self.literals = parts[0::2]
        # Index of each placeholder's value in the list `fill` builds: 0 is U, 1 + g is P<g>.
        self.slots = [0 if name == "U" else 1 + int(name[1:]) for name in parts[1::2]]

    def fill(self, request: int, profiles: int) -> bytes:
        """Request number `request`: group g is profile (request × GROUPS + g) mod `profiles`."""
        first = request * GROUPS
        values = [str(request), *(str((first + g) % profiles) for g in range(GROUPS))]
        out = [self.literals[0]]
        for slot, literal in zip(self.slots, self.literals[1:], strict=True):
            out += (values[slot], literal)
        return "".join(out).encode()


# -- the server and its memory -----------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """The memory lines of /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile, …), in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
                out[name] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request(port: int, method: str, path: str, headers: dict[str, str],
            timeout: float = 30) -> tuple[int, bytes]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class Server:
    """`trackhouse serve --no-rate-limits` on core 0, on a fresh data directory."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.data_dir = work / "data"
        self.output = work / "server.out"
        env = dict(
            os.environ,
            TRACKHOUSE_PUBLIC_KEY=PUBLIC_KEY,
            TRACKHOUSE_PRIVATE_KEY=PRIVATE_KEY,
            TRACKHOUSE_ADMIN_KEY=ADMIN_KEY,
        )
        cmd = [sys.executable, "-m", "trackhouse", "serve", "--no-rate-limits",
               "--data-dir", str(self.data_dir), "--port", str(self.port)]  # fmt: skip
        self.cmd = ["taskset", "-c", str(SERVER_CORE), *cmd]
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=out, stderr=out)
        self.pid = self.proc.pid  # taskset execs the server: same process
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited at start-up:\n{self.tail()}")
            try:
                request(self.port, "GET", "/", {}, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{self.tail()}") from None
                time.sleep(0.05)
        with open(f"/proc/{self.pid}/comm") as f:
            comm = f.read().strip()
        if comm == "taskset":
            raise RuntimeError("taskset did not exec the server: RSS would be taskset's")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Point:
    """The server's memory at one moment of the run."""

    label: str
    elapsed_s: float  # since the first request was sent
    accepted: int  # events acknowledged with a 202
    stored: int | None  # events stored by the processor, ≈ (log position × events a group)
    rss: int
    anon: int
    hwm: int


@dataclass
class Run:
    """What the sender threads and the sampler share."""

    server: Server
    body: BulkBody
    requests: int
    profiles: int
    step: int
    counter: itertools.count = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)
    failed: threading.Event = field(default_factory=threading.Event)
    failure: str = ""
    accepted: int = 0  # events
    retries_503: int = 0
    stored: int | None = None  # last sampled
    started: float = 0.0  # perf_counter() when sending began
    points: list[Point] = field(default_factory=list)

    def point(self, label: str) -> Point:
        status = proc_status(self.server.pid)
        p = Point(label, time.perf_counter() - self.started, self.accepted, self.stored,
                  status["VmRSS"], status.get("RssAnon", 0), status["VmHWM"])  # fmt: skip
        self.points.append(p)
        return p

    def fail(self, why: str) -> None:
        with self.lock:
            if not self.failure:
                self.failure = why
        self.failed.set()


def sender(run: Run) -> None:
    """Post bodies until there are none left; retry a 503 after its Retry-After."""
    port = run.server.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        while not run.failed.is_set():
            n = next(run.counter)
            if n >= run.requests:
                return
            body = run.body.fill(n, run.profiles)
            while not run.failed.is_set():
                try:
                    conn.request("POST", BULK_PATH, body, HEADERS)
                    r = conn.getresponse()
                    answer = r.read()
                except OSError as exc:
                    alive = "running" if run.server.alive() else "exited"
                    run.fail(f"request {n}: {exc!r} (server {alive})")
                    return
                if r.status == 202:
                    break
                if r.status == 503:
                    with run.lock:
                        run.retries_503 += 1
                    time.sleep(float(r.getheader("Retry-After") or 1))
                    conn.close()  # past uvicorn's keep-alive timeout, perhaps: a new one
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                    continue
                run.fail(f"request {n}: {r.status} {answer[:500]!r}")
                return
            else:
                return
            with run.lock:
                before = run.accepted
                run.accepted += REQUEST_EVENTS
                crossed = run.accepted // run.step > before // run.step
                if crossed:
                    run.point(f"{run.accepted // run.step * run.step:,} accepted")
    finally:
        conn.close()


def sampler(run: Run, stop: threading.Event, total: int) -> None:
    """Once a second: the server's RSS, the processor's position, a progress line."""
    store = run.server.data_dir / "store.sqlite3"
    conn: sqlite3.Connection | None = None
    while not stop.wait(1.0):
        try:
            status = proc_status(run.server.pid)
        except OSError:
            return  # the server is gone; the senders report it
        try:
            if conn is None:
                conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
            row = conn.execute("SELECT seq FROM positions WHERE name = 'processor'").fetchone()
            run.stored = (row[0] if row else 0) * GROUP_EVENTS  # one log entry per group
        except sqlite3.Error:
            pass
        elapsed = time.perf_counter() - run.started
        stored = "?" if run.stored is None else f"{run.stored:,}"
        print(
            f"\r  {elapsed:5.0f} s: accepted {run.accepted:,} / {total:,}"
            f" ({run.accepted / elapsed:,.0f}/s), stored ≈ {stored};"
            f" RSS {status['VmRSS'] / MB:,.1f} MB (peak {status['VmHWM'] / MB:,.1f});"
            f" 503s {run.retries_503}   ",
            end="",
            flush=True,
        )
    if conn is not None:
        conn.close()


def wait_stored(port: int, run: Run) -> None:
    """POST /admin/wait until it answers 200: everything accepted is stored."""
    headers = {"Authorization": f"Klaviyo-API-Key {ADMIN_KEY}"}
    while True:
        path = f"/admin/wait?timeout={WAIT_SECONDS}"
        status, answer = request(port, "POST", path, headers, timeout=WAIT_SECONDS + 60)
        if status == 200:
            return
        if status != 503:
            raise RuntimeError(f"/admin/wait answered {status}: {answer[:500]!r}")
        if not run.server.alive():
            raise RuntimeError("the server exited while processing")


def directory_sizes(path: Path) -> dict[str, int]:
    """Bytes of each file in `path` (apparent size), "total" included."""
    sizes = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
    sizes["total"] = sum(sizes.values())
    return sizes


def count_rows(store: Path) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        (profiles,) = conn.execute("SELECT count(*) FROM profiles").fetchone()
    finally:
        conn.close()
    return events, profiles


def versions() -> str:
    def v(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (
        f"trackhouse {v('trackhouse')}{git_state()}, Python {platform.python_version()},"
        f" uvicorn {v('uvicorn')}, httptools {v('httptools')}, uvloop {v('uvloop')},"
        f" starlette {v('starlette')}, msgspec {v('msgspec')}, SQLite {sqlite3.sqlite_version}"
    )


# -- reporting ---------------------------------------------------------------------------------


def mb(n: int) -> str:
    return f"{n / MB:,.1f}"


def report(args: argparse.Namespace, run: Run, info: dict) -> str:
    idle = run.points[0]
    final = run.points[-1]
    peak = final.hwm
    met = final.rss < TARGET_BYTES
    lines = [
        "## Memory (`bench/memory.py`)",
        "",
        f"- **Date**: {info['date']}",
        f"- **Command**: `{info['command']}`",
        f"- **Machine**: {info['machine']}",
        f"- **Versions**: {info['versions']}",
        "- **Set-up**: `trackhouse serve --no-rate-limits` (the processor in the serving"
        " process, the default) on core 0 (`taskset -c 0`), fresh data directory; the client"
        f" (this script, {args.threads} keep-alive connections, `http.client`) on core 1."
        f" `POST {BULK_PATH}`, {REQUEST_EVENTS:,} events a request ({GROUPS} profiles ×"
        f" {GROUP_EVENTS} events, ~{info['body_bytes'] / 1000:,.0f} KB; {info['props_bytes']}"
        " bytes of properties an event, every `unique_id` different), over"
        f" {args.profiles:,} profiles (`user{{n}}@klaviyo-demo.com`); then `POST /admin/wait`"
        " until everything accepted is stored. RSS: `VmRSS` of `/proc/PID/status`, peak:"
        " `VmHWM`, anonymous: `RssAnon`; MB = 10⁶ bytes. Events stored: the processor's log"
        " position × 10 (one log entry per profile group), sampled once a second. Baseline:"
        f" the same server's RSS {args.idle_seconds:g} s after start-up, before any event.",
        "",
        "| moment | seconds | events accepted | events stored (≈) | RSS MB | anonymous MB |"
        " ratio to idle |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in run.points:
        stored = "–" if p.stored is None else f"{p.stored:,}"
        lines.append(
            f"| {p.label} | {max(0.0, p.elapsed_s):,.0f} | {p.accepted:,} | {stored}"
            f" | {mb(p.rss)} | {mb(p.anon)} | {p.rss / idle.rss:.2f} |"
        )
    lines.append(f"| peak (`VmHWM`) | | | | {mb(peak)} | | {peak / idle.rss:.2f} |")
    lines.append("")
    scale = (
        ""
        if args.events == TARGET_EVENTS
        else f" (this run stored {args.events:,} events, not {TARGET_EVENTS:,}: indicative only)"
    )
    lines += [
        f"Target: RSS after {TARGET_EVENTS:,} stored events under 300 MB: "
        f"**{'met' if met else 'not met'}** (final {mb(final.rss)} MB,"
        f" {final.rss / idle.rss:.2f}× idle; peak {mb(peak)} MB,"
        f" {'under' if peak < TARGET_BYTES else 'over'} 300 MB too){scale}.",
        "",
    ]
    f = info["figures"]
    sizes = info["sizes"]
    at_sent = (
        ""
        if f["stored_at_sent"] is None
        else f" (when the last request was accepted, ≈ {f['stored_at_sent']:,} were stored)"
    )
    files = ", ".join(f"{name} {mb(n)} MB" for name, n in sizes.items() if name != "total")
    events_check = (
        "= the events sent" if f["stored_events"] == args.events else f"**≠ {args.events:,} sent**"
    )
    expected = f["expected_profiles"]
    profiles_check = (
        "as expected" if f["stored_profiles"] == expected else f"**≠ {expected:,} expected**"
    )
    lines += [
        f"- Accepted: {args.events:,} events in {f['send_s']:,.1f} s,"
        f" **{args.events / f['send_s']:,.0f} events/s**; {run.retries_503} answers 503"
        " (retried after their Retry-After), no other answer than 202.",
        f"- Stored: all {args.events:,} after {f['stored_s']:,.1f} s from the first request,"
        f" **{args.events / f['stored_s']:,.0f} events/s** processed overall{at_sent}.",
        f"- Check, `count(*)` of `store.sqlite3`: {f['stored_events']:,} events"
        f" ({events_check}), {f['stored_profiles']:,} profiles ({profiles_check}).",
        f"- Data directory after shutdown: {mb(sizes['total'])} MB ({files});"
        f" {sizes['total'] / args.events:,.0f} bytes an event.",
        f"- Server CPU time from the first request until all was stored:"
        f" {f['server_cpu_s']:,.1f} s ({f['server_cpu_s'] / f['stored_s'] * 100:.0f} % of"
        " core 0).",
    ]
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------------


def default_step(events: int) -> int:
    if events >= 2_000_000:
        return 1_000_000
    return max(REQUEST_EVENTS, events // 10 // REQUEST_EVENTS * REQUEST_EVENTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="a multiple of 1,000")
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=4, help="concurrent connections")
    parser.add_argument(
        "--step", type=int, default=None, help="RSS every N events accepted (default 1,000,000)"
    )
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="settle before idle RSS")
    parser.add_argument("--smoke", action="store_true", help="20,000 events, 2,000 profiles")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None, help="parent of the data directory")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events, args.profiles = 20_000, 2_000
    if args.events <= 0 or args.events % REQUEST_EVENTS:
        parser.error(f"--events must be a positive multiple of {REQUEST_EVENTS:,}")
    if args.profiles <= 0:
        parser.error("--profiles must be positive")
    args.step = args.step or default_step(args.events)

    if not shutil.which("taskset"):
        sys.exit("taskset (util-linux) is needed")
    if not {SERVER_CORE, CLIENT_CORE} <= os.sched_getaffinity(0):
        sys.exit("needs cores 0 and 1: one for the server, one for this client")
    os.sched_setaffinity(0, {CLIENT_CORE})

    now = datetime.now(UTC).replace(microsecond=0)
    body = BulkBody(now)
    requests = args.events // REQUEST_EVENTS
    expected_profiles = min(args.profiles, requests * GROUPS)
    args.work = args.work or Path(tempfile.gettempdir())
    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="trackhouse-memory-", dir=args.work))
    command = shlex.join(
        [os.path.relpath(sys.executable, Path.cwd()), os.path.relpath(__file__, Path.cwd())]
        + (sys.argv[1:] if argv is None else argv)
    )
    info: dict = {
        "date": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": command,
        "machine": machine(work),
        "versions": versions(),
        "body_bytes": len(body.fill(0, args.profiles)),
        "props_bytes": body.properties_bytes,
    }
    print(f"# memory benchmark, {info['date']} on {platform.node()}: {info['machine']}")
    print(f"# {info['versions']}")
    print(
        f"# {args.events:,} events over {args.profiles:,} profiles, {requests:,} requests of"
        f" {REQUEST_EVENTS:,} events ({info['body_bytes']:,} bytes), {args.threads} connections;"
        f" server on core {SERVER_CORE}, client on core {CLIENT_CORE}; work dir {work}",
        flush=True,
    )

    server = Server(work)
    ok = False
    try:
        run = Run(server, body, requests, args.profiles, args.step)
        time.sleep(args.idle_seconds)
        run.started = time.perf_counter()
        run.point("idle, after start-up (baseline)").stored = 0
        print(f"idle RSS {mb(run.points[0].rss)} MB", flush=True)
        stop = threading.Event()
        watcher = threading.Thread(target=sampler, args=(run, stop, args.events), daemon=True)
        cpu_before = cpu_seconds(server.pid)
        run.started = time.perf_counter()
        watcher.start()
        threads = [threading.Thread(target=sender, args=(run,)) for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if run.failed.is_set():
            stop.set()
            print(f"\nFAILED: {run.failure}\nserver output:\n{server.tail()}", file=sys.stderr)
            return 1
        send_s = time.perf_counter() - run.started
        sent = run.point("all accepted")
        wait_stored(server.port, run)
        stored_s = time.perf_counter() - run.started
        run.stored = args.events
        run.point("all stored (final)")
        cpu = cpu_seconds(server.pid) - cpu_before
        stop.set()
        watcher.join()
        print()
        server.stop()
        if server.proc.returncode not in (0, -15):
            print(f"server exited with {server.proc.returncode}:\n{server.tail()}")
        info["sizes"] = directory_sizes(server.data_dir)
        stored_events, stored_profiles = count_rows(server.data_dir / "store.sqlite3")
        info["figures"] = {
            "send_s": send_s,
            "stored_s": stored_s,
            "stored_at_sent": sent.stored,  # None: not sampled yet
            "stored_events": stored_events,
            "stored_profiles": stored_profiles,
            "expected_profiles": expected_profiles,
            "server_cpu_s": cpu,
        }
        ok = stored_events == args.events and stored_profiles == expected_profiles
        markdown = report(args, run, info)
        replace_section(args.results, "memory", markdown)
        print()
        print(markdown)
        print(f"(written to {args.results})")
    finally:
        server.stop()
        if args.keep:
            print(f"data directory kept: {server.data_dir}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
