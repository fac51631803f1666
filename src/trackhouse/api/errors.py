"""Errors that know their own wire form: Klaviyo's JSON:API error envelope.

    {"errors": [{"id", "status", "code", "title", "detail", "source": {"pointer"|"parameter"}}]}

`status` is an integer and `id` a random UUID, as in Klaviyo's real responses (reference § 2.5).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec

JSONAPI = "application/vnd.api+json"

TITLES = {
    "invalid": "Invalid input.",
    "not_authenticated": "Authentication credentials were not provided.",
    "permission_denied": "You do not have permission to perform this action.",
    "not_found": "Not found.",
    "method_not_allowed": "Method not allowed.",
    "gone": "Gone.",
    "conflict": "Conflict.",
    "payload_too_large": "Request entity too large.",
    "request_timeout": "Request timeout.",
    "request_header_fields_too_large": "Request header fields too large.",
    "unsupported_media_type": "Unsupported media type.",
    "throttled": "Request was throttled.",
    "service_unavailable": "Service unavailable.",
    "error": "A server error occurred.",
}


class APIError(Exception):
    """One JSON:API error; raise it anywhere in a handler and it becomes the response."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        pointer: str | None = None,
        parameter: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.pointer = pointer
        self.parameter = parameter
        self.headers = headers or {}

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "status": self.status,
            "code": self.code,
            "title": TITLES.get(self.code, "Error."),
            "detail": self.detail,
            "source": {"parameter": self.parameter}
            if self.parameter is not None
            else {"pointer": "/data" if self.pointer is None else self.pointer},
            "links": {},
            "meta": {},
        }
        return {"errors": [error]}

    def body(self) -> bytes:
        return msgspec.json.encode(self.to_json())


def invalid(detail: str, pointer: str = "/data") -> APIError:
    return APIError(400, "invalid", detail, pointer=pointer)


def pointer(*parts: str | int) -> str:
    """A JSON pointer (RFC 6901) from path parts."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[(\.\.\.)\]")
_MSGSPEC_AT = re.compile(r" - at `\$(.*)`$")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(.+)`$")


def from_validation_error(exc: msgspec.ValidationError, base: str = "") -> APIError:
    """Turn msgspec's "Expected `str`, got `int` - at `$.data.type`" into a pointed 400."""
    message = str(exc)
    at = _MSGSPEC_AT.search(message)
    parts: list[str] = []
    if at:
        for m in _PATH_PART.finditer(at.group(1)):
            if m.group(3):  # msgspec writes a free-form object's key as [...]: stop there
                break
            parts.append(m.group(1) or m.group(2))
        message = message[: at.start()]
    unknown = _UNKNOWN_FIELD.match(message)
    if unknown:
        # ".../profile/data/attributes" names the resource it belongs to: "profile"
        resource = parts[-3] if parts[-2:] == ["data", "attributes"] and len(parts) > 2 else None
        field = unknown.group(1)
        parts.append(field)
        detail = f"'{field}' is not a valid field" + (
            f" for the resource '{resource}'." if resource else "."
        )
    else:
        detail = message + "."
    return invalid(detail, base + pointer(*parts) if parts else base or "/data")
