"""A profile's stored state, and how a submission's `ProfileChange` updates it.

Identifiers (which profile a change applies to) are `identity.py`'s business; this module only
merges attributes, location and custom properties and applies `meta.patch_properties`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from trackhouse.model import ProfileChange

MAX_EMAILS = 5  # Multi-Email Profiles keep up to five addresses (reference § 2.15)
# A stored profile is rewritten whole whenever one of its events is processed: without a bound,
# `patch_properties.append` grows it forever (200 appends of 90 KB made 17 MB, and each later
# event for it cost 66 ms instead of 12). A request's profile may be 95 KB; a stored one five
# such requests' worth. A change that would pass this is refused, and the profile kept as it was.
MAX_STORED_PROFILE_BYTES = 512 * 1024
PROFILE_TOO_LARGE = (
    f"profile change not applied: the stored profile would be larger than "
    f"{MAX_STORED_PROFILE_BYTES // 1024} KB, so its attributes, location and properties were "
    f"left as they were (identifiers, which are bounded, were resolved as usual)"
)


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


def change_size(change: ProfileChange) -> int:
    """An upper bound of how many bytes `change` can add to a profile's encoding."""
    parts = (change.attributes, change.location, change.properties, change.append)
    return len(_encoder.encode(parts))


def apply_bounded(profile: Profile, change: ProfileChange, size: int) -> int | None:
    """Apply `change` unless the profile (now at most `size` bytes encoded) would pass
    MAX_STORED_PROFILE_BYTES. Returns the new size bound, or None when the change was refused
    and the profile left as it was."""
    if not (
        change.attributes
        or change.location
        or change.properties
        or change.append
        or change.unappend
        or change.unset
    ):
        return size  # nothing to apply (most events): even a profile over the bound is fine
    grows = change_size(change)
    if size + grows <= MAX_STORED_PROFILE_BYTES:  # the usual case: no need to measure
        apply_attributes(profile, change)
        return size + grows
    kept = _encoder.encode((profile.attributes, profile.location, profile.properties))
    before = len(encode_profile(profile))
    apply_attributes(profile, change)
    measured = len(encode_profile(profile))
    # A profile stored over the bound before it existed may still shrink (unset, say).
    if measured <= MAX_STORED_PROFILE_BYTES or measured < before:
        return measured
    profile.attributes, profile.location, profile.properties = msgspec.json.decode(kept)
    return None


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
