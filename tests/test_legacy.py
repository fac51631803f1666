"""The legacy v1 Track and Identify API: /api/track and /api/identify (seed 001, reference § 1.8).

GET `?data=<base64 JSON>` or POST form `data=<JSON>`; the body is `1` when the submission is in
the log and `0` when it was refused (and nothing was written), with a `Trackhouse-Error` header
saying why. `$`-fields map to the canonical model as in reference § 2.16.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import PRIVATE_KEY, PUBLIC_KEY, Server

from trackhouse.model import Event, Submission

TRACK = "/api/track"
IDENTIFY = "/api/identify"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
GIF = b"GIF89a"
Y2K = 946684800  # 2000-01-01T00:00:00Z


@pytest.fixture
def legacy(server: Server) -> Iterator[httpx.Client]:
    """A fresh client per test (no credentials: the token travels in the payload), so that a
    connection reset after a 500 cannot spill into the next test; `verify=False` skips the TLS
    setup an http:// client never uses."""
    with httpx.Client(base_url=server.url, timeout=30, verify=False) as client:
        yield client


def email(tag: str) -> str:
    return f"{tag}.{uuid.uuid4().hex[:10]}@trackhouse-tests.dev"


def b64(payload: Any, *, urlsafe: bool = False, padding: bool = True) -> str:
    raw = json.dumps(payload).encode()
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return encoded if padding else encoded.rstrip("=")


def track_payload(**fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "token": PUBLIC_KEY,
        "event": "Ordered Product",
        "customer_properties": {"$email": email("track")},
        "properties": {"item_name": "Boots"},
    }
    payload.update(fields)
    return payload


def identify_payload(**properties: Any) -> dict[str, Any]:
    return {"token": PUBLIC_KEY, "properties": {"$email": email("identify"), **properties}}


def accepted(server: Server, send: Callable[[], httpx.Response]) -> Submission:
    """Send; the answer must be `1` and exactly one new submission must be in the log."""
    before = len(server.log_entries())
    response = send()
    assert response.status_code == 200, response.text
    assert response.content == b"1", response.headers.get("Trackhouse-Error")
    assert "Trackhouse-Error" not in response.headers
    logged = server.log_entries()[before:]
    assert len(logged) == 1
    return logged[0]


def refused(
    server: Server, send: Callable[[], httpx.Response], reason: str, status: int = 200
) -> httpx.Response:
    """Send; the answer must be `0` with a Trackhouse-Error containing `reason`, and the log
    must be unchanged."""
    before = len(server.log_entries())
    response = send()
    assert response.status_code == status, response.text
    assert response.content == b"0"
    assert reason in response.headers.get("Trackhouse-Error", ""), response.headers
    assert len(server.log_entries()) == before, "a refused request wrote to the log"
    return response


# -- accepted: the mapping of `$`-fields -----------------------------------------------------------


def test_track_maps_special_fields_to_the_canonical_submission(server, legacy):
    address = email("mapped")
    payload = {
        "token": PUBLIC_KEY,
        "event": "Ordered Product",
        "customer_properties": {
            "$email": address,
            "$phone_number": "+13239169023",
            "$first_name": "Sarah",
            "$last_name": "Mason",
            "$city": "Boston",
            "$region": "MA",
            "$country": "United States",
            "$zip": "02110",
            "$image": "https://example.org/sarah.png",
            "$consent": ["sms", "email", "web", "directmail", "mobile"],
            "$id": "crm-8841",
            "Plan": "trial",
        },
        "properties": {"item_name": "Boots", "Size": 9, "$value": 100, "$event_id": 42},
        "time": 1700000000,
    }
    before = time.time()
    submission = accepted(server, lambda: legacy.get(TRACK, params={"data": b64(payload)}))

    assert submission.source == "track"
    assert submission.account_id == PUBLIC_KEY
    assert before - 1 <= submission.received_at <= time.time() + 1
    assert submission.metric_cap == 200  # the legacy API keeps the 200-metric cap
    profile = submission.profile
    assert profile.email == address
    assert profile.phone_number == "+13239169023"
    assert profile.external_id == "crm-8841"
    assert profile.attributes == {
        "first_name": "Sarah",
        "last_name": "Mason",
        "image": "https://example.org/sarah.png",
    }
    assert profile.location == {
        "city": "Boston",
        "region": "MA",
        "country": "United States",
        "zip": "02110",
    }
    assert profile.properties == {
        "$consent": ["sms", "email", "web", "directmail", "mobile"],
        "Plan": "trial",
    }
    assert profile.may_change_identifiers is False  # a public-key endpoint
    assert submission.events == [
        Event(
            metric="Ordered Product",
            properties={"item_name": "Boots", "Size": 9},
            time=1700000000,
            value=100.0,
            unique_id="42",
        )
    ]


