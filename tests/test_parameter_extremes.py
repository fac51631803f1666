"""Extremes in every numeric, date, id, cursor and time-zone parameter of every endpoint
(issue 10, item 7): huge, negative, fractional, non-ASCII digits, years 1 and 9999 with
offsets, NaN, 2**63, long strings.

One `trackhouse serve` for the module, seeded with a few events, profiles, metrics, a bulk job
and receipts so that real ids and cursors exist; then hypothesis draws each parameter from a
pool of hand-picked extremes mixed with generated integers, floats and text, over one
keep-alive HTTP client. Every answer must be below 500, and every 4xx a JSON:API error document
(`errors`, each with id, status = the HTTP status, code, title, detail and a source pointer or
parameter) — except the legacy Track and Identify API, which answers `0`/`1` text by design.

The module prints how many requests it made, by status class, and every distinct failure it
saw (with the server's exception line). TRACKHOUSE_EXTREME_EXAMPLES sets the examples per test
(80; some tests take a multiple); TRACKHOUSE_EXTREME_COLLECT=1 records failures instead of
stopping at the first, to list every distinct one in one run.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import string
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

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
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("TRACKHOUSE_EXTREME_EXAMPLES", "80"))
COLLECT = os.environ.get("TRACKHOUSE_EXTREME_COLLECT") == "1"
OLD = "2023-02-22"  # before 2023-07-15: the older event paths and shapes
ERROR_KEYS = {"id", "status", "code", "title", "detail", "source"}
LEGACY = ("/api/track", "/api/identify")
JSONAPI = "application/vnd.api+json"

RAN: Counter = Counter()  # answers by status class, and "requests"
BY_TEST: Counter = Counter()  # requests per test
FAILURES: dict[tuple, str] = {}  # distinct failure -> the first input that showed it

EXTREMES = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the tree
    suppress_health_check=list(HealthCheck),
)


def examples(scale: float) -> settings:
    return settings(EXTREMES, max_examples=max(1, int(EXAMPLES * scale)))


# -- the server, its output and the one client ------------------------------------------------


@dataclass
class Seed:
    event_ids: list[str] = field(default_factory=list)
    profile_ids: list[str] = field(default_factory=list)
    metric_ids: list[str] = field(default_factory=list)
    receipt_ids: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    cursors: dict[str, str] = field(default_factory=dict)  # list path -> a real page[cursor]

    def ids(self) -> list[str]:
        return self.event_ids + self.profile_ids + self.metric_ids + self.receipt_ids


class Harness:
    """The module's server, a thread draining its output (for tracebacks), and one pooled
    client; `call` makes a request and checks its answer."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.lines: list[str] = []
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()
        self.client = self._client()
        self.seed = Seed()
        self.test = "seed"

    def _drain(self) -> None:
        assert self.server.proc is not None and self.server.proc.stdout is not None
        for line in self.server.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, timeout=30, verify=False)

    def _fresh_client(self) -> None:
        # After a 5xx or a dropped connection: a new pool, so that one example's broken
        # connection cannot fail the next one (hypothesis would call that flaky).
        self.client.close()
        self.client = self._client()

    def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        shown: Any,
        params: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        content: bytes | None = None,
        revision: str | bytes | None = NEWEST,
        key: str | None = PRIVATE_KEY,
        content_type: str | None = JSONAPI,
        route: str | None = None,
    ) -> httpx.Response:
        """One request. `what` names the parameter under test, `shown` its value (both only
        for failure reports), `route` the endpoint as the README names it."""
        route = route or path
        sent: dict[str, Any] = {}
        if key is not None:
            sent["Authorization"] = f"Klaviyo-API-Key {key}"
        if revision is not None:
            sent["revision"] = revision
        if content_type is not None and content is not None:
            sent["Content-Type"] = content_type
        sent.update(headers or {})
        mark = len(self.lines)
        RAN["requests"] += 1
        BY_TEST[self.test] += 1
        try:
            response = self.client.request(
                method, path, params=params, headers=sent, content=content
            )
        except httpx.LocalProtocolError:
            reject()  # httpx would not send it (e.g. a header value it refuses): not a case
        except httpx.TransportError as exc:
            self._fresh_client()
            RAN["transport errors"] += 1
            problem = f"no answer: {exc!r}"
            self._fail(route, method, what, shown, problem, mark, "transport")
            raise AssertionError(f"{method} {route} with {what} = {shown!r}: {problem}") from None
        status = response.status_code
        RAN[f"{status // 100}xx"] += 1
        legacy = route.rstrip("/") in LEGACY
        if status >= 500:
            problem = f"{status}: {response.text[:300]}"
            self._fresh_client()
            request = self.client.build_request(
                method, path, params=params, headers=sent, content=content
            )
            problem += f" [{self._connection_after(request)}]"
            self._fail(route, method, what, shown, problem, mark, str(status))
        if 400 <= status < 500 and not legacy:
            problem = jsonapi_problem(response)
            if problem:
                self._fail(route, method, what, shown, problem, mark, f"{status} not JSON:API")
        return response

    def _connection_after(self, request: httpx.Request) -> str:
        """Whether the connection a 5xx was answered on still works (item 6 of the issue): the
        request again on a raw keep-alive connection, then a second request on it."""
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            conn.putrequest(
                request.method, request.url.raw_path.decode("ascii"), skip_host=True,
                skip_accept_encoding=True,
            )  # fmt: skip
            for name, value in request.headers.raw:
                conn.putheader(name.decode("latin-1"), value)
            conn.endheaders(request.content or None)
            first = conn.getresponse()
            first.read()
            if first.will_close:
                return f"{first.status}, with Connection: close"
            conn.request("GET", "/api/metrics/none", headers={"revision": NEWEST})
            second = conn.getresponse()
            second.read()
            return f"{first.status}, and the connection answers the next request ({second.status})"
        except (OSError, http.client.HTTPException) as exc:
            return f"the connection broke after the {first.status}: {exc!r}"
        finally:
            conn.close()

    def _fail(
        self, route: str, method: str, what: str, shown: Any, problem: str, mark: int, kind: str
    ) -> None:
        time.sleep(0.2)  # let the server's log lines arrive
        exception = server_exception(self.lines[mark:])
        key = (self.test, method, route, what, kind, exception)
        text = _short(repr(shown), 300)
        FAILURES.setdefault(key, text)
        if COLLECT:
            return
        raise AssertionError(
            f"{method} {route} with {what} = {text}: {problem}"
            + (f"\n  server: {exception}" if exception else "")
        )


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def server_exception(lines: list[str]) -> str:
    """The last exception line of a traceback in the server's output, with the frame it was
    raised in (`file:line in function`)."""
    frames = [ln.strip() for ln in lines if ln.strip().startswith('File "')]
    errors = [
        ln.strip()
        for ln in lines
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", ln.strip())
    ]
    if not errors:
        return ""
    where = ""
    if frames:
        m = re.match(r'File "(.+?)", line (\d+), in (\S+)', frames[-1])
        if m:
            source = m.group(1).split("/src/")[-1].split("/site-packages/")[-1]
            where = f" at {source}:{m.group(2)} ({m.group(3)})"
    return _short(errors[-1], 200) + where


def jsonapi_problem(response: httpx.Response) -> str | None:
    """Why a 4xx is not a JSON:API error document, or None."""
    status = response.status_code
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith(JSONAPI):
        return f"{status} with content-type {content_type!r}: {response.text[:200]!r}"
    try:
        document = response.json()
    except ValueError:
        return f"{status} whose body is not JSON: {response.text[:200]!r}"
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list) or not errors:
        return f"{status} without an errors list: {response.text[:200]}"
    for error in errors:
        if not isinstance(error, dict) or not error.keys() >= ERROR_KEYS:
            return f"{status}: an error lacks {ERROR_KEYS - set(error)}: {error}"
        if type(error["status"]) is not int or error["status"] != status:
            return f"{status}: error status {error['status']!r} is not the HTTP status"
        source = error["source"]
        if not isinstance(source, dict) or not (source.get("pointer") or source.get("parameter")):
            return f"{status}: error source {source!r} has no pointer or parameter"
        if not error["detail"] or not error["code"] or not error["title"]:
            return f"{status}: empty code, title or detail: {error}"
    return None


