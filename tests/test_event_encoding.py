"""The `event` resources that GET /api/events encodes straight into JSON (query/events.py's
EventEncoder) are exactly the documents their plain construction as dicts gives, for any
stored row: every time from year 1 to 9999, any number, dedup key, value and currency, and
properties that do or do not use the keys Klaviyo's reads echo; in both revisions' shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from trackhouse.query.events import EventEncoder, event_resource, event_uuid
from trackhouse.store.base import EventRow, event_id

MIN_TIME = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
MAX_TIME = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
keys = st.text() | st.sampled_from(["$event_id", "$value", "$value_currency", "$value_x"])
rows = st.builds(
    EventRow,
    number=st.integers(0, 2**61 - 1),
    profile_id=st.text(),
    metric_id=st.text(),
    time=st.integers(MIN_TIME, MAX_TIME) | st.sampled_from([MIN_TIME, MAX_TIME, 0, -1, 86399]),
    dedup_key=st.text(),
    value=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    value_currency=st.none() | st.text(),
    properties=st.dictionaries(keys, json_values, max_size=5).map(msgspec.json.encode),
)
ECHOED = {"$event_id", "$value", "$value_currency"}
bases = st.sampled_from(["http://127.0.0.1:8080", "https://a.example"]) | st.text()


def expected(row: EventRow, base: str, legacy: bool) -> dict[str, Any]:
    """The resource built plainly, as Klaviyo documents it."""
    eid = event_id(row.number)
    echoed: dict[str, Any] = {"$event_id": row.dedup_key}
    if row.value is not None:
        echoed["$value"] = row.value
    if row.value_currency is not None:
        echoed["$value_currency"] = row.value_currency
    stored = msgspec.json.decode(row.properties)
    # The echoed keys come first, unless the stored JSON holds one of them (as a key, or as a
    # string value): then in the stored order, their values replaced.
    if any(msgspec.json.encode(key) in row.properties for key in ECHOED):
        properties = stored | echoed
    else:
        properties = echoed | stored
    attributes: dict[str, Any] = {
        "timestamp": row.time,
        "event_properties": properties,
        "datetime": datetime.fromtimestamp(row.time, UTC).isoformat(),
        "uuid": event_uuid(row.time, row.number),
    }
    url = f"{base}/api/events/{eid}"
    if legacy:
        return {
            "type": "event",
            "id": eid,
            "attributes": {
                "metric_id": row.metric_id,
                "profile_id": row.profile_id,
                **attributes,
                "timestamp": str(row.time),
            },
            "relationships": {
                "metrics": {"data": [{"type": "metric", "id": row.metric_id}]},
                "profiles": {"data": [{"type": "profile", "id": row.profile_id}]},
            },
            "links": {"self": url + "/"},
        }
    return {
        "type": "event",
        "id": eid,
        "attributes": attributes,
        "relationships": {
            name: {
                "data": {"type": name, "id": related},
                "links": {"self": f"{url}/relationships/{name}", "related": f"{url}/{name}"},
            }
            for name, related in (("metric", row.metric_id), ("profile", row.profile_id))
        },
        "links": {"self": url},
    }


@settings(max_examples=1000)
@given(rows, bases, st.booleans())
def test_encoded_event_is_the_plain_resource(row: EventRow, base: str, legacy: bool) -> None:
    want = expected(row, base, legacy)
    encoded = bytes(msgspec.json.encode([EventEncoder(base, legacy=legacy)(row)]))
    # Equal as JSON, and in the same key order as the plain dicts encode to.
    assert msgspec.json.decode(encoded) == [want]
    assert encoded == msgspec.json.encode([want])
    assert event_resource(row, base, legacy=legacy) == want
