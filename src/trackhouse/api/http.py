"""The HTTP server's protocol: uvicorn's httptools protocol with deadlines and a size bound
for requests, which uvicorn leaves open.

uvicorn closes a connection idle between requests (`timeout_keep_alive`), but waits forever
for a request head that never completes or a body that never ends, and buffers a head of any
size. Here:

- each request's head (request line and headers) must arrive within `HEAD_SECONDS` of the
  connection opening or of the request's first byte, else a 408 (a connection opened and
  never used is just closed);
- its body within `BODY_SECONDS` of the head, else a 408 (slowloris, or a Content-Length that
  promises more than is sent);
- a head larger than `MAX_HEAD_BYTES` gets a 431, so a head costs at most that much (plus one
  read) in memory;
- a request httptools cannot parse (duplicate or conflicting `Content-Length`, one beside
  `Transfer-Encoding`, obsolete line folding, a broken chunk…) gets a 400 `invalid` in the
  JSON:API shape instead of uvicorn's plain text, after the answers to the requests before it.

The refused connection is answered with a JSON:API error and closed after a short linger.
Deadlines are checked by one sweep a second per event loop over the open connections, not
by a timer per request: a uvloop timer costs 2 µs to arm and cancel, `asyncio.timeout` 4 µs,
and together they cost the accept path ~14 % of its requests/s (bench/README.md).
"""

from __future__ import annotations

import asyncio
import os
import sys
import weakref

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from trackhouse.api.cors import ANSWER_HEADERS, CLIENT_PREFIX
from trackhouse.api.errors import APIError

HEAD_SECONDS = float(os.environ.get("TRACKHOUSE_HEADER_TIMEOUT", "10"))
BODY_SECONDS = float(os.environ.get("TRACKHOUSE_BODY_TIMEOUT", "30"))
MAX_HEAD_BYTES = 64 * 1024
LINGER_SECONDS = 2.0
SWEEP_SECONDS = 0.25 if min(HEAD_SECONDS, BODY_SECONDS) < 5 else 1.0

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
# The open connections of each event loop, and whether its sweep is scheduled.
_open: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[BoundedHttpTools]] = (
    weakref.WeakKeyDictionary()
)


def error_response(error: APIError, cors: bool = False) -> bytes:
    """A whole HTTP/1.1 response carrying `error`'s JSON:API body, closing the connection;
    `cors`: readable by a page on any origin (an answer to a `/client/` request)."""
    body = error.body()
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (error.status, _REASONS[error.status]),
            b"content-type: application/vnd.api+json\r\n",
            *(b"%s: %s\r\n" % header for header in ANSWER_HEADERS if cors),
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


def _sweep(loop: asyncio.AbstractEventLoop) -> None:
    try:
        now = loop.time()
        for protocol in list(_open.get(loop, ())):
            protocol.check_deadlines(now)
    finally:  # whatever happened, the next sweep comes
        loop.call_later(SWEEP_SECONDS, _sweep, loop)