@pytest.fixture(scope="module")
def harness(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Harness]:
    server = Server(tmp_path_factory.mktemp("extremes"), make_env()).start()
    h = Harness(server)
    started = time.monotonic()
    try:
        seed(h)
        yield h
    finally:
        h.client.close()
        server.stop()
        report(request, time.monotonic() - started)


@pytest.fixture
def h(harness: Harness, request: pytest.FixtureRequest) -> Harness:
    harness.test = request.node.name
    return harness


def report(request: pytest.FixtureRequest, seconds: float) -> None:
    fives = RAN["5xx"]
    lines = [
        f"parameter extremes: {RAN['requests']} requests in {seconds:.1f} s, answers "
        + ", ".join(f"{k} {v}" for k, v in sorted(RAN.items()) if k != "requests")
        + ("; no 5xx" if not fives else f"; {fives} 5xx")
        + f"; {len(FAILURES)} distinct failures"
    ]
    lines.append(
        "  per test: "
        + ", ".join(f"{name.removeprefix('test_')} {n}" for name, n in BY_TEST.items())
    )
    for (test, method, route, what, kind, exception), shown in FAILURES.items():
        lines.append(
            f"  FAILURE {kind} {method} {route} [{what}] e.g. {_short(shown, 160)}"
            + (f" -> {exception}" if exception else "")
            + f" ({test})"
        )
    # To the terminal even when output is captured (./scripts/test runs pytest without -s).
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        for line in lines:
            reporter.write_line(line)


def seed(h: Harness) -> None:
    """Events of three metrics for six profiles (single creates, a bulk job, a client event),
    processed; their ids, receipts, the job id and a real cursor of each list are kept."""
    s = h.seed
    for i, (metric, extra) in enumerate(
        [
            ("Viewed Product", {}),
            ("Placed Order", {"value": 12.5, "value_currency": "USD"}),
            ("Placed Order", {"value": 99, "time": "2024-11-03T05:30:00Z"}),
            ("Viewed Product", {"time": "2023-03-12T07:00:00+00:00", "unique_id": "u-1"}),
        ]
    ):
        body = event_body(email=f"extreme{i % 3}@trackhouse-tests.dev", metric=metric, **extra)
        r = h.call("POST", "/api/events", what="seed", shown=i, content=json.dumps(body).encode())
        assert r.status_code == 202, r.text
        s.receipt_ids.append(r.headers["Trackhouse-Receipt"])
    groups = [
        ({"email": "extreme-bulk@trackhouse-tests.dev"}, [bulk_event(value=3.25), bulk_event()]),
        ({"phone_number": "+14155550100"}, [bulk_event(metric="Viewed Product")]),
    ]
    r = h.call(
        "POST",
        "/api/event-bulk-create-jobs",
        what="seed",
        shown="bulk",
        content=json.dumps(bulk_body(groups)).encode(),
    )
    assert r.status_code == 202, r.text
    s.job_ids.append(r.json()["data"]["id"])
    r = h.call(
        "POST",
        "/client/events",
        what="seed",
        shown="client",
        params={"company_id": PUBLIC_KEY},
        key=None,
        content=json.dumps(event_body(email="extreme-client@trackhouse-tests.dev")).encode(),
    )
    assert r.status_code == 202, r.text
    s.receipt_ids.append(r.headers["Trackhouse-Receipt"])
    h.server.settle()
    r = h.call("GET", "/api/events", what="seed", shown="", params={"page[size]": "2"})
    assert r.status_code == 200, r.text
    s.cursors["/api/events"] = cursor_of(r.json()["links"]["next"])
    r = h.call("GET", "/api/events", what="seed", shown="", params={"page[size]": "1000"})
    s.event_ids = [e["id"] for e in r.json()["data"]]
    r = h.call("GET", "/api/profiles", what="seed", shown="", params={"page[size]": "2"})
    assert r.status_code == 200, r.text
    s.cursors["/api/profiles"] = cursor_of(r.json()["links"]["next"])
    r = h.call("GET", "/api/profiles", what="seed", shown="", params={"page[size]": "100"})
    s.profile_ids = [p["id"] for p in r.json()["data"]]
    r = h.call("GET", "/api/metrics", what="seed", shown="")
    s.metric_ids = [m["id"] for m in r.json()["data"]]
    # GET /api/metrics pages 200 at a time: make a cursor of its kind (a metric id).
    s.cursors["/api/metrics"] = base64.urlsafe_b64encode(
        json.dumps(s.metric_ids[0]).encode()
    ).decode()
    assert len(s.event_ids) >= 6 and len(s.profile_ids) >= 5 and len(s.metric_ids) >= 2
    for event_id in s.event_ids[:1]:
        assert h.call("GET", f"/api/events/{event_id}", what="seed", shown="").status_code == 200


def cursor_of(link: str) -> str:
    return httpx.URL(link).params["page[cursor]"]


# -- pools of extremes -------------------------------------------------------------------------
#
# Each parameter class has a critical pool (values at or past a limit of int64, double,
# datetime or the file system; the findings), a broad pool, and generated values;
# `weighted` draws the critical pool most often so that every run hits it.


def weighted(critical: list[Any], broad: list[Any], *generated: st.SearchStrategy[Any]) -> Any:
    return st.one_of(
        *[st.sampled_from(critical)] * 4, *[st.sampled_from(broad)] * 2 if broad else [], *generated
    )


ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
DEVANAGARI = str.maketrans("0123456789", "०१२३४५६७८९")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def non_ascii_digits(text: str, which: int = 0) -> str:
    return text.translate((ARABIC, DEVANAGARI, FULLWIDTH)[which % 3])


BIG_INTS = [
    2**63 - 1, 2**63, 2**63 + 1, 2**64, -(2**63), -(2**63) - 1, -(2**64), 10**20, -(10**20),
    10**30, 10**100, 2**62, 2**53 + 1, 2**32, 2**31, -1, 0,
]  # fmt: skip
CRITICAL_NUMBERS = [
    "1e20", "-1e20", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "-9223372036854775809", "18446744073709551616", "-1e300", "1e300", "1e308", "-1e308",
    "1e309", "1" * 400, "-" + "9" * 400, "NaN", "nan", "Infinity", "-inf", "-1", "0.5",
    "1e-400", "٥", "١٠٠", "２００", "१", "253402300800", "253402300799.9999999", "-62135596801",
    "-62135596800", "4611686018427387904", "2.5e18",
]  # fmt: skip
BROAD_NUMBERS = [
    *(str(i) for i in BIG_INTS), "1.7976931348623157e308", "5e-324", "1.5", "-0.5", "-0", "0.0",
    "1.0", "2.5e3", "1E3", "9223372036854775807.5", "9" * 5000, "0." + "0" * 400 + "1", "-nan",
    "inf", "0x10", "0o7", "0b1", "1_000", "+1", " 1", "1 ", "1e", "e1", ".", "-", "+", "", " ",
    "²", "½", "Ⅻ", "1٥", "𝟓", "٩" * 30, "1.", ".5", "00000000000000000001", "0", "1", "1000",
    "1001", "10000", "10001", "100", "101", "200", "201", "300", "300.0000001",
]  # fmt: skip


def number_texts() -> st.SearchStrategy[str]:
    """Numbers as text."""
    return weighted(
        CRITICAL_NUMBERS,
        BROAD_NUMBERS,
        st.integers().map(str),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.floats().map(repr),
        st.builds(non_ascii_digits, st.integers(0, 10**9).map(str), st.integers(0, 2)),
        st.text(max_size=12),
    )


