"""The baseline of bench/ingest.py: a bare ASGI app on trackhouse's own server stack.

    .venv/bin/python bench/baseline_app.py --port 8081

Reads every request's whole body and answers 202 with an empty body: no routing, no
authentication, no parsing, no log. It is served exactly as `trackhouse serve` serves the API
(src/trackhouse/server.py): uvicorn with httptools and the default (uvloop) event loop, one
process, access log off, no server header, on a socket bound beforehand. What trackhouse does on
top of this is what the ratio to it measures.

`--starlette` serves the same thing through Starlette instead (one route, `await
request.body()`, a 202 `Response`): not part of the benchmark's figures, a way to tell the
web framework's share of trackhouse's cost from the rest when looking into it.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

import uvicorn

EMPTY_202 = {"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]}
EMPTY_BODY = {"type": "http.response.body", "body": b""}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    b"".join(chunks)  # the body, read whole, as an endpoint would before parsing it
    await send(EMPTY_202)
    await send(EMPTY_BODY)


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def accept(request: Request) -> Response:
        await request.body()
        return Response(status_code=202)

    return Starlette(routes=[Route("/{path:path}", accept, methods=["GET", "POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--starlette", action="store_true", help="the same, through Starlette")
    args = parser.parse_args()
    sock = socket.create_server((args.host, args.port), reuse_port=False)
    config = uvicorn.Config(
        starlette_app() if args.starlette else app,
        host=args.host,
        port=sock.getsockname()[1],
        http="httptools",
        loop="auto",
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
