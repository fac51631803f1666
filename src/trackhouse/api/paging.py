"""The query parameters every list endpoint shares: `filter`, `fields[TYPE]`, `include`,
`sort`, `page[cursor]`, `page[size]`; cursors and `links` (reference §§ 2.7–2.9).

Cursors are opaque to clients: base64url of a small JSON value saying where the next page
starts. Every query is scoped to the caller's account anyway, so a tampered cursor can at most
start a page somewhere else in the caller's own data.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
from starlette.requests import Request

from trackhouse.api.errors import APIError
from trackhouse.query.filters import Condition, FilterError, parse_filter


def invalid_parameter(parameter: str, detail: str) -> APIError:
    return APIError(400, "invalid", detail, parameter=parameter)


INT64 = (-(2**63), 2**63 - 1)


def is_int64(value: Any) -> bool:
    """What a store can hold as an integer (SQLite and PostgreSQL both stop at 64 bits)."""
    return type(value) is int and INT64[0] <= value <= INT64[1]


def ascii_int(text: str) -> int | None:
    """A parameter's decimal digits, ASCII only (int() would also take '٥'), or None."""
    text = text.strip()
    if not (0 < len(text) <= 18 and text.isascii() and text.isdigit()):
        return None
    return int(text)


def base_url(request: Request) -> str:
    """The server's own scheme://host[:port], as the client reached it."""
    return str(request.base_url).rstrip("/")


MAX_CURSOR = 1024


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(value)).decode().rstrip("=")


def decode_cursor(text: str, parameter: str = "page[cursor]") -> Any:
    """A cursor we issued; a whole `links.next` URL is accepted too (the Node SDK sends the
    link as it is when it is not https)."""
    if "?" in text:
        text = (parse_qs(urlsplit(text).query).get(parameter) or [""])[0]
    text = text.lstrip("=")  # the Python SDK trims an https link to "=CURSOR"
    # Ours are a few dozen characters; deep nesting would exhaust the decoder's recursion.
    if len(text) > MAX_CURSOR:
        raise invalid_parameter(parameter, "Invalid cursor provided.")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return msgspec.json.decode(raw)
    except (binascii.Error, ValueError, RecursionError, msgspec.DecodeError):
        raise invalid_parameter(parameter, "Invalid cursor provided.") from None


def page_links(request: Request, next_value: Any = None, prev_value: Any = None) -> dict:
    """`links.self/next/prev` as absolute URLs: this request with another page[cursor]."""

    # Klaviyo's CollectionLinks has no nullable members: an end of the list leaves the link out.
    links = {"self": str(request.url)}
    for name, value in (("next", next_value), ("prev", prev_value)):
        if value is not None:
            cursor = encode_cursor(value)
            links[name] = str(request.url.include_query_params(**{"page[cursor]": cursor}))
    return links


@dataclass
class ListRequest:
    filters: list[Condition]
    fields: dict[str, set[str]]
    include: list[str]
    sort: str | None
    cursor: Any
    size: int

    @staticmethod
    def fields_of(request: Request, type_: str) -> set[str] | None:
        text = request.query_params.get(f"fields[{type_}]")
        return None if text is None else {f.strip() for f in text.split(",") if f.strip()}

    @classmethod
    def parse(
        cls,
        request: Request,
        *,
        default_size: int,
        max_size: int,
        sorts: Iterable[str] = (),
        includes: Iterable[str] = (),
        fields: dict[str, Iterable[str]] | None = None,
    ) -> ListRequest:
        params = request.query_params
        filters: list[Condition] = []
        if "filter" in params:
            try:
                filters = parse_filter(params["filter"])
            except FilterError as exc:
                raise invalid_parameter("filter", f"Invalid filter: {exc}") from None
        include = [i.strip() for i in params.get("include", "").split(",") if i.strip()]
        for name in include:
            if name not in includes:
                raise invalid_parameter(
                    "include",
                    f"'{name[:64]}' is not an allowed include parameter for this resource.",
                )
        chosen: dict[str, set[str]] = {}
        for type_, allowed in (fields or {}).items():
            given = cls.fields_of(request, type_)
            if given is None:
                continue
            unknown = given - set(allowed)
            if unknown:
                name = sorted(unknown)[0][:64]
                raise invalid_parameter(
                    f"fields[{type_}]", f"'{name}' is not a valid field for the resource '{type_}'."
                )
            chosen[type_] = given
        sort = params.get("sort")
        if sort is not None and sort not in sorts:
            raise invalid_parameter("sort", f"'{sort[:64]}' is not a valid sort parameter.")
        size = default_size
        if "page[size]" in params:
            size = ascii_int(params["page[size]"]) or 0
            if not 1 <= size <= max_size:
                raise invalid_parameter("page[size]", f"page[size] must be 1 to {max_size}.")
        cursor = decode_cursor(params["page[cursor]"]) if "page[cursor]" in params else None
        return cls(filters, chosen, include, sort, cursor, size)

    def bad_filter(self, detail: str) -> APIError:
        return invalid_parameter("filter", f"Invalid filter: {detail}.")

    def cursor_value(self, type_: type) -> Any:
        """The cursor, which must be a `type_` (a page start we issued), or None."""
        if self.cursor is not None and not isinstance(self.cursor, type_):
            raise invalid_parameter("page[cursor]", "Invalid cursor provided.")
        return self.cursor