CRITICAL_DATES = [
    "9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59+23:59", "9999-12-31T23:59:59-00:01",
    "9999-12-31T23:59:59.999999-00:01", "9999-12-31T23:59:59.9999999Z", "9999-12-31T23:59:59Z",
    "9999-12-31", "0001-01-01T00:00:00+23:59", "0001-01-01T00:00:00+00:01",
    "0001-01-01T00:00:00-23:59", "0001-01-01T00:00:00Z", "0001-01-01", "0001-01-01T00:00:00",
    '"9999-12-31T23:59:59-23:59"', '"0001-01-01T00:00:00+23:59"',
]  # fmt: skip
BROAD_DATES = [
    "0000-01-01T00:00:00Z", "10000-01-01T00:00:00Z", "-0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z", "1969-12-31T23:59:59.5Z", "1970-01-01T00:00:00Z",
    "2024-02-30T00:00:00Z", "2024-13-01", "2024-05-01T06:00:00", "2024-05-01 06:00:00",
    "2024-05-01T06:00:00." + "1" * 5000, "2024-05-01T06:00:00" + "Z" * 300, "x" * 300,
    "٢٠٢٤-٠٥-٠١T٠٦:٠٠:٠٠Z", "２０２４-０５-０１", "2024-05-01T06:00:00+05:30[Asia/Kolkata]",
    "2024-W01-1", "20240501T060000Z", "2024-05-01T24:00:00Z", "2024-05-01T23:59:60Z",
    "2024-05-01T06:00:00+24:00", "2024-05-01T06:00:00+99:99", "2024-05-01T06:00:00+0530",
    "2038-01-19T03:14:08Z", "2106-02-07T06:28:16Z", "1900-01-01T00:00:00Z",
]  # fmt: skip
YEARS = [1, 2, 999, 1000, 1969, 1970, 1989, 1990, 1999, 2000, 2024, 2038, 2106, 9998, 9999]
OFFSETS = [
    "", "Z", "z", "+00:00", "-00:00", "+00:01", "-00:01", "+01:00", "-05:00", "+05:45", "+14:00",
    "-12:00", "+23:59", "-23:59", "+24:00", "-24:00", "+99:99", "+0100", "+01", "+01:00:30",
]  # fmt: skip
FRACTIONS = ["", ".0", ".5", ".999999", ".9999995", ".123456789", "." + "9" * 60, "."]


@st.composite
def generated_dates(draw: st.DrawFn) -> str:
    year = draw(st.sampled_from(YEARS) | st.integers(0, 9999))
    month, day = draw(st.sampled_from([(1, 1), (12, 31), (2, 29), (6, 15), (2, 30), (13, 1)]))
    clock = draw(st.sampled_from(["00:00:00", "23:59:59", "12:00:00", "24:00:00", "23:59:60"]))
    text = f"{year:04d}-{month:02d}-{day:02d}"
    if draw(st.integers(0, 4)):
        text += f"T{clock}{draw(st.sampled_from(FRACTIONS))}{draw(st.sampled_from(OFFSETS))}"
    if draw(st.integers(0, 9)) == 0:
        text = non_ascii_digits(text, draw(st.integers(0, 2)))
    return text


def date_texts() -> st.SearchStrategy[str]:
    """ISO 8601 / RFC 3339 date-times at the edges: years 1 and 9999 with offsets, fractions,
    impossible fields, non-ASCII digits; sometimes a number of seconds. (Some critical ones
    carry their own quotes, for filters; elsewhere a quote is just a bad character.)"""
    return weighted(
        CRITICAL_DATES, BROAD_DATES, generated_dates(), generated_dates(), number_texts()
    )


LONG = ["a" * 300, "é" * 1000, "x" * 4000, "y" * 5000, "1" * 3000]
STRANGE = [
    "", " ", "\x00", "a\x00b", "..", "../etc/passwd", "%00", "%2F", "%ZZ", "\u202e", "ß", "İ",
    "🙂", "٥", "\ufeff", "\t", "\n", "'", '"', "\\", "null", "true", "[]", "{}", "NaN",
]  # fmt: skip


def strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(LONG), st.sampled_from(STRANGE), st.text(max_size=30), number_texts()
    )


BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CRITICAL_IDS = [
    "zzzzzzzzzzz", "ZZZZZZZZZZZ", "AzL8n0Y58m7", "aaaaaaaaaaa", "AAAAAAAAAAA", "Bzzzzzzzzzz",
    "00000000000", "0", "zzzzzzzzzzzz", "9" * 20, "-1", "1e20",
]  # fmt: skip


def id_texts(seeded: list[str]) -> st.SearchStrategy[str]:
    """Identifiers: Klaviyo-shaped (11 base-62 characters for events, 26 ULID characters for
    the rest), real ones and near misses, every length near those, digits, huge, non-ASCII."""
    real = st.sampled_from(seeded)
    eleven = st.text(BASE62, min_size=11, max_size=11)
    return st.one_of(
        st.sampled_from(CRITICAL_IDS),
        st.sampled_from(CRITICAL_IDS),
        eleven,
        eleven,
        eleven,
        real,
        st.text(BASE62, min_size=1, max_size=13),
        st.text(CROCKFORD, min_size=25, max_size=27),
        real.map(lambda i: i + "0"),
        real.map(lambda i: i[:-1]),
        real.map(str.lower),
        real.map(lambda i: non_ascii_digits(i, 0)),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        number_texts(),
        st.sampled_from(["x" * 5000, "9" * 3000, "é" * 500, "z" * 100]),
        st.text(min_size=1, max_size=20),
    )


PERCENT_JUNK = [
    "%00", "%2F", "%2e%2e", "%2e%2e%2f%2e%2e", "%FF", "%C0%AF", "%ED%A0%80", "%E2%80%AE",
    "%25", "%25%32%46", "a%20b", "%F0%9F%99%82", "%0A", "%7F", "%C3%A9" * 200, "%D9%A5" * 11,
]  # fmt: skip


def path_ids(seeded: list[str]) -> st.SearchStrategy[str]:
    """A path segment: an id, percent-encoded; or percent-encoded junk as it is."""
    encoded = id_texts(seeded).map(lambda text: quote(text, safe=""))
    junk = st.sampled_from(PERCENT_JUNK)
    return st.one_of(
        encoded, encoded, encoded, junk, st.lists(junk, min_size=1, max_size=4).map("".join)
    )


# JSON nested deeper than any decoder recurses.
DEEP = "[" * 10_000 + "]" * 10_000
# JSON texts with numbers JSON cannot hold in 64 bits or at all, for cursors and bodies.
CRITICAL_RAW = [
    DEEP,
    "1e400", "-1e400", "1e308", "-1e308", "NaN", "Infinity", "-Infinity", "9223372036854775808",
    "-9223372036854775809", "18446744073709551616", "1" + "0" * 400, "-" + "9" * 400,
    '"NaN"', "1e20", "-1e300", "253402300800", "-62135596801", "1e-400",
]  # fmt: skip
BROAD_RAW = [
    "1.7976931348623157e308", "5e-324", "9223372036854775807", "-9223372036854775808", "0.5",
    "1.5", "-0", "-0.0", "2.5e3", "1E3", "0", "-1", "01", "+1", "0x10", ".5", "1.", '"1e308"',
    '"9223372036854775808"', '"٥"', "true", "false", "null", "[]", "{}", '"1"', '""', "[1e400]",
    "1e-7", "12.5",
]  # fmt: skip


def raw_numbers() -> st.SearchStrategy[str]:
    return weighted(
        CRITICAL_RAW,
        BROAD_RAW,
        st.sampled_from(BIG_INTS).map(str),
        st.integers().map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
        number_texts().map(json.dumps),
    )


