"""A profile's stored state, and how a submission's `ProfileChange` updates it.

Identifiers (which profile a change applies to) are `identity.py`'s business; this module only
merges attributes, location and custom properties and applies `meta.patch_properties`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from trackhouse.model import ProfileChange

MAX_EMAILS = 5  # Multi-Email Profiles keep up to five addresses (reference § 2.15)


class Profile(msgspec.Struct, kw_only=True):
    id: str
    account_id: str
    identifiers: dict[str, str] = {}  # kind -> value (the primary ones)
    secondary_emails: list[str] = []
    attributes: dict[str, Any] = {}
    location: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    created: str
    updated: str
    last_event_time: int | None = None  # unix seconds of the newest stored event


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Profile)


def encode_profile(profile: Profile) -> bytes:
    return _encoder.encode(profile)


def decode_profile(doc: bytes) -> Profile:
    return _decoder.decode(doc)


def _merge(target: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def apply_attributes(profile: Profile, change: ProfileChange) -> None:
    """Attributes, location, custom properties and patch_properties (append, unappend, unset)."""
    _merge(profile.attributes, change.attributes)
    _merge(profile.location, change.location)
    profile.properties.update(change.properties)
    props = profile.properties
    for key, values in change.append.items():
        current = props.get(key)
        # Appending to a missing or scalar property makes an array (reference § 2.15).
        props[key] = (current if isinstance(current, list) else []) + _as_list(values)
    for key, values in change.unappend.items():
        current = props.get(key)
        if isinstance(current, list):
            drop = _as_list(values)
            props[key] = [v for v in current if v not in drop]
    for key in change.unset:
        props.pop(key, None)
