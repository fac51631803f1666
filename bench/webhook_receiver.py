"""The flows benchmark's webhook receiver (bench/flows.py): a bare ASGI app, served by uvicorn
in a process of its own so that neither the load generator nor the server under test shares
its GIL. It keeps when each webhook (`{"n": …}`) first arrived; `GET /arrivals` answers them.

    .venv/bin/python -m uvicorn webhook_receiver:app --app-dir bench --port N
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

arrived: dict[int, float] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = b""
    if scope["method"] == "POST":
        arrived.setdefault(int(msgspec.json.decode(body)["n"]), time.time())
    else:
        answer = msgspec.json.encode(arrived)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": answer})
