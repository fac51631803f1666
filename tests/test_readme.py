"""The README's Python SDK examples run as written against a server (with its URL and key)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from conftest import ADMIN_KEY, PRIVATE_KEY, Server

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    section = README.read_text().split("## Point the official SDKs at it")[1].split("\n## ")[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_sdk_examples_run(start_server, capsys) -> None:
    server: Server = start_server()  # an account of its own: the members are known
    event, segment, flow = _python_blocks()
    code = event.replace('"pk_…"', repr(PRIVATE_KEY)).replace("http://127.0.0.1:8080", server.url)
    scope: dict = {}
    exec(compile(code, "README event example", "exec"), scope)
    server.settle()
    members, wait = segment.split("# Members are computed", 1)
    exec(compile(members, "README segment example", "exec"), scope)
    r = httpx.post(
        f"{server.url}/admin/wait", headers={"Authorization": f"Klaviyo-API-Key {ADMIN_KEY}"}
    )
    assert r.status_code == 200
    exec(compile("# Members are computed" + wait, "README members", "exec"), scope)
    printed = capsys.readouterr().out
    assert printed.startswith("[('sarah@example.com', ") and printed.count("sarah") == 1
    code = flow.replace("pk_adm…", ADMIN_KEY).replace("http://127.0.0.1:8080", server.url)
    exec(compile(code, "README flow example", "exec"), scope)
    assert capsys.readouterr().out == "[('sarah@example.com', 'Still thinking about Kids Book?')]\n"
