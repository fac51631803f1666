"""Ingestion benchmark: POST /api/events and bulk create jobs under wrk, against a bare baseline.

    .venv/bin/python bench/ingest.py [--runs 3] [--duration 10] [--connections 1,4,16,64,256]
    .venv/bin/python bench/ingest.py --smoke      # seconds: 1 s runs at 1 and 4 connections

The server under test, `trackhouse serve --no-rate-limits` (the processor in the same process,
as in production; also `--no-process` for scenario 1, the accept path alone), runs on core 0
(`taskset -c 0`) with a fresh data directory for every run; wrk runs on core 1 (`taskset -c
1`) for a fixed duration, posting bodies from bench/wrk/post.lua that vary `unique_id` and the
profile per request. In the same run, interleaved with it, the baseline: bench/baseline_app.py,
a bare ASGI app served by the same uvicorn configuration (httptools, one process, no access
log) on core 0, that reads the body and answers 202. Every figure is reported as a median with
the min–max over the runs, and as a ratio to the baseline of the same run.

Scenarios (every answer must be a 202, which means durably logged):
1. POST /api/events with a ~1 KB create-event body, swept over 1, 4, 16, 64, 256 connections
   (64 is the headline: targets ≥ 10,000 requests/s and ≥ 0.5× the baseline);
2. POST /api/event-bulk-create-jobs with 1,000-event bodies (target ≥ 60,000 events/s).

Writes the "Ingest" section of bench/RESULTS.md (other sections are kept), a plot of throughput
and p99 against connections (bench/ingest-concurrency.png) and the raw figures as JSON. Installs
wrk (apt-get, when root) and matplotlib (the venv's pip) when missing.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA = BENCH / "wrk" / "post.lua"
RESULTS = BENCH / "RESULTS.md"
PLOT = BENCH / "ingest-concurrency.png"
RAW = BENCH / "ingest-results.json"

sys.path.insert(0, str(ROOT / "tests"))
from conftest import bulk_body, bulk_event, event_body  # noqa: E402  (the tests' body shapes)

PUBLIC_KEY = "TrkHs1"
PRIVATE_KEY = "pk_0123456789abcdef0123456789abcdef01"
ADMIN_KEY = "pk_adm1n0000000000000000000000000000"
SERVER_CORE, CLIENT_CORE = "0", "1"
SINGLE_PATH = "/api/events"
BULK_PATH = "/api/event-bulk-create-jobs"
BULK_GROUPS, BULK_GROUP_EVENTS = 100, 10  # 1,000 events a request
SINGLE_PROFILES, BULK_PROFILES_PER_GROUP = 10_000, 100  # {{P}} runs over these

BASELINE = "baseline"
TRACKHOUSE = "trackhouse"
NO_PROCESS = "trackhouse --no-process"

TARGET_RPS = 10_000
TARGET_RATIO = 0.5
TARGET_BULK_EVENTS = 60_000


# -- bodies ------------------------------------------------------------------------------------


def single_template(now: datetime) -> str:
    """A ~1 KB create-event body as an SDK sends it; {{U}}/{{P}} are filled in per request."""
    body = event_body(
        metric="Viewed Product",
        profile_attributes={
            "email": "sarah.mason.{{P}}@klaviyo-demo.com",
            "external_id": "cust-{{P}}",
            "first_name": "Sarah",
            "last_name": "Mason",
            "location": {"city": "Boston", "region": "MA", "country": "United States"},
            "properties": {"plan": "trial", "newsletter": True},
        },
        properties={
            "ProductID": 1111,
            "SKU": "WINNIEPOOH-HC",
            "ProductName": "Winnie the Pooh",
            "Quantity": 1,
            "Brand": "Kids Book",
            "Categories": ["Fiction", "Children", "Classics"],
            "ItemPrice": 9.99,
            "RowTotal": 9.99,
            "ProductURL": "http://www.example.com/path/to/product",
            "ImageURL": "http://www.example.com/path/to/product/image.png",
            "$extra": {"ShippingMethod": "standard", "Coupon": None},
        },
        time=now.isoformat(timespec="seconds"),
        value=9.99,
        value_currency="USD",
        unique_id="{{U}}",
    )
    return json.dumps(body)


def bulk_template(now: datetime) -> str:
    """A bulk-create body of 100 profiles × 10 events; {{U}}/{{P}} are filled in per request."""
    groups = []
    for g in range(BULK_GROUPS):
        profile = {"email": f"shopper{g}.{{{{P}}}}@klaviyo-demo.com", "first_name": "Sarah"}
        events = [
            bulk_event(
                metric=("Viewed Product", "Added to Cart", "Placed Order")[i % 3],
                properties={
                    "ProductID": g * 100 + i,
                    "ProductName": "Winnie the Pooh",
                    "Brand": "Kids Book",
                    "Categories": ["Books", "Children"],
                    "Price": 9.99,
                },
                time=now.isoformat(timespec="seconds"),
                value=9.99,
                unique_id=f"{{{{U}}}}-{g}-{i}",
            )
            for i in range(BULK_GROUP_EVENTS)
        ]
        groups.append((profile, events))
    return json.dumps(bulk_body(groups))


def fill(template: str, unique: str, profile: int) -> bytes:
    return template.replace("{{U}}", unique).replace("{{P}}", str(profile)).encode()


@dataclass(frozen=True)
class Scenario:
    name: str  # "single" or "bulk"
    path: str
    template: str
    profiles: int  # {{P}} = request counter % profiles
    events_per_request: int
    log_entries_per_request: int  # a bulk request is one log entry per profile group


# -- tools -------------------------------------------------------------------------------------


def ensure_wrk() -> str | None:
    """wrk's path, installing Debian's package first when missing and running as root."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("installing wrk (apt-get)…", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            return None
    return shutil.which("wrk")