def b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# Cursors GET /api/events issues are [time, rowid, "next"|"prev"]; /api/profiles and
# /api/metrics issue a string (an id, or "created|id").
CRITICAL_CURSOR_JSON = [
    '[18446744073709551616,1,"next"]', '[1,18446744073709551616,"next"]',
    '[9223372036854775808,0,"prev"]', '[-9223372036854775809,0,"next"]',
    '[1,-9223372036854775809,"prev"]', '[' + "9" * 400 + ',1,"next"]', '[1e20,1,"next"]',
    '[1,1.5,"next"]', '[NaN,1,"next"]', '[1e400,1,"next"]', '[Infinity,0,"prev"]',
    '[true,false,"prev"]', '[[1],[2],"next"]', '[1,2,"next",4]', "18446744073709551616", "1e400",
    '"' + "x" * 5000 + '"', '"\\u0000"', '"\\ud800"', '"|"', '"9999-12-31T23:59:59+00:00|x"',
    '"' + "٥" * 26 + '"', DEEP, '{"a":' * 5000 + "1" + "}" * 5000, "{" * 5000, "NaN",
]  # fmt: skip


def json_values() -> st.SearchStrategy[Any]:
    atoms = st.one_of(
        st.sampled_from([*BIG_INTS, 1e20, -1e300, 1.5, 0.5, -0.0, True, False, None]),
        st.sampled_from(["", "next", "prev", "x" * 300, "NaN", "9999-12-31T23:59:59+23:59|x"]),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=10),
    )
    return st.recursive(
        atoms,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    )


def encodings(raw: str) -> list[str]:
    """The forms a cursor arrives in: base64url unpadded, padded, "="-prefixed (the Python SDK
    trims an https link so), standard base64, inside a whole `links.next` URL (the Node SDK)."""
    padded = base64.urlsafe_b64encode(raw.encode()).decode()
    return [
        padded.rstrip("="),
        padded,
        "=" + padded.rstrip("="),
        base64.b64encode(raw.encode()).decode(),
        f"http://127.0.0.1/api/events?page%5Bcursor%5D={padded.rstrip('=')}",
        f"http://127.0.0.1/api/events?page[size]=5&page[cursor]={quote(padded)}",
    ]


@st.composite
def cursors(draw: st.DrawFn, real: str) -> str:
    """page[cursor]: base64url of JSON (the critical pool, cursor-shaped with extreme numbers,
    any JSON value), in any of its encodings; a real cursor mangled; or junk."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.text(max_size=40) | st.sampled_from(["=", "====", "%%%", "a" * 5000]))
    if kind == 1:
        return draw(st.sampled_from([real, real[:-1], real + "A", real[::-1], "=" + real]))
    if kind <= 5:
        raw = draw(st.sampled_from(CRITICAL_CURSOR_JSON))
    elif kind <= 7:
        big = st.sampled_from(BIG_INTS) | st.integers()
        words = st.sampled_from(["next", "prev", "", "NEXT", None, 1])
        raw = json.dumps([draw(big), draw(big), draw(words)])
    else:
        raw = json.dumps(draw(json_values()))
    forms = encodings(raw)
    return draw(st.sampled_from(forms[:1] * 3 + forms))


def quoted(text: str, quote_char: str = '"') -> str:
    escaped = text.replace("\\", "\\\\").replace(quote_char, "\\" + quote_char)
    return f"{quote_char}{escaped}{quote_char}"


@st.composite
def filter_values(draw: st.DrawFn) -> str:
    """A filter literal: an unquoted or quoted date-time or number, a long or odd string, an
    array of them."""
    kind = draw(st.integers(0, 19))
    if kind <= 6:
        return draw(date_texts())  # unquoted (the critical ones are quoted too)
    if kind <= 11:
        return draw(number_texts())  # unquoted
    if kind <= 14:
        return quoted(draw(date_texts()), draw(st.sampled_from(['"', "'"])))
    if kind == 15:
        return quoted(draw(number_texts()))
    if kind <= 17:
        return quoted(draw(strings()), draw(st.sampled_from(['"', "'"])))
    if kind == 18:
        return draw(strings())
    items = draw(st.lists(date_texts() | number_texts(), min_size=0, max_size=3))
    return "[" + ",".join(quoted(i) if draw(st.booleans()) else i for i in items) + "]"


RANGE_OPERATORS = ["greater-than", "greater-or-equal", "less-than", "less-or-equal", "equals"]


def combine(draw: st.DrawFn, parts: list[str]) -> str:
    if len(parts) > 1 and draw(st.booleans()):
        return f"and({','.join(parts)})"
    return ",".join(parts)


@st.composite
def event_filters(draw: st.DrawFn, seed: Seed) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 7))
        if kind <= 5:
            op = draw(st.sampled_from([*RANGE_OPERATORS, *RANGE_OPERATORS, "any", "contains"]))
            name = draw(st.sampled_from(["datetime", "timestamp"]))
            parts.append(f"{op}({name},{draw(filter_values())})")
        elif kind == 6:
            name = draw(st.sampled_from(["metric_id", "profile_id"]))
            ids = seed.metric_ids if name == "metric_id" else seed.profile_ids
            value = draw(id_texts(ids).map(quoted) | filter_values())
            parts.append(f"equals({name},{value})")
        else:
            parts.append(f"has({draw(st.sampled_from(['profile', 'metric']))})")
    return combine(draw, parts)


EMAILS = ["extreme0@trackhouse-tests.dev", "EXTREME0@trackhouse-tests.dev", "a" * 90 + "@x.dev",
          "٥@x.dev", "@" * 300, "josé@example.com", "user@xn--bcher-kva.example"]  # fmt: skip
PHONES = ["+14155550100", "+1 415 555 0100", "+" + "9" * 300, "+١٤١٥٥٥٥٠١٠٠",
          "+１４１５５５５０１００", "+0", "+", "+9223372036854775808"]  # fmt: skip


@st.composite
def profile_filters(draw: st.DrawFn, seed: Seed) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 2))):
        if draw(st.integers(0, 2)):
            op = draw(st.sampled_from(RANGE_OPERATORS))
            name = draw(st.sampled_from(["created", "updated"]))
            parts.append(f"{op}({name},{draw(filter_values())})")
            continue
        name = draw(st.sampled_from(["id", "email", "phone_number", "external_id", "_kx"]))
        if name == "id":
            values = id_texts(seed.profile_ids)
        elif name == "email":
            values = st.sampled_from(EMAILS) | strings()
        elif name == "phone_number":
            values = st.sampled_from(PHONES) | number_texts()
        else:
            values = strings()
        if draw(st.booleans()):
            items = draw(st.lists(values, min_size=0, max_size=4))
            parts.append(f"any({name},[{','.join(quoted(v) for v in items)}])")
        else:
            parts.append(f"equals({name},{draw(values.map(quoted) | filter_values())})")
    return combine(draw, parts)


@st.composite
def metric_filters(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(["integration.name", "integration.category", "name", "id"]))
        value = draw(strings().map(quoted) | filter_values())
        parts.append(f"{draw(st.sampled_from(['equals', 'any', 'less-than']))}({name},{value})")
    return combine(draw, parts)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def splice(document: Any, raw: dict[str, str]) -> bytes:
    """JSON of `document` with each string "@@name@@" replaced by raw JSON text raw[name]."""
    text = json.dumps(document)
    for name, token in raw.items():
        text = text.replace(json.dumps(f"@@{name}@@"), token)
    return text.encode()


CRITICAL_REVISIONS = [
    "0001-01-01", "9999-12-31", "0000-01-01", "٢٠٢٦-١٠-١٥", "２０２６-１０-１５", "2026-١٠-15",
    "2026-10-15." + "a" * 60_000, "2026-10-15." + "b" * 300, "2026-10-15.é", "1999-01-01",
    "99999-01-01", "2024-02-30", "2026-10-15" * 100,
]  # fmt: skip
BROAD_REVISIONS = [
    "2024-13-01", "2024-1-1", "2026-10-15.pre", "2026-10-15.", "2026-10-15.x.y", "2026-10-15 ",
    " 2026-10-15", "2026-10-15T00:00", "2022-10-17", "2022-10-16", "2023-01-23", "2023-01-24",
    OLD, "2024-02-15", NEWEST, "-2026-10-15", "+2026-10-15", "2026-10-15.pre\u202e", "", " ",
    "1e20", "9223372036854775808", "2026-10-15.pre.pre", "2026-10-15._", "2026-10-15.-",
]  # fmt: skip


def revisions() -> st.SearchStrategy[bytes]:
    """The revision header, as bytes (so that non-ASCII reaches the server as UTF-8)."""
    texts = weighted(
        CRITICAL_REVISIONS,
        BROAD_REVISIONS,
        date_texts().map(lambda t: t[:10]),
        number_texts().map(lambda t: t.strip()),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_categories=["Cc"])),
    )
    return texts.map(lambda t: t.encode("utf-8"))


CRITICAL_TIMEZONES = [
    "America", "America/", "Europe", "Etc", "posix", "right", "Z" * 300, "a" * 256, "A/" * 150,
    "../etc/passwd", "../../../../etc/passwd", "/etc/localtime", "\x00", "UTC\x00", "zone.tab",
    "tzdata.zi", "__init__.py", "__pycache__", "..", ".", "", "\ud800", "America/New_York/",
    "posixrules", "Factory", "leapseconds", "iso3166.tab", "SECURITY", "a" * 4096,
]  # fmt: skip
BROAD_TIMEZONES = [
    "UTC", "America/New_York", "posix/UTC", "right/UTC", "zone1970.tab", "leap-seconds.list",
    "/", "//", "/usr/share/zoneinfo/UTC", "America/../Europe/London", "America//New_York",
    "America/New_York\x00junk", "a" * 255, "ＵＴＣ", "Europe/Zürich", "🙂", "utc", "Etc/GMT+14",
    "Etc/GMT-14", "Etc/GMT+99", "+05:30", "-23:59", "GMT+0", "EST5EDT", "America/Havana",
    "Australia/Lord_Howe", "Asia/Kathmandu", "America/St_Johns", " UTC", "UTC ", "\\",
    "C:\\Windows", "America\\New_York", "nul", "con", "Europe/London\n",
]  # fmt: skip


def timezones() -> st.SearchStrategy[str]:
    """Time zone names at the edges, as JSON text (so that a lone surrogate can be sent)."""
    names = weighted(CRITICAL_TIMEZONES, BROAD_TIMEZONES, st.text(max_size=40), strings())
    return st.one_of(names.map(json.dumps), names.map(json.dumps), st.sampled_from(CRITICAL_RAW))


# -- path ids ------------------------------------------------------------------------------

EVENT_TAILS = {
    NEWEST: ["", "/", "/metric", "/profile", "/relationships/metric", "/relationships/profile"],
    OLD: ["", "/", "/metrics", "/profiles", "/relationships/metrics", "/relationships/profiles"],
}


@st.composite
def event_paths(draw: st.DrawFn, seed: Seed) -> tuple[str, str, str]:
    """(revision, tail, segment): an event path of the revision, or one of the other's."""
    revision = draw(st.sampled_from([NEWEST, OLD]))
    tails = EVENT_TAILS[revision]
    if draw(st.integers(0, 9)) == 0:  # the other revision's paths: a 404
        tails = EVENT_TAILS[OLD if revision == NEWEST else NEWEST]
    return revision, draw(st.sampled_from(tails)), draw(path_ids(seed.event_ids))


