"""Events and metrics as Klaviyo's `event` and `metric` resources.

Two shapes, chosen by the caller from the request's revision: the current one, and the one
before the 2023-07-15 "relationships standardization" (`legacy`), whose attributes carry
`metric_id` / `profile_id`, whose `timestamp` is a string, and whose relationships are the
plural `metrics` / `profiles` lists.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import msgspec

from trackhouse.store.base import EventRow, MetricRow, event_id

_decode = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


# RFC 9562 version 1: 100-ns intervals since 1582-10-15, the Gregorian reform.
_GREGORIAN_OFFSET = 12_219_292_800  # seconds from 1582-10-15 to 1970-01-01
_MULTICAST = 1 << 40  # the node bit that says "not a real MAC address" (RFC 9562 § 6.10)


def event_uuid(time: int, number: int) -> str:
    """A time-based (version 1) UUID, as Klaviyo's are: its timestamp is the event's time, and
    its clock sequence and node hold the number (61 bits), so it is stable and unique per event."""
    ticks = ((time + _GREGORIAN_OFFSET) * 10_000_000) & ((1 << 60) - 1)
    clock_seq = (number >> 40) & 0x3FFF  # number bits 40-53
    node = (number & ((1 << 40) - 1)) | _MULTICAST | (((number >> 54) & 0x7F) << 41)
    return "%08x-%04x-%04x-%04x-%012x" % (  # noqa: UP031 (faster than f-strings with specs)
        ticks & 0xFFFFFFFF,
        (ticks >> 32) & 0xFFFF,
        0x1000 | (ticks >> 48),
        0x8000 | clock_seq,
        node,
    )


def _day(day: int) -> bytes:
    """'YYYY-MM-DDT' of a day since 1970-01-01 (as datetime.isoformat writes it)."""
    return (datetime.fromtimestamp(day * 86400, UTC).date().isoformat() + "T").encode()


_day_prefix = functools.lru_cache(maxsize=4096)(_day)


def event_datetime(time: int) -> bytes:
    """`datetime`: the event's time in ISO 8601, UTC; equal to
    `datetime.fromtimestamp(time, UTC).isoformat()`, and a fifth of its cost."""
    day, seconds = divmod(time, 86400)
    return b"%b%02d:%02d:%02d+00:00" % (
        _day_prefix(day), seconds // 3600, seconds // 60 % 60, seconds % 60,
    )  # fmt: skip


def event_properties(row: EventRow) -> bytes:
    """What was sent, plus what Klaviyo's reads echo: `$event_id` (the unique_id, or the
    time-to-the-second that stood in for it), `$value` and `$value_currency`; as JSON.

    The stored JSON is passed through as it is, with the echoed keys spliced in front: pages
    of 200 events are served without decoding and re-encoding each event's properties."""
    stored = row.properties
    # The sender used one of those keys itself (or such a string as a value):
    if b'"$event_id"' in stored or b'"$value"' in stored or b'"$value_currency"' in stored:
        echoed: dict[str, Any] = {"$event_id": row.dedup_key}
        if row.value is not None:
            echoed["$value"] = row.value
        if row.value_currency is not None:
            echoed["$value_currency"] = row.value_currency
        return _encode(_decode(stored) | echoed)
    head = b'{"$event_id":' + _encode(row.dedup_key)
    if row.value is not None:
        head += b',"$value":' + _encode(row.value)
    if row.value_currency is not None:
        head += b',"$value_currency":' + _encode(row.value_currency)
    return head + b"}" if stored == b"{}" else head + b"," + stored[1:]


