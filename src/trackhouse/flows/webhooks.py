"""Flow webhooks delivered as Klaviyo delivers them: an HTTP POST of the rendered body with the
action's headers, retried on 429, 500, 502 and 503 (and when no answer comes) up to 17 times
over 24 hours of the account's clock, with exponential back-off; any other answer ends the
delivery (`failed`, with the status). At least once: the attempt is counted and leased in the
store before it is sent, its result recorded after, and a worker that dies in between lets the
lease run out so that another sends it again — every attempt of a step carries the same
`Idempotency-Key` header.

Where they may go: `https` URLs whose host resolves to public addresses only, by default. A
flow is written by anyone with a key of the account, and a webhook to `http://10.0.0.5/…` or
`http://localhost:5432` would make this server call services on its own network for them.
`serve --allow-http-webhooks` (TRACKHOUSE_ALLOW_HTTP_WEBHOOKS=1) also allows `http` and
private, loopback and link-local addresses, for tests. (The address is checked when each
attempt is made; a name that resolves differently between the check and the connection is
not caught.)
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec
import urllib3

from trackhouse.store.flows import DeliveryRow

RETRIED = frozenset((429, 500, 502, 503))
RETRIES = 17
# The waits before retries 1…17: doubling, and adding up to 24 hours.
RETRY_WAITS = [86400 * 2**k / (2**RETRIES - 1) for k in range(RETRIES)]
TIMEOUT_SECONDS = 10.0
LEASE_SECONDS = 600.0  # longer than a round of attempts can take
ROUND = 64  # deliveries claimed from the store at once, at most
SENDERS = 16  # attempts made at once (one slow receiver does not hold the others)
IN_FLIGHT = 2 * SENDERS  # attempts handed to the senders at once
CHUNK = 256  # bytes of an answer read at a time (the time bound is checked between reads)
MAX_ANSWER = 2000  # characters of an answer's body kept as the detail
USER_AGENT = "trackhouse-webhooks"


def lease_seconds() -> float:
    """How long (real time) a claimed attempt is a worker's before another may make it again:
    TRACKHOUSE_WEBHOOK_LEASE_SECONDS (tests shorten it), longer than one attempt can take. A
    lease shorter than a round of attempts may send some twice: still at least once, with the
    step's one key, and only the lease holder records the result."""
    text = os.environ.get("TRACKHOUSE_WEBHOOK_LEASE_SECONDS", "").strip()
    try:
        found = float(text) if text else LEASE_SECONDS
    except ValueError:
        found = LEASE_SECONDS
    return max(found, TIMEOUT_SECONDS + 1)


def allow_private() -> bool:
    setting = os.environ.get("TRACKHOUSE_ALLOW_HTTP_WEBHOOKS", "").strip().lower()
    return setting in ("1", "true", "yes", "on")


def refused(url: str, resolve: bool = True) -> str | None:
    """Why the URL may not be called under the current policy, or None."""
    if allow_private():
        return None
    parts = urlsplit(url)
    if parts.scheme != "https":
        return "webhooks go to https URLs (serve --allow-http-webhooks allows http)"
    host = parts.hostname or ""
    if not resolve:
        return None
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        return f"the host {host[:100]} does not resolve: {exc}"
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            return (f"{host[:100]} resolves to {address}, which is not a public address "
                    "(serve --allow-http-webhooks allows it)")  # fmt: skip
    return None


@dataclass(frozen=True, slots=True)
class Result:
    status_code: int | None
    duration_ms: float
    error: str | None
    detail: str | None  # the answer's body
    refused: bool = False  # the policy forbids the URL: not sent, not retried

    @property
    def retry(self) -> bool:
        return self.status_code is None or self.status_code in RETRIED

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def client() -> urllib3.PoolManager:
    """The connection pools the attempts share (thread-safe): no retries and no redirects of
    their own (a retry is a new attempt, recorded), TIMEOUT_SECONDS to connect and each read,
    TLS verified against the system's certificates."""
    return urllib3.PoolManager(
        maxsize=SENDERS, retries=False,
        timeout=urllib3.Timeout(connect=TIMEOUT_SECONDS, read=TIMEOUT_SECONDS),
    )  # fmt: skip


def send(pools: urllib3.PoolManager, delivery: DeliveryRow) -> Result:
    """One attempt (never raises). At most MAX_ANSWER bytes of the answer are read, and no
    read starts after TIMEOUT_SECONDS (a receiver dripping its answer cannot hold a sender)."""
    why = refused(delivery.url)
    if why is not None:
        return Result(None, 0.0, why, None, refused=True)
    headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json",
               **msgspec.json.decode(delivery.headers),
               "Idempotency-Key": delivery.idempotency_key}  # fmt: skip
    started = time.perf_counter()
    try:
        answer = pools.request("POST", delivery.url, body=(delivery.body or "").encode(),
                               headers=headers, redirect=False,
                               preload_content=False)  # fmt: skip
        kept, whole = b"", False
        try:
            for chunk in answer.stream(CHUNK):
                kept += chunk
                if len(kept) >= MAX_ANSWER or time.perf_counter() - started > TIMEOUT_SECONDS:
                    break
            else:
                whole = True
        finally:
            if whole:
                answer.release_conn()  # read to its end: the connection is kept
            else:
                answer.close()  # the rest unread: the connection is dropped
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        took = (time.perf_counter() - started) * 1000
        return Result(None, took, f"{type(exc).__name__}: {exc}"[:500], None)
    took = (time.perf_counter() - started) * 1000
    text = kept[:MAX_ANSWER].decode("utf-8", "replace")
    return Result(answer.status, took, None, text)


def after(delivery: DeliveryRow, result: Result, at: float) -> tuple[str, float | None, str | None]:
    """What follows an attempt made as of `at`: (status, next attempt, detail)."""
    if result.delivered:
        return "delivered", None, None
    if result.retry and not result.refused and delivery.attempts <= RETRIES:
        return "pending", at + RETRY_WAITS[delivery.attempts - 1], result.error
    if result.status_code is not None:
        return "failed", None, f"answered {result.status_code}"
    return "failed", None, result.error