def test_event_ids(h: Harness) -> None:
    @given(event_paths(h.seed))
    @example((NEWEST, "", "zzzzzzzzzzz"))
    @example((NEWEST, "/relationships/profile", "AzL8n0Y58m7"))
    @example((OLD, "/metrics", "ZZZZZZZZZZZ"))
    @example((OLD, "/relationships/profiles", "zzzzzzzzzzz"))
    @EXTREMES
    def run(case: tuple[str, str, str]) -> None:
        revision, tail, segment = case
        route = "/api/events/{id}" + tail
        h.call(
            "GET",
            f"/api/events/{segment}{tail}",
            what="id",
            shown=segment,
            revision=revision,
            route=route,
        )

    run()


RESOURCE_ROUTES = {
    "/api/profiles/{id}": "profile_ids",
    "/api/metrics/{id}": "metric_ids",
    "/api/event-bulk-create-jobs/{id}": "job_ids",
    "/api/event-receipts/{id}": "receipt_ids",
}


@st.composite
def resource_paths(draw: st.DrawFn, seed: Seed) -> tuple[str, str]:
    route = draw(st.sampled_from(sorted(RESOURCE_ROUTES)))
    segment = draw(path_ids(getattr(seed, RESOURCE_ROUTES[route]) + seed.ids()))
    return route, segment + draw(st.sampled_from(["", "", "/"]))


def test_resource_ids(h: Harness) -> None:
    @given(resource_paths(h.seed))
    @EXTREMES
    def run(case: tuple[str, str]) -> None:
        route, segment = case
        h.call("GET", route.replace("{id}", segment), what="id", shown=segment, route=route)

    run()


# -- lists: page[size], page[cursor], filter, sort ----------------------------------------------

LISTS = ["/api/events", "/api/profiles", "/api/metrics"]
PROFILE_SORTS = ["id", "-id", "created", "-created", "updated", "-updated"]


@st.composite
def list_pages(draw: st.DrawFn, seed: Seed) -> tuple[str, str, dict[str, str]]:
    """(path, revision, params) with an extreme page[size] and/or page[cursor]."""
    path = draw(st.sampled_from(LISTS))
    params = drop_none(
        {
            "page[size]": draw(optional(number_texts())),
            "page[cursor]": draw(optional(cursors(seed.cursors[path]))),
        }
    )
    if not params or draw(st.booleans()):
        params["page[cursor]"] = draw(cursors(seed.cursors[path]))
    if path == "/api/profiles":
        params["sort"] = draw(st.sampled_from(PROFILE_SORTS))
    if path == "/api/events" and draw(st.booleans()):
        params["sort"] = draw(st.sampled_from(["datetime", "-timestamp"]))
    return path, draw(st.sampled_from([NEWEST, NEWEST, OLD])), params


def test_list_paging(h: Harness) -> None:
    @given(list_pages(h.seed))
    @example(("/api/events", NEWEST, {"page[cursor]": b64('[18446744073709551616,1,"next"]')}))
    @example(("/api/events", OLD, {"page[cursor]": b64('[1,18446744073709551616,"prev"]')}))
    @example(("/api/events", NEWEST, {"page[size]": "٥"}))
    @example(("/api/profiles", NEWEST, {"page[size]": "9223372036854775808"}))
    @example(("/api/profiles", NEWEST, {"sort": "created", "page[cursor]": b64('"|"')}))
    @example(("/api/metrics", NEWEST, {"page[cursor]": b64('"' + "x" * 5000 + '"')}))
    @example(("/api/events", NEWEST, {"page[cursor]": b64(DEEP)}))
    @example(("/api/profiles", NEWEST, {"sort": "id", "page[cursor]": b64(DEEP)}))
    @example(("/api/metrics", NEWEST, {"page[cursor]": b64(DEEP)}))
    @examples(1.5)
    def run(case: tuple[str, str, dict[str, str]]) -> None:
        path, revision, params = case
        what = ",".join(k for k in params if k != "sort")
        h.call("GET", path, what=what, shown=params, params=params, revision=revision)

    run()


def test_event_filters(h: Harness) -> None:
    @given(
        event_filters(h.seed),
        optional(st.sampled_from(["datetime", "-datetime", "timestamp", "-timestamp"])),
        st.sampled_from([NEWEST, OLD]),
    )
    @example("greater-than(timestamp,1e20)", None, NEWEST)
    @example("greater-than(timestamp,9223372036854775807)", None, NEWEST)
    @example("less-than(timestamp,-1e300)", "-timestamp", NEWEST)
    @example("greater-or-equal(datetime,9999-12-31T23:59:59-23:59)", None, OLD)
    @example("less-than(datetime,0001-01-01T00:00:00+23:59)", None, NEWEST)
    @example('equals(datetime,"9999-12-31T23:59:59.999999-00:01")', None, NEWEST)
    @example("greater-than(datetime,٢٠٢٤-٠٥-٠١)", None, NEWEST)
    @examples(2)
    def run(filter_text: str, sort: str | None, revision: str) -> None:
        params = drop_none({"filter": filter_text, "sort": sort})
        h.call(
            "GET",
            "/api/events",
            what="filter",
            shown=filter_text,
            params=params,
            revision=revision,
        )

    run()