def test_track_without_time_uses_the_time_of_receipt(server, legacy):
    submission = accepted(server, lambda: legacy.get(TRACK, params={"data": b64(track_payload())}))
    assert submission.events[0].time == int(submission.received_at)
    assert submission.events[0].unique_id is None
    assert submission.events[0].value is None


@pytest.mark.parametrize(
    ("given", "logged"),
    [(1700000000.9, 1700000000), ("1700000000", 1700000000), (Y2K, Y2K)],
    ids=["float", "string", "start-of-2000"],
)
def test_track_time_is_unix_seconds(server, legacy, given, logged):
    payload = track_payload(time=given)
    submission = accepted(server, lambda: legacy.get(TRACK, params={"data": b64(payload)}))
    assert submission.events[0].time == logged


@pytest.mark.parametrize(
    ("event_id", "unique_id"), [("order-1", "order-1"), (1234, "1234")], ids=["string", "number"]
)
def test_track_event_id_becomes_a_string_unique_id(server, legacy, event_id, unique_id):
    payload = track_payload(properties={"$event_id": event_id, "n": 1})
    submission = accepted(server, lambda: legacy.get(TRACK, params={"data": b64(payload)}))
    assert submission.events[0].unique_id == unique_id
    assert submission.events[0].properties == {"n": 1}


def _encodings_payload() -> dict[str, Any]:
    """A payload whose base64 has `+`, `/` (urlsafe: `-`, `_`) and `=` padding."""
    for before in range(3):
        for after in range(3):
            payload = track_payload(properties={"q": "a" * before + ">>>???" + "b" * after})
            standard, urlsafe = b64(payload), b64(payload, urlsafe=True)
            if "+" in standard and "/" in standard and standard.endswith("="):
                assert "-" in urlsafe and "_" in urlsafe
                return payload
    raise AssertionError("no payload exercises every base64 character")


@pytest.mark.parametrize("urlsafe", [False, True], ids=["standard", "urlsafe"])
@pytest.mark.parametrize("padding", [True, False], ids=["padded", "unpadded"])
def test_track_get_accepts_base64_variants(server, legacy, urlsafe, padding):
    payload = _encodings_payload()
    data = b64(payload, urlsafe=urlsafe, padding=padding)
    submission = accepted(server, lambda: legacy.get(TRACK, params={"data": data}))
    assert submission.profile.email == payload["customer_properties"]["$email"]
    assert submission.events[0].properties == payload["properties"]


def test_track_get_accepts_base64_whose_plus_signs_were_not_url_encoded(server, legacy):
    # Browser snippets built as `"?data=" + encodeURI(btoa(json))` leave `+` unescaped, which
    # a query-string parser reads as a space; a space is never base64, so it must be a `+`.
    payload = _encodings_payload()
    url = f"{TRACK}?data={b64(payload)}"
    assert "+" in url
    submission = accepted(server, lambda: legacy.get(url))
    assert submission.events[0].properties == payload["properties"]


def test_track_post_form_with_json_data(server, legacy):
    payload = track_payload(properties={"item_name": "Hat", "$value": 19.99})
    submission = accepted(
        server, lambda: legacy.post(TRACK, data={"data": json.dumps(payload)}, headers=FORM)
    )
    assert submission.source == "track"
    assert submission.profile.email == payload["customer_properties"]["$email"]
    assert submission.events[0].properties == {"item_name": "Hat"}
    assert submission.events[0].value == 19.99


def test_track_post_form_with_charset_and_other_fields(server, legacy):
    payload = track_payload()
    form = {"data": json.dumps(payload), "test": "0"}
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    submission = accepted(server, lambda: legacy.post(TRACK, data=form, headers=headers))
    assert submission.events[0].metric == "Ordered Product"


