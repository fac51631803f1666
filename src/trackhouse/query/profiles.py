"""Profiles as Klaviyo's `profile` resource (GET /api/profiles/{id})."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from trackhouse.process.profiles import decode_profile
from trackhouse.store.sqlite import SQLiteStore

LOCATION_FIELDS = (
    "address1",
    "address2",
    "city",
    "country",
    "latitude",
    "longitude",
    "region",
    "zip",
    "timezone",
    "ip",
)
ATTRIBUTE_FIELDS = ("first_name", "last_name", "organization", "locale", "title", "image")


def profile_resource(store: SQLiteStore, account_id: str, profile_id: str) -> dict | None:
    doc = store.profile(account_id, profile_id)
    if doc is None:
        return None
    p = decode_profile(doc)
    attributes: dict[str, Any] = {
        "email": p.identifiers.get("email"),
        "phone_number": p.identifiers.get("phone_number"),
        "external_id": p.identifiers.get("external_id"),
        "anonymous_id": p.identifiers.get("anonymous_id"),
        "_kx": p.identifiers.get("_kx"),
    }
    attributes |= {name: p.attributes.get(name) for name in ATTRIBUTE_FIELDS}
    attributes |= {
        "created": p.created,
        "updated": p.updated,
        "last_event_date": None
        if p.last_event_time is None
        else datetime.fromtimestamp(p.last_event_time, UTC).isoformat(),
        "location": {name: p.location.get(name) for name in LOCATION_FIELDS},
        "properties": p.properties,
        # Multi-Email Profiles (meta.patch_identifiers): the addresses besides `email`.
        "secondary_emails": p.secondary_emails,
    }
    return {"type": "profile", "id": p.id, "attributes": attributes}
