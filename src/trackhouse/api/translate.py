"""From validated wire shapes (`api/wire.py`) to the canonical model (`trackhouse.model`).

This is where each revision's rules (`api/revision.py`) and Klaviyo's limits (`api/limits.py`)
are applied, with JSON pointers naming the offending field; what comes out no longer depends
on the revision or endpoint.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET

from trackhouse.api import limits
from trackhouse.api.errors import APIError, invalid, pointer
from trackhouse.api.revision import RevisionRules
from trackhouse.api.wire import (
    BulkEventAttributes,
    BulkGroup,
    EventAttributes,
    FlatEventAttributes,
    ProfileData,
    ProfileMeta,
)
from trackhouse.identifiers import identifier_key
from trackhouse.model import Event, ProfileChange

PROFILE_ATTRIBUTES = ("first_name", "last_name", "organization", "title", "locale", "image")
IDENTIFIER_NAMES = "id, email, phone_number, external_id, anonymous_id or _kx"


def not_valid_field(field: str, resource: str, where: str) -> APIError:
    return invalid(f"'{field}' is not a valid field for the resource '{resource}'.", where)


# -- profiles ----------------------------------------------------------------------------------


def jsonapi_profile(
    data: ProfileData,
    where: str,
    rules: RevisionRules,
    *,
    meta_places: tuple[str, ...],
    from_client: bool,
) -> ProfileChange:
    """A JSON:API profile sub-document (`where` points at its `data`). `meta_places` says
    where this revision and endpoint take the profile's `meta`: "inside" its attributes,
    "beside" them, or either (but not both)."""
    attrs = data.attributes
    at = where + "/attributes"
    if attrs.meta is not UNSET and "inside" not in meta_places:
        raise not_valid_field("meta", "profile", at + "/meta")
    if data.meta is not UNSET and "beside" not in meta_places:
        raise not_valid_field("meta", "profile", where + "/meta")
    if attrs.meta is not UNSET and data.meta is not UNSET:
        raise invalid(
            "Give the profile's meta once, beside or inside its attributes.", at + "/meta"
        )
    meta, meta_at = (
        (attrs.meta, at + "/meta") if attrs.meta is not UNSET else (data.meta, where + "/meta")
    )

    change = ProfileChange(
        id=data.id or None,
        external_id=attrs.external_id or None,
        email=limits.check_email(attrs.email, at + "/email") if attrs.email else None,
        phone_number=limits.check_phone(attrs.phone_number, at + "/phone_number")
        if attrs.phone_number
        else None,
        anonymous_id=attrs.anonymous_id or None,
        kx=attrs.kx or None,
        attributes={
            name: value
            for name in PROFILE_ATTRIBUTES
            if (value := getattr(attrs, name)) is not None
        },
        location={} if attrs.location is None else _non_null(attrs.location),
        properties=attrs.properties or {},
        may_change_identifiers=not from_client,
    )
    if not change.identifiers():
        raise invalid(f"The profile must contain at least one identifier ({IDENTIFIER_NAMES}).", at)
    for name, value in change.identifiers().items():
        limits.check_string(value, where + "/id" if name == "id" else f"{at}/{name}")
    for name, value in change.attributes.items():
        limits.check_string(value, f"{at}/{name}")
    limits.check_json(change.properties, at + "/properties")
    if isinstance(meta, ProfileMeta):
        _apply_meta(change, meta, meta_at, rules)
    if len(msgspec.json.encode(data)) > limits.MAX_PROFILE_BYTES:
        raise invalid("The profile object cannot be larger than 95 KB.", where)
    return change


def _non_null(struct: msgspec.Struct) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(struct).items() if v is not None}


def _apply_meta(change: ProfileChange, meta: ProfileMeta, where: str, rules: RevisionRules) -> None:
    patch = meta.patch_properties
    if patch is not None:
        if patch.append:
            limits.check_json(patch.append, where + "/patch_properties/append")
            change.append = patch.append
        if patch.unappend:
            limits.check_json(patch.unappend, where + "/patch_properties/unappend")
            change.unappend = patch.unappend
        if patch.unset:
            change.unset = [patch.unset] if isinstance(patch.unset, str) else patch.unset
            limits.check_json(change.unset, where + "/patch_properties/unset")
    if meta.patch_identifiers is UNSET:
        return
    if not rules.patch_identifiers:
        raise not_valid_field("patch_identifiers", "profile", where + "/patch_identifiers")
    if meta.patch_identifiers is None:
        return
    for op in ("append", "unappend"):
        values = getattr(meta.patch_identifiers, op)
        if not values:
            continue
        op_at = f"{where}/patch_identifiers/{op}"
        emails: list[str] = []
        for name, given in values.items():
            if name != "email":
                raise invalid("Only 'email' identifiers can be patched.", f"{op_at}/{name}")
            items = [given] if isinstance(given, str) else given
            if not isinstance(items, list) or not all(isinstance(e, str) for e in items):
                raise invalid("Expected an email address or a list of them.", f"{op_at}/email")
            emails += [limits.check_email(e, f"{op_at}/email") for e in items]
        if op == "append":
            change.add_emails = emails
        else:
            change.remove_emails = emails


# Legacy `$`-fields (Track API, and create-event before 2023-07-15): reference § 2.16.
DOLLAR_IDENTIFIERS = {
    "$email": "email",
    "$phone_number": "phone_number",
    "$id": "external_id",
    "$anonymous": "anonymous_id",
    "$exchange_id": "kx",
    "$kx": "kx",
}
DOLLAR_ATTRIBUTES = {f"${name}": name for name in PROFILE_ATTRIBUTES}
DOLLAR_LOCATION = {
    f"${name}": name
    for name in ("address1", "address2", "city", "region", "country", "zip", "timezone")
} | {"$latitude": "latitude", "$longitude": "longitude", "$ip": "ip"}


def dollar_profile(fields: dict[str, Any], where: str, *, from_client: bool) -> ProfileChange:
    """A flat profile of `$`-fields; every other key is a custom profile property."""
    change = ProfileChange(may_change_identifiers=not from_client)
    properties: dict[str, Any] = {}
    for key, value in fields.items():
        at = where + pointer(key)
        limits.check_json(value, at)
        if key in DOLLAR_IDENTIFIERS:
            if value is None or value == "":
                continue
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise invalid(f"'{key}' must be a string.", at)
            value = str(value)
            if key == "$email":
                value = limits.check_email(value, at)
            elif key == "$phone_number":
                value = limits.check_phone(value, at)
            setattr(change, DOLLAR_IDENTIFIERS[key], value)
        elif key in DOLLAR_ATTRIBUTES:
            if value is not None:
                change.attributes[DOLLAR_ATTRIBUTES[key]] = value
        elif key in DOLLAR_LOCATION:
            if value is not None:
                change.location[DOLLAR_LOCATION[key]] = value
        else:
            properties[key] = value
    change.properties = properties
    if not change.identifiers():
        raise invalid(
            "The profile must contain an identifier such as $email or $phone_number.", where
        )
    if len(msgspec.json.encode(fields)) > limits.MAX_PROFILE_BYTES:
        raise invalid("The profile object cannot be larger than 95 KB.", where)
    return change


# -- events ------------------------------------------------------------------------------------


def jsonapi_event(
    attrs: EventAttributes | BulkEventAttributes,
    where: str,
    rules: RevisionRules,
    now: int,
    group_backfill: bool = False,
) -> Event:
    """An event's attributes (`where` points at them)."""
    if attrs.value_currency is not UNSET and not rules.value_currency:
        raise not_valid_field("value_currency", "event", where + "/value_currency")
    if attrs.backfill is not UNSET and not rules.backfill:
        raise not_valid_field("backfill", "event", where + "/backfill")
    metric = attrs.metric.data.attributes
    limits.check_event_properties(
        attrs.properties, where + "/properties", rules.max_event_properties
    )
    return Event(
        metric=limits.check_metric_name(metric.name, where + "/metric/data/attributes/name"),
        service=limits.check_metric_service(
            metric.service, where + "/metric/data/attributes/service"
        ),
        properties=attrs.properties,
        time=limits.parse_event_time(attrs.time, now, rules.min_event_year, where + "/time"),
        value=attrs.value,
        value_currency=limits.check_currency(
            attrs.value_currency or None, where + "/value_currency"
        ),
        unique_id=limits.check_unique_id(attrs.unique_id, where + "/unique_id"),
        # The event's own flag wins over its bulk group's when given (design.md).
        backfill=group_backfill if attrs.backfill in (UNSET, None) else bool(attrs.backfill),
    )


