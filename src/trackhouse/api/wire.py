"""Request bodies as Klaviyo's OpenAPI documents declare them, as msgspec structs.

The decoder validates types, required fields and `type` discriminators, and refuses unknown
fields (Klaviyo answers "'x' is not a valid field for the resource 'profile'"). The JSON:API
shapes (2023-07-15 on) are declared once as the union of every revision's fields; fields that
only later revisions allow are `UNSET` by default so that `api/translate.py` can refuse them
for an older revision by the rules in `api/revision.py`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    pass


# -- profile ---------------------------------------------------------------------------------


class Location(_Wire):
    address1: str | None = None
    address2: str | None = None
    city: str | None = None
    country: str | None = None
    latitude: str | float | None = None
    longitude: str | float | None = None
    region: str | None = None
    zip: str | None = None
    timezone: str | None = None
    ip: str | None = None


class PatchProperties(_Wire):
    append: dict[str, Any] | None = None
    unappend: dict[str, Any] | None = None
    unset: str | list[str] | None = None


class PatchIdentifiers(_Wire):
    append: dict[str, Any] | None = None
    unappend: dict[str, Any] | None = None


class ProfileMeta(_Wire):
    patch_properties: PatchProperties | None = None
    patch_identifiers: PatchIdentifiers | UnsetType | None = UNSET  # 2026-04-15


class ProfileAttributes(_Wire):
    email: str | None = None
    phone_number: str | None = None
    external_id: str | None = None
    anonymous_id: str | None = None
    kx: str | None = msgspec.field(default=None, name="_kx")
    first_name: str | None = None
    last_name: str | None = None
    organization: str | None = None
    locale: str | None = None
    title: str | None = None
    image: str | None = None
    location: Location | None = None
    properties: dict[str, Any] | None = None
    meta: ProfileMeta | UnsetType | None = UNSET  # create-event, 2024-02-15 on


class ProfileData(_Wire):
    type: Literal["profile"]
    attributes: ProfileAttributes
    id: str | None = None
    meta: ProfileMeta | UnsetType | None = UNSET  # bulk; create-event before 2024-02-15


class ProfileRelationship(_Wire):
    data: ProfileData


# -- metric ----------------------------------------------------------------------------------


class MetricAttributes(_Wire):
    name: str
    service: str | None = None


class MetricData(_Wire):
    type: Literal["metric"]
    attributes: MetricAttributes


class MetricRelationship(_Wire):
    data: MetricData


# -- create event (POST /api/events, POST /client/events) -------------------------------------


class EventAttributes(_Wire):
    properties: dict[str, Any]
    metric: MetricRelationship
    profile: ProfileRelationship
    time: str | None = None
    value: float | None = None
    value_currency: str | UnsetType | None = UNSET  # 2024-02-15
    unique_id: str | None = None
    backfill: bool | UnsetType | None = UNSET  # 2026-04-15


class EventData(_Wire):
    type: Literal["event"]
    attributes: EventAttributes


class EventCreate(_Wire):
    data: EventData


# -- create event, revisions before 2023-07-15 (seed 003) ------------------------------------


class FlatMetric(_Wire):
    name: str
    service: str | None = None


class FlatEventAttributes(_Wire):
    profile: dict[str, Any]
    metric: FlatMetric
    properties: dict[str, Any]
    time: str | None = None
    value: float | None = None
    unique_id: str | None = None


class FlatEventData(_Wire):
    type: Literal["event"]
    attributes: FlatEventAttributes


class FlatEventCreate(_Wire):
    data: FlatEventData


# -- bulk create (POST /api/event-bulk-create-jobs, POST /client/event-bulk-create) ----------


class BulkEventAttributes(_Wire):
    properties: dict[str, Any]
    metric: MetricRelationship
    time: str | None = None
    value: float | None = None
    value_currency: str | UnsetType | None = UNSET
    unique_id: str | None = None
    backfill: bool | UnsetType | None = UNSET


class BulkEvent(_Wire):
    type: Literal["event"]
    attributes: BulkEventAttributes


class BulkEvents(_Wire):
    data: list[BulkEvent]


class BulkGroupAttributes(_Wire):
    profile: ProfileRelationship
    events: BulkEvents
    backfill: bool | UnsetType | None = UNSET


class BulkGroup(_Wire):
    type: Literal["event-bulk-create"]
    attributes: BulkGroupAttributes


class BulkGroups(_Wire):
    data: list[BulkGroup]


class BulkJobAttributes(_Wire):
    events_bulk_create: BulkGroups = msgspec.field(name="events-bulk-create")


class BulkJobData(_Wire):
    type: Literal["event-bulk-create-job"]
    attributes: BulkJobAttributes


class BulkJobCreate(_Wire):
    data: BulkJobData


class ClientBulkCreate(_Wire):
    data: BulkGroup
