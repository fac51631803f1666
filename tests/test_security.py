"""Keys and scopes: every endpoint demands its own scope, public keys open only /client/* and
Track, test control only the admin scope; and nothing secret or personal reaches the server's
output at the default log level."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from conftest import (
    ADMIN_KEY,
    NEWEST,
    PRIVATE_KEY,
    PUBLIC_KEY,
    Server,
    bulk_body,
    bulk_event,
    event_body,
    make_env,
)

from trackhouse.store.accounts import ADMIN_SCOPE, ALL_SCOPES

BULK = bulk_body([({"email": "scoped@klaviyo-demo.com"}, [bulk_event()])])
AGGREGATE = {
    "data": {
        "type": "metric-aggregate",
        "attributes": {
            "metric_id": "AbCdEf",
            "measurements": ["count"],
            "interval": "day",
            "filter": [
                "greater-or-equal(datetime,2025-01-01T00:00:00)",
                "less-than(datetime,2025-01-02T00:00:00)",
            ],
        },
    }
}
# (method, path, JSON body, the scope it needs): every private-key endpoint.
ENDPOINTS = [
    ("POST", "/api/events", event_body(), "events:write"),
    ("POST", "/api/event-bulk-create-jobs", BULK, "events:write"),
    ("GET", "/api/event-bulk-create-jobs/01JB0000000000000000000000", None, "events:read"),
    ("GET", "/api/event-receipts/01JB0000000000000000000000", None, "events:read"),
    ("GET", "/api/events", None, "events:read"),
    ("GET", "/api/events/5vQ0000000000", None, "events:read"),
    ("GET", "/api/events/5vQ0000000000/metric", None, "events:read"),
    ("GET", "/api/events/5vQ0000000000/relationships/profile", None, "events:read"),
    ("GET", "/api/metrics", None, "metrics:read"),
    ("GET", "/api/metrics/AbCdEf", None, "metrics:read"),
    ("POST", "/api/metric-aggregates", AGGREGATE, "metrics:read"),
    ("GET", "/api/lists", None, "lists:read"),
    ("GET", "/api/lists/AbCdEf", None, "lists:read"),
    ("POST", "/api/lists", {"data": {"type": "list", "attributes": {"name": "x"}}}, "lists:write"),
    (
        "PATCH",
        "/api/lists/AbCdEf",
        {"data": {"type": "list", "id": "AbCdEf", "attributes": {}}},
        "lists:write",
    ),
    ("DELETE", "/api/lists/AbCdEf", None, "lists:write"),
    *[
        (method, f"/api/lists/AbCdEf/{path}", body, scope)
        for method, path, body, scopes in (
            ("GET", "profiles", None, ("lists:read", "profiles:read")),
            ("GET", "relationships/profiles", None, ("lists:read", "profiles:read")),
            ("POST", "relationships/profiles", {"data": []}, ("lists:write", "profiles:write")),
            ("DELETE", "relationships/profiles", {"data": []}, ("lists:write", "profiles:write")),
        )
        for scope in scopes
    ],
    *[
        ("GET", f"/api/profiles/01JB0000000000000000000000/{path}", None, scope)
        for path, group in (
            ("lists", "lists"),
            ("relationships/lists", "lists"),
            ("segments", "segments"),
            ("relationships/segments", "segments"),
        )
        for scope in (f"{group}:read", "profiles:read")
    ],
    ("GET", "/api/segments", None, "segments:read"),
    ("POST", "/api/segments", {"data": {"type": "segment", "attributes": {}}}, "segments:write"),
    ("GET", "/api/segments/AbCdEf", None, "segments:read"),
    (
        "PATCH",
        "/api/segments/AbCdEf",
        {"data": {"type": "segment", "id": "AbCdEf", "attributes": {}}},
        "segments:write",
    ),
    ("DELETE", "/api/segments/AbCdEf", None, "segments:write"),
    *[
        ("GET", f"/api/segments/AbCdEf/{path}", None, scope)
        for path in ("profiles", "relationships/profiles")
        for scope in ("segments:read", "profiles:read")
    ],
    ("GET", "/api/profiles", None, "profiles:read"),
    ("GET", "/api/profiles/01JB0000000000000000000000", None, "profiles:read"),
    ("POST", "/admin/wait?timeout=0", None, ADMIN_SCOPE),
    ("POST", "/admin/reset", None, ADMIN_SCOPE),
]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """A server and, per scope, a key with every scope but that one."""
    server = Server(tmp_path_factory.mktemp("guarded"), make_env()).start()
    keys = {}
    for scope in (*ALL_SCOPES, ADMIN_SCOPE):
        others = [s for s in (*ALL_SCOPES, ADMIN_SCOPE) if s != scope]
        flags = [arg for s in others for arg in ("--scope", s)]
        out = subprocess.run(
            [sys.executable, "-m", "trackhouse", "keys", "create"] + [*server.where(), *flags],
            capture_output=True,
            text=True,
            check=True,
        )
        keys[scope] = out.stdout.strip()
    yield server, keys
    server.stop()


def call(server: Server, method: str, path: str, body: object, key: str) -> httpx.Response:
    headers = {"Authorization": f"Klaviyo-API-Key {key}", "revision": NEWEST}
    return httpx.request(method, server.url + path, json=body, headers=headers, timeout=10)


@pytest.mark.parametrize(("method", "path", "body", "scope"), ENDPOINTS)
def test_every_endpoint_needs_its_own_scope(guarded, method, path, body, scope) -> None:
    server, keys = guarded
    without = call(server, method, path, body, keys[scope])
    assert without.status_code == 403, without.text
    error = without.json()["errors"][0]
    assert error["code"] == "permission_denied" and scope in error["detail"]
    # A key that has the scope gets past the check (to its answer, whatever that is).
    own = ADMIN_KEY if scope == ADMIN_SCOPE else PRIVATE_KEY
    assert call(server, method, path, body, own).status_code not in (401, 403)


@pytest.mark.parametrize(("method", "path", "body", "scope"), ENDPOINTS)
def test_public_key_opens_no_private_endpoint(guarded, method, path, body, scope) -> None:
    server, _ = guarded
    r = call(server, method, path, body, PUBLIC_KEY)
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == "not_authenticated"


def test_private_key_is_not_a_company_id(guarded) -> None:
    server, _ = guarded
    url = f"{server.url}/client/events?company_id={PRIVATE_KEY}"
    r = httpx.post(url, json=event_body(), headers={"revision": NEWEST}, timeout=10)
    assert r.status_code == 401
    assert PRIVATE_KEY not in r.text  # not echoed back either


def test_no_key_email_or_phone_in_the_server_output(tmp_path) -> None:
    """Requests full of personal data and secrets, good and bad, then the server's whole
    output (stdout and stderr at the default log level) is searched for them."""
    server = Server(tmp_path / "data", make_env()).start()
    email, phone, wrong_key = "secret.person@klaviyo-demo.com", "+12125550199", "pk_" + "9" * 34
    with server.client(revision=NEWEST) as http:
        auth = {"Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}"}
        profile = {"email": email, "phone_number": phone}
        assert (
            http.post(
                "/api/events", json=event_body(profile_attributes=profile), headers=auth
            ).status_code
            == 202
        )
        bad = event_body(profile_attributes={"email": email + "@@", "phone_number": phone + "x"})
        assert http.post("/api/events", json=bad, headers=auth).status_code == 400
        denied = {"Authorization": f"Klaviyo-API-Key {wrong_key}"}
        assert http.post("/api/events", json=event_body(email), headers=denied).status_code == 401
        assert (
            http.get(f'/api/profiles?filter=equals(email,"{email}")', headers=auth).status_code
            == 200
        )
        track = {"token": PUBLIC_KEY, "event": "Viewed", "customer_properties": {"$email": email}}
        data = base64.b64encode(json.dumps(track).encode()).decode()
        assert http.get("/api/track", params={"data": data}).text == "1"
        broken = base64.b64encode(b'{"token": "' + email.encode() + b'"').decode()
        assert http.get("/api/track", params={"data": broken}).text == "0"
        http.post("/api/events", content=b'{"data": "' + email.encode() + b'\xff"}', headers=auth)
    server.settle()
    server.stop()
    assert server.proc is not None and server.proc.stdout is not None
    output = server.proc.stdout.read()
    for secret in (PRIVATE_KEY, ADMIN_KEY, wrong_key, email, phone, phone[2:]):
        assert secret not in output, f"{secret!r} in the server output:\n{output[-2000:]}"
