"""Events and metrics as Klaviyo's `event` and `metric` resources.

Two shapes, chosen by the caller from the request's revision: the current one, and the one
before the 2023-07-15 "relationships standardization" (`legacy`), whose attributes carry
`metric_id` / `profile_id`, whose `timestamp` is a string, and whose relationships are the
plural `metrics` / `profiles` lists.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from trackhouse.store.sqlite import EventRow, MetricRow, event_id

_decode = msgspec.json.Decoder(dict[str, Any]).decode
# Event uuids are derived from the event, so they are stable and need no storage.
_UUID_NAMESPACE = uuid.UUID("1b0e4a52-3b1d-4c39-9a39-6d1c6f0e7a11")


def event_properties(row: EventRow) -> dict[str, Any]:
    """What was sent, plus what Klaviyo's reads echo: `$event_id` (the unique_id, or the
    time-to-the-second that stood in for it), `$value` and `$value_currency`."""
    props = _decode(row.properties)
    props["$event_id"] = row.dedup_key
    if row.value is not None:
        props["$value"] = row.value
    if row.value_currency is not None:
        props["$value_currency"] = row.value_currency
    return props


def event_resource(row: EventRow, base: str, *, legacy: bool) -> dict[str, Any]:
    eid = event_id(row.rowid)
    moment = datetime.fromtimestamp(row.time, UTC)
    attributes: dict[str, Any] = {
        "timestamp": row.time,
        "event_properties": event_properties(row),
        "datetime": moment.isoformat(),
        "uuid": str(uuid.uuid5(_UUID_NAMESPACE, eid)),
    }
    self_url = f"{base}/api/events/{eid}"
    if legacy:
        attributes = {
            "metric_id": row.metric_id,
            "profile_id": row.profile_id,
            **attributes,
            "timestamp": str(row.time),
        }
        relationships = {
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
