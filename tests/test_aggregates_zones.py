"""POST /api/metric-aggregates in time zones whose clocks change (issue 10, items 4, 5 and 8).

Buckets must be real, distinct, contiguous intervals of the zone: across a daylight-saving change
an hour may repeat (two buckets, 01:00-04:00 and 01:00-05:00 in New York), be skipped (no
bucket), or last 90 minutes (Lord Howe, whose clocks move by 30); a local midnight may repeat
or be skipped (Havana), and the day then begins at its first midnight, or at the moment of the
change. The server's answer is compared with a brute-force reference computed here from
zoneinfo alone: it walks UTC in quarter hours (every change and every local hour start of these
zones falls on one) and opens a bucket wherever the local clock reads hh:00 (hours) or the
local calendar date's day / week / month changes; nothing in it resolves a wall-clock time.

The module's own server holds ~2,800 events of one metric: a grid every 15 minutes (and one
second before each) for four hours either side of every clock change of 2023-2025 in the zones
tested, plus seeded random times over 2022-2025. Hypothesis then draws zones, intervals and
ranges (often near a change) against that fixed data, so each example is one request.

Also: any `timezone` string gets a 400 or a 200, never a 500 (item 5); range bounds at years 1
and 9999 with an offset, page_size and page_cursor out of range get a 400 with a pointer
(item 4); a range of too many buckets is refused at once.
"""

from __future__ import annotations

