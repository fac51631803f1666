"""Keys and scopes (401/403), the revision header (400/404/410), and rate limits (429)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from conftest import (
    NEWEST,
    PRIVATE_KEY,
    PUBLIC_KEY,
    bulk_body,
    bulk_event,
    event_body,
    single_error,
)

from trackhouse.api.ratelimit import Limit, RateLimiter, parse_limits


def post_event(client, **headers):
    return client.post("/api/events", json=event_body(), headers=headers)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        f"Bearer {PRIVATE_KEY}",
        "Klaviyo-API-Key pk_wrong",
        f"Klaviyo-API-Key {PUBLIC_KEY}",
    ],
)
def test_missing_or_bad_key_is_401_not_authenticated(server, authorization):
    headers = {"revision": NEWEST}
    if authorization is not None:
        headers["Authorization"] = authorization
    with server.client(**headers) as c:
        error = single_error(post_event(c), 401)
    assert error["code"] == "not_authenticated"
    assert PRIVATE_KEY not in str(error)


def test_key_without_events_write_scope_is_403(start_server):
    server = start_server()
    out = subprocess.run(
        [sys.executable, "-m", "trackhouse", "keys", "create", *server.where()]
        + ["--scope", "events:read", "--label", "read only"],
        capture_output=True,
        text=True,
        check=True,
    )
    read_only = out.stdout.strip()
    assert read_only.startswith("pk_") and len(read_only) == 37
    with server.client(Authorization=f"Klaviyo-API-Key {read_only}", revision=NEWEST) as c:
        error = single_error(post_event(c), 403)
        assert error["code"] == "permission_denied"
        assert "events:write" in error["detail"]
        # nor to create a bulk job
        r = c.post(
            "/api/event-bulk-create-jobs", json=bulk_body([({"email": "a@b.co"}, [bulk_event()])])
        )
        assert single_error(r, 403)["code"] == "permission_denied"


def test_revoked_key_stops_working(start_server):
    server = start_server()
    data = [*server.where()]
    cli = [sys.executable, "-m", "trackhouse", "keys"]
    secret = subprocess.run(cli + ["create", *data], capture_output=True, text=True, check=True)
    key = secret.stdout.strip()
    with server.client(Authorization=f"Klaviyo-API-Key {key}", revision=NEWEST) as c:
        assert post_event(c).status_code == 202
        listing = subprocess.run(cli + ["list", *data], capture_output=True, text=True, check=True)
        assert key not in listing.stdout  # only prefixes are shown
        key_id = next(line.split()[0] for line in listing.stdout.splitlines() if key[:8] in line)
        subprocess.run(cli + ["revoke", key_id, *data], check=True, capture_output=True)
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while post_event(c).status_code == 202 and datetime.now(UTC) < deadline:
            pass  # the server trusts a looked-up key for at most 2 seconds
        assert single_error(post_event(c), 401)["code"] == "not_authenticated"


def test_keys_are_stored_hashed(server):
    if server.backend == "postgres":
        rows = server.query("", "SELECT * FROM api_keys")
        assert rows and PRIVATE_KEY not in repr(rows)
        return
    for path in server.data_dir.iterdir():
        assert PRIVATE_KEY.encode() not in path.read_bytes()


def test_missing_revision_is_400(server):
    with server.client(Authorization=f"Klaviyo-API-Key {PRIVATE_KEY}") as c:
        error = single_error(post_event(c), 400)
    assert error["source"] == {"parameter": "revision"}


@pytest.mark.parametrize("revision", ["latest", "2024-13-01", "2024-02-30", "20240215"])
def test_malformed_revision_is_400(api, revision):
    error = single_error(post_event(api, revision=revision), 400)
    assert error["source"] == {"parameter": "revision"}


def test_future_revision_is_404(api):
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    error = single_error(post_event(api, revision=tomorrow), 404)
    assert error["detail"] == "Unable to specify a future revision date."


def test_newer_than_spec_and_beta_revisions_are_served(api):
    assert post_event(api, revision="2026-10-15").status_code == 202
    assert post_event(api, revision="2026-07-15.pre").status_code == 202


def test_rate_limited_request_gets_429_throttled_with_retry_after(start_server):
    server = start_server(TRACKHOUSE_RATE_LIMITS="bulk=1000/s,3/m")
    body = bulk_body([({"email": "rl@klaviyo-demo.com"}, [bulk_event()])])
    with server.client(Authorization=f"Klaviyo-API-Key {PRIVATE_KEY}", revision=NEWEST) as c:
        responses = [c.post("/api/event-bulk-create-jobs", json=body) for _ in range(7)]
        # Two minute windows at most are touched: at most 6 pass, so at least one is throttled.
        statuses = [r.status_code for r in responses]
        assert statuses.count(429) >= 1 and set(statuses) <= {202, 429}
        accepted = next(r for r in responses if r.status_code == 202)
        assert accepted.headers["RateLimit-Limit"] == "3"
        assert 0 <= int(accepted.headers["RateLimit-Remaining"]) < 3
        assert 1 <= int(accepted.headers["RateLimit-Reset"]) <= 60
        throttled = next(r for r in responses if r.status_code == 429)
        error = single_error(throttled, 429)
        assert error["code"] == "throttled"
        assert 1 <= int(throttled.headers["Retry-After"]) <= 60
        # Another endpoint class has its own window.
        assert post_event(c).status_code == 202
    # Throttled requests were not logged.
    assert len(server.log_entries()) == statuses.count(202) + 1


def test_rate_limit_windows_burst_and_steady():
    now = [1000.0]
    limiter = RateLimiter({"create": Limit(burst=2, steady=3)}, clock=lambda: now[0])
    limiter.hit("a", "create")
    limiter.hit("a", "create")
    with pytest.raises(Exception) as burst:
        limiter.hit("a", "create")
    assert burst.value.status == 429 and burst.value.headers["Retry-After"] == "1"
    limiter.hit("b", "create")  # per account
    now[0] += 1
    limiter.hit("a", "create")
    now[0] += 1
    with pytest.raises(Exception) as steady:
        limiter.hit("a", "create")
    assert int(steady.value.headers["Retry-After"]) == 60 - (1002 % 60)
    now[0] = 1020.0  # next minute window
    assert limiter.hit("a", "create")["RateLimit-Remaining"] == "2"


def test_rate_limit_settings():
    assert parse_limits("off") is None
    assert parse_limits(None)["create"] == Limit(350, 3500)
    assert parse_limits("bulk=2/s,5/m")["bulk"] == Limit(2, 5)
    with pytest.raises(ValueError):
        parse_limits("bulk=fast")


def test_no_rate_limits_flag_overrides_the_environment(start_server):
    server = start_server("--no-rate-limits", TRACKHOUSE_RATE_LIMITS="bulk=1/s,1/m")
    body = bulk_body([({"email": "nolimit@klaviyo-demo.com"}, [bulk_event()])])
    with server.client(Authorization=f"Klaviyo-API-Key {PRIVATE_KEY}", revision=NEWEST) as c:
        statuses = [c.post("/api/event-bulk-create-jobs", json=body).status_code for _ in range(5)]
    assert statuses == [202] * 5