def test_profile_filters(h: Harness) -> None:
    @given(profile_filters(h.seed), optional(st.sampled_from(PROFILE_SORTS)))
    @example("greater-than(created,9999-12-31T23:59:59-23:59)", None)
    @example("less-than(updated,0001-01-01T00:00:00+00:01)", "-updated")
    @example("greater-or-equal(created,9999-12-31T23:59:59.9999999Z)", None)
    @example("less-or-equal(updated,0001-01-01T00:00:00+23:59)", None)
    @example('equals(phone_number,"+١٤١٥٥٥٥٠١٠٠")', None)
    @examples(1.5)
    def run(filter_text: str, sort: str | None) -> None:
        params = drop_none({"filter": filter_text, "sort": sort})
        h.call("GET", "/api/profiles", what="filter", shown=filter_text, params=params)

    run()


def test_metric_filters(h: Harness) -> None:
    @given(metric_filters())
    @examples(0.5)
    def run(filter_text: str) -> None:
        params = {"filter": filter_text}
        h.call("GET", "/api/metrics", what="filter", shown=filter_text, params=params)

    run()


# -- POST /api/metric-aggregates -----------------------------------------------------------------

MEASUREMENTS = [["count"], ["sum_value"], ["unique"], ["count", "sum_value", "unique"], [], ["x"]]
INTERVALS = ["hour", "day", "week", "month", "year", "minute", "", "DAY", "hour" * 100, "٥"]
AGGREGATE_FIELDS = [
    "range", "page_size", "page_cursor", "interval", "timezone", "by", "measurements",
    "metric_id", "filter",
]  # fmt: skip