class BoundedHttpTools(HttpToolsProtocol):
    """`uvicorn.Config(http=BoundedHttpTools)`."""

    _head_since: float | None = None  # when the head now arriving began
    _body_since: float | None = None  # when the body now arriving began
    _idle_since: float | None = None  # when the connection last became idle
    _head_bytes = 0
    _messages = 0  # requests begun on this connection
    _refused = False
    _unparsable: str | None = None  # a 400's detail, held until earlier requests are answered

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        connections = _open.get(self.loop)
        if connections is None:
            connections = _open[self.loop] = set()
            self.loop.call_later(SWEEP_SECONDS, _sweep, self.loop)
        connections.add(self)
        self._head_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        _open.get(self.loop, set()).discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: what the client still sends is dropped
        in_head, messages = self._head_since is not None, self._messages
        super().data_received(data)
        if in_head and messages == self._messages and self._head_since is not None:
            # The same head before and after all of `data`: every byte of it was head. (A read
            # that begins a head is not counted: it may end the previous request's body. So a
            # head costs at most MAX_HEAD_BYTES plus one read.)
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._refuse(
                    431,
                    "request_header_fields_too_large",
                    f"The request line and headers exceed {MAX_HEAD_BYTES // 1024} KB.",
                )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._messages += 1
        self._head_since = self.loop.time()
        self._idle_since = None
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._head_since = None
        self._body_since = self.loop.time()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_since = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._unparsable is not None:
            if not self._answering() and not self.transport.is_closing():
                detail, self._unparsable = self._unparsable, None
                self._refuse(400, "invalid", detail)
        elif self._head_since is None and self._body_since is None:
            # uvicorn's keep-alive timer closes an idle connection, but any byte cancels it,
            # even a stray CRLF that begins no request: this deadline does not move.
            self._idle_since = self.loop.time()

    def check_deadlines(self, now: float) -> None:
        if self._refused or self.transport.is_closing():
            return
        cycle = self.cycle
        if self._head_since is not None and now - self._head_since > HEAD_SECONDS:
            if self._head_bytes == 0 and self._messages == 0:
                self.transport.close()  # opened and never used: nothing to answer
            elif cycle is not None and not cycle.response_complete:
                # An earlier request is still being answered: an error now would cut into
                # its response.
                self.transport.close()
            else:
                detail = f"The request headers did not arrive within {HEAD_SECONDS:.0f} seconds."
                self._refuse(408, "request_timeout", detail)
        elif self._body_since is not None and now - self._body_since > BODY_SECONDS:
            if cycle is not None and cycle.response_started:
                if cycle.response_complete:
                    # Answered before its body ended (413, 401, …) and still trickling in.
                    self.transport.close()
                return  # else: still answering
            detail = f"The request body did not arrive within {BODY_SECONDS:.0f} seconds."
            self._refuse(408, "request_timeout", detail)
        elif self._idle_since is not None and now - self._idle_since > HEAD_SECONDS:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes httptools refuses, called from its `except HttpParserError`
        in `data_received` (so the parser's reason is the exception being handled): in the
        JSON:API shape, and never cutting into the answer to a request before them."""
        if self._refused:
            return
        reason = sys.exc_info()[1]
        if isinstance(reason, httptools.HttpParserCallbackError) and isinstance(
            reason.__context__, httptools.HttpParserInvalidURLError | UnicodeDecodeError
        ):
            # Raised in uvicorn's on_headers_complete, which parses the target as a URL.
            detail = "The request target is not a valid URL."
        elif reason is not None:
            detail = f"The request is not valid HTTP/1.1: {str(reason)[:200]}."
        else:
            detail = "The request is not valid HTTP/1.1."
        cycle = self.cycle
        if self._body_since is not None and cycle is not None and not cycle.response_started:
            # The bytes refused are this request's own body: its handler stops waiting for it
            # (and its answer, if it has one ready, is dropped: the 400 answers it).
            cycle.disconnected = True
            cycle.message_event.set()
        if self._answering():
            # A request parsed before these bytes is still being answered (pipelined): a 400
            # now would cut into its answer. It follows it (on_response_complete).
            self._refused = True  # the parser is stuck: what follows is dropped
            self._head_since = self._body_since = self._idle_since = None
            self._unparsable = detail
            return
        self._refuse(400, "invalid", detail)

    def _answering(self) -> bool:
        """Whether an answer to a request on this connection is still to be written."""
        cycle = self.cycle
        in_flight = cycle is not None and not cycle.response_complete and not cycle.disconnected
        return in_flight or bool(self.pipeline)

    def _refuse(self, status: int, code: str, detail: str) -> None:
        """Answer, then close after a short linger. Closing at once, with the client's bytes
        still unread, would reset the connection and could lose the answer on its way."""
        self._head_since = self._body_since = self._idle_since = None
        self._refused = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The request being refused (its body is late): nothing more of it may be
            # written, and its handler stops waiting for the body.
            cycle.disconnected = True
            cycle.message_event.set()
        # The target is known once its request line was read (uvicorn's on_url).
        cors = getattr(self, "url", b"").startswith(CLIENT_PREFIX.encode())
        self.transport.write(error_response(APIError(status, code, detail), cors))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
