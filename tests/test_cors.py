"""CORS: web pages on any origin can call `/client/*` (preflight answered, every answer readable,
errors included); no page can call the private `/api/*`.

The headers are checked over HTTP, then the whole exchange in a real headless Chromium (Debian's
`chromium`, driven by Playwright): a page served from another origin POSTs to the client
endpoints and the events are read back with the private key.
"""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    NEWEST,
    PRIVATE_KEY,
    PUBLIC_KEY,
    Server,
    bulk_body,
    bulk_event,
    event_body,
    single_error,
)
from playwright.sync_api import Browser, sync_playwright

from trackhouse.api.app import ROUTES

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ORIGIN = "https://shop.example"
TEXT = {"Content-Type": "text/plain"}
# Every client route the app serves, with and without its trailing slash.
CLIENT_PATHS = sorted({route.path for route in ROUTES if route.path.startswith("/client/")})
EXPOSED = {
    "trackhouse-receipt",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
}


def preflight(server: Server, path: str, **headers: str) -> httpx.Response:
    return httpx.options(
        server.url + path,
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST", **headers},
    )


def assert_readable_by_any_page(response: httpx.Response) -> None:
    assert response.headers["access-control-allow-origin"] == "*"
    exposed = response.headers["access-control-expose-headers"].lower().split(", ")
    assert set(exposed) == EXPOSED


def client_bulk_body(email: str, *events: dict[str, Any]) -> dict[str, Any]:
    """/client/event-bulk-create takes one profile group as its `data`."""
    group = bulk_body([({"email": email}, list(events))])
    return {"data": group["data"]["attributes"]["events-bulk-create"]["data"][0]}


def test_every_client_route_is_served_with_and_without_a_trailing_slash():
    assert CLIENT_PATHS == [
        "/client/event-bulk-create",
        "/client/event-bulk-create/",
        "/client/events",
        "/client/events/",
    ]


@pytest.mark.parametrize("path", CLIENT_PATHS)
def test_preflight_of_a_client_route_allows_any_origin_to_post_with_its_headers(server, path):
    r = preflight(server, path, **{"Access-Control-Request-Headers": "content-type,revision"})
    assert r.status_code == 204, r.text
    assert_readable_by_any_page(r)
    assert r.headers["access-control-allow-methods"] == "POST"
    assert r.headers["access-control-allow-headers"] == "content-type,revision"
    assert r.headers["access-control-max-age"] == "7200"
    assert "access-control-request-headers" in r.headers["vary"].lower()
    # Asked for nothing, or for something unreadable: the headers the endpoints read.
    for requested in ({}, {"Access-Control-Request-Headers": "revision, bad header"}):
        allowed = preflight(server, path, **requested).headers["access-control-allow-headers"]
        assert {"content-type", "revision", "content-encoding"} <= set(allowed.split(", "))


def test_preflight_echo_of_requested_headers_is_bounded(server):
    # Tracing libraries add their own headers to every fetch: allowed, as well-formed tokens.
    traced = "content-type, revision, traceparent, sentry-trace, baggage"
    r = preflight(server, "/client/events", **{"Access-Control-Request-Headers": traced})
    assert r.headers["access-control-allow-headers"] == traced
    huge = ",".join(f"x-h{i}" for i in range(1000))
    r = preflight(server, "/client/events", **{"Access-Control-Request-Headers": huge})
    assert len(r.headers["access-control-allow-headers"]) < 200


def test_client_answers_are_readable_by_any_page_errors_included(server):
    with server.client(revision=NEWEST, Origin=ORIGIN) as c:
        r = c.post(f"/client/events?company_id={PUBLIC_KEY}", json=event_body())
        assert r.status_code == 202
        assert_readable_by_any_page(r)
        body = client_bulk_body("cors-bulk@example.com", bulk_event())
        r = c.post(f"/client/event-bulk-create/?company_id={PUBLIC_KEY}", json=body)
        assert r.status_code == 202
        assert_readable_by_any_page(r)
        errors = [
            (c.post(f"/client/events?company_id={PUBLIC_KEY}", json={"data": {}}), 400),
            (c.post("/client/events?company_id=nope00", json=event_body()), 401),
            (c.post(f"/client/events/?company_id={PUBLIC_KEY}", content=b"x", headers=TEXT), 415),
            (c.get(f"/client/events?company_id={PUBLIC_KEY}"), 405),
            (c.post(f"/client/no-such-thing?company_id={PUBLIC_KEY}", json={}), 404),
        ]
        for response, status in errors:
            single_error(response, status)
            assert_readable_by_any_page(response)


def test_throttled_and_unavailable_client_answers_are_readable_by_any_page(start_server):
    # Nothing processes, and one unprocessed entry is the bound: the second write gets a 503.
    # One bulk request a minute: the second gets a 429 (counted before the backlog is checked).
    server = start_server(
        "--no-process",
        "--max-backlog",
        "1",
        TRACKHOUSE_RATE_LIMITS="bulk=1/s,1/m;create=100/s,1000/m",
    )
    with server.client(revision=NEWEST, Origin=ORIGIN) as c:
        events = f"/client/events?company_id={PUBLIC_KEY}"
        assert c.post(events, json=event_body()).status_code == 202
        unavailable = c.post(events, json=event_body())
        assert single_error(unavailable, 503)["code"] == "service_unavailable"
        assert_readable_by_any_page(unavailable)
        assert unavailable.headers["retry-after"]
        bulk = f"/client/event-bulk-create?company_id={PUBLIC_KEY}"
        body = client_bulk_body("throttled@example.com", bulk_event())
        single_error(c.post(bulk, json=body), 503)
        throttled = c.post(bulk, json=body)
        assert single_error(throttled, 429)["code"] == "throttled"
        assert_readable_by_any_page(throttled)
        assert throttled.headers["retry-after"]