# Klaviyo's `event` resource, as JSON. The current shape, and the one before 2023-07-15:
# `metric_id` / `profile_id` among the attributes, `timestamp` a string, the relationships
# plural lists. %(url)b is the event's own URL, JSON-escaped.
_EVENT = (
    b'{"type":"event","id":"%(id)b","attributes":{"timestamp":%(timestamp)d,'
    b'"event_properties":%(properties)b,"datetime":"%(datetime)b","uuid":"%(uuid)b"},'
    b'"relationships":{'
    b'"metric":{"data":{"type":"metric","id":%(metric)b},'
    b'"links":{"self":"%(url)b/relationships/metric","related":"%(url)b/metric"}},'
    b'"profile":{"data":{"type":"profile","id":%(profile)b},'
    b'"links":{"self":"%(url)b/relationships/profile","related":"%(url)b/profile"}}},'
    b'"links":{"self":"%(url)b"}}'
)
_LEGACY_EVENT = (
    b'{"type":"event","id":"%(id)b","attributes":{"metric_id":%(metric)b,'
    b'"profile_id":%(profile)b,"timestamp":"%(timestamp)d","event_properties":%(properties)b,'
    b'"datetime":"%(datetime)b","uuid":"%(uuid)b"},'
    b'"relationships":{"metrics":{"data":[{"type":"metric","id":%(metric)b}]},'
    b'"profiles":{"data":[{"type":"profile","id":%(profile)b}]}},'
    b'"links":{"self":"%(url)b/"}}'
)


class EventEncoder:
    """Events as Klaviyo's `event` resource, encoded straight into JSON (msgspec.Raw, to be
    placed in a response document): a page of 200 events costs a third of building and
    encoding their dicts. For one request's base URL and revision (`legacy`: before
    2023-07-15)."""

    def __init__(self, base: str, *, legacy: bool) -> None:
        self.template = _LEGACY_EVENT if legacy else _EVENT
        self.events_url = _encode(base)[1:-1] + b"/api/events/"  # JSON-escaped

    def __call__(self, row: EventRow) -> msgspec.Raw:
        eid = event_id(row.number).encode()
        return msgspec.Raw(
            self.template
            % {
                b"id": eid,
                b"timestamp": row.time,
                b"properties": event_properties(row),
                b"datetime": event_datetime(row.time),
                b"uuid": event_uuid(row.time, row.number).encode(),
                b"metric": _encode(row.metric_id),
                b"profile": _encode(row.profile_id),
                b"url": self.events_url + eid,
            }
        )


def event_resource(row: EventRow, base: str, *, legacy: bool) -> dict[str, Any]:
    """One event's resource as a dict (to pick sparse fieldsets from)."""
    return _decode(EventEncoder(base, legacy=legacy)(row))


def integration(service: str) -> dict[str, Any]:
    """The metric's `integration`: API-created metrics belong to Klaviyo's "API" one."""
    if service == "api":
        return {"object": "integration", "id": "api", "name": "API", "category": "API"}
    return {"object": "integration", "id": service, "name": service, "category": "Custom"}


def metric_resource(row: MetricRow, base: str) -> dict[str, Any]:
    url = f"{base}/api/metrics/{row.id}"
    return {
        "type": "metric",
        "id": row.id,
        "attributes": {
            "name": row.name,
            "created": row.created,
            "updated": row.created,
            "integration": integration(row.service),
        },
        "relationships": {
            "flow-triggers": {
                "links": {
                    "self": f"{url}/relationships/flow-triggers",
                    "related": f"{url}/flow-triggers",
                }
            }
        },
        "links": {"self": url},
    }


def sparse(resource: dict[str, Any], fields: set[str] | None) -> dict[str, Any]:
    """`fields[TYPE]=a,b`: keep only those attributes (dotted names pick nested ones)."""
    if fields is None:
        return resource
    attributes = resource["attributes"]
    kept: dict[str, Any] = {}
    for name in fields:
        top, _, sub = name.partition(".")
        if top not in attributes:
            continue
        if sub and isinstance(attributes[top], dict):
            kept.setdefault(top, {})[sub] = attributes[top].get(sub)
        else:
            kept[top] = attributes[top]
    return {**resource, "attributes": kept}