@pytest.mark.parametrize("path", [TRACK, TRACK + "/", IDENTIFY, IDENTIFY + "/"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_trailing_slash_is_optional(server, legacy, path, method):
    payload = track_payload() if path.startswith(TRACK) else identify_payload()
    if method == "GET":
        submission = accepted(server, lambda: legacy.get(path, params={"data": b64(payload)}))
    else:
        form = {"data": json.dumps(payload)}
        submission = accepted(server, lambda: legacy.post(path, data=form, headers=FORM))
    assert submission.source == ("track" if path.startswith(TRACK) else "identify")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_identify_maps_properties_to_the_profile_without_events(server, legacy, method):
    address = email("identified")
    payload = {
        "token": PUBLIC_KEY,
        "properties": {
            "$email": address,
            "$first_name": "Ann",
            "$last_name": "Lee",
            "$city": "Denver",
            "$zip": "80202",
            "$id": "crm-17",
            "$consent": ["email"],
            "Favorite Color": "green",
        },
    }
    if method == "GET":
        submission = accepted(server, lambda: legacy.get(IDENTIFY, params={"data": b64(payload)}))
    else:
        form = {"data": json.dumps(payload)}
        submission = accepted(server, lambda: legacy.post(IDENTIFY, data=form, headers=FORM))
    assert submission.source == "identify"
    assert submission.account_id == PUBLIC_KEY
    assert submission.events == []
    profile = submission.profile
    assert profile.email == address
    assert profile.external_id == "crm-17"
    assert profile.attributes == {"first_name": "Ann", "last_name": "Lee"}
    assert profile.location == {"city": "Denver", "zip": "80202"}
    assert profile.properties == {"$consent": ["email"], "Favorite Color": "green"}


def test_identify_by_phone_number_only(server, legacy):
    payload = {"token": PUBLIC_KEY, "properties": {"$phone_number": "+1 323 916 9023"}}
    submission = accepted(server, lambda: legacy.get(IDENTIFY, params={"data": b64(payload)}))
    assert submission.profile.phone_number == "+13239169023"
    assert submission.profile.email is None


def test_pixel_answers_a_gif_and_logs_the_event(server, legacy):
    payload = track_payload()
    submission_count = len(server.log_entries())
    response = legacy.get(TRACK, params={"data": b64(payload), "i": "1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content.startswith(GIF)
    assert "Trackhouse-Error" not in response.headers
    logged = server.log_entries()[submission_count:]
    assert [s.profile.email for s in logged] == [payload["customer_properties"]["$email"]]


def test_pixel_answers_a_gif_even_when_refused(server, legacy):
    before = len(server.log_entries())
    response = legacy.get(TRACK, params={"data": b64(track_payload(token="nope00")), "i": "1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content.startswith(GIF)
    assert "unknown token" in response.headers["Trackhouse-Error"]
    assert len(server.log_entries()) == before


# -- refused: body `0`, nothing written, and a Trackhouse-Error saying why ----------------------


def _nested(levels: int) -> dict[str, Any]:
    inner: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        inner = {"l": inner}
    return inner


TRACK_REFUSALS: dict[str, tuple[Any, str]] = {
    "unknown-token": (track_payload(token="nope00"), "unknown token"),
    "private-key-as-token": (track_payload(token=PRIVATE_KEY), "unknown token"),
    "missing-token": (
        {k: v for k, v in track_payload().items() if k != "token"},
        "unknown token",
    ),
    "token-not-string": (track_payload(token=["TrkHs1"]), "unknown token"),
    "missing-event": (
        {k: v for k, v in track_payload().items() if k != "event"},
        "event (the metric name) is required",
    ),
    "event-not-string": (track_payload(event=7), "event (the metric name) is required"),
    "blank-event": (track_payload(event="   "), "metric name cannot be blank"),
    "event-name-128-chars": (track_payload(event="x" * 128), "less than 128 characters"),
    "invalid-email": (
        track_payload(customer_properties={"$email": "sarah.mason@"}),
        "Invalid email address",
    ),
    "invalid-phone": (
        track_payload(customer_properties={"$phone_number": "555-0100"}),
        "Invalid phone number",
    ),
    "no-identifier": (
        track_payload(customer_properties={"$first_name": "Nobody"}),
        "must contain an identifier",
    ),
    "customer-properties-not-object": (
        track_payload(customer_properties=["$email"]),
        "customer_properties must be a JSON object",
    ),
    "properties-not-object": (track_payload(properties="Boots"), "properties must be"),
    "time-before-2000": (track_payload(time=Y2K - 1), "after the year 2000"),
    "time-two-years-ahead": (
        track_payload(time=int(time.time()) + 2 * 366 * 86400),
        "1 year in the future",
    ),
    "time-not-a-number": (track_payload(time="yesterday"), "UNIX timestamp"),
    "time-boolean": (track_payload(time=True), "UNIX timestamp"),
    "time-overflow": (track_payload(time=10**30), "UNIX timestamp"),
    "301-properties": (
        track_payload(properties={f"p{i}": i for i in range(301)}),
        "more than 300 properties",
    ),
    "value-not-a-number": (track_payload(properties={"$value": "ten"}), "$value"),
    "event-id-256-chars": (track_payload(properties={"$event_id": "e" * 256}), "unique_id"),
    "event-id-empty": (track_payload(properties={"$event_id": ""}), "unique_id"),
    "integer-over-64-bits": (track_payload(properties={"n": 2**64}), "64 bits"),
    "11-nested-levels": (track_payload(properties={"x": _nested(11)}), "nested levels"),
    "payload-is-array": ([track_payload()], "must be a JSON object"),
}


@pytest.mark.parametrize(("payload", "reason"), TRACK_REFUSALS.values(), ids=TRACK_REFUSALS)
def test_track_get_refuses_with_0(server, legacy, payload, reason):
    refused(server, lambda: legacy.get(TRACK, params={"data": b64(payload)}), reason)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [TRACK_REFUSALS["unknown-token"], TRACK_REFUSALS["time-before-2000"]],
    ids=["unknown-token", "time-before-2000"],
)
def test_track_post_form_refuses_with_0(server, legacy, payload, reason):
    form = {"data": json.dumps(payload)}
    refused(server, lambda: legacy.post(TRACK, data=form, headers=FORM), reason)


def test_300_properties_and_a_127_character_name_are_accepted(server, legacy):
    properties = {f"p{i}": i for i in range(300)}
    payload = track_payload(event="n" * 127, properties=properties)
    submission = accepted(server, lambda: legacy.get(TRACK, params={"data": b64(payload)}))
    assert submission.events[0].metric == "n" * 127
    assert submission.events[0].properties == properties


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("!!!not-base64!!!", "neither JSON nor base64"),
        (base64.b64encode(b"{not json").decode(), "does not decode to valid JSON"),
        (base64.b64encode(b'{"token": "TrkHs1", "event": "E\xff"}').decode(), "valid JSON"),
        (base64.b64encode(b"\x89PNG\r\n\x1a\n").decode(), "does not decode to valid JSON"),
        ('{"token": "TrkHs1", "event": ', "does not decode to valid JSON"),
        (b64("just a string"), "must be a JSON object"),
        ("", "the data parameter is required"),
    ],
    ids=["not-base64", "bad-json", "bad-utf8", "binary", "truncated-json", "string", "empty"],
)
def test_track_get_refuses_undecodable_data(server, legacy, data, reason):
    refused(server, lambda: legacy.get(TRACK, params={"data": data}), reason)


def test_track_without_data_is_refused(server, legacy):
    refused(server, lambda: legacy.get(TRACK), "the data parameter is required")
    refused(
        server,
        lambda: legacy.post(TRACK, data={"other": "1"}, headers=FORM),
        "the data parameter is required",
    )


def test_track_post_form_with_invalid_utf8_is_refused(server, legacy):
    refused(
        server,
        lambda: legacy.post(TRACK, content=b"data=%7B%22\xff%22%7D", headers=FORM),
        "not valid UTF-8",
    )


def test_deeply_nested_data_is_refused(server, legacy):
    deep = '{"token": "TrkHs1", "event": "E", "properties": {"x": ' + "[" * 50_000
    deep += "]" * 50_000 + "}}"
    refused(server, lambda: legacy.post(TRACK, data={"data": deep}, headers=FORM), "valid JSON")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({**identify_payload(), "token": "nope00"}, "unknown token"),
        ({"token": PUBLIC_KEY, "properties": {"$first_name": "Nobody"}}, "identifier"),
        ({"token": PUBLIC_KEY, "properties": {"$email": "not-an-email"}}, "Invalid email"),
        ({"token": PUBLIC_KEY, "properties": ["$email"]}, "properties must be a JSON object"),
        ({"token": PUBLIC_KEY}, "identifier"),
    ],
    ids=["unknown-token", "no-identifier", "invalid-email", "properties-not-object", "empty"],
)
def test_identify_refuses_with_0(server, legacy, payload, reason):
    refused(server, lambda: legacy.get(IDENTIFY, params={"data": b64(payload)}), reason)


def _over_1mb(path: str) -> str:
    payload = track_payload() if path == TRACK else identify_payload()
    key = "properties"
    payload[key] = {**payload[key], **{f"blob{i}": "x" * 90_000 for i in range(12)}}
    data = json.dumps(payload)
    assert len(data) > 1024 * 1024
    return data


@pytest.mark.parametrize("path", [TRACK, IDENTIFY])
def test_payload_over_1mb_is_a_413_with_body_0(server, legacy, path):
    form = {"data": _over_1mb(path)}
    response = refused(
        server,
        lambda: legacy.post(path, data=form, headers=FORM),
        "exceeds the maximum allowed size of 1024 KB",
        status=413,
    )
    assert response.headers["content-type"].startswith("text/html")


def test_payload_over_1mb_as_raw_json_is_a_413(server, legacy):
    content = _over_1mb(TRACK).encode()
    headers = {"Content-Type": "application/json"}
    refused(server, lambda: legacy.post(TRACK, content=content, headers=headers), "1024 KB", 413)


def test_payload_just_under_1mb_is_accepted(server, legacy):
    payload = track_payload()
    payload["properties"] = {f"blob{i}": "x" * 80_000 for i in range(12)}
    form = {"data": json.dumps(payload)}
    submission = accepted(server, lambda: legacy.post(TRACK, data=form, headers=FORM))
    assert len(submission.events[0].properties) == 12


def test_legacy_answers_only_get_and_post(server, legacy):
    response = legacy.delete(TRACK)
    assert response.status_code == 405


# -- server bugs found while writing these tests (see the report) ---------------------------------


def test_track_post_form_with_many_fields_is_refused_not_a_500(server, legacy):
    # `parse_qs(..., max_num_fields=16)` raises ValueError on the 17th field.
    fields = "&".join(f"utm_{i}=x" for i in range(20))
    content = f"{fields}&data={json.dumps(track_payload())}".encode()
    before = len(server.log_entries())
    response = legacy.post(TRACK, content=content, headers=FORM)
    assert response.status_code < 500, response.text
    assert response.content in (b"0", b"1")
    if response.content == b"0":
        assert "Trackhouse-Error" in response.headers
        assert len(server.log_entries()) == before


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-inf", "1e999"])
def test_track_value_must_be_a_finite_number(server, legacy, value):
    payload = track_payload(properties={"$value": value})
    refused(server, lambda: legacy.get(TRACK, params={"data": b64(payload)}), "$value")


@pytest.mark.parametrize("event_id", [{"order": 1}, [1, 2], True], ids=["object", "list", "bool"])
def test_track_event_id_must_be_a_string_or_number(server, legacy, event_id):
    # Otherwise the dedup key is a Python repr such as "{'order': 1}" or "True".
    payload = track_payload(properties={"$event_id": event_id})
    refused(server, lambda: legacy.get(TRACK, params={"data": b64(payload)}), "$event_id")


def test_refusal_reason_header_is_printable_ascii_whatever_the_keys(server, legacy):
    for key in ("ключ", "a\r\nInjected: yes"):
        payload = track_payload(properties={key: "x" * 200_000})
        send = lambda p=payload: legacy.post(TRACK, data={"data": json.dumps(p)})  # noqa: E731
        r = refused(server, send, "100 KB")
        assert r.headers["Trackhouse-Error"].isascii()
        assert "Injected" not in r.headers or r.headers.get("Injected") is None


@pytest.mark.parametrize("value", [10**400, True])
def test_track_value_huge_or_boolean_is_refused(server, legacy, value):
    payload = track_payload(properties={"$value": value})
    refused(server, lambda: legacy.get(TRACK, params={"data": b64(payload)}), "$value must be")


def test_flat_profile_larger_than_95_kb_is_refused(server, legacy):
    payload = track_payload(
        customer_properties={"$email": email("big"), "a": "x" * 60_000, "b": "y" * 40_000}
    )
    refused(server, lambda: legacy.post(TRACK, data={"data": json.dumps(payload)}), "95 KB")
