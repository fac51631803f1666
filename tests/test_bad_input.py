"""Hostile and malformed bodies on POST /api/events and POST /api/event-bulk-create-jobs.

Every one must be answered with one JSON:API 4xx error (never a 5xx, never a hang) and must
leave the durable log untouched; afterwards the server must still accept good requests.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import (
    NEWEST,
    PRIVATE_KEY,
    Server,
    bulk_body,
    bulk_event,
    event_body,
    single_error,
)

EVENTS = "/api/events"
BULK = "/api/event-bulk-create-jobs"
ENDPOINTS = [EVENTS, BULK]
MB = 1024 * 1024
LIMIT = 5 * MB
# Generous for a local server; a request that takes longer than this counts as a hang.
TIMEOUT = 10
PROFILE = "/data/attributes/profile/data/attributes"
BULK_GROUP = "/data/attributes/events-bulk-create/data"


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    """conftest's `api`, minus the TLS setup an http:// client never uses (it costs ~60 ms a
    test); a fresh client per test, so a reset connection cannot spill into the next test."""
    headers = {
        "Authorization": f"Klaviyo-API-Key {PRIVATE_KEY}",
        "revision": NEWEST,
        "Content-Type": "application/vnd.api+json",
    }
    with httpx.Client(base_url=server.url, headers=headers, timeout=30, verify=False) as client:
        yield client


def good_body(path: str, email: str = "hostile.input@trackhouse-tests.dev") -> dict[str, Any]:
    if path == EVENTS:
        return event_body(email=email)
    return bulk_body([({"email": email}, [bulk_event()])])


def good_bytes(path: str, email: str = "hostile.input@trackhouse-tests.dev") -> bytes:
    return json.dumps(good_body(path, email)).encode()


def with_properties(path: str, raw_properties: bytes) -> bytes:
    """A good body whose (first) event's properties are `raw_properties`, spliced in as-is."""
    body = good_body(path)
    if path == EVENTS:
        body["data"]["attributes"]["properties"] = "@@PROPS@@"
    else:
        group = body["data"]["attributes"]["events-bulk-create"]["data"][0]
        group["attributes"]["events"]["data"][0]["attributes"]["properties"] = "@@PROPS@@"
    return json.dumps(body).encode().replace(b'"@@PROPS@@"', raw_properties)


def properties_pointer(path: str) -> str:
    if path == EVENTS:
        return "/data/attributes/properties"
    return f"{BULK_GROUP}/0/attributes/events/data/0/attributes/properties"


