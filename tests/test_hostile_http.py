"""Hostile clients at the HTTP level, over raw sockets: slow heads (slowloris), connections
opened and never used, huge heads, bodies that lie about their length. Each is bounded in
time and memory and answered with a JSON:API error where an answer is possible; the server
keeps serving everyone else meanwhile. Deadlines are shortened to 1 s for the test."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import NEWEST, PRIVATE_KEY, Server, event_body, make_env

HEAD = (
    "POST /api/events HTTP/1.1\r\nHost: x\r\n"
    f"Authorization: Klaviyo-API-Key {PRIVATE_KEY}\r\nrevision: {NEWEST}\r\n"
    "Content-Type: application/vnd.api+json\r\n"
)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = make_env(TRACKHOUSE_HEADER_TIMEOUT="1", TRACKHOUSE_BODY_TIMEOUT="1")
    server = Server(tmp_path_factory.mktemp("strict"), env).start()
    yield server
    server.stop()


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def answer(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/vnd.api+json" in head.lower()
    error = json.loads(body)["errors"][0]
    assert error["status"] == status
    return status, error


def rss_mb(server: Server) -> float:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1]) / 1024


def still_serving(server: Server) -> None:
    headers = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": NEWEST}
    r = httpx.post(f"{server.url}/api/events", json=event_body(), headers=headers, timeout=5)
    assert r.status_code == 202, r.text


def test_head_trickled_slowly_gets_a_408_and_the_connection_closed(strict: Server) -> None:
    with connect(strict) as sock:
        started = time.monotonic()
        sock.sendall(HEAD[:40].encode())
        time.sleep(0.5)
        sock.sendall(HEAD[40:60].encode())  # still incomplete when the deadline passes
        raw = read_all(sock)
        waited = time.monotonic() - started
    status, error = answer(raw)
    assert status == 408 and error["code"] == "request_timeout"
    assert 0.9 < waited < 5, waited
    still_serving(strict)


def test_connection_opened_and_never_used_is_closed(strict: Server) -> None:
    with connect(strict) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""
        assert 0.9 < time.monotonic() - started < 5


def test_many_slow_connections_do_not_stop_others_and_are_all_closed(strict: Server) -> None:
    socks = [connect(strict) for _ in range(200)]
    try:
        for sock in socks:
            sock.sendall(HEAD[:30].encode())
        still_serving(strict)  # while 200 slow heads are open
        deadline = time.monotonic() + 10
        for sock in socks:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            status, _ = answer(read_all(sock))
            assert status == 408
    finally:
        for sock in socks:
            sock.close()


def test_huge_head_gets_a_431_without_buffering_it(strict: Server) -> None:
    before = rss_mb(strict)
    with connect(strict) as sock:
        sock.sendall(HEAD.encode())
        junk = b"X-Junk: " + b"a" * 1024 + b"\r\n"
        try:
            for _ in range(10 * 1024):  # 10 MB of headers, if the server took them all
                sock.sendall(junk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed while we were still sending
        raw = read_all(sock)
    status, error = answer(raw)
    assert status == 431 and error["code"] == "request_header_fields_too_large"
    assert rss_mb(strict) - before < 20
    still_serving(strict)


def test_one_huge_header_value_gets_a_431(strict: Server) -> None:
    with connect(strict) as sock:
        sock.sendall(HEAD.encode() + b"X-Big: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"b" * (2 * 1024 * 1024))
        status, _ = answer(read_all(sock))
    assert status == 431


def test_body_shorter_than_its_content_length_gets_a_408(strict: Server) -> None:
    body = json.dumps(event_body()).encode()
    with connect(strict) as sock:
        started = time.monotonic()
        sock.sendall(HEAD.encode() + b"Content-Length: %d\r\n\r\n" % (len(body) + 100) + body)
        raw = read_all(sock)
        waited = time.monotonic() - started
    status, error = answer(raw)
    assert status == 408 and error["code"] == "request_timeout", error
    assert 0.9 < waited < 5
    still_serving(strict)


def test_body_longer_than_its_content_length_is_never_a_5xx(strict: Server) -> None:
    """The extra bytes are the start of a next request, which is not HTTP: a 400, then the
    connection closes; the first request was answered on its own terms."""
    body = json.dumps(event_body()).encode()
    with connect(strict) as sock:
        sock.sendall(HEAD.encode() + b"Content-Length: %d\r\n\r\n" % (len(body) - 5) + body)
        raw = read_all(sock)
    statuses = [
        int(line.split(b" ")[1]) for line in raw.split(b"\r\n") if line.startswith(b"HTTP/")
    ]
    assert statuses and all(400 <= s < 500 for s in statuses), raw[:500]
    still_serving(strict)


def test_stray_blank_line_does_not_keep_an_idle_connection_open(strict: Server) -> None:
    """A CRLF between requests begins no request but cancels uvicorn's keep-alive timer; the
    connection must still be closed once idle past the deadline (1 s here, keep-alive 5 s)."""
    body = json.dumps(event_body()).encode()
    with connect(strict) as sock:
        sock.sendall(HEAD.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 202"), first[:200]
        started = time.monotonic()
        sock.sendall(b"\r\n")
        assert read_all(sock) == b""
        assert time.monotonic() - started < 4


def test_body_trickled_after_an_early_refusal_is_cut_off(strict: Server) -> None:
    """A body promised too large gets its 413 at once; trickling it on afterwards, a byte at
    a time, must not hold the connection open."""
    with connect(strict) as sock:
        sock.sendall(HEAD.encode() + b"Content-Length: %d\r\n\r\n" % (10 * 1024 * 1024))
        started = time.monotonic()
        answered = sock.recv(65536)
        assert answered.startswith(b"HTTP/1.1 413"), answered[:200]
        closed = False
        while time.monotonic() - started < 8:
            try:
                sock.sendall(b"x")
                time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "the server kept reading a refused body for 8 s"
        assert time.monotonic() - started < 5


def test_pipelined_requests_are_answered_in_order_without_a_false_431(strict: Server) -> None:
    """A large body and the start of the next request's head arrive in one read: the head
    bound counts only head bytes, and both requests are answered, in order."""
    big = json.dumps(event_body(properties={"padding": "p" * 90_000})).encode()
    small = json.dumps(event_body()).encode()
    first = HEAD.encode() + b"Content-Length: %d\r\n\r\n" % len(big) + big
    second = HEAD.encode() + b"Content-Length: %d\r\n\r\n" % len(small) + small
    with connect(strict) as sock:
        sock.sendall(first + second[:40])
        time.sleep(0.1)
        sock.sendall(second[40:])
        raw = b""
        while raw.count(b"HTTP/1.1 ") < 2:
            chunk = sock.recv(65536)
            assert chunk, raw
            raw += chunk
    statuses = [
        int(line.split(b" ")[1]) for line in raw.split(b"\r\n") if line.startswith(b"HTTP/")
    ]
    assert statuses == [202, 202], raw[:500]