import base64
import random
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import httpx
import msgspec
import pytest
from conftest import (
    Server,
    bulk_body,
    bulk_event,
    make_env,
    private_client,
    single_error,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

METRIC = "Zones Placed Order"
BUYERS = [f"zones-buyer-{n}@klaviyo-demo.com" for n in range(3)]
ZONES = [
    "America/New_York",
    "Europe/London",
    "America/Havana",  # midnight skipped in March, repeated in November
    "America/St_Johns",  # -03:30 / -02:30
    "Australia/Lord_Howe",  # +10:30 / +11:00: a 30-minute change
    "Asia/Kathmandu",  # +05:45, no changes
    "UTC",
]
INTERVALS = ["hour", "day", "week", "month"]
QUARTER = 900  # seconds; every offset and change of ZONES since 1990 is a multiple
START, END = datetime(2022, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)
# The longest range Hypothesis asks for per interval: at most a few hundred buckets each.
LONGEST = {"hour": 10 * 86_400, "day": 120 * 86_400, "week": 400 * 86_400, "month": 800 * 86_400}


def seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def changes(zone: str, start: datetime = START, end: datetime = END) -> list[int]:
    """The instants at which the zone's UTC offset changes, found by scanning (not from any
    transition table): daily, then by quarter hour within a day whose offset changed."""
    tz, found = ZoneInfo(zone), []
    day = seconds(start)
    while day < seconds(end):
        if tz.utcoffset(datetime.fromtimestamp(day, UTC)) != tz.utcoffset(
            datetime.fromtimestamp(day + 86_400, UTC)
        ):
            moment = day
            while tz.utcoffset(datetime.fromtimestamp(moment, UTC)) == tz.utcoffset(
                datetime.fromtimestamp(day, UTC)
            ):
                moment += QUARTER
            found.append(moment)
        day += 86_400
    return found


# Every clock change of the zones tested, 2023 to 2025: these are where events cluster.
CHANGES = {zone: changes(zone, datetime(2023, 1, 1, tzinfo=UTC)) for zone in ZONES}


def event_times() -> list[int]:
    times: set[int] = set()
    for moments in CHANGES.values():
        for change in moments:
            for k in range(-16, 17):
                times |= {change + k * QUARTER, change + k * QUARTER - 1}
    rng = random.Random(20241103)
    times |= {rng.randrange(seconds(START), seconds(END)) for _ in range(1500)}
    return sorted(times)


# -- the brute-force reference ------------------------------------------------------------------


def _label(moment: int, tz: ZoneInfo, interval: str) -> Any:
    """The local calendar period an instant falls in (day, week or month)."""
    local = datetime.fromtimestamp(moment, tz)
    if interval == "day":
        return local.date()
    if interval == "week":
        return local.date() - timedelta(days=local.weekday())
    return (local.year, local.month)


def _opens(moment: int, tz: ZoneInfo, interval: str) -> bool:
    """Whether a bucket starts at this quarter hour: the clock reads hh:00 (for hours; a repeated
    01:00 reads so twice) or has just moved to another hour (a skipped hh:00), or the local
    calendar period has just changed."""
    if interval == "hour":
        now = datetime.fromtimestamp(moment, tz)
        before = datetime.fromtimestamp(moment - QUARTER, tz)
        return now.minute == 0 or (now.date(), now.hour) != (before.date(), before.hour)
    return _label(moment, tz, interval) != _label(moment - QUARTER, tz, interval)


def reference(
    zone: str, interval: str, since: int, until: int, events: list[int]
) -> tuple[list[str], list[int]]:
    """Bucket starts as the API should write them, and the number of events in each."""
    tz = ZoneInfo(zone)
    first = since - since % QUARTER
    while not _opens(first, tz, interval):
        first -= QUARTER
    starts = [first]
    moment = first + QUARTER
    while moment < until:
        if _opens(moment, tz, interval):
            starts.append(moment)
        moment += QUARTER
    counts = [0] * len(starts)
    for event in events:
        if since <= event < until:
            counts[bisect_right(starts, event) - 1] += 1
    return [datetime.fromtimestamp(s, tz).isoformat() for s in starts], counts


# -- the server and its data --------------------------------------------------------------------


@dataclass
class Data:
    metric_id: str
    events: list[int]


@pytest.fixture(scope="module")
def zones_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This module's own server: nothing else adds events to it."""
    server = Server(tmp_path_factory.mktemp("zones"), make_env()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(zones_server: Server) -> Iterator[httpx.Client]:
    with private_client(zones_server) as client:
        yield client


@pytest.fixture(scope="module")
def data(zones_server: Server, api: httpx.Client) -> Data:
    times = event_times()
    for first in range(0, len(times), 999):  # a bulk job takes at most 1,000 events
        chunk = list(enumerate(times))[first : first + 999]
        groups = [
            (
                {"email": email},
                [
                    bulk_event(
                        METRIC,
                        time=datetime.fromtimestamp(t, UTC).isoformat(),
                        value=1,
                        unique_id=f"zones-{i}",
                    )
                    for i, t in chunk
                    if i % len(BUYERS) == n
                ],
            )
            for n, email in enumerate(BUYERS)
        ]
        r = api.post("/api/event-bulk-create-jobs", json=bulk_body(groups))
        assert r.status_code == 202, r.text
    zones_server.settle()
    (metric,) = [
        m for m in api.get("/api/metrics").json()["data"] if m["attributes"]["name"] == METRIC
    ]
    return Data(metric["id"], times)


def body(metric_id: str, since: str, until: str, **attributes: Any) -> dict[str, Any]:
    return {
        "data": {
            "type": "metric-aggregate",
            "attributes": {
                "metric_id": metric_id,
                "measurements": ["count"],
                "filter": [f"greater-or-equal(datetime,{since})", f"less-than(datetime,{until})"],
                **attributes,
            },
        }
    }


def iso(moment: int) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def buckets(
    api: httpx.Client, data: Data, zone: str, interval: str, since: int, until: int
) -> tuple[list[str], list[int]]:
    """The server's answer, checked against the invariants every answer must meet."""
    r = api.post(
        "/api/metric-aggregates",
        json=body(data.metric_id, iso(since), iso(until), interval=interval, timezone=zone),
    )
    assert r.status_code == 200, r.text
    attributes = r.json()["data"]["attributes"]
    dates = attributes["dates"]
    (row,) = attributes["data"]
    counts = row["measurements"]["count"]
    assert len(counts) == len(dates)
    tz = ZoneInfo(zone)
    starts = [seconds(datetime.fromisoformat(d)) for d in dates]
    for text, start in zip(dates, starts, strict=True):
        # written with the zone's own offset at that instant
        assert text == datetime.fromtimestamp(start, tz).isoformat()
    # strictly increasing, so no two dates are the same instant; the first holds `since`
    assert all(a < b for a, b in pairwise(starts)), dates
    assert starts[0] <= since < (starts[1] if len(starts) > 1 else until)
    assert starts[-1] < until
    # each event in range is counted once, in the bucket [start, next start) that holds it
    inside = [t for t in data.events if since <= t < until]
    ends = [*starts[1:], until]
    held = [
        bisect_left(inside, b) - bisect_left(inside, a) for a, b in zip(starts, ends, strict=True)
    ]
    assert counts == held, dates
    assert sum(counts) == len(inside)
    return dates, counts


# -- the findings of issue 10, item 8 -----------------------------------------------------------


def test_new_york_repeated_hour_is_two_buckets(api, data):
    # 2024-11-03: clocks go from 01:59:59 EDT back to 01:00 EST; events in both 01:00 hours.
    since = seconds(datetime.fromisoformat("2024-11-03T00:00:00-04:00"))
    until = seconds(datetime.fromisoformat("2024-11-03T04:00:00-05:00"))
    dates, counts = buckets(api, data, "America/New_York", "hour", since, until)
    assert dates == [
        "2024-11-03T00:00:00-04:00",
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:00:00-05:00",
        "2024-11-03T02:00:00-05:00",
        "2024-11-03T03:00:00-05:00",
    ]
    assert counts[1] > 0 and counts[2] > 0
    assert (dates, counts) == reference("America/New_York", "hour", since, until, data.events)


def test_new_york_skipped_hour_has_no_bucket(api, data):
    # 2024-03-10: 01:59:59 EST is followed by 03:00 EDT; 02:00-05:00 is the instant 03:00-04:00.
    since = seconds(datetime.fromisoformat("2024-03-10T00:00:00-05:00"))
    until = seconds(datetime.fromisoformat("2024-03-10T05:00:00-04:00"))
    dates, _ = buckets(api, data, "America/New_York", "hour", since, until)
    assert dates == [
        "2024-03-10T00:00:00-05:00",
        "2024-03-10T01:00:00-05:00",
        "2024-03-10T03:00:00-04:00",
        "2024-03-10T04:00:00-04:00",
    ]


def test_havana_days_begin_at_their_first_midnight(api, data):
    # Havana's clocks change at midnight: 2024-03-10 has none (00:00 -> 01:00), 2024-11-03 two.
    since = seconds(datetime.fromisoformat("2024-03-09T00:00:00-05:00"))
    until = seconds(datetime.fromisoformat("2024-03-12T00:00:00-04:00"))
    dates, counts = buckets(api, data, "America/Havana", "day", since, until)
    assert dates == [
        "2024-03-09T00:00:00-05:00",
        "2024-03-10T01:00:00-04:00",  # a 23-hour day that begins when the clock jumps
        "2024-03-11T00:00:00-04:00",
    ]
    assert counts[0] > 0 and counts[1] > 0
    since = seconds(datetime.fromisoformat("2024-11-02T00:00:00-04:00"))
    until = seconds(datetime.fromisoformat("2024-11-05T00:00:00-05:00"))
    dates, counts = buckets(api, data, "America/Havana", "day", since, until)
    assert dates == [
        "2024-11-02T00:00:00-04:00",
        "2024-11-03T00:00:00-04:00",  # 25 hours, the repeated midnight inside it
        "2024-11-04T00:00:00-05:00",
    ]
    assert counts[0] > 0 and counts[1] > 0


def test_lord_howe_half_hour_changes(api, data):
    # 2024-04-07: 01:59:59 +11:00 -> 01:30 +10:30, so local hour 01 lasts 90 minutes;
    # 2024-10-06: 01:59:59 +10:30 -> 02:30 +11:00, so local hour 02 lasts 30 and starts at 02:30.
    zone = "Australia/Lord_Howe"
    since = seconds(datetime.fromisoformat("2024-04-07T00:00:00+11:00"))
    until = seconds(datetime.fromisoformat("2024-04-07T04:00:00+10:30"))
    dates, _ = buckets(api, data, zone, "hour", since, until)
    assert dates == [
        "2024-04-07T00:00:00+11:00",
        "2024-04-07T01:00:00+11:00",
        "2024-04-07T02:00:00+10:30",
        "2024-04-07T03:00:00+10:30",
    ]
    since = seconds(datetime.fromisoformat("2024-10-06T00:00:00+10:30"))
    until = seconds(datetime.fromisoformat("2024-10-06T04:00:00+11:00"))
    dates, _ = buckets(api, data, zone, "hour", since, until)
    assert dates == [
        "2024-10-06T00:00:00+10:30",
        "2024-10-06T01:00:00+10:30",
        "2024-10-06T02:30:00+11:00",
        "2024-10-06T03:00:00+11:00",
    ]


@pytest.mark.parametrize(
    ("zone", "since", "first"),
    [
        ("Asia/Kathmandu", "2024-06-01T00:20:00Z", "2024-06-01T06:00:00+05:45"),  # 00:15 UTC
        ("America/St_Johns", "2024-06-01T02:31:00Z", "2024-06-01T00:00:00-02:30"),  # 02:30 UTC
        ("Australia/Lord_Howe", "2024-06-01T00:50:00Z", "2024-06-01T11:00:00+10:30"),
    ],
)
def test_hours_start_at_the_local_hour(api, data, zone, since, first):
    start = seconds(datetime.fromisoformat(since))
    dates, _ = buckets(api, data, zone, "hour", start, start + 3 * 3600)
    assert dates[0] == first
    assert all(d[14:19] == "00:00" for d in dates)  # minutes and seconds, local


# -- every zone and interval against the reference ------------------------------------------------


@pytest.mark.parametrize("interval", INTERVALS)
@pytest.mark.parametrize("zone", ZONES)
def test_every_change_of_2024_matches_the_reference(api, data, zone, interval):
    # Odd seconds at both ends: a range need not start or end on a bucket boundary.
    if interval == "hour":  # three days either side of each change, one request per change
        in_2024 = [c for c in CHANGES[zone] if datetime.fromtimestamp(c, UTC).year == 2024]
        windows = [(c - 3 * 86_400 + 7, c + 3 * 86_400 + 1234) for c in in_2024]
        windows = windows or [(seconds(datetime(2024, 3, 8, tzinfo=UTC)) + 7, 1_710_300_000)]
    else:
        first = {"day": 2024, "week": 2023, "month": 2023}[interval]
        since = seconds(datetime(first, 1, 1, 7, tzinfo=UTC)) + 7
        windows = [(since, seconds(datetime(2025, 1, 1, tzinfo=UTC)) + 1234)]
    for since, until in windows:
        assert buckets(api, data, zone, interval, since, until) == reference(
            zone, interval, since, until, data.events
        )


def _near_change(draw: st.DrawFn, zone: str) -> int:
    if CHANGES[zone] and draw(st.booleans()):
        return draw(st.sampled_from(CHANGES[zone])) + draw(st.integers(-3 * 86_400, 3 * 86_400))
    return draw(st.integers(seconds(START), seconds(END) - 86_400))


@st.composite
def queries(draw: st.DrawFn) -> tuple[str, str, int, int]:
    zone = draw(st.sampled_from(ZONES))
    interval = draw(st.sampled_from(INTERVALS))
    since = _near_change(draw, zone)
    return zone, interval, since, since + draw(st.integers(1, LONGEST[interval]))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=queries())
def test_random_ranges_match_the_reference(api, data, query):
    zone, interval, since, until = query
    assert buckets(api, data, zone, interval, since, until) == reference(
        zone, interval, since, until, data.events
    )


def test_ordinary_days_are_unchanged(api, data):
    # No clock change in the range: local midnights, one after another, as before the fix.
    since = seconds(datetime.fromisoformat("2024-06-03T00:00:00-04:00"))
    dates, _ = buckets(api, data, "America/New_York", "day", since, since + 3 * 86_400)
    assert dates == [f"2024-06-0{d}T00:00:00-04:00" for d in (3, 4, 5)]


# -- item 5: time zone names ----------------------------------------------------------------------


def aggregate_error(api: httpx.Client, data: Data, **attributes: Any) -> dict[str, Any]:
    since, until = attributes.pop("since", "2024-06-01"), attributes.pop("until", "2024-06-03")
    r = api.post("/api/metric-aggregates", json=body(data.metric_id, since, until, **attributes))
    return single_error(r, 400)


@pytest.mark.parametrize(
    "name",
    [
        "America",  # a directory of the zone database
        "x" * 300,  # longer than a file name may be
        "America/../Europe/Paris",
        "../../../../etc/passwd",
        "/usr/share/zoneinfo/UTC",
        "UTC\x00",
        "Europe/",
        " UTC",
        "",
        "localtime",  # the host's own zone, not an IANA name
        "Mars/Olympus_Mons",
        "é" * 40,
    ],
)
def test_bad_time_zone_is_400(api, data, name):
    error = aggregate_error(api, data, timezone=name)
    assert error["source"] == {"pointer": "/data/attributes/timezone"}


NAMES = sorted(available_timezones())


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.one_of(
        st.text(max_size=400),
        st.sampled_from(NAMES),
        # a real name made into a path, or spelled otherwise
        st.sampled_from(NAMES).map(lambda z: z + "/.."),
        st.sampled_from(NAMES).map(lambda z: "../" + z),
        st.sampled_from(NAMES).map(str.lower),
        st.sampled_from(NAMES).map(lambda z: z.rsplit("/", 1)[0]),
        st.from_regex(r"[A-Za-z_./-]{1,40}", fullmatch=True),
    )
)
def test_any_time_zone_string_is_200_or_400(api, data, name):
    r = api.post(
        "/api/metric-aggregates",
        json=body(data.metric_id, "2024-06-01", "2024-06-02", timezone=name),
    )
    if name in available_timezones() and name not in ("localtime", "posixrules"):
        assert r.status_code == 200, r.text
    else:
        assert single_error(r, 400)["source"] == {"pointer": "/data/attributes/timezone"}


