"""Members of lists and segments, and a profile's lists and segments.

- `GET /api/{lists|segments}/{id}/profiles` and `…/relationships/profiles`: a page of members
  in the order they joined (`sort=±joined_group_at`), each a profile resource with its
  `joined_group_at`; filters `email`, `phone_number`, `push_token` (any, equals), `_kx`
  (equals), `joined_group_at` (greater/less than, or equal), and for segments `profile_id`.
- `GET /api/profiles/{id}/{lists|segments}` and `…/relationships/{lists|segments}`.

Membership is kept by processing (process/membership.py): it is eventually visible, as
events are, and `/admin/wait` makes it immediate in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from trackhouse.api.accept import Caller, jsonapi_response
from trackhouse.api.errors import APIError
from trackhouse.api.event_reads import PROFILE_FIELDS
from trackhouse.api.paging import ListRequest, base_url, invalid_parameter, page_links
from trackhouse.api.profiles import TIME_OPERATORS, time_bound
from trackhouse.identifiers import identifier_key
from trackhouse.query.events import sparse
from trackhouse.query.filters import Condition, FilterError, instant
from trackhouse.query.profiles import profile_resource
from trackhouse.store.base import MemberQuery, Store

MEMBER_FIELDS = (*PROFILE_FIELDS, "joined_group_at")
MEMBER_SORTS = ("joined_group_at", "-joined_group_at")
IDENTIFIER_FILTERS = {"email": "email", "phone_number": "phone_number", "_kx": "_kx"}
MAX_ID = 64
# A profile's lists or segments are looked up this many ids at a time.
CHUNK = 500


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def valid_id(text: str) -> bool:
    """What can be an id of ours (anything else names nothing: a 404, never a 5xx)."""
    return 0 < len(text) <= MAX_ID and "\x00" not in text


def member_resource(doc: bytes, joined_at: str, base: str) -> dict[str, Any]:
    resource = profile_resource(doc, base)
    resource["attributes"]["joined_group_at"] = joined_at
    return resource


def _member_query(request: Request, caller: Caller, kind: str, group_id: str,
                  q: ListRequest) -> MemberQuery | None:  # fmt: skip
    """The page asked for, or None when a filter can match no one (push tokens)."""
    query = MemberQuery(caller.account_id, kind, group_id, limit=q.size + 1)
    query.descending = q.sort == "-joined_group_at"
    nobody = False
    for c in q.filters:
        if c.field == "joined_group_at" and c.op in TIME_OPERATORS:
            time_bound(query, c, "joined")
            continue
        given = c.value if isinstance(c.value, tuple) else (c.value,)
        values = [v for v in given if isinstance(v, str)]
        allowed = ("equals",) if c.field == "_kx" else ("equals", "any")
        if c.op not in allowed or len(values) != len(given) or not values:
            raise q.bad_filter(f"'{c.op}' on '{c.field}' is not supported")
        if c.field == "profile_id" and kind == "segment" and query.profile_ids is None:
            query.profile_ids = values
        elif c.field in IDENTIFIER_FILTERS and query.identifiers is None:
            id_kind = IDENTIFIER_FILTERS[c.field]
            keys = []
            for v in values:
                try:
                    keys.append(identifier_key(id_kind, v))
                except ValueError:
                    continue  # cannot be anyone's identifier
            if not keys:
                nobody = True
            query.identifiers = (id_kind, keys or [""])
        elif c.field == "push_token":
            nobody = True  # this server keeps no push tokens
        else:
            raise q.bad_filter(f"'{c.field}' is not a filterable field")
    after = q.cursor_value(list)
    if after is not None:
        if len(after) != 2 or not all(isinstance(v, str) and len(v) <= MAX_ID for v in after):
            raise invalid_parameter("page[cursor]", "Invalid cursor provided.")
        query.after = (after[0], after[1])
    return None if nobody else query


async def members(
    request: Request, caller: Caller, kind: str, group_id: str, *, ids_only: bool
) -> Response:
    """A page of the list's or segment's members (the caller has checked it exists)."""
    fields: dict[str, Iterable[str]] = {} if ids_only else {"profile": MEMBER_FIELDS}
    q = ListRequest.parse(request, default_size=20, max_size=100, sorts=MEMBER_SORTS,
                          fields=fields)  # fmt: skip
    extra = request.query_params.get("additional-fields[profile]")
    if extra is not None and not ids_only and extra.strip():
        raise invalid_parameter(
            "additional-fields[profile]",
            "subscriptions and predictive_analytics are not kept by this server.",
        )
    query = _member_query(request, caller, kind, group_id, q)
    rows = [] if query is None else store_of(request).members(query)
    page, more = rows[: q.size], len(rows) > q.size
    base = base_url(request)
    resources = [member_resource(doc, joined, base) for doc, joined in page]
    next_value = None
    if more:
        next_value = [page[-1][1], resources[-1]["id"]]
    if ids_only:
        data = [{"type": "profile", "id": r["id"]} for r in resources]
    else:
        data = [sparse(r, q.fields.get("profile")) for r in resources]
    document = {"data": data, "links": page_links(request, next_value)}
    return jsonapi_response(200, document, caller.headers)


def profile_or_404(request: Request, caller: Caller) -> str:
    profile_id = request.path_params["profile_id"]
    if not valid_id(profile_id) or store_of(request).profile(caller.account_id, profile_id) is None:
        raise APIError(404, "not_found", f"A profile with id {profile_id[:64]} does not exist.")
    return profile_id


def groups_of_profile(
    request: Request,
    caller: Caller,
    kind: str,
    rows_of: Callable[[list[str]], list[Any]],
) -> list[Any]:
    """The rows (ListRow or SegmentRow) of the profile's lists or segments, by id."""
    profile_id = profile_or_404(request, caller)
    ids = store_of(request).profile_groups(caller.account_id, profile_id, kind)
    rows: list[Any] = []
    for start in range(0, len(ids), CHUNK):
        rows += rows_of(ids[start : start + CHUNK])
    return rows


MAX_NAME = 1000  # characters in a list's or segment's name


def group_filter(q: ListRequest, query: Any, c: Condition) -> bool:
    """A filter lists and segments share (id and name `equals` / `any`, created and updated
    `greater-than`) set on `query` (a ListQuery or SegmentQuery); False if it is none."""
    if c.field in ("id", "name") and c.op in ("equals", "any"):
        values = list(c.value) if c.op == "any" else [c.value]  # type: ignore[arg-type]
        if not values or not all(isinstance(v, str) for v in values):
            raise q.bad_filter(f"{c.field} must be compared with strings")
        setattr(query, "ids" if c.field == "id" else "names", values)
        return True
    if c.field in ("created", "updated") and c.op == "greater-than":
        try:
            seconds = instant(c.value)
        except FilterError as exc:
            raise q.bad_filter(str(exc)) from None
        at = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
        setattr(query, f"{c.field}_after", at)
        return True
    return False


def group_order(q: ListRequest, query: Any) -> None:
    """`sort` and `page[cursor]` of a page of lists or segments, set on `query`."""
    sort = q.sort or "id"
    query.sort, query.descending = sort.lstrip("-"), sort.startswith("-")
    after = q.cursor_value(list)
    if after is not None:
        if len(after) != 2 or not all(isinstance(v, str) and len(v) <= 2 * MAX_NAME
                                      for v in after):  # fmt: skip
            raise invalid_parameter("page[cursor]", "Invalid cursor provided.")
        query.after = (after[0], after[1])
