"""CORS for the client endpoints, and for them only.

Klaviyo's `/client/*` endpoints are "designed to be called from publicly-browseable,
client-side environments": a page on any origin POSTs to them with its public key. A JSON POST
with a `revision` header is never a CORS "simple" request, so the browser first sends a
preflight `OPTIONS` and reads the answer only if it allows the origin, the method and every
header. Here every answer under `/client/` says `Access-Control-Allow-Origin: *` (errors too:
a page must be able to read why it got a 400, 429 or 503), and the preflight of each client
route is answered.

`/api/*` takes private keys: it gets no CORS header at all and its preflight stays refused
(405), so no page can call it from a browser.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLIENT_PREFIX = "/client/"

# No credentials are involved (the public key is in the query), so the wildcard is right and
# the answers do not vary with Origin.
ANSWER_HEADERS: list[tuple[bytes, bytes]] = [
    (b"access-control-allow-origin", b"*"),
    # Beyond the CORS-safelisted ones, a page reads only headers named here.
    (
        b"access-control-expose-headers",
        b"Trackhouse-Receipt, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After",
    ),
]

# The request headers the client endpoints read. A preflight that names no others, or names
# them unreadably, is answered with this list.
READ_HEADERS = (
    b"accept, content-type, content-encoding, revision, x-klaviyo-revision-fall-forward-opt-out"
)
# Any other well-formed header a page asks for is allowed too: tracing and error-reporting
# libraries add their own (`traceparent`, `sentry-trace`, `baggage`) to every fetch, and the
# endpoints ignore headers they do not read, so refusing them would only break those pages.
# The echo is bounded: comma-separated RFC 9110 tokens, at most this long.
MAX_REQUESTED_HEADERS = 2048
_TOKENS = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:[ \t]*,[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")
# Chromium caps a cached preflight at 2 hours, Firefox at 24: ask for the one both honour.
MAX_AGE = b"7200"


def preflight_headers(requested: bytes | None) -> list[tuple[bytes, bytes]]:
    """The answer to `OPTIONS` on a client route: any origin, POST, the headers asked for."""
    allowed = READ_HEADERS
    if requested is not None:
        requested = requested.strip(b" \t")
        if len(requested) <= MAX_REQUESTED_HEADERS and _TOKENS.fullmatch(requested):
            allowed = requested
    return [
        *ANSWER_HEADERS,
        (b"access-control-allow-methods", b"POST"),
        (b"access-control-allow-headers", allowed),
        (b"access-control-max-age", MAX_AGE),
        (b"allow", b"POST, OPTIONS"),
        # Shared caches must not hand one page's allowed headers to another.
        (b"vary", b"Access-Control-Request-Headers"),
    ]


async def answer(app: ASGIApp, scope: Scope, receive: Receive, send: Send, route: bool) -> None:
    """Anything under `/client/` but a POST to a client route (`route`: the path is one):
    a preflight is answered here; the rest (a GET's 405, an unknown path's 404) by `app`, with
    the CORS headers added so that the page can read the error."""
    if route and scope["method"] == "OPTIONS":
        requested = None
        for name, value in scope["headers"]:
            if name == b"access-control-request-headers":
                requested = value
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": preflight_headers(requested),
            }
        )
        await send({"type": "http.response.body", "body": b""})
        return

    async def with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *ANSWER_HEADERS]
        await send(message)

    await app(scope, receive, with_cors)