# -- item 4: numbers and dates out of range -------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "until"),
    [
        ("0001-01-01T00:00:00+05:00", "2024-06-01"),
        ("0001-01-01T00:00:00+00:00", "0001-01-03"),
        ("2024-06-01", "9999-12-31T23:59:59-05:00"),
        ("9999-12-31T00:00:00-05:00", "9999-12-31T23:59:59-05:00"),
        ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"),
        ("2024-06-01", "9998-12-31T00:00:00Z"),  # representable, but 80 million hours
    ],
)
@pytest.mark.parametrize("interval", INTERVALS)
@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/New_York", "Pacific/Kiritimati"])
def test_range_out_of_bounds_is_400(api, data, since, until, interval, zone):
    started = time.monotonic()
    error = aggregate_error(api, data, since=since, until=until, interval=interval, timezone=zone)
    assert error["source"] == {"pointer": "/data/attributes/filter"}
    assert time.monotonic() - started < 2  # refused before any bucket is listed


def test_year_two_to_9998_in_hours_is_refused_at_once(api, data):
    started = time.monotonic()
    error = aggregate_error(
        api, data, since="0002-01-01T00:00:00Z", until="9998-12-31T00:00:00Z", interval="hour"
    )
    assert "10000" in error["detail"]
    assert time.monotonic() - started < 1


