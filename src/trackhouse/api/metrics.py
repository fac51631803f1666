"""GET /api/metrics, GET /api/metrics/{id}, POST /api/metric-aggregates."""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api.accept import identify_caller, jsonapi_response
from trackhouse.api.body import MB, decode_json, read_body, require_json_content_type
from trackhouse.api.errors import APIError, invalid
from trackhouse.api.paging import (
    ListRequest,
    base_url,
    decode_cursor,
    encode_cursor,
    page_links,
)
from trackhouse.query.aggregates import AggregateError, aggregate
from trackhouse.query.events import integration, metric_resource, sparse
from trackhouse.query.filters import FilterError, parse_filter

METRIC_FIELDS = ("created", "id", "integration", "name", "updated")
PAGE = 200  # Klaviyo's fixed page size for metrics


async def get_metrics(request: Request) -> Response:
    caller = identify_caller(request, scope="metrics:read", endpoint_class="metrics")
    q = ListRequest.parse(
        request, default_size=PAGE, max_size=PAGE, fields={"metric": METRIC_FIELDS}
    )
    wanted: dict[str, str] = {}
    for c in q.filters:
        if c.op != "equals" or c.field not in ("integration.name", "integration.category"):
            raise q.bad_filter(f"'{c.op}' on '{c.field}' is not supported")
        if not isinstance(c.value, str):
            raise q.bad_filter(f"{c.field} must be a string")
        wanted[c.field.split(".")[1]] = c.value
    after = q.cursor_value(str)
    store, base = request.app.state.store, base_url(request)
    # Integration filters are applied here: an account has few metrics.
    rows = [
        m
        for m in store.metrics(caller.account_id, after=after, limit=100_000)
        if all(integration(m.service)[k] == v for k, v in wanted.items())
    ]
    page, more = rows[:PAGE], len(rows) > PAGE
    document = {
        "data": [sparse(metric_resource(m, base), q.fields.get("metric")) for m in page],
        "links": page_links(request, page[-1].id if more else None),
    }
    return jsonapi_response(200, document, caller.headers)


async def get_metric(request: Request) -> Response:
    caller = identify_caller(request, scope="metrics:read", endpoint_class="metrics")
    metric_id = request.path_params["metric_id"]
    found = request.app.state.store.metrics(caller.account_id, ids=[metric_id], limit=1)
    if not found:
        raise APIError(404, "not_found", f"A metric with id {metric_id[:64]} does not exist.")
    resource = metric_resource(found[0], base_url(request))
    fields = ListRequest.fields_of(request, "metric")
    return jsonapi_response(
        200, {"data": sparse(resource, fields), "links": {"self": str(request.url)}}, caller.headers
    )


# -- metric aggregates -----------------------------------------------------------------------


class _Wire(msgspec.Struct, forbid_unknown_fields=True):
    pass


class AggregateAttributes(_Wire):
    metric_id: str
    measurements: list[Literal["count", "sum_value", "unique"]]
    filter: list[str]
    interval: Literal["hour", "day", "week", "month"] = "day"
    page_size: int = 500
    page_cursor: str | None = None
    by: list[str] = []
    return_fields: list[str] | None = None
    timezone: str = "UTC"
    sort: str | None = None


class AggregateData(_Wire):
    type: Literal["metric-aggregate"]
    attributes: AggregateAttributes


class AggregateQuery(_Wire):
    data: AggregateData


MAX_OFFSET = 2**31  # far past any real number of groups; keeps the next cursor a small int


def _offset(cursor: str | None, where: str) -> int:
    """The row offset in a page_cursor we issued (a whole `next` link is accepted too).

    The cursor is a body attribute, so a bad one is refused with a pointer to it."""
    if not cursor:
        return 0
    try:
        offset = decode_cursor(cursor, "page_cursor")
    except APIError:
        offset = None
    # bool is an int to Python, and a huge int would only come back as a bigger next cursor.
    if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
        raise invalid("Invalid cursor provided.", where)
    return offset


async def query_metric_aggregates(request: Request) -> Response:
    caller = identify_caller(request, scope="metrics:read", endpoint_class="aggregates")
    require_json_content_type(request)
    body = await read_body(request, 1 * MB)
    attrs = decode_json(body, AggregateQuery).data.attributes
    at = "/data/attributes"
    try:
        conditions = [c for text in attrs.filter for c in parse_filter(text)]
    except FilterError as exc:
        raise invalid(f"Invalid filter: {exc}", at + "/filter") from None
    if not 1 <= attrs.page_size <= 10_000:
        raise invalid("page_size must be 1 to 10000.", at + "/page_size")
    offset = _offset(attrs.page_cursor, at + "/page_cursor")
    started = time.monotonic()
    try:
        result = aggregate(
            request.app.state.store,
            caller.account_id,
            metric_id=attrs.metric_id,
            measurements=attrs.measurements,
            conditions=conditions,
            interval=attrs.interval,
            timezone=attrs.timezone,
            by=attrs.by,
        )
    except AggregateError as exc:
        raise invalid(str(exc), at + exc.where) from None
    rows = result.data[offset : offset + attrs.page_size]
    more = offset + attrs.page_size < len(result.data)
    url = f"{base_url(request)}/api/metric-aggregates"
    links: dict[str, Any] = {"self": url}
    if more:
        links["next"] = f"{url}?page_cursor={encode_cursor(offset + attrs.page_size)}"
    document = {
        "data": {
            "type": "metric-aggregate",
            "id": f"{attrs.metric_id}-{int(started * 1000)}",
            "attributes": {"dates": result.dates, "data": rows},
            "links": links,
        },
        "links": links,
    }
    return jsonapi_response(200, document, caller.headers)