def aggregate_body(metric_id: str, raw: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """A metric-aggregates body for `metric_id`, sane but for the raw JSON texts in `raw`
    (attribute name -> JSON; "low"/"high" are the datetime bounds, "ops" their operators
    joined by a space, "filter" a third filter)."""
    low = raw.get("low", "2023-01-01T00:00:00Z")
    high = raw.get("high", "2025-01-01T00:00:00Z")
    first, second = raw.get("ops", "greater-or-equal less-than").split(" ")
    filters = [f"{first}(datetime,{low})", f"{second}(datetime,{high})"]
    if "filter" in raw:
        filters.append(raw["filter"])
    attributes: dict[str, Any] = {
        "metric_id": metric_id,
        "measurements": ["count", "sum_value", "unique"],
        "filter": filters,
        "interval": "day",
        "timezone": "UTC",
    }
    spliced = {}
    for name, token in raw.items():
        if name in ("low", "high", "ops", "filter"):
            continue
        attributes[name] = f"@@{name}@@"
        spliced[name] = token
    document = {"data": {"type": "metric-aggregate", "attributes": attributes}}
    return splice(document, spliced), {k: _short(v, 100) for k, v in raw.items()}


@st.composite
def aggregate_cases(draw: st.DrawFn, metric_ids: list[str]) -> dict[str, str]:
    """Raw JSON texts for one to three attributes of a metric-aggregates body."""
    wild = draw(st.lists(st.sampled_from(AGGREGATE_FIELDS), min_size=1, max_size=3, unique=True))
    raw: dict[str, str] = {}
    for name in wild:
        if name == "range":
            raw["low"] = draw(date_texts())
            raw["high"] = draw(date_texts())
            raw["ops"] = draw(
                st.sampled_from(
                    ["greater-or-equal less-than", "greater-than less-or-equal",
                     "equals less-than", "less-than greater-or-equal"]
                )
            )  # fmt: skip
        elif name == "filter":
            op = draw(st.sampled_from(["equals", "any", "greater-than"]))
            field_name = draw(st.sampled_from(["$value", "Brand", "$value_currency", "datetime"]))
            raw["filter"] = f"{op}({field_name},{draw(filter_values())})"
        elif name == "page_size":
            raw[name] = draw(raw_numbers())
        elif name == "page_cursor":
            offsets = st.sampled_from([*BIG_INTS, 1e20, 1.5, -0.0, True]) | st.integers()
            raw[name] = json.dumps(
                draw(
                    offsets.map(lambda n: b64(json.dumps(n)))
                    | st.sampled_from(CRITICAL_RAW).map(b64)
                    | cursors(b64("500"))
                )
            )
        elif name == "interval":
            raw[name] = json.dumps(draw(st.sampled_from(INTERVALS) | st.text(max_size=8)))
        elif name == "timezone":
            raw[name] = draw(timezones())
        elif name == "by":
            by = st.sampled_from(["$value_currency", "Brand", "$value"]) | strings()
            raw[name] = json.dumps(draw(st.lists(by, max_size=4)))
        elif name == "measurements":
            raw[name] = json.dumps(draw(st.sampled_from(MEASUREMENTS)))
        elif name == "metric_id":
            raw[name] = draw(id_texts(metric_ids).map(json.dumps) | raw_numbers())
    if "timezone" not in raw and draw(st.booleans()):  # the range's extremes in other zones
        raw["timezone"] = json.dumps(draw(st.sampled_from(["Pacific/Kiritimati", "Etc/GMT+12"])))
    if "interval" not in raw:
        raw["interval"] = json.dumps(draw(st.sampled_from(INTERVALS[:4])))
    return raw


def test_metric_aggregates(h: Harness) -> None:
    @given(aggregate_cases(h.seed.metric_ids), st.sampled_from(h.seed.metric_ids))
    @example({"timezone": '"America"'}, h.seed.metric_ids[0])
    @example({"timezone": json.dumps("Z" * 300)}, h.seed.metric_ids[0])
    @example({"timezone": '"../etc/passwd"'}, h.seed.metric_ids[0])
    @example({"low": "0001-01-01T00:00:00+23:59"}, h.seed.metric_ids[0])
    @example({"high": "9999-12-31T23:59:59-23:59", "interval": '"month"'}, h.seed.metric_ids[0])
    @example({"page_size": "9223372036854775808"}, h.seed.metric_ids[0])
    @example({"page_cursor": json.dumps(b64("18446744073709551616"))}, h.seed.metric_ids[0])
    @example({"page_cursor": json.dumps(b64(DEEP))}, h.seed.metric_ids[0])
    @example({"by": DEEP}, h.seed.metric_ids[0])
    @examples(2)
    def run(raw: dict[str, str], metric_id: str) -> None:
        body, shown = aggregate_body(metric_id, raw)
        names = {"range" if k in ("low", "high", "ops") else k for k in raw}
        if len(names) > 1:
            names.discard("interval")
        what = ",".join(sorted(names))
        h.call("POST", "/api/metric-aggregates", what=what, shown=shown, content=body)

    run()


# -- the revision header on every kind of endpoint ---------------------------------------------


def revision_endpoints(s: Seed) -> list[tuple[str, str, str | None, Any]]:
    """(method, path, route, body) for one request of every kind."""
    email = "extreme-revision@trackhouse-tests.dev"
    group = bulk_body([({"email": email}, [bulk_event()])])
    aggregates = {
        "data": {
            "type": "metric-aggregate",
            "attributes": {
                "metric_id": s.metric_ids[0],
                "measurements": ["count"],
                "filter": [
                    "greater-or-equal(datetime,2023-01-01T00:00:00Z)",
                    "less-than(datetime,2025-01-01T00:00:00Z)",
                ],
            },
        }
    }
    event, job, receipt = s.event_ids[0], s.job_ids[0], s.receipt_ids[0]
    return [
        ("GET", "/api/events", None, None),
        ("GET", f"/api/events/{event}", "/api/events/{id}", None),
        ("GET", f"/api/events/{event}/metric", "/api/events/{id}/metric", None),
        ("GET", f"/api/events/{event}/relationships/profiles", "/api/events/{id}/rel…", None),
        ("GET", "/api/profiles", None, None),
        ("GET", f"/api/profiles/{s.profile_ids[0]}", "/api/profiles/{id}", None),
        ("GET", "/api/metrics", None, None),
        ("GET", f"/api/metrics/{s.metric_ids[0]}", "/api/metrics/{id}", None),
        ("GET", f"/api/event-bulk-create-jobs/{job}", "/api/event-bulk-create-jobs/{id}", None),
        ("GET", f"/api/event-receipts/{receipt}", "/api/event-receipts/{id}", None),
        ("POST", "/api/events", None, event_body(email=email)),
        ("POST", "/api/event-bulk-create-jobs", None, group),
        ("POST", "/client/events", None, event_body(email=email)),
        (
            "POST",
            "/client/event-bulk-create",
            None,
            {"data": group["data"]["attributes"]["events-bulk-create"]["data"][0]},
        ),
        ("POST", "/api/metric-aggregates", None, aggregates),
    ]


def test_revision_header(h: Harness) -> None:
    endpoints = revision_endpoints(h.seed)

    @given(st.integers(0, len(endpoints) - 1), revisions(), st.booleans())
    @example(0, b"9999-12-31", False)
    @example(10, b"0001-01-01", True)
    @example(11, "٢٠٢٦-١٠-١٥".encode(), False)
    @example(14, ("2026-10-15." + "a" * 60_000).encode(), True)
    @examples(2)
    def run(index: int, revision: bytes, opt_out: bool) -> None:
        method, path, route, body = endpoints[index]
        client = path.startswith("/client")
        headers = {"X-Klaviyo-Revision-Fall-Forward-Opt-Out": "1"} if opt_out else {}
        h.call(
            method,
            path,
            what="revision header" + (" (opt-out)" if opt_out else ""),
            shown=_short(revision.decode(), 100),
            params={"company_id": PUBLIC_KEY} if client else None,
            headers=headers,
            content=None if body is None else json.dumps(body).encode(),
            revision=revision,
            key=None if client else PRIVATE_KEY,
            route=route,
        )

    run()


# -- event bodies: time, value, unique_id, value_currency, numbers in properties ---------------

UNIQUE_IDS = ["", "x" * 255, "x" * 256, "é" * 255, "é" * 256, "\x00", "٥٥", "x" * 100_001]
CURRENCIES = ["USD", "usd", "US", "USDX", "", "ＵＳＤ", "١٢٣", "€€€", "U\x00D", "x" * 300]
HUGE_TIMES = ['"' + "9" * 200_000 + '"', '"2024-05-01T06:00:00.' + "0" * 60 + '"']
EVENT_FIELDS = ["time", "time", "value", "value", "unique_id", "value_currency", "property"]


@st.composite
def event_fields(draw: st.DrawFn) -> dict[str, str]:
    """Raw JSON texts for some of an event's fields: `time`, `value`, `unique_id`,
    `value_currency`, a numeric property."""
    fields: dict[str, str] = {}
    for name in draw(st.lists(st.sampled_from(EVENT_FIELDS), min_size=1, max_size=3, unique=True)):
        if name == "time":
            fields[name] = draw(
                st.one_of(
                    date_texts().map(json.dumps),
                    date_texts().map(json.dumps),
                    date_texts().map(json.dumps),
                    raw_numbers(),
                    st.sampled_from(HUGE_TIMES),
                )
            )
        elif name == "value":
            fields[name] = draw(raw_numbers())
        elif name == "unique_id":
            fields[name] = draw(
                st.sampled_from(UNIQUE_IDS).map(json.dumps)
                | strings().map(json.dumps)
                | st.sampled_from(['"\\ud800"', "123", "1e400", "null"])
            )
        elif name == "value_currency":
            fields[name] = draw(
                st.sampled_from(CURRENCIES).map(json.dumps)
                | raw_numbers()
                | strings().map(json.dumps)
            )
        else:
            fields[name] = draw(raw_numbers())
    return fields


PROFILE = {"email": "extreme-writes@trackhouse-tests.dev"}
WRITES = [
    "/api/events", "/client/events", "/api/event-bulk-create-jobs", "/client/event-bulk-create",
]  # fmt: skip


def write_body(path: str, revision: str, fields: dict[str, str], metric: str, events: int) -> bytes:
    """A body for one of the four write endpoints, sane but for the raw JSON texts in `fields`
    (event attributes; "property" a property's value, "latitude" the profile's location,
    "profile_id" the profile's `id`)."""
    attributes: dict[str, Any] = {
        "properties": {"Brand": "Extreme"},
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
    }
    if "property" in fields:
        attributes["properties"]["n"] = "@@property@@"
    for name in fields:
        if name not in ("property", "latitude", "profile_id"):
            attributes[name] = f"@@{name}@@"
    profile: dict[str, Any] = dict(PROFILE)
    if "latitude" in fields:
        profile["location"] = {"latitude": "@@latitude@@", "longitude": "@@latitude@@"}
    if revision == OLD:  # the flat, `$`-field shape of POST /api/events and /client/events
        attributes["metric"] = {"name": metric}
        attributes["profile"] = {"$email": PROFILE["email"]}
        if "latitude" in fields:
            attributes["profile"]["$latitude"] = "@@latitude@@"
        document: Any = {"data": {"type": "event", "attributes": attributes}}
    elif path.endswith("/events"):
        attributes["profile"] = {"data": {"type": "profile", "attributes": profile}}
        document = {"data": {"type": "event", "attributes": attributes}}
        if "profile_id" in fields:
            attributes["profile"]["data"]["id"] = "@@profile_id@@"
    else:
        document = bulk_body([(profile, [attributes] * events)])
        group = document["data"]["attributes"]["events-bulk-create"]["data"][0]
        if "profile_id" in fields:
            group["attributes"]["profile"]["data"]["id"] = "@@profile_id@@"
        if path.startswith("/client"):
            document = {"data": group}
    return splice(document, fields)


@st.composite
def write_cases(
    draw: st.DrawFn, profile_ids: list[str]
) -> tuple[str, str, dict[str, str], str, int]:
    path = draw(st.sampled_from(WRITES))
    fields = draw(event_fields())
    revision = NEWEST
    if path.endswith("/events") and draw(st.integers(0, 3)) == 0:
        revision = OLD
        fields.pop("value_currency", None)  # not a field before 2024-02-15
    if draw(st.integers(0, 4)) == 0:
        fields["latitude"] = draw(raw_numbers())
    if revision == NEWEST and draw(st.integers(0, 4)) == 0:
        fields["profile_id"] = draw(id_texts(profile_ids).map(json.dumps) | raw_numbers())
    metric = draw(st.sampled_from(["Viewed Product", "Placed Order"]))
    return path, revision, fields, metric, draw(st.integers(1, 2))


def test_event_bodies(h: Harness) -> None:
    @given(write_cases(h.seed.profile_ids))
    @example(("/api/events", NEWEST, {"time": '"9999-12-31T23:59:59-23:59"'}, "Placed Order", 1))
    @example(("/api/events", OLD, {"time": '"0001-01-01T00:00:00+23:59"'}, "Placed Order", 1))
    @example(("/client/events", NEWEST, {"value": "1e400"}, "Placed Order", 1))
    @example(("/api/event-bulk-create-jobs", NEWEST, {"value": "1e308"}, "Placed Order", 2))
    @example(("/api/event-bulk-create-jobs", NEWEST, {"value": '"NaN"'}, "Placed Order", 1))
    @example(
        ("/client/event-bulk-create", NEWEST, {"value": "9223372036854775808"}, "Placed Order", 1)
    )
    @example(("/api/events", NEWEST, {"property": "18446744073709551616"}, "Viewed Product", 1))
    @example(("/api/events", NEWEST, {"time": json.dumps("9" * 200_000)}, "Viewed Product", 1))
    @example(("/api/events", NEWEST, {"property": DEEP}, "Viewed Product", 1))
    @example(("/client/event-bulk-create", NEWEST, {"value": DEEP}, "Placed Order", 1))
    @examples(2)
    def run(case: tuple[str, str, dict[str, str], str, int]) -> None:
        path, revision, fields, metric, events = case
        client = path.startswith("/client")
        h.call(
            "POST",
            path,
            what=",".join(sorted(fields)) + ("" if revision == NEWEST else f" (revision {OLD})"),
            shown={k: _short(v, 80) for k, v in fields.items()},
            params={"company_id": PUBLIC_KEY} if client else None,
            content=write_body(path, revision, fields, metric, events),
            revision=revision,
            key=None if client else PRIVATE_KEY,
        )

    run()


def test_public_keys(h: Harness) -> None:
    """`?company_id=` (the public key) of the client endpoints: an id like any other."""
    bodies = {
        "/client/events": event_body(email="extreme-client@trackhouse-tests.dev"),
        "/client/event-bulk-create": {
            "data": bulk_body([(PROFILE, [bulk_event()])])["data"]["attributes"][
                "events-bulk-create"
            ]["data"][0]
        },
    }

    @given(
        st.sampled_from(sorted(bodies)),
        id_texts([PUBLIC_KEY, PUBLIC_KEY.lower(), PUBLIC_KEY + " "]),
    )
    @example("/client/events", "zzzzzz")
    @example("/client/event-bulk-create", "٥" * 6)
    @examples(0.5)
    def run(path: str, company_id: str) -> None:
        h.call(
            "POST",
            path,
            what="company_id",
            shown=company_id,
            params={"company_id": company_id},
            content=json.dumps(bodies[path]).encode(),
            key=None,
        )

    run()


# -- the legacy Track and Identify API -----------------------------------------------------------

TRACK_FIELDS = ["time", "time", "$value", "$value", "$event_id", "token"]
IDENTIFY_FIELDS = ["$id", "$phone_number", "$latitude", "$longitude", "token"]


def legacy_data(path: str, raw: dict[str, str]) -> str:
    """The JSON of a Track or Identify payload, sane but for the raw JSON texts in `raw`."""
    if path == "/api/track":
        payload: dict[str, Any] = {
            "token": PUBLIC_KEY,
            "event": "Placed Order",
            "customer_properties": {"$email": "extreme-track@trackhouse-tests.dev"},
            "properties": {"item": "Boots"},
        }
        for name in raw:
            where = payload if name in ("time", "token") else payload["properties"]
            where[name] = f"@@{name}@@"
    else:
        payload = {
            "token": PUBLIC_KEY,
            "properties": {"$email": "extreme-identify@trackhouse-tests.dev"},
        }
        for name in raw:
            (payload if name == "token" else payload["properties"])[name] = f"@@{name}@@"
    return splice(payload, raw).decode()


@st.composite
def legacy_cases(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    path = draw(st.sampled_from(["/api/track", "/api/track", "/api/identify"]))
    names = TRACK_FIELDS if path == "/api/track" else IDENTIFY_FIELDS
    raw = {}
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        if name == "token":
            raw[name] = draw(id_texts([PUBLIC_KEY]).map(json.dumps) | raw_numbers())
            continue
        raw[name] = draw(
            raw_numbers()
            | raw_numbers()
            | date_texts().map(json.dumps)
            | st.sampled_from(['"' + "9" * 5000 + '"', '"٣"', '"1e20"'])
        )
    return path, draw(st.sampled_from(["GET", "GET", "POST"])), raw


def test_legacy_track_and_identify(h: Harness) -> None:
    """Track and Identify answer `1`/`0` text by design: only no 5xx is asserted."""

    @given(legacy_cases())
    @example(("/api/track", "GET", {"time": "1e20"}))
    @example(("/api/track", "GET", {"time": "-1e300", "$value": "1e400"}))
    @example(("/api/track", "POST", {"time": '"9999-12-31T23:59:59-23:59"'}))
    @example(("/api/track", "GET", {"$value": "18446744073709551616", "$event_id": "1e400"}))
    @example(("/api/identify", "GET", {"$latitude": "1e400"}))
    @example(("/api/track", "POST", {"$value": DEEP}))
    @example(("/api/identify", "GET", {"$id": DEEP}))
    @examples(1)
    def run(case: tuple[str, str, dict[str, str]]) -> None:
        path, method, raw = case
        data = legacy_data(path, raw)
        shown = {k: _short(v, 80) for k, v in raw.items()}
        encoded = base64.b64encode(data.encode()).decode()
        # A GET whose data cannot fit in a request head (64 KB; httpx refuses such URLs before
        # sending them) goes as the form POST it would have to be.
        if method == "GET" and len(encoded) < 48_000:
            params = {"data": encoded}
            h.call("GET", path, what=",".join(raw), shown=shown, params=params, key=None)
        else:
            h.call(
                "POST",
                path,
                what=",".join(raw),
                shown=shown,
                content=("data=" + quote(data, safe="")).encode(),
                key=None,
                content_type="application/x-www-form-urlencoded",
            )

    run()


# -- admin ---------------------------------------------------------------------------------------


def test_admin_wait_timeout(h: Harness) -> None:
    """`/admin/wait?timeout=`; processed first, so that a short wait is not the documented 503
    of a wait that timed out."""
    h.server.settle()

    @given(
        number_texts()
        | st.sampled_from(["300", "300.0000001", "299.9999999", "0", "-0", "1e-400", "٣", "０"])
    )
    @example("1e308")
    @example("nan")
    @example("-1e300")
    @examples(0.5)
    def run(timeout: str) -> None:
        h.call(
            "POST",
            "/admin/wait",
            what="timeout",
            shown=timeout,
            params={"timeout": timeout},
            key=ADMIN_KEY,
            revision=None,
        )

    run()


# -- unknown paths -------------------------------------------------------------------------------


def test_unknown_paths(h: Harness) -> None:
    @given(
        st.sampled_from(["/api/", "/api/events/x/y/z/", "/api/nothing/", "/client/", "/admin/"]),
        path_ids(h.seed.ids()),
        st.sampled_from(["GET", "POST", "DELETE"]),
    )
    @examples(0.5)
    def run(prefix: str, segment: str, method: str) -> None:
        path = prefix + segment
        h.call(method, path, what="path", shown=path, content=b"{}", route=prefix + "…")

    run()


# -- what was accepted is processed, and reads of it answer ------------------------------------


def test_accepted_extremes_are_processed_and_readable(h: Harness) -> None:
    """Everything the tests above got a 202 for is processed (no processor stuck on an extreme
    value), and every page of the lists, and the aggregates over it, answer."""
    r = h.call(
        "POST",
        "/admin/wait",
        what="timeout",
        shown="60",
        params={"timeout": "60"},
        key=ADMIN_KEY,
        revision=None,
    )
    assert r.status_code == 200, r.text
    for path, size in (("/api/events", 1000), ("/api/profiles", 100), ("/api/metrics", None)):
        params = {"include": "metric,profile"} if path == "/api/events" else {}
        if size:
            params["page[size]"] = str(size)
        for _ in range(50):
            r = h.call("GET", path, what="every page", shown=dict(params), params=params)
            assert r.status_code == 200, r.text
            next_link = r.json()["links"].get("next")
            if not next_link:
                break
            params["page[cursor]"] = cursor_of(next_link)
    r = h.call("GET", "/api/metrics", what="all", shown="")
    for metric in r.json()["data"]:
        for interval, zone in (("month", "UTC"), ("day", "America/New_York")):
            body = {
                "data": {
                    "type": "metric-aggregate",
                    "attributes": {
                        "metric_id": metric["id"],
                        "measurements": ["count", "sum_value", "unique"],
                        "interval": interval,
                        "timezone": zone,
                        "by": ["$value_currency"],
                        "filter": [
                            "greater-or-equal(datetime,2000-01-01T00:00:00Z)",
                            "less-than(datetime,2027-01-01T00:00:00Z)",
                        ],
                    },
                }
            }
            r = h.call(
                "POST",
                "/api/metric-aggregates",
                what="all stored events",
                shown=metric["id"],
                content=json.dumps(body).encode(),
            )
            assert r.status_code == 200, r.text