def refused(
    server: Server,
    api: httpx.Client,
    path: str,
    content: bytes | Iterator[bytes],
    status: int,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST `content`; it must get exactly one JSON:API error of `status` and log nothing."""
    before = len(server.log_entries())
    response = api.post(path, content=content, headers=headers or {}, timeout=TIMEOUT)
    error = single_error(response, status)
    assert len(server.log_entries()) == before, "a refused request wrote to the log"
    return error


def assert_accepts_good_request(server: Server, api: httpx.Client, path: str = EVENTS) -> None:
    assert server.proc is not None and server.proc.poll() is None, "server died"
    before = len(server.log_entries())
    response = api.post(path, json=good_body(path), timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    assert len(server.log_entries()) == before + 1


def raw_request(server: Server, path: str, headers: dict[str, str], parts: list[bytes]) -> int:
    """Send a hand-made HTTP/1.1 request over a socket; the status of the answer.

    Only the given body parts are sent (the request may be left unfinished on purpose): an
    answer arriving at all shows the server decided without waiting for the rest.
    """
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += f"Authorization: Klaviyo-API-Key {PRIVATE_KEY}\r\nrevision: {NEWEST}\r\n"
    head += "Content-Type: application/vnd.api+json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(head.encode())
        for part in parts:
            sock.sendall(part)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)  # raises TimeoutError if the server waits for more body
            if not chunk:
                break
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].split()
    assert status_line[:1] == [b"HTTP/1.1"], answer[:200]
    return int(status_line[1])


@functools.cache
def gzip_bomb() -> bytes:
    """50 MB of zeros, compressed to about 50 KB."""
    return gzip.compress(b"\0" * (50 * 1000 * 1000), compresslevel=9)


# -- not JSON at all ----------------------------------------------------------------------------


MALFORMED = {
    "unquoted-key": lambda good: b"{data: 1}",
    "single-quotes": lambda good: b"{'data': {}}",
    "missing-value": lambda good: b'{"data": }',
    "trailing-comma": lambda good: good[:-1] + b",}",
    "trailing-garbage": lambda good: good + b" x",
    "two-documents": lambda good: good + good,
    "word": lambda good: b"not json",
    "binary": lambda good: b"\x00\x01\x02",
}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("make", MALFORMED.values(), ids=MALFORMED)
def test_malformed_json_is_a_400_at_data(server, api, path, make):
    error = refused(server, api, path, make(good_bytes(path)), 400)
    assert error["code"] == "invalid"
    assert error["detail"].startswith("The request body is not valid JSON")
    assert error["source"] == {"pointer": "/data"}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("keep", [1, 0.5, -1], ids=["first-byte", "half", "all-but-last"])
def test_truncated_json_is_a_400(server, api, path, keep):
    whole = good_bytes(path)
    cut = whole[: int(len(whole) * keep) if isinstance(keep, float) else keep]
    error = refused(server, api, path, cut, 400)
    assert error["detail"].startswith("The request body is not valid JSON")
    assert error["source"] == {"pointer": "/data"}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    ("content", "kind"),
    [(b"[]", "array"), (b'"data"', "str"), (b"42", "int"), (b"null", "null"), (b"true", "bool")],
)
def test_json_that_is_not_an_object_is_a_400(server, api, path, content, kind):
    error = refused(server, api, path, content, 400)
    assert error["detail"] == f"Expected `object`, got `{kind}`."
    assert error["source"] == {"pointer": "/data"}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("content", [b"", b"   \r\n\t  "], ids=["empty", "whitespace"])
def test_empty_body_is_a_400(server, api, path, content):
    error = refused(server, api, path, content, 400)
    assert "empty" in error["detail"]
    assert error["source"] == {"pointer": "/data"}


# -- wrong shapes and types: the pointer names the field ------------------------------------------


def _event(mutate: Callable[[dict[str, Any]], None]) -> bytes:
    body = event_body(email="wrong.type@trackhouse-tests.dev")
    mutate(body["data"]["attributes"])
    return json.dumps(body).encode()


def _bulk(mutate: Callable[[dict[str, Any]], None]) -> bytes:
    body = bulk_body(
        [
            ({"email": "first@trackhouse-tests.dev"}, [bulk_event()]),
            ({"email": "second@trackhouse-tests.dev"}, [bulk_event(), bulk_event("Viewed")]),
        ]
    )
    mutate(body["data"]["attributes"]["events-bulk-create"])
    return json.dumps(body).encode()


def _set(*path_and_value: Any) -> Callable[[dict[str, Any]], None]:
    *path, value = path_and_value

    def mutate(node: Any) -> None:
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


M_NAME = ("metric", "data", "attributes", "name")
P_ATTRS = ("profile", "data", "attributes")
BULK_EVENT_1_0 = ("data", 1, "attributes", "events", "data", 0, "attributes")

WRONG_TYPES = {
    "properties-list": (EVENTS, _event(_set("properties", ["Brand"])), "/properties"),
    "properties-string": (EVENTS, _event(_set("properties", "Brand")), "/properties"),
    "metric-name-number": (EVENTS, _event(_set(*M_NAME, 42)), "/metric/data/attributes/name"),
    "metric-name-null": (EVENTS, _event(_set(*M_NAME, None)), "/metric/data/attributes/name"),
    "metric-not-object": (EVENTS, _event(_set("metric", "Viewed Product")), "/metric"),
    "email-number": (EVENTS, _event(_set(*P_ATTRS, "email", 7)), "/profile/data/attributes/email"),
    "location-list": (
        EVENTS,
        _event(_set(*P_ATTRS, "location", ["Boston"])),
        "/profile/data/attributes/location",
    ),
    "time-number": (EVENTS, _event(_set("time", 1700000000)), "/time"),
    "value-string": (EVENTS, _event(_set("value", "ten")), "/value"),
    "unique-id-object": (EVENTS, _event(_set("unique_id", {"id": 1})), "/unique_id"),
    "bulk-metric-name-number": (
        BULK,
        _bulk(_set(*BULK_EVENT_1_0, *M_NAME, 42)),
        f"{BULK_GROUP}/1/attributes/events/data/0/attributes/metric/data/attributes/name",
    ),
    "bulk-properties-list": (
        BULK,
        _bulk(_set(*BULK_EVENT_1_0, "properties", [])),
        f"{BULK_GROUP}/1/attributes/events/data/0/attributes/properties",
    ),
    "bulk-groups-object": (BULK, _bulk(_set("data", {"type": "event-bulk-create"})), BULK_GROUP),
    "bulk-events-not-list": (
        BULK,
        _bulk(_set("data", 0, "attributes", "events", "data", "Ordered Product")),
        f"{BULK_GROUP}/0/attributes/events/data",
    ),
}


@pytest.mark.parametrize(("path", "content", "where"), WRONG_TYPES.values(), ids=WRONG_TYPES)
def test_wrong_type_is_a_400_pointing_at_the_field(server, api, path, content, where):
    error = refused(server, api, path, content, 400)
    assert error["code"] == "invalid"
    assert error["detail"].startswith("Expected `")
    pointer = where if where.startswith(BULK_GROUP) else "/data/attributes" + where
    assert error["source"] == {"pointer": pointer}


MISSING = {
    "event-properties": (EVENTS, _event(lambda a: a.pop("properties")), "properties"),
    "event-metric": (EVENTS, _event(lambda a: a.pop("metric")), "metric"),
    "event-profile": (EVENTS, _event(lambda a: a.pop("profile")), "profile"),
    "bulk-events": (BULK, _bulk(lambda g: g["data"][0]["attributes"].pop("events")), "events"),
}


@pytest.mark.parametrize(("path", "content", "field"), MISSING.values(), ids=MISSING)
def test_missing_required_field_is_a_400_naming_it(server, api, path, content, field):
    error = refused(server, api, path, content, 400)
    assert error["detail"] == f"Object missing required field `{field}`."
    pointer = "/data/attributes" if path == EVENTS else f"{BULK_GROUP}/0/attributes"
    assert error["source"] == {"pointer": pointer}


@pytest.mark.parametrize(
    ("path", "mutate", "pointer", "value"),
    [
        (EVENTS, lambda b: b["data"].update(type="evnt"), "/data/type", "evnt"),
        (EVENTS, lambda b: b["data"].update(type="profile"), "/data/type", "profile"),
        (
            EVENTS,
            lambda b: b["data"]["attributes"]["metric"]["data"].update(type="metrc"),
            "/data/attributes/metric/data/type",
            "metrc",
        ),
        (
            EVENTS,
            lambda b: b["data"]["attributes"]["profile"]["data"].update(type="person"),
            "/data/attributes/profile/data/type",
            "person",
        ),
        (BULK, lambda b: b["data"].update(type="event"), "/data/type", "event"),
        (
            BULK,
            lambda b: b["data"]["attributes"]["events-bulk-create"]["data"][0].update(type="e"),
            f"{BULK_GROUP}/0/type",
            "e",
        ),
    ],
    ids=["event", "event-as-profile", "metric", "profile", "bulk-job", "bulk-group"],
)
def test_unknown_data_type_is_a_400_at_its_type(server, api, path, mutate, pointer, value):
    body = good_body(path)
    mutate(body)
    error = refused(server, api, path, json.dumps(body).encode(), 400)
    assert error["detail"] == f"Invalid enum value '{value}'."
    assert error["source"] == {"pointer": pointer}


@pytest.mark.parametrize(
    ("path", "pointer"),
    [
        (EVENTS, f"{PROFILE}/emaill"),
        (BULK, f"{BULK_GROUP}/0/attributes/profile/data/attributes/emaill"),
    ],
)
def test_unknown_profile_field_is_named_with_its_resource(server, api, path, pointer):
    if path == EVENTS:
        body = event_body(profile_attributes={"emaill": "typo@trackhouse-tests.dev"})
    else:
        body = bulk_body([({"emaill": "typo@trackhouse-tests.dev"}, [bulk_event()])])
    error = refused(server, api, path, json.dumps(body).encode(), 400)
    assert error["detail"] == "'emaill' is not a valid field for the resource 'profile'."
    assert error["source"] == {"pointer": pointer}


def test_unknown_metric_field_is_named_with_its_resource(server, api):
    body = event_body()
    body["data"]["attributes"]["metric"]["data"]["attributes"]["nmae"] = "Typo"
    error = refused(server, api, EVENTS, json.dumps(body).encode(), 400)
    assert error["detail"] == "'nmae' is not a valid field for the resource 'metric'."
    assert error["source"] == {"pointer": "/data/attributes/metric/data/attributes/nmae"}


@pytest.mark.parametrize(
    ("path", "pointer"),
    [(EVENTS, "/data/attributes/colour"), (BULK, "/data/attributes/colour")],
)
def test_unknown_top_level_attribute_is_a_400_at_it(server, api, path, pointer):
    body = good_body(path)
    body["data"]["attributes"]["colour"] = "red"
    error = refused(server, api, path, json.dumps(body).encode(), 400)
    assert error["detail"].startswith("'colour' is not a valid field")
    assert error["source"] == {"pointer": pointer}


# -- size: 5 MB, enforced while reading ----------------------------------------------------------


def padded_body(path: str, size: int) -> bytes:
    """A valid body of exactly `size` bytes (trailing whitespace is insignificant in JSON)."""
    body = good_bytes(path, "padded.body@trackhouse-tests.dev")
    assert len(body) <= size
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("path", ENDPOINTS)
def test_body_of_exactly_5mb_is_accepted(server, api, path):
    before = len(server.log_entries())
    response = api.post(path, content=padded_body(path, LIMIT), timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    assert len(server.log_entries()) == before + 1


@pytest.mark.parametrize("path", ENDPOINTS)
def test_body_over_5mb_with_content_length_is_a_413(server, api, path):
    body = padded_body(path, LIMIT + 1)
    error = refused(server, api, path, body, 413)
    assert error["code"] == "payload_too_large"
    assert error["detail"] == "The request payload exceeds the maximum allowed size of 5120 KB."
    assert_accepts_good_request(server, api, path)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_body_over_5mb_chunked_is_a_413(server, api, path):
    body = padded_body(path, LIMIT + 64 * 1024)
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            sent.append(start)
            yield body[start : start + 64 * 1024]

    before = len(server.log_entries())
    response = api.post(path, content=chunks(), timeout=TIMEOUT)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    error = single_error(response, 413)
    assert error["code"] == "payload_too_large"
    assert len(server.log_entries()) == before
    assert_accepts_good_request(server, api, path)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_oversized_content_length_is_refused_before_the_body_arrives(server, api, path):
    # Only 1 KB of the announced 50 MB is ever sent: a server that read (or waited for) the
    # whole body would time out here.
    status = raw_request(server, path, {"Content-Length": str(50 * MB)}, [b"{" * 1024])
    assert status == 413
    assert_accepts_good_request(server, api, path)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_chunked_body_is_refused_once_past_5mb_without_waiting_for_its_end(server, api, path):
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"  # 64 KB chunks, never the final 0-chunk
    status = raw_request(server, path, {"Transfer-Encoding": "chunked"}, [chunk] * 81)
    assert status == 413
    assert_accepts_good_request(server, api, path)


# -- Content-Encoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "GZIP"])
def test_gzip_create_event_is_accepted_and_logged(server, api, encoding):
    body = event_body(email="gzipped@trackhouse-tests.dev", properties={"Compressed": True})
    response = api.post(
        EVENTS,
        content=gzip.compress(json.dumps(body).encode()),
        headers={"Content-Encoding": encoding},
        timeout=TIMEOUT,
    )
    assert response.status_code == 202, response.text
    submission = server.receipt(response.headers["Trackhouse-Receipt"])
    assert submission.profile.email == "gzipped@trackhouse-tests.dev"
    assert submission.events[0].properties == {"Compressed": True}


def test_gzip_bulk_job_is_accepted_and_logged(server, api):
    body = bulk_body(
        [({"email": "gzipped.bulk@trackhouse-tests.dev"}, [bulk_event(properties={"n": 1})])]
    )
    response = api.post(
        BULK,
        content=gzip.compress(json.dumps(body).encode()),
        headers={"Content-Encoding": "gzip"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["data"]["id"]
    logged = [s for s in server.log_entries() if s.job_id == job_id]
    assert len(logged) == 1
    assert logged[0].profile.email == "gzipped.bulk@trackhouse-tests.dev"
    assert logged[0].events[0].properties == {"n": 1}


@pytest.mark.parametrize("path", ENDPOINTS)
def test_gzip_inflating_to_exactly_5mb_is_accepted(server, api, path):
    before = len(server.log_entries())
    response = api.post(
        path,
        content=gzip.compress(padded_body(path, LIMIT)),
        headers={"Content-Encoding": "gzip"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 202, response.text
    assert len(server.log_entries()) == before + 1


@pytest.mark.parametrize("path", ENDPOINTS)
def test_gzip_bomb_is_a_413_quickly(server, api, path):
    bomb = gzip_bomb()
    assert len(bomb) < 100 * 1024
    started = time.monotonic()
    error = refused(server, api, path, bomb, 413, {"Content-Encoding": "gzip"})
    assert time.monotonic() - started < 3
    assert error["code"] == "payload_too_large"
    assert_accepts_good_request(server, api, path)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_gzip_inflating_one_byte_past_5mb_is_a_413(server, api, path):
    content = gzip.compress(padded_body(path, LIMIT + 1))
    error = refused(server, api, path, content, 413, {"Content-Encoding": "gzip"})
    assert error["code"] == "payload_too_large"


@pytest.mark.parametrize("path", ENDPOINTS)
def test_gzip_larger_than_5mb_compressed_is_a_413(server, api, path):
    content = gzip.compress(os.urandom(LIMIT + MB), compresslevel=1)  # incompressible
    error = refused(server, api, path, content, 413, {"Content-Encoding": "gzip"})
    assert error["code"] == "payload_too_large"


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda b: b"\x1f\x8b\x08\x00" + b"not really deflate data" * 4, "not valid gzip"),
        (lambda b: b, "not valid gzip"),  # plain JSON labelled gzip
        (lambda b: gzip.compress(b)[:-12], "truncated gzip"),
        (lambda b: gzip.compress(b)[:-4] + b"\0\0\0\0", "not valid gzip"),  # wrong length
    ],
    ids=["garbage", "not-compressed", "truncated", "bad-trailer"],
)
def test_corrupt_gzip_is_a_400(server, api, path, make, detail):
    error = refused(server, api, path, make(good_bytes(path)), 400, {"Content-Encoding": "gzip"})
    assert error["code"] == "invalid"
    assert detail in error["detail"]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "zstd", "gzip, br"])
def test_unsupported_content_encoding_is_a_415(server, api, path, encoding):
    error = refused(server, api, path, good_bytes(path), 415, {"Content-Encoding": encoding})
    assert error["code"] == "unsupported_media_type"
    assert "Content-Encoding" in error["detail"]


# -- Content-Type ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "application/jsonx",
    ],
)
def test_non_json_content_type_is_a_415(server, api, path, content_type):
    headers = {"Content-Type": content_type}
    error = refused(server, api, path, good_bytes(path), 415, headers)
    assert error["code"] == "unsupported_media_type"
    assert content_type.split(";")[0] in error["detail"]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/vnd.api+json",
        "application/json; charset=utf-8",
        "Application/VND.API+JSON",
    ],
)
def test_json_content_types_are_accepted(server, api, path, content_type):
    before = len(server.log_entries())
    response = api.post(
        path, content=good_bytes(path), headers={"Content-Type": content_type}, timeout=TIMEOUT
    )
    assert response.status_code == 202, response.text
    assert len(server.log_entries()) == before + 1


# -- nesting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "content",
    [b"[" * 100_000 + b"]" * 100_000, b'{"data":' * 100_000 + b"{}" + b"}" * 100_000],
    ids=["arrays", "objects"],
)
def test_deeply_nested_body_is_a_400(server, api, path, content):
    error = refused(server, api, path, content, 400)
    assert error["code"] == "invalid"


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "nested",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000],
    ids=["arrays", "objects"],
)
def test_deeply_nested_properties_are_a_400(server, api, path, nested):
    content = with_properties(path, b'{"deep": ' + nested + b"}")
    error = refused(server, api, path, content, 400)
    assert "nested too deeply" in error["detail"]


def nested_objects(levels: int) -> dict[str, Any]:
    """`levels` objects nested inside one another: {"l": {"l": ... {"leaf": 1}}}."""
    inner: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        inner = {"l": inner}
    return inner


@pytest.mark.parametrize("path", ENDPOINTS)
def test_eleven_nested_object_levels_inside_properties_are_a_400(server, api, path):
    content = with_properties(path, json.dumps({"l": nested_objects(11)}).encode())
    error = refused(server, api, path, content, 400)
    assert error["detail"] == "Properties cannot contain more than 10 nested levels."
    assert error["source"]["pointer"].startswith(properties_pointer(path) + "/l/l/l/l/l/l/l/l")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_ten_nested_object_levels_inside_properties_are_accepted(server, api, path):
    # Seed 000/003: "The properties cannot contain more than 10 nested levels." Ten objects
    # nested inside `properties` is the most that must still be accepted.
    content = with_properties(path, json.dumps({"l": nested_objects(10)}).encode())
    before = len(server.log_entries())
    response = api.post(path, content=content, timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    assert len(server.log_entries()) == before + 1


def test_nine_nested_object_levels_inside_properties_are_accepted(server, api):
    properties = {"l": nested_objects(9)}
    response = api.post(EVENTS, json=event_body(properties=properties), timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    assert server.receipt(response.headers["Trackhouse-Receipt"]).events[0].properties == (
        properties
    )


def test_arrays_nested_too_deeply_inside_properties_are_a_400(server, api):
    content = with_properties(EVENTS, b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}")
    error = refused(server, api, EVENTS, content, 400)
    assert error["detail"] == "Properties are nested too deeply."
    assert error["source"]["pointer"].startswith("/data/attributes/properties/a/0/0/0")


# -- strings: UTF-8, surrogates, NUL ---------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "bad",
    [b"\xff\xfe", b"caf\xe9", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"],
    ids=["ff-fe", "latin1", "bad-continuation", "overlong", "encoded-surrogate", "above-max"],
)
def test_invalid_utf8_inside_a_string_is_a_400(server, api, path, bad):
    content = with_properties(path, b'{"name": "' + bad + b'"}')
    error = refused(server, api, path, content, 400)
    assert error["detail"] == "The request body is not valid UTF-8."
    assert error["source"] == {"pointer": "/data"}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udfff", b"\\ud800x"], ids=str)
def test_lone_surrogate_escape_is_a_400(server, api, path, escape):
    content = with_properties(path, b'{"name": "' + escape + b'"}')
    error = refused(server, api, path, content, 400)
    assert error["detail"].startswith("The request body is not valid JSON")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_raw_nul_byte_inside_a_string_is_a_400(server, api, path):
    content = with_properties(path, b'{"name": "a\x00b"}')
    error = refused(server, api, path, content, 400)
    assert error["detail"].startswith("The request body is not valid JSON")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda a: a.update(properties={"name": "a\0b"}),
        lambda a: a.update(properties={"a\0b": 1}),
        lambda a: a["metric"]["data"]["attributes"].update(name="Viewed\0Product"),
        lambda a: a["profile"]["data"]["attributes"].update(first_name="Nul\0"),
        lambda a: a["profile"]["data"]["attributes"].update(email="nul\0@trackhouse-tests.dev"),
    ],
    ids=["property-value", "property-key", "metric-name", "first-name", "email"],
)
def test_escaped_nul_is_stored_verbatim_or_refused_never_a_5xx(server, api, mutate):
    body = event_body(email="nul.char@trackhouse-tests.dev")
    mutate(body["data"]["attributes"])
    expected = copy.deepcopy(body["data"]["attributes"])
    before = len(server.log_entries())
    response = api.post(EVENTS, content=json.dumps(body).encode(), timeout=TIMEOUT)
    if response.status_code == 202:
        event = server.receipt(response.headers["Trackhouse-Receipt"]).events[0]
        assert event.properties == expected["properties"]
        assert event.metric == expected["metric"]["data"]["attributes"]["name"]
    else:
        single_error(response, 400)
        assert len(server.log_entries()) == before


# -- numbers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("number", [2**63, -(2**63) - 1, 2**64 - 1, 2**64, 10**40], ids=str)
def test_integer_beyond_64_bits_in_properties_is_a_400(server, api, path, number):
    content = with_properties(path, b'{"big": ' + str(number).encode() + b"}")
    error = refused(server, api, path, content, 400)
    assert error["detail"] == "Integers must fit in 64 bits (signed)."
    assert error["source"] == {"pointer": properties_pointer(path) + "/big"}


def test_integer_beyond_64_bits_nested_in_properties_points_at_it(server, api):
    content = with_properties(EVENTS, b'{"items": [{"qty": 1}, {"qty": ' + b"9" * 30 + b"}]}")
    error = refused(server, api, EVENTS, content, 400)
    assert error["source"] == {"pointer": "/data/attributes/properties/items/1/qty"}


def test_64_bit_integer_extremes_are_accepted_exactly(server, api):
    properties = {"max": 2**63 - 1, "min": -(2**63)}
    response = api.post(EVENTS, json=event_body(properties=properties), timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    logged = server.receipt(response.headers["Trackhouse-Receipt"]).events[0].properties
    assert logged == properties


@pytest.mark.parametrize("path", ENDPOINTS)
def test_float_out_of_range_in_properties_is_a_400_pointing_at_it(server, api, path):
    content = with_properties(path, b'{"huge": 1e999}')
    error = refused(server, api, path, content, 400)
    assert error["detail"] == "Number out of range."
    # msgspec reports a free-form object's key as `[...]`; the pointer must stay a valid
    # pointer into the request (the property itself, or at least `properties`).
    pointer = properties_pointer(path)
    assert error["source"]["pointer"] in (pointer + "/huge", pointer)


def test_float_out_of_range_as_value_is_a_400_at_value(server, api):
    content = json.dumps(event_body(value=1.5)).encode().replace(b"1.5", b"-1e400")
    error = refused(server, api, EVENTS, content, 400)
    assert error["source"] == {"pointer": "/data/attributes/value"}


# -- other documented limits -----------------------------------------------------------------------


def test_string_over_100kb_in_properties_is_a_400(server, api):
    body = event_body(properties={"html": "x" * (100 * 1024 + 1)})
    error = refused(server, api, EVENTS, json.dumps(body).encode(), 400)
    assert error["detail"] == "A single string cannot be larger than 100 KB."
    assert error["source"] == {"pointer": "/data/attributes/properties/html"}


def test_key_over_100kb_in_properties_is_a_400_that_does_not_echo_it(server, api):
    body = event_body(properties={"nested": {"k" * (100 * 1024 + 1): 1}})
    error = refused(server, api, EVENTS, json.dumps(body).encode(), 400)
    assert error["detail"] == "A single string cannot be larger than 100 KB."
    assert error["source"] == {"pointer": "/data/attributes/properties/nested"}


def test_array_over_4000_items_in_properties_is_a_400(server, api):
    body = event_body(properties={"ids": list(range(4001))})
    error = refused(server, api, EVENTS, json.dumps(body).encode(), 400)
    assert error["detail"] == "An array cannot have more than 4000 elements."
    assert error["source"] == {"pointer": "/data/attributes/properties/ids"}


def test_bulk_with_no_groups_is_a_400(server, api):
    error = refused(server, api, BULK, json.dumps(bulk_body([])).encode(), 400)
    assert error["source"] == {"pointer": BULK_GROUP}


def test_bulk_group_with_no_events_is_a_400(server, api):
    body = bulk_body([({"email": "no.events@trackhouse-tests.dev"}, [])])
    error = refused(server, api, BULK, json.dumps(body).encode(), 400)
    assert error["source"] == {"pointer": f"{BULK_GROUP}/0/attributes/events/data"}


def test_bulk_over_1000_events_is_a_400_and_logs_nothing(server, api):
    events = [bulk_event(properties={"i": i}) for i in range(1001)]
    body = bulk_body([({"email": "too.many@trackhouse-tests.dev"}, events)])
    error = refused(server, api, BULK, json.dumps(body).encode(), 400)
    assert "1001" in error["detail"]
    assert error["source"] == {"pointer": BULK_GROUP}


def test_bulk_with_one_bad_group_logs_none_of_the_good_ones(server, api):
    body = bulk_body(
        [
            ({"email": "good.group@trackhouse-tests.dev"}, [bulk_event()]),
            ({"email": "not-an-email"}, [bulk_event()]),
        ]
    )
    error = refused(server, api, BULK, json.dumps(body).encode(), 400)
    assert error["source"] == {
        "pointer": f"{BULK_GROUP}/1/attributes/profile/data/attributes/email"
    }


# -- and afterwards --------------------------------------------------------------------------------


def test_server_still_accepts_good_requests_after_hostile_input(server, api):
    for path in ENDPOINTS:
        assert_accepts_good_request(server, api, path)
    response = api.post(EVENTS, json=event_body(email="after.all@trackhouse-tests.dev"))
    assert response.status_code == 202
    assert server.receipt(response.headers["Trackhouse-Receipt"]).profile.email == (
        "after.all@trackhouse-tests.dev"
    )


@pytest.mark.parametrize("trailer", [b"junk", gzip.compress(b'{"data": 1}')])
def test_data_after_the_gzip_stream_is_a_400(server, api, trailer):
    before = len(server.log_entries())
    body = gzip.compress(json.dumps(event_body()).encode()) + trailer
    response = api.post(EVENTS, content=body, headers={"Content-Encoding": "gzip"})
    error = single_error(response, 400)
    assert "after the end of its gzip stream" in error["detail"]
    assert len(server.log_entries()) == before
