"""Flows benchmark (issue 13), against a real `trackhouse serve` on the embedded store.

    .venv/bin/python bench/flows.py [--part delay,latency] [--profiles 100000]
        [--rate 1000] [--seconds 20] [--flows 10]

- delay: `--profiles` profiles enter a live flow (a metric trigger, a 1-day delay, an email)
  through bulk jobs of 1,000 events, with the clock frozen; then one `POST
  /admin/clock/advance` of a day runs every email step. Reported: the steps/s of the advance
  (target: report), beside the same run's baseline, the events/s with which processing stored
  and entered those events (their ratio), and the outbox checked to hold every email.
- latency: `--flows` live flows, each on a metric of its own with one webhook action to a
  receiver in a process of its own (bench/webhook_receiver.py); `--rate` events/s for
  `--seconds`, spread over the metrics so that each event enters one flow. Reported: the time
  from each event's 202 to its webhook arriving, p50 / p99 / max (target p99 < 1 s on real
  time), beside the same run's 202 response times, and that every webhook arrived.

The server runs with `--allow-http-webhooks` (the receiver is on loopback), rate limits off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from trackhouse.backends import STORE_FILE

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_KEY = "pk_0123456789abcdef0123456789abcdef01"
ADMIN_KEY = "pk_adm1n0000000000000000000000000000"
REVISION = "2026-10-15"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`trackhouse serve --processing P` (auto: serve's default, a second process of its own on
    two cores); with "split", `serve --no-process` and a `trackhouse process` started beside it
    by hand."""

    def __init__(self, data: Path, processing: str = "auto") -> None:
        split = processing == "split"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, TRACKHOUSE_PRIVATE_KEY=PRIVATE_KEY, TRACKHOUSE_PUBLIC_KEY="TrkHs1",
                   TRACKHOUSE_ADMIN_KEY=ADMIN_KEY, TRACKHOUSE_RATE_LIMITS="off")  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trackhouse", "serve", "--data-dir", str(data), "--port",
             str(self.port), "--allow-http-webhooks", "--quiet",
             *(["--no-process"] if split else ["--processing", processing])],
            env=env,
        )  # fmt: skip
        self.worker = None
        self._wait()
        if split:  # once serve has made the data directory
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "trackhouse", "process", "--data-dir", str(data),
                 "--allow-http-webhooks"], env=env,
            )  # fmt: skip

    def _wait(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/openapi.json", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=600, headers={
            "Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": REVISION,
            "Content-Type": "application/vnd.api+json"})  # fmt: skip

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=900,
                            headers={"Authorization": f"Klaviyo-API-Key {ADMIN_KEY}"})  # fmt: skip

    def stop(self) -> None:
        for process in (self.process, self.worker):
            if process is not None:
                process.terminate()
                process.wait(60)


def event(metric: str, email: str, **attributes: Any) -> dict[str, Any]:
    return {
        "properties": attributes.pop("properties", {}),
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
        **attributes,
    }


def metric_id(api: httpx.Client, admin: httpx.Client, name: str) -> str:
    body = {"data": {"type": "event", "attributes": event(name, "seed@example.com",
                                                           backfill=True)}}  # fmt: skip
    r = api.post("/api/events", json=body)
    assert r.status_code == 202, r.text
    waited = admin.post("/admin/wait?timeout=300")
    assert waited.status_code == 200, waited.text
    for m in api.get("/api/metrics").json()["data"]:
        if m["attributes"]["name"] == name:
            return str(m["id"])
    raise LookupError(name)


def live_flow(api: httpx.Client, name: str, trigger: str, actions: list[dict[str, Any]]) -> str:
    definition = {"triggers": [{"type": "metric", "id": trigger}],
                  "entry_action_id": actions[0]["temporary_id"], "actions": actions}  # fmt: skip
    r = api.post("/api/flows", json={"data": {"type": "flow", "attributes": {
        "name": name, "definition": definition}}})  # fmt: skip
    assert r.status_code == 201, r.text
    flow_id = str(r.json()["data"]["id"])
    live = {"data": {"type": "flow", "id": flow_id, "attributes": {"status": "live"}}}
    assert api.patch(f"/api/flows/{flow_id}", json=live).status_code == 200
    return flow_id


