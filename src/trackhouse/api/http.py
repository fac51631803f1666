"""The HTTP server's protocol: uvicorn's httptools protocol with bounds on slow and bloated
request heads, which uvicorn leaves open.

uvicorn closes a connection idle between requests (`timeout_keep_alive`) but waits forever for
a request head that never completes, and buffers a head of any size. Here:

- a connection must deliver each request's head (request line and headers) within
  `HEAD_SECONDS` of opening or of the request's first byte, or it gets a 408 and is closed
  (slowloris);
- a head larger than `MAX_HEAD_BYTES` gets a 431 and the connection is closed, so a head
  costs at most that much (plus one read) in memory.

Bodies have their own deadline and size limits where they are read (`api/body.py`).
"""

from __future__ import annotations

import asyncio
import os

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from trackhouse.api.errors import APIError

HEAD_SECONDS = float(os.environ.get("TRACKHOUSE_HEADER_TIMEOUT", "10"))
MAX_HEAD_BYTES = 64 * 1024
LINGER_SECONDS = 2.0

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def error_response(error: APIError) -> bytes:
    """A whole HTTP/1.1 response carrying `error`'s JSON:API body, closing the connection."""
    body = msgspec.json.encode(error.to_json())
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (error.status, _REASONS[error.status]),
            b"content-type: application/vnd.api+json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class BoundedHttpTools(HttpToolsProtocol):
    """`uvicorn.Config(http=BoundedHttpTools)`."""

    _head_timer: asyncio.TimerHandle | None = None
    _in_head = False
    _head_bytes = 0
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: what the client still sends is dropped
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # Still inside a head after all of `data`: every byte since it began was head.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(
                    APIError(
                        431,
                        "request_header_fields_too_large",
                        f"The request line and headers exceed {MAX_HEAD_BYTES // 1024} KB.",
                    )
                )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_head()

    def on_headers_complete(self) -> None:
        self._stop_head()
        super().on_headers_complete()

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEAD_SECONDS, self._head_timeout)

    def _stop_head(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            if self._head_bytes == 0:
                self.transport.close()  # opened and never used: nothing to answer
                return
            self._refuse(
                APIError(
                    408,
                    "request_timeout",
                    f"The request headers did not arrive within {HEAD_SECONDS:.0f} seconds.",
                )
            )

    def _refuse(self, error: APIError) -> None:
        """Answer, then close after a short linger. Closing at once, with the client's bytes
        still unread, would reset the connection and could lose the answer on its way."""
        self._stop_head()
        self._refused = True
        self.transport.write(error_response(error))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
