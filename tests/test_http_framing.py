"""Requests that are not valid HTTP/1.1 framing, over raw sockets: each is answered like every
other error, a JSON:API 400 `invalid` that closes the connection, never uvicorn's plain text,
and never before the answers to the valid requests sent ahead of it on the same connection."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import NEWEST, PUBLIC_KEY, Server

BODY = json.dumps(
    {
        "data": {
            "type": "event",
            "attributes": {
                "properties": {},
                "metric": {"data": {"type": "metric", "attributes": {"name": "Framing"}}},
                "profile": {
                    "data": {"type": "profile", "attributes": {"email": "framing@example.com"}}
                },
            },
        }
    }
).encode()
HEAD = (
    f"POST /client/events?company_id={PUBLIC_KEY} HTTP/1.1\r\nHost: x\r\n"
    f"revision: {NEWEST}\r\nContent-Type: application/json\r\n"
).encode()
VALID = HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)

FRAMING_ERRORS = {
    "duplicate Content-Length": HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "conflicting Content-Length": HEAD + b"Content-Length: 2\r\nContent-Length: 4\r\n\r\n{}",
    "Content-Length list": HEAD + b"Content-Length: 2, 2\r\n\r\n{}",
    "Content-Length not a number": HEAD + b"Content-Length: two\r\n\r\n{}",
    "Content-Length with Transfer-Encoding": (
        HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding not ending in chunked": (
        HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
    ),
    "obsolete line folding": HEAD + b"X-Folded: a\r\n  b\r\nContent-Length: 2\r\n\r\n{}",
    "NUL in a header value": HEAD + b"X-Nul: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    "broken chunk size": HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "request line without version": b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n",
    "invalid method": b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown HTTP version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    "non-ASCII request target": b"GET /api/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    "request target not a URL": b"GET http://x:port/ HTTP/1.1\r\nHost: x\r\n\r\n",
}


def exchange(server: Server, request: bytes) -> bytes:
    """Send `request` at once and read everything until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The (status, headers, body) of each response in `raw`, in order, framed by their
    Content-Length: anything but whole responses back to back fails here."""
    found = []
    while raw:
        head, separator, rest = raw.partition(b"\r\n\r\n")
        assert separator, raw
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])
        found.append((int(status_line.split(" ")[1]), headers, rest[:length]))
        raw = rest[length:]
    return found


def assert_refused(status: int, headers: dict[str, str], body: bytes) -> str:
    assert status == 400, body
    assert headers["content-type"] == "application/vnd.api+json"
    assert headers["connection"] == "close"
    (error,) = json.loads(body)["errors"]
    assert error["status"] == 400 and error["code"] == "invalid"
    assert {"id", "title", "detail", "source"} <= error.keys()
    return error["detail"]


@pytest.mark.parametrize("request_bytes", FRAMING_ERRORS.values(), ids=FRAMING_ERRORS.keys())
def test_framing_error_is_a_jsonapi_400_that_closes_the_connection(server, request_bytes):
    # read to EOF: the server closes the connection after the 400
    (answer,) = responses(exchange(server, request_bytes))
    assert_refused(*answer)


def test_the_400_names_the_parsers_reason(server):
    (answer,) = responses(exchange(server, FRAMING_ERRORS["duplicate Content-Length"]))
    assert "Duplicate Content-Length" in assert_refused(*answer)
    (answer,) = responses(exchange(server, FRAMING_ERRORS["Content-Length with Transfer-Encoding"]))
    assert "Transfer-Encoding" in assert_refused(*answer)
    (answer,) = responses(exchange(server, FRAMING_ERRORS["request target not a URL"]))
    assert assert_refused(*answer) == "The request target is not a valid URL."


def test_valid_requests_before_a_framing_error_are_answered_first(server):
    # Pipelined: two valid requests, then an unparsable one, in one write. Each valid one gets
    # its whole 202, in order, and the 400 comes after them instead of cutting into them.
    raw = exchange(server, VALID + VALID + FRAMING_ERRORS["duplicate Content-Length"])
    first, second, refused = responses(raw)
    for status, headers, _ in (first, second):
        assert status == 202
        assert headers["trackhouse-receipt"]
    assert first[1]["trackhouse-receipt"] != second[1]["trackhouse-receipt"]
    assert_refused(*refused)


def test_a_framing_error_on_a_client_path_is_readable_by_any_page(server):
    """The connection-level answers on `/client/` carry the CORS headers as the endpoints' do;
    on `/api/` they do not."""
    client = exchange(server, FRAMING_ERRORS["duplicate Content-Length"])
    assert b"\r\naccess-control-allow-origin: *\r\n" in client.lower()
    private = exchange(
        server,
        b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    )
    assert private.startswith(b"HTTP/1.1 400 ")
    assert b"access-control" not in private.lower()