def ensure_matplotlib() -> bool:
    """matplotlib is a bench-time tool only (pyproject's `bench` extra), installed on demand."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("installing matplotlib into the venv (pip)…", flush=True)
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if subprocess.run([*pip, "-e", f"{ROOT}[bench]"], capture_output=True).returncode != 0:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_times() -> dict[str, list[int]]:
    """Jiffies per core from /proc/stat: user nice system idle iowait irq softirq steal."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d", line):
                name, *values = line.split()
                out[name.removeprefix("cpu")] = [int(v) for v in values[:8]]
    return out


def core_shares(before: dict, after: dict, core: str) -> dict[str, float]:
    """Shares of the core's time between two readings: busy (all but idle and iowait), and
    of that the kernel's part (system, irq, softirq) and the hypervisor's (steal)."""
    if core not in before or core not in after:
        return {}
    d = [a - b for a, b in zip(after[core], before[core], strict=True)]
    total = sum(d)
    if not total:
        return {}
    _user, _nice, system, idle, iowait, irq, softirq, steal = d
    return {
        "busy": (total - idle - iowait) / total,
        "kernel": (system + irq + softirq) / total,
        "steal": steal / total,
    }


# -- one run -----------------------------------------------------------------------------------


@dataclass
class Measurement:
    scenario: str
    target: str
    connections: int
    run: int
    duration_s: float = 0.0
    requests: int = 0
    rps: float = 0.0
    events_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    max_ms: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0  # wrk's own count, from its text output
    socket_errors: dict[str, int] = field(default_factory=dict)
    server_core_busy: float | None = None
    server_core_kernel: float | None = None  # system + irq + softirq: TCP, fsync, …
    server_core_steal: float | None = None
    client_core_busy: float | None = None
    log_entries: int | None = None  # in the log after the run (the preflight's included)
    logged_requests: int | None = None  # acknowledged-or-later requests found in the log
    processed_entries: int | None = None  # log entries the processor had stored at shutdown
    stored_events: int | None = None
    wrk_text_rps: float | None = None

    @property
    def non_202(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "202")

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(text: str, m: Measurement) -> None:
    """Fill `m` from wrk's output: the WRK_JSON line of post.lua's done(), cross-checked with
    the text wrk prints itself (Requests/sec, the --latency distribution, Non-2xx)."""
    found = re.search(r"^WRK_JSON (.*)$", text, re.M)
    if not found:
        raise RuntimeError(f"no WRK_JSON line in wrk's output:\n{text}")
    data = json.loads(found.group(1))
    lat = data["latency_us"]
    m.requests = data["requests"]
    m.duration_s = data["duration_us"] / 1e6
    m.rps = m.requests / m.duration_s if m.duration_s else 0.0
    m.p50_ms, m.p90_ms = lat["p50"] / 1e3, lat["p90"] / 1e3
    m.p99_ms, m.p999_ms, m.max_ms = lat["p99"] / 1e3, lat["p99_9"] / 1e3, lat["max"] / 1e3
    m.statuses = {str(k): v for k, v in data["statuses"].items()}
    m.socket_errors = {k: v for k, v in data["errors"].items() if k != "status"}
    if found := re.search(r"Requests/sec:\s+([\d.]+)", text):
        m.wrk_text_rps = float(found.group(1))
    if found := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        m.non_2xx_3xx = int(found.group(1))
    if found := re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
        text_p99 = float(found.group(1)) * UNITS[found.group(2)]
        # The text rounds to 2 decimals of its unit; anything further off is a parsing bug.
        assert abs(text_p99 - m.p99_ms) <= max(0.02, m.p99_ms * 0.01), (text_p99, m.p99_ms)


