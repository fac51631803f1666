"""A 500 is a whole answer on a connection that stays usable.

Bad input never gets a 5xx (test_bad_input.py, test_parameter_extremes.py), so the server here
is `trackhouse serve` with a bug put in on purpose: one handler behind FastWrites
(`POST /api/events`) and one behind Starlette's router (`GET /api/metrics`) are replaced, before
the app is built, by one that raises. Everything else is the real server, over real HTTP.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import NEWEST, PRIVATE_KEY, Server, event_body, make_env, single_error

# `python -c BROKEN serve …`: the `trackhouse serve` command with two handlers that raise.
BROKEN = """
from trackhouse.api import events, metrics

async def broken(request):
    raise RuntimeError("a bug in a handler")

# Replaced before trackhouse.api.app builds its route table from them; fail loudly if renamed.
assert events.create_event and metrics.get_metrics
events.create_event = broken
metrics.get_metrics = broken

from trackhouse.cli import main

main()
"""


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("broken"), make_env())
    data_dir: Path = server.data_dir
    server.proc = subprocess.Popen(
        [sys.executable, "-c", BROKEN, "serve", "--data-dir", str(data_dir)]
        + ["--port", str(server.port)],
        env=server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 20
    while True:
        assert server.proc.poll() is None, server.proc.communicate()[0]
        try:
            httpx.get(server.url + "/", timeout=0.5)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
    yield server
    server.stop()


def local_port(response: httpx.Response) -> int:
    """The client-side port of the connection a response came on: the same port, the same
    connection."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/events"), ("GET", "/api/metrics")],
    ids=["fast-write", "starlette-route"],
)
def test_a_500_leaves_the_connection_open_for_the_next_request(broken, method, path):
    headers = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}", "revision": NEWEST}
    with broken.client(**headers) as client:
        for _ in range(2):  # a second 500 on the same connection, too
            r = client.request(method, path, json=event_body() if method == "POST" else None)
            assert single_error(r, 500)["code"] == "error"
            assert "close" not in r.headers.get("connection", "").lower()
            port = local_port(r)
            # The next request goes out on the same pooled connection, and is answered.
            after = client.get("/openapi.json")
            assert after.status_code == 200
            assert local_port(after) == port
    assert broken.proc is not None and broken.proc.poll() is None
