"""Events and metrics as Klaviyo's `event` and `metric` resources.

Two shapes, chosen by the caller from the request's revision: the current one, and the one
before the 2023-07-15 "relationships standardization" (`legacy`), whose attributes carry
`metric_id` / `profile_id`, whose `timestamp` is a string, and whose relationships are the
plural `metrics` / `profiles` lists.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from trackhouse.store.base import EventRow, MetricRow, event_id

_decode = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode
_ECHOED = (b'"$event_id"', b'"$value"', b'"$value_currency"')


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


def event_properties(row: EventRow) -> msgspec.Raw | dict[str, Any]:
    """What was sent, plus what Klaviyo's reads echo: `$event_id` (the unique_id, or the
    time-to-the-second that stood in for it), `$value` and `$value_currency`.

    The stored JSON is passed through as it is, with the echoed keys spliced in front: pages
    of 200 events are served without decoding and re-encoding each event's properties."""
    echoed: dict[str, Any] = {"$event_id": row.dedup_key}
    if row.value is not None:
        echoed["$value"] = row.value
    if row.value_currency is not None:
        echoed["$value_currency"] = row.value_currency
    stored = row.properties
    if any(key in stored for key in _ECHOED):  # the sender used one of those keys itself
        return _decode(stored) | echoed
    head = _encode(echoed)
    if stored == b"{}":
        return msgspec.Raw(head)
    return msgspec.Raw(head[:-1] + b"," + stored[1:])


def event_resource(row: EventRow, base: str, *, legacy: bool) -> dict[str, Any]:
    eid = event_id(row.number)
    moment = datetime.fromtimestamp(row.time, UTC)
    attributes: dict[str, Any] = {
        "timestamp": row.time,
        "event_properties": event_properties(row),
        "datetime": moment.isoformat(),
        "uuid": event_uuid(row.time, row.number),
    }
    self_url = f"{base}/api/events/{eid}"
    if legacy:
        attributes = {
            "metric_id": row.metric_id,
            "profile_id": row.profile_id,
            **attributes,
            "timestamp": str(row.time),
        }
        relationships: dict[str, Any] = {
            "metrics": {"data": [{"type": "metric", "id": row.metric_id}]},
            "profiles": {"data": [{"type": "profile", "id": row.profile_id}]},
        }
        return {
            "type": "event",
            "id": eid,
            "attributes": attributes,
            "relationships": relationships,
            "links": {"self": self_url + "/"},
        }
    relationships = {
        name: {
            "data": {"type": name, "id": related},
            "links": {
                "self": f"{self_url}/relationships/{name}",
                "related": f"{self_url}/{name}",
            },
        }
        for name, related in (("metric", row.metric_id), ("profile", row.profile_id))
    }
    return {
        "type": "event",
        "id": eid,
        "attributes": attributes,
        "relationships": relationships,
        "links": {"self": self_url},
    }


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