def flat_event(attrs: FlatEventAttributes, where: str, rules: RevisionRules, now: int) -> Event:
    """An event in the pre-2023-07-15 shape (flat `metric`)."""
    limits.check_event_properties(
        attrs.properties, where + "/properties", rules.max_event_properties
    )
    return Event(
        metric=limits.check_metric_name(attrs.metric.name, where + "/metric/name"),
        service=limits.check_metric_service(attrs.metric.service, where + "/metric/service"),
        properties=attrs.properties,
        time=limits.parse_event_time(attrs.time, now, rules.min_event_year, where + "/time"),
        value=attrs.value,
        unique_id=limits.check_unique_id(attrs.unique_id, where + "/unique_id"),
    )


def bulk_group(
    group: BulkGroup, where: str, rules: RevisionRules, now: int, *, from_client: bool
) -> tuple[ProfileChange, list[Event]]:
    """One profile group of a bulk request (`where` points at the group)."""
    attrs = group.attributes
    at = where + "/attributes"
    if attrs.backfill is not UNSET and not rules.backfill:
        raise not_valid_field("backfill", "event-bulk-create", at + "/backfill")
    profile = jsonapi_profile(
        attrs.profile.data,
        at + "/profile/data",
        rules,
        meta_places=("beside",),
        from_client=from_client,
    )
    if not attrs.events.data:
        raise invalid("Each profile group needs at least one event.", at + "/events/data")
    backfill = bool(attrs.backfill) if attrs.backfill not in (UNSET, None) else False
    events = [
        jsonapi_event(e.attributes, f"{at}/events/data/{i}/attributes", rules, now, backfill)
        for i, e in enumerate(attrs.events.data)
    ]
    return profile, events


def check_repeated_unique_ids(
    groups: list[tuple[ProfileChange, list[Event]]], wheres: list[str]
) -> None:
    """2025-01-15 on: a unique_id repeated for one profile+metric fails the whole request.

    Two groups are taken to be one profile when they share any identifier, compared as
    identity resolution compares them (`identifier_key`: emails case- and Unicode-insensitive)."""
    seen: set[tuple[str, str, str, str]] = set()
    for g, (profile, events) in enumerate(groups):
        who = [(kind, identifier_key(kind, value)) for kind, value in profile.identifiers().items()]
        for i, event in enumerate(events):
            if event.unique_id is None:
                continue
            keys = {(kind, value, event.metric, event.unique_id) for kind, value in who}
            if keys & seen:
                raise invalid(
                    f"unique_id '{event.unique_id[:64]}' is repeated for the same profile and "
                    f"metric '{event.metric[:64]}'; the request failed and no events were "
                    "processed.",
                    f"{wheres[g]}/attributes/events/data/{i}/attributes/unique_id",
                )
            seen |= keys