@pytest.mark.parametrize(
    "path", ["/api/events", "/api/events/", "/api/event-bulk-create-jobs", "/api/profiles"]
)
def test_private_api_has_no_cors(server, path):
    r = preflight(server, path, **{"Access-Control-Request-Headers": "authorization,revision"})
    assert r.status_code == 405
    assert not any(name.startswith("access-control-") for name in r.headers)
    with server.client(
        Authorization=f"Klaviyo-API-Key {PRIVATE_KEY}", revision=NEWEST, Origin=ORIGIN
    ) as c:
        r = c.post(path, json=event_body()) if "profiles" not in path else c.get(path)
        assert r.status_code < 500
        assert not any(name.startswith("access-control-") for name in r.headers)


# -- in a real browser -------------------------------------------------------------------------

PAGE = b"""<!doctype html>
<title>a shop on another origin</title>
<script>
// What a storefront does: POST events with the public key, read the answers.
async function post(url, body) {
  const r = await fetch(url, {
    method: "POST",
    headers: {"revision": REVISION, "content-type": "application/json"},
    body: JSON.stringify(body),
  });
  return {status: r.status, receipt: r.headers.get("trackhouse-receipt"), body: await r.text()};
}
// Whether a fetch is refused by the browser (a TypeError), rather than answered.
async function refused(url, init) {
  try {
    const r = await fetch(url, init);
    return "answered " + r.status;
  } catch (e) {
    return e.name;
  }
}
const REVISION = "%(revision)s";
</script>
"""


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGE % {b"revision": NEWEST.encode()}
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def other_origin() -> Iterator[str]:
    """The page's own origin: another port of 127.0.0.1, so another origin than the API's."""
    page_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=page_server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{page_server.server_address[1]}"
    page_server.shutdown()
    page_server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `apt-get install chromium` (./scripts/test does it as root)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_page_on_another_origin_sends_events_to_client_endpoints(server, browser, other_origin):
    email = f"browser-{uuid.uuid4().hex[:12]}@example.com"
    run = uuid.uuid4().hex
    single = {
        path: event_body(email, properties={"via": path}, unique_id=run + path)
        for path in ("/client/events", "/client/events/")
    }
    bulk = {
        path: client_bulk_body(email, bulk_event(properties={"via": path}, unique_id=run + path))
        for path in ("/client/event-bulk-create", "/client/event-bulk-create/")
    }
    private = event_body(f"private-{email}")
    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(other_origin + "/")
    answers = page.evaluate(
        """async ({api, company, bodies, invalid}) => {
            const answers = {};
            for (const [path, body] of Object.entries(bodies)) {
                answers[path] = await post(`${api}${path}?company_id=${company}`, body);
            }
            answers.invalid = await post(`${api}/client/events?company_id=${company}`, invalid);
            return answers;
        }""",
        {"api": server.url, "company": PUBLIC_KEY, "bodies": single | bulk, "invalid": {}},
    )
    for path in [*single, *bulk]:
        assert answers[path]["status"] == 202, answers[path]
        assert answers[path]["receipt"], path  # an exposed header: the page can read it
    # An error is readable by the page too, body and all.
    assert answers["invalid"]["status"] == 400
    assert '"code":"invalid"' in answers["invalid"]["body"]

    # The private API from the same page: the preflight of a POST with a key is refused, so
    # the POST is never sent; a GET needing no preflight is sent, but its answer is withheld.
    blocked = page.evaluate(
        """async ({api, key, body}) => [
            await refused(`${api}/api/events`, {
                method: "POST",
                headers: {"authorization": `Klaviyo-API-Key ${key}`, "revision": REVISION,
                          "content-type": "application/json"},
                body: JSON.stringify(body),
            }),
            await refused(`${api}/api/metrics?revision=${REVISION}`, {}),
        ]""",
        {"api": server.url, "key": PRIVATE_KEY, "body": private},
    )
    assert blocked == ["TypeError", "TypeError"]
    cors_errors = [text for text in console if "CORS policy" in text]
    assert len(cors_errors) == 2 and all("/api/" in text for text in cors_errors), console
    page.close()

    # The events the page sent are stored; the private POST never arrived.
    server.settle()
    with server.client(Authorization=f"Klaviyo-API-Key {PRIVATE_KEY}", revision=NEWEST) as c:
        profiles = c.get("/api/profiles", params={"filter": f'equals(email,"{email}")'})
        (profile,) = profiles.json()["data"]
        r = c.get("/api/events", params={"filter": f'equals(profile_id,"{profile["id"]}")'})
        assert r.status_code == 200, r.text
        via = sorted(e["attributes"]["event_properties"]["via"] for e in r.json()["data"])
        assert via == sorted([*single, *bulk])
        lost = c.get("/api/profiles", params={"filter": f'equals(email,"private-{email}")'})
        assert lost.json()["data"] == []