def part_delay(args: argparse.Namespace, work: Path) -> str:
    server = Server(work / "delay")
    try:
        with server.api() as api, server.admin() as admin:
            admin.post("/admin/clock", json={"now": "2026-06-01T00:00:00Z"})
            viewed = metric_id(api, admin, "Viewed Product")
            live_flow(api, "Follow-up", viewed, [
                {"temporary_id": "wait", "type": "time-delay", "links": {"next": "mail"},
                 "data": {"unit": "days", "value": 1}},
                {"temporary_id": "mail", "type": "send-email", "links": {"next": None},
                 "data": {"status": "live", "message": {"subject_line": "Still {{ event.n }}?"}}},
            ])  # fmt: skip
            started = time.perf_counter()
            for start in range(0, args.profiles, 1000):
                groups = [{"type": "event-bulk-create", "attributes": {
                    "profile": {"data": {"type": "profile",
                                         "attributes": {"email": f"p{n}@example.com"}}},
                    "events": {"data": [{"type": "event", "attributes": {
                        "properties": {"n": n},
                        "metric": {"data": {"type": "metric",
                                            "attributes": {"name": "Viewed Product"}}}}}]},
                }} for n in range(start, min(start + 1000, args.profiles))]  # fmt: skip
                attributes = {"events-bulk-create": {"data": groups}}
                body = {"data": {"type": "event-bulk-create-job", "attributes": attributes}}
                r = api.post("/api/event-bulk-create-jobs", json=body)
                assert r.status_code == 202, r.text
            assert admin.post("/admin/wait?timeout=300").status_code == 200
            entered = time.perf_counter() - started
            started = time.perf_counter()
            r = admin.post("/admin/clock/advance?timeout=300", json={"seconds": 86400})
            assert r.status_code == 200, r.text
            advanced = time.perf_counter() - started
    finally:
        server.stop()
    with sqlite3.connect(work / "delay" / STORE_FILE) as db:
        sent = db.execute("SELECT count(*) FROM outbox WHERE status = 'sent'").fetchone()[0]
        completed = db.execute("SELECT count(*) FROM flow_runs WHERE status = 'completed'"
                               ).fetchone()[0]  # fmt: skip
    steps, events = args.profiles / advanced, args.profiles / entered
    return "\n".join([
        f"- profiles: {args.profiles:,}; storing and entering them (bulk jobs of 1,000, then "
        f"/admin/wait): {entered:.1f} s, **{events:,.0f} events/s** (the baseline)",
        f"- one advance of a day past the delay: {advanced:.1f} s, **{steps:,.0f} steps/s**; "
        f"ratio to the baseline **{steps / events:.2f}×**",
        f"- checked in the store afterwards: {sent:,} emails sent, {completed:,} runs completed",
    ])  # fmt: skip