def test_widest_accepted_range_still_answers(api, data):
    # The last months accepted: 9999-01-01+14:00 is still before the end (10:00 UTC), and the
    # bucket after it, 9999-02, must be computed without overflow.
    r = api.post(
        "/api/metric-aggregates",
        json=body(
            data.metric_id,
            "9990-01-01T00:00:00+14:00",
            "9999-01-01T00:00:00Z",
            interval="month",
            timezone="Pacific/Kiritimati",
        ),
    )
    assert r.status_code == 200, r.text
    dates = r.json()["data"]["attributes"]["dates"]
    assert dates[0] == "9990-01-01T00:00:00+14:00" and dates[-1] == "9999-01-01T00:00:00+14:00"


def cursor(value: Any) -> str:
    """A page_cursor as the server encodes one, holding any value."""
    return base64.urlsafe_b64encode(msgspec.json.encode(value)).decode().rstrip("=")


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"page_size": 2**64}, "page_size"),
        ({"page_size": -(2**63)}, "page_size"),
        ({"page_size": 10_001}, "page_size"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 1.5}, "page_size"),
        ({"page_size": True}, "page_size"),
        ({"page_cursor": cursor(2**64)}, "page_cursor"),
        ({"page_cursor": cursor(2**63)}, "page_cursor"),
        ({"page_cursor": cursor(-1)}, "page_cursor"),
        ({"page_cursor": cursor(True)}, "page_cursor"),
        ({"page_cursor": cursor(1.5)}, "page_cursor"),
        ({"page_cursor": cursor("1")}, "page_cursor"),
        ({"page_cursor": cursor(None)}, "page_cursor"),
        ({"page_cursor": "!!"}, "page_cursor"),
        (
            {"page_cursor": "http://x/api/metric-aggregates?page_cursor=" + cursor(2**70)},
            "page_cursor",
        ),
        (
            {"filter": ["greater-or-equal(datetime,1e20)", "less-than(datetime,2024-06-01)"]},
            "filter",
        ),
        (
            {"filter": ["greater-or-equal(datetime,2024-06-01)", "less-than(datetime,-1e300)"]},
            "filter",
        ),
    ],
)
def test_numbers_out_of_range_are_400(api, data, change, pointer):
    error = aggregate_error(api, data, **change)
    assert error["source"] == {"pointer": f"/data/attributes/{pointer}"}


@pytest.mark.parametrize(
    "condition",
    [
        "equals(n,1e308)",
        "equals(n,-1e-308)",
        "equals(n,9223372036854775808)",
        f"equals(n,{'9' * 3900})",  # as long as a filter may be
        "any(n,[9999-12-31T23:59:59-05:00,0001-01-01T00:00:00+05:00])",
    ],
)
def test_other_filter_values_of_any_size_are_compared(api, data, condition):
    b = body(data.metric_id, "2024-06-01", "2024-06-02")
    b["data"]["attributes"]["filter"].append(condition)
    r = api.post("/api/metric-aggregates", json=b)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["attributes"]["data"][0]["measurements"]["count"] == [0]


@pytest.mark.parametrize("offset", [0, 1, 2**31])
def test_a_cursor_in_range_still_pages(api, data, offset):
    b = body(data.metric_id, "2024-06-01", "2024-06-02", page_size=1, page_cursor=cursor(offset))
    r = api.post("/api/metric-aggregates", json=b)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]["attributes"]["data"]) == (1 if offset == 0 else 0)