class ServerProcess:
    """The server under test on core 0: trackhouse (fresh data dir) or the baseline app."""

    def __init__(self, target: str, work: Path) -> None:
        self.target = target
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="ingest-", dir=work))
        self.env = dict(
            os.environ,
            TRACKHOUSE_PUBLIC_KEY=PUBLIC_KEY,
            TRACKHOUSE_PRIVATE_KEY=PRIVATE_KEY,
            TRACKHOUSE_ADMIN_KEY=ADMIN_KEY,
        )
        if target == BASELINE:
            cmd = [sys.executable, str(BENCH / "baseline_app.py"), "--port", str(self.port)]
        else:
            cmd = [sys.executable, "-m", "trackhouse", "serve", "--data-dir", str(self.data_dir)]
            cmd += ["--port", str(self.port), "--no-rate-limits"]
            if target == NO_PROCESS:
                cmd.append("--no-process")
        self.cmd = ["taskset", "-c", SERVER_CORE, *cmd]
        self.output = self.data_dir / "server.out"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited: {self.output.read_text()}")
            try:
                self.request("GET", "/")
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.target} did not start")

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {
                "Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}",
                "revision": "2026-10-15",
                "Content-Type": "application/vnd.api+json",
            }
            conn.request(method, path, body, headers)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def durability(self, m: Measurement, scenario: Scenario, preflight: int) -> None:
        """After stop: requests in the log (≥ the 202s wrk counted), what was processed."""
        log = self.data_dir / "log.sqlite3"
        conn = sqlite3.connect(f"file:{log}?mode=ro", uri=True)
        try:
            (entries,) = conn.execute("SELECT count(*) FROM entries").fetchone()
        finally:
            conn.close()
        m.log_entries = entries
        m.logged_requests = entries // scenario.log_entries_per_request - preflight
        if self.target != TRACKHOUSE:
            return
        conn = sqlite3.connect(f"file:{self.data_dir / 'store.sqlite3'}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT seq FROM positions WHERE name = 'processor'").fetchone()
            m.processed_entries = row[0] if row else 0
            (m.stored_events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        finally:
            conn.close()


def wrk_command(args: argparse.Namespace, scenario: Scenario, body_file: Path, url: str,
                connections: int, tag: str) -> list[str]:  # fmt: skip
    threads = max(1, min(args.threads, connections))
    return [
        "taskset", "-c", CLIENT_CORE, args.wrk, f"-t{threads}", f"-c{connections}",
        f"-d{args.duration:g}s", "--latency", "--timeout", "10s", "-s", str(LUA), url,
        "--", str(body_file), PRIVATE_KEY, str(scenario.profiles), tag,
    ]  # fmt: skip


def run_one(args: argparse.Namespace, scenario: Scenario, body_file: Path, target: str,
            connections: int, run: int, profile_to: Path | None = None) -> Measurement:  # fmt: skip
    m = Measurement(scenario.name, target, connections, run)
    tag = f"r{run}c{connections}"
    with ServerProcess(target, args.work) as server:
        # One request first: a body the server refuses should stop the benchmark with its error,
        # not show up as a fast stream of 400s.
        status, answer = server.request(
            "POST", scenario.path, fill(scenario.template, f"{tag}-preflight", 0)
        )
        if status != 202:
            raise RuntimeError(f"{target} answered {status} to the {scenario.name} body: {answer}")
        spy = None
        if profile_to is not None and server.proc is not None:
            spy = subprocess.Popen(
                ["taskset", "-c", CLIENT_CORE, args.py_spy_bin, "record", "--pid",
                 str(server.proc.pid), "--gil", "--threads", "--rate", "250",
                 "--format", "raw",
                 "--output", str(profile_to),
                 "--duration", str(max(1, int(args.duration) - 1)), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(0.5)
        url = f"http://127.0.0.1:{server.port}{scenario.path}"
        cmd = wrk_command(args, scenario, body_file, url, connections, tag)
        before = cpu_times()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 120)
        after = cpu_times()
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
        parse_wrk(done.stdout, m)
        if spy is not None:
            _, err = spy.communicate(timeout=60)
            if spy.returncode != 0:
                print(f"  py-spy failed: {err.decode(errors='replace')[-500:]}")
        m.events_per_s = m.rps * scenario.events_per_request
        server_core = core_shares(before, after, SERVER_CORE)
        m.server_core_busy = server_core.get("busy")
        m.server_core_kernel = server_core.get("kernel")
        m.server_core_steal = server_core.get("steal")
        m.client_core_busy = core_shares(before, after, CLIENT_CORE).get("busy")
        server.stop()
        if target != BASELINE:
            server.durability(m, scenario, preflight=1)
    flags = []
    if m.non_202:
        flags.append(f"NON-202: {m.statuses}")
    if m.errors:
        flags.append(f"socket errors: {m.socket_errors}")
    if m.logged_requests is not None and m.logged_requests < m.statuses.get("202", 0):
        flags.append(f"ONLY {m.logged_requests} LOGGED")
    print(
        f"  {scenario.name:6} {target:24} c={connections:<3} run {run}: {m.rps:9,.0f} req/s"
        + (f" ({m.events_per_s:,.0f} events/s)" if scenario.events_per_request > 1 else "")
        + f", p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms; server core {pct(m.server_core_busy)}"
        f" (kernel {pct(m.server_core_kernel)}, steal {pct(m.server_core_steal)}),"
        f" wrk core {pct(m.client_core_busy)}" + ("  " + "; ".join(flags) if flags else ""),
        flush=True,
    )
    return m


def failed(m: Measurement) -> bool:
    """A non-202 answer, a socket error, or fewer requests in the log than 202s counted."""
    short = m.logged_requests is not None and m.logged_requests < m.statuses.get("202", 0)
    return bool(m.non_202 or m.errors or short)


def pct(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.0f} %"


# -- reporting ---------------------------------------------------------------------------------


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """median (min–max) of the runs."""
    if not values:
        return "–"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def select(ms: list[Measurement], scenario: str, target: str, c: int) -> list[Measurement]:
    return [m for m in ms if m.scenario == scenario and m.target == target and m.connections == c]


def ratios(ms: list[Measurement], scenario: str, target: str, c: int, attr: str) -> list[float]:
    """Per run: the target's figure over the same run's baseline figure."""
    base = {m.run: getattr(m, attr) for m in select(ms, scenario, BASELINE, c)}
    return [
        getattr(m, attr) / base[m.run] for m in select(ms, scenario, target, c) if base.get(m.run)
    ]


def versions(wrk: str) -> str:
    def v(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    out = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    wrk_version = (out.stdout + out.stderr).split("[")[0].replace("wrk", "").strip() or "?"
    return (
        f"trackhouse {v('trackhouse')}{git_state()}, Python {platform.python_version()},"
        f" uvicorn {v('uvicorn')}, httptools {v('httptools')}, uvloop {v('uvloop')},"
        f" starlette {v('starlette')}, msgspec {v('msgspec')}, SQLite {sqlite3.sqlite_version},"
        f" wrk {wrk_version}"
    )


def git_state() -> str:
    with contextlib.suppress(OSError):
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if head:
            return f" (git {head}{', src/ with uncommitted changes' if dirty else ''})"
    return ""


def machine(work: Path) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        kb = int(f.readline().split()[1])
        ram = f", {kb / 1024**2:.1f} GiB RAM"
    fs = ""
    with contextlib.suppress(OSError, IndexError):
        line = subprocess.run(
            ["df", "-T", str(work)], capture_output=True, text=True
        ).stdout.splitlines()[1]
        fs = f"; data directories on {line.split()[1]} ({line.split()[0]})"
    return f"{cpu}, {os.cpu_count()} cores{ram}{fs}"


def loadavg() -> str:
    with contextlib.suppress(OSError), open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
    return "?"


def shares(runs: list[Measurement], attr: str) -> str:
    """The median of a core-time share over the runs, in %."""
    values = [getattr(m, attr) * 100 for m in runs if getattr(m, attr) is not None]
    return f"{statistics.median(values):.0f}" if values else "–"


def headline_rows(ms: list[Measurement], scenario: str, c: int, targets: list[str]) -> list[str]:
    rows = []
    for target in targets:
        runs = select(ms, scenario, target, c)
        if not runs:
            continue
        ratio = (
            "1" if target == BASELINE else spread(ratios(ms, scenario, target, c, "rps"), "{:.2f}")
        )
        p99_ratio = (
            "1"
            if target == BASELINE
            else spread(ratios(ms, scenario, target, c, "p99_ms"), "{:.1f}")
        )
        cells = [f"`{target}`", spread([m.rps for m in runs])]
        if scenario == "bulk":
            cells.append(spread([m.events_per_s for m in runs]))
        cells += [
            ratio,
            spread([m.p50_ms for m in runs], "{:.2f}"),
            spread([m.p99_ms for m in runs], "{:.2f}"),
            p99_ratio,
            str(sum(m.non_202 for m in runs) + sum(m.errors for m in runs)),
            f"{shares(runs, 'server_core_busy')} ({shares(runs, 'server_core_kernel')})",
            shares(runs, "client_core_busy"),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


HEAD = (
    "| server | req/s | ratio to baseline | p50 ms | p99 ms | p99 ratio | non-202 / errors"
    " | server core busy % (kernel %) | wrk core busy % |\n|---|---|---|---|---|---|---|---|---|"
)
BULK_HEAD = (
    "| server | req/s | events/s | ratio to baseline | p50 ms | p99 ms | p99 ratio"
    " | non-202 / errors | server core busy % (kernel %) | wrk core busy % |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def verdict(value: float, target: float, unit: str) -> str:
    met = "**met**" if value >= target else "**not met**"
    return (
        f"{met} (median {value:,.2f} {unit})"
        if value < 10
        else f"{met} (median {value:,.0f} {unit})"
    )


def report(args: argparse.Namespace, ms: list[Measurement], info: dict[str, Any],
           plot: Path | None) -> str:  # fmt: skip
    c = args.headline
    lines = [
        "## Ingest (`bench/ingest.py`)",
        "",
        f"- **Date**: {info['date']} (load average before {info['load_before']},"
        f" after {info['load_after']})",
        f"- **Command**: `{info['command']}`",
        f"- **Machine**: {info['machine']}",
        f"- **Versions**: {info['versions']}",
        f"- **Set-up**: the server on core 0 (`taskset -c {SERVER_CORE}`), fresh data directory"
        f" per run; `taskset -c {CLIENT_CORE} wrk -t{args.threads} -cN -d{args.duration:g}s"
        " --latency -s bench/wrk/post.lua`; baseline = `bench/baseline_app.py` (bare ASGI app,"
        " same uvicorn + httptools configuration, reads the body, answers 202). Rate limits off,"
        " all validation on, every 202 durably logged. Each figure: median (min–max) of"
        f" {args.runs} run(s), baseline and trackhouse interleaved; ratios are taken per run"
        " against the same run's baseline.",
        f"- **Bodies**: create-event {info['single_bytes']:,} bytes; bulk"
        f" {BULK_GROUPS * BULK_GROUP_EVENTS:,} events ({BULK_GROUPS} profiles ×"
        f" {BULK_GROUP_EVENTS}) {info['bulk_bytes']:,} bytes; `unique_id` differs in every"
        f" request and the profile cycles over {SINGLE_PROFILES:,} (bulk:"
        f" {BULK_GROUPS * BULK_PROFILES_PER_GROUP:,}), so processing does real work.",
        "",
        f"### 1. `POST /api/events`, {c} connections",
        "",
        HEAD,
        *headline_rows(ms, "single", c, [BASELINE, TRACKHOUSE, NO_PROCESS]),
        "",
    ]
    th = [m.rps for m in select(ms, "single", TRACKHOUSE, c)]
    if th:
        lines.append(
            f"Targets (with processing in the serving process, as in production):"
            f" ≥ {TARGET_RPS:,} req/s {verdict(statistics.median(th), TARGET_RPS, 'req/s')};"
            f" ≥ {TARGET_RATIO}× the baseline"
            f" {verdict(statistics.median(ratios(ms, 'single', TRACKHOUSE, c, 'rps')), TARGET_RATIO, '×')}."  # noqa: E501
        )
        lines.append("")
    lines += [
        "### Concurrency sweep (`POST /api/events`)",
        "",
        "| connections | baseline req/s | baseline p99 ms | trackhouse req/s | trackhouse p99 ms"
        " | ratio (req/s) |",
        "|---|---|---|---|---|---|",
    ]
    for conn in args.connections:
        base, th_runs = select(ms, "single", BASELINE, conn), select(ms, "single", TRACKHOUSE, conn)
        lines.append(
            f"| {conn} | {spread([m.rps for m in base])}"
            f" | {spread([m.p99_ms for m in base], '{:.2f}')}"
            f" | {spread([m.rps for m in th_runs])}"
            f" | {spread([m.p99_ms for m in th_runs], '{:.2f}')}"
            f" | {spread(ratios(ms, 'single', TRACKHOUSE, conn, 'rps'), '{:.2f}')} |"
        )
    lines.append("")
    if plot is not None:
        rel = os.path.relpath(plot, args.results.parent)
        lines += [f"![throughput and p99 against connections]({rel})", ""]
    bulk_runs = select(ms, "bulk", TRACKHOUSE, args.bulk_connections)
    lines += [
        f"### 2. `POST /api/event-bulk-create-jobs`, {BULK_GROUPS * BULK_GROUP_EVENTS:,} events"
        f" a request, {args.bulk_connections} connection{'s' if args.bulk_connections > 1 else ''}",
        "",
        BULK_HEAD,
        *headline_rows(ms, "bulk", args.bulk_connections, [BASELINE, TRACKHOUSE, NO_PROCESS]),
        "",
    ]
    if bulk_runs:
        med = statistics.median(m.events_per_s for m in bulk_runs)
        text = (
            f"Target: ≥ {TARGET_BULK_EVENTS:,} events/s accepted durably"
            f" {verdict(med, TARGET_BULK_EVENTS, 'events/s')} with processing in the serving"
            " process"
        )
        accept_only = select(ms, "bulk", NO_PROCESS, args.bulk_connections)
        if accept_only:
            med = statistics.median(m.events_per_s for m in accept_only)
            text += f"; {verdict(med, TARGET_BULK_EVENTS, 'events/s')} with `--no-process`"
        lines += [text + ".", ""]
    lines += durability_lines(ms), ""
    bound = sorted(
        {(m.scenario, m.connections) for m in ms if m.target == BASELINE}
        - {
            (m.scenario, m.connections)
            for m in ms
            if m.target == BASELINE and (m.client_core_busy or 0) < 0.9
        }
    )
    if bound:
        lines += [
            "Client-bound: in "
            + ", ".join(f"{s} at {c} connection{'s' if c > 1 else ''}" for s, c in bound)
            + " the baseline kept wrk's core ≥ 90 % busy in every run, so wrk (building the"
            " bodies in Lua) was the limit there: that baseline figure is a lower bound and"
            " the ratio to it an upper bound.",
            "",
        ]
    if "profile" in info:
        lines += [
            f"### Where the time goes: `py-spy record --gil --threads` of `trackhouse` at {c}"
            " connections",
            "",
            f"One extra run ({info['profile']['rps']:,.0f} req/s under the profiler), sampled at"
            " 250 Hz; the shares are of the samples in which some thread held the GIL.",
            "",
            "```text",
            info["profile"]["summary"],
            "```",
            "",
        ]
    return "\n".join(lines)


def durability_lines(ms: list[Measurement]) -> str:
    checked = [m for m in ms if m.logged_requests is not None]
    short = [m for m in checked if m.logged_requests < m.statuses.get("202", 0)]
    bad = [m for m in ms if m.non_202 or m.errors]
    text = (
        f"Checks: in all {len(checked)} trackhouse runs the log held at least as many requests as"
        " wrk counted 202s (wrk drops the answers still in flight when it stops, so the log may"
        " hold a few more)."
        if not short
        else f"**Durability check failed** in {len(short)} run(s): "
        + ", ".join(f"{m.target} c={m.connections} run {m.run}" for m in short)
        + "."
    )
    text += (
        " No answer other than 202 and no socket errors."
        if not bad
        else " **Non-202 answers or socket errors** in: "
        + ", ".join(
            f"{m.scenario} {m.target} c={m.connections} run {m.run} ({m.statuses},"
            f" {m.socket_errors})"
            for m in bad
        )
        + "."
    )
    processed = [m for m in ms if m.processed_entries is not None and m.log_entries]
    if processed:
        shares = [m.processed_entries / m.log_entries for m in processed]
        text += (
            " With processing in the serving process, the processor had stored"
            f" {spread([s * 100 for s in shares], '{:.0f}')} % of the logged entries by the"
            " time the server stopped (the rest waits in the log: acceptance outran"
            " processing)."
        )
    return text


def replace_section(path: Path, name: str, markdown: str) -> None:
    """Put `markdown` between this section's markers in `path`, keeping the other sections."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else ""
    if not text:
        text = (
            "# Benchmark results\n\nWritten by `bench/run_all.sh` (or each benchmark alone, which"
            " replaces only its own section). What each benchmark measures: `bench/README.md`.\n\n"
        )
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def plot_sweep(args: argparse.Namespace, ms: list[Measurement], path: Path) -> bool:
    if not ensure_matplotlib():
        print("matplotlib unavailable: no plot")
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    for target, style in ((BASELINE, "o--"), (TRACKHOUSE, "s-"), (NO_PROCESS, "^:")):
        xs, rps, rps_err, p99, p99_err = [], [], [[], []], [], [[], []]
        for c in args.connections:
            runs = select(ms, "single", target, c)
            if not runs:
                continue
            xs.append(c)
            for values, medians, err in (
                ([m.rps for m in runs], rps, rps_err),
                ([m.p99_ms for m in runs], p99, p99_err),
            ):
                med = statistics.median(values)
                medians.append(med)
                err[0].append(med - min(values))
                err[1].append(max(values) - med)
        if not xs:
            continue
        ax_rps.errorbar(xs, rps, yerr=rps_err, fmt=style, capsize=3, label=target)
        ax_p99.errorbar(xs, p99, yerr=p99_err, fmt=style, capsize=3, label=target)
    for ax in (ax_rps, ax_p99):
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.connections, [str(c) for c in args.connections])
        ax.set_xlabel("connections (wrk, core 1)")
        ax.grid(True, which="both", alpha=0.3)
    ax_rps.axhline(TARGET_RPS, color="grey", lw=0.8, ls="--", label=f"target {TARGET_RPS:,}")
    for ax in (ax_rps, ax_p99):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    ax_rps.set_ylabel("requests/s (server on 1 core)")
    ax_rps.set_ylim(bottom=0)
    ax_p99.set_yscale("log")
    ax_p99.set_ylabel("p99 latency (ms)")
    fig.suptitle(
        f"POST /api/events, ~1 KB body: median and min–max of {args.runs} run(s),"
        f" {args.duration:g} s each ({time.strftime('%Y-%m-%d')})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def summarize_profile(raw: Path, top: int = 25) -> str:
    """py-spy's collapsed stacks (--threads --gil) summed up: the share of GIL-holding samples
    per thread, then the top frames by own time and by time including callees."""
    threads: dict[str, int] = {}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        thread, *frames = stack.split(";")
        name = thread.partition(": ")[2] or thread  # "thread (1234): processor"
        if not frames:
            frames = ["(no Python frame)"]
        threads[name] = threads.get(name, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    if not total:
        return "(no samples)"
    out = [f"{total} samples of the thread holding the GIL", "", "by thread:"]
    out += [
        f"  {n / total * 100:5.1f} %  {t}"
        for t, n in sorted(threads.items(), key=lambda kv: -kv[1])
    ]
    out += ["", "own time:"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {n / total * 100:5.1f} %  {frame}")
    out += [
        "",
        "including callees (trackhouse's own frames; coroutines resumed by uvloop's C code",
        "have stacks that start at the coroutine, so `serve` leaves out most request work):",
    ]
    ours = [(f, n) for f, n in inclusive.items() if "trackhouse/" in f]
    for frame, n in sorted(ours, key=lambda kv: -kv[1])[:top]:
        out.append(f"  {n / total * 100:5.1f} %  {frame}")
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument(
        "--connections",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[1, 4, 16, 64, 256],
        help="the sweep of scenario 1 (comma-separated)",
    )
    parser.add_argument("--headline", type=int, default=64, help="connections of scenario 1")
    parser.add_argument("--bulk-connections", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (-t)")
    parser.add_argument("--smoke", action="store_true", help="1 s runs at 1 and 4 connections")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--json", type=Path, default=RAW, help="raw figures of every run")
    parser.add_argument("--work", type=Path, default=None, help="parent of the data directories")
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="FILE",
        help="also profile trackhouse under scenario 1 (one extra run) into FILE (collapsed"
        " stacks) and print its top frames; installs py-spy into the venv if missing",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration = 1
        args.runs = 1
        args.connections = [1, 4]
        args.headline = 4
        args.bulk_connections = 1
    if args.headline not in args.connections:
        args.connections = sorted({*args.connections, args.headline})

    if not shutil.which("taskset"):
        sys.exit("taskset (util-linux) is needed")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two cores: one for the server, one for wrk")
    wrk = ensure_wrk()
    if wrk is None:
        sys.exit("wrk is missing and could not be installed (apt-get install wrk, as root)")
    args.wrk = wrk
    if args.py_spy is not None:
        args.py_spy_bin = shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if args.py_spy_bin is None:
            pip = [sys.executable, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[bench]"]
            subprocess.run(pip, check=True)
            args.py_spy_bin = shutil.which("py-spy", path=str(Path(sys.executable).parent))

    own_work = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="trackhouse-ingest-")) if own_work else args.work
    args.work.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).replace(microsecond=0)
    single = Scenario("single", SINGLE_PATH, single_template(now), SINGLE_PROFILES, 1, 1)
    bulk = Scenario(
        "bulk", BULK_PATH, bulk_template(now), BULK_PROFILES_PER_GROUP,
        BULK_GROUPS * BULK_GROUP_EVENTS, BULK_GROUPS,
    )  # fmt: skip
    bodies = {}
    for scenario in (single, bulk):
        bodies[scenario.name] = args.work / f"{scenario.name}.json"
        bodies[scenario.name].write_text(scenario.template)

    command = shlex.join(
        [os.path.relpath(sys.executable, Path.cwd()), os.path.relpath(__file__, Path.cwd())]
        + (sys.argv[1:] if argv is None else argv)
    )
    info = {
        "date": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": command,
        "machine": machine(args.work),
        "versions": versions(wrk),
        "load_before": loadavg(),
        "single_bytes": len(fill(single.template, "r1-1-123456", 1234)),
        "bulk_bytes": len(fill(bulk.template, "r1-1-123", 12)),
    }
    print(f"# ingest benchmark, {info['date']} on {platform.node()}: {info['machine']}")
    print(f"# {info['versions']}")
    print(
        f"# {args.runs} run(s) × {args.duration:g} s; sweep {args.connections};"
        f" bulk at {args.bulk_connections} connections; work dir {args.work}",
        flush=True,
    )
    started = time.monotonic()
    ms: list[Measurement] = []
    try:
        for run in range(1, args.runs + 1):
            for c in args.connections:
                for target in (BASELINE, TRACKHOUSE):
                    ms.append(run_one(args, single, bodies["single"], target, c, run))
            ms.append(run_one(args, single, bodies["single"], NO_PROCESS, args.headline, run))
            for target in (BASELINE, TRACKHOUSE, NO_PROCESS):
                ms.append(run_one(args, bulk, bodies["bulk"], target, args.bulk_connections, run))
        if args.py_spy is not None:
            print(f"profiling trackhouse at {args.headline} connections with py-spy…")
            m = run_one(args, single, bodies["single"], TRACKHOUSE, args.headline, 0, args.py_spy)
            if args.py_spy.exists():
                summary = summarize_profile(args.py_spy)
                args.py_spy.with_suffix(".top.txt").write_text(summary + "\n")
                print(summary)
                info["profile"] = {"rps": m.rps, "summary": summarize_profile(args.py_spy, 15)}
    finally:
        if own_work:
            shutil.rmtree(args.work, ignore_errors=True)
    info["load_after"] = loadavg()
    info["elapsed_s"] = time.monotonic() - started

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"info": info, "runs": [asdict(m) | {"non_202": m.non_202} for m in ms]}, indent=1
        )
        + "\n"
    )
    plot = args.plot if plot_sweep(args, ms, args.plot) else None
    markdown = report(args, ms, info, plot)
    replace_section(args.results, "ingest", markdown)
    print()
    print(markdown)
    print(f"\n({info['elapsed_s']:.0f} s; written to {args.results}, {args.json}"
          + (f", {plot}" if plot else "") + ")")  # fmt: skip
    return 1 if any(failed(m) for m in ms) else 0


if __name__ == "__main__":
    sys.exit(main())