class Receiver:
    """bench/webhook_receiver.py under uvicorn, in a process of its own. (The standard
    library's ThreadingHTTPServer in this process, used before, tops out near 1,000 requests a
    second here: the receiver, not the server under test, set the limit.)"""

    def __init__(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/hook"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "webhook_receiver:app", "--app-dir",
             str(ROOT / "bench"), "--port", str(port), "--no-access-log",
             "--log-level", "warning"],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the webhook receiver did not start")

    def arrived(self) -> dict[int, float]:
        found = msgspec.json.decode(httpx.get(self.url, timeout=60).content)
        return {int(n): at for n, at in found.items()}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def send_paced(url: str, rate: int, seconds: float, metrics: list[str],
                     accepted: dict[int, float], answered: list[float],
                     sent_for: list[float]) -> None:  # fmt: skip
    """`rate` create-event requests a second over 64 keep-alive connections, each written and
    read with asyncio's streams (httpx's own client tops out near 300 requests/s here, on
    one core)."""
    host, port = url.removeprefix("http://").split(":")
    total = int(rate * seconds)
    start = time.perf_counter()

    def request(n: int) -> bytes:
        body = msgspec.json.encode(
            {
                "data": {
                    "type": "event",
                    "attributes": event(
                        metrics[n % len(metrics)], f"p{n % 5000}@example.com", properties={"n": n}
                    ),
                }
            }
        )
        head = (f"POST /api/events HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Klaviyo-API-Key {PRIVATE_KEY}\r\nrevision: {REVISION}\r\n"
                "Content-Type: application/vnd.api+json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
        return head.encode() + body

    async def worker(first: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for n in range(first, total, 64):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            started = time.perf_counter()
            writer.write(request(n))
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 202"):
                accepted[n] = time.time()
                answered.append(time.perf_counter() - started)
        writer.close()

    await asyncio.gather(*(worker(i) for i in range(64)))
    sent_for[0] = time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def part_latency(args: argparse.Namespace, work: Path) -> str:
    receiver = Receiver()
    server = Server(work / "latency", args.processing)
    accepted: dict[int, float] = {}
    answered: list[float] = []
    sent_for = [0.0]
    try:
        with server.api() as api, server.admin() as admin:
            names = [f"Metric {i}" for i in range(args.flows)]
            for name in names:
                trigger = metric_id(api, admin, name)
                live_flow(api, name, trigger, [
                    {"temporary_id": "hook", "type": "send-webhook", "links": {"next": None},
                     "data": {"status": "live", "message": {
                         "url": receiver.url, "body": '{"n": {{ event.n }}}'}}},
                ])  # fmt: skip
            asyncio.run(send_paced(server.url, args.rate, args.seconds, names, accepted,
                                   answered, sent_for))  # fmt: skip
            deadline = time.monotonic() + 120
            while len(arrived := receiver.arrived()) < len(accepted) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.5)
    finally:
        server.stop()
        receiver.stop()
    latencies = [arrived[n] - at for n, at in accepted.items() if n in arrived]
    missing = len(accepted) - len(latencies)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    where = (
        f", serve --processing {args.processing}"
        if args.processing != "split"
        else (", serve --no-process beside a trackhouse process")
    )
    return "\n".join([
        f"- {len(accepted):,} events accepted, asked at {args.rate:,}/s for {args.seconds:g} s, "
        f"sent in {sent_for[0]:.1f} s ({len(accepted) / sent_for[0]:,.0f}/s), over "
        f"{args.flows} live flows (one webhook each){where}; {missing} webhooks missing",
        f"- 202 → webhook at the receiver: p50 {p50 * 1000:.0f} ms, **p99 {p99 * 1000:.0f} ms**,"
        f" max {max(latencies) * 1000:.0f} ms",
        f"- baseline, the 202s themselves: p50 {statistics.median(answered) * 1000:.1f} ms, "
        f"p99 {percentile(answered, 0.99) * 1000:.1f} ms; webhook p99 / 202 p99 = "
        f"{p99 / percentile(answered, 0.99):.1f}×",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="delay,latency")
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--flows", type=int, default=10)
    where = (
        "latency: serve --processing auto (the default: a second process on two cores), "
        "thread, process, or split (serve --no-process and a trackhouse process)"
    )
    parser.add_argument(
        "--processing", choices=["auto", "thread", "process", "split"], default="auto", help=where
    )
    args = parser.parse_args()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.part.split(","):
            lines = {"delay": part_delay, "latency": part_latency}[part](args, Path(tmp))
            print(f"## {part}\n{lines}", flush=True)


if __name__ == "__main__":
    main()
