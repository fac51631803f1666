"""Profiles as Klaviyo's `profile` resource."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from trackhouse.process.profiles import decode_profile

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


def profile_resource(doc: bytes, base: str) -> dict[str, Any]:
    """A stored profile document as the resource; `base` is the server's own URL."""
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
    url = f"{base}/api/profiles/{p.id}"
    return {"type": "profile", "id": p.id, "attributes": attributes, "links": {"self": url}}
