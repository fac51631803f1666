"""Reading request bodies safely: size limits enforced while reading, gzip, JSON decoding.

Oversized bodies are refused as soon as the limit is passed (or at once when Content-Length
already says so), never buffered whole first; a gzip body is inflated incrementally with the
same limit on its inflated size, so a gzip bomb costs at most the limit in memory.
"""

from __future__ import annotations

import zlib
from typing import Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request

from trackhouse.api.errors import APIError, from_validation_error, invalid

MB = 1024 * 1024
JSON_TYPES = ("application/json", "application/vnd.api+json")
T = TypeVar("T")


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        "payload_too_large",
        f"The request payload exceeds the maximum allowed size of {limit // 1024} KB.",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The (inflated) body, or a 4xx once it passes `limit` bytes."""
    length = request.headers.get("content-length")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", ""):
        raise APIError(
            415,
            "unsupported_media_type",
            f"Content-Encoding '{encoding[:40]}' is not supported (use gzip or none).",
        )
    gzipped = encoding in ("gzip", "x-gzip")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise invalid("Invalid Content-Length header.") from None
        if declared > limit:  # gzip data larger than the inflated limit is too large as well
            raise _too_large(limit)
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if gzipped else None
    chunks: list[bytes] = []
    size = 0
    raw = 0
    try:
        # A body that stops arriving is cut off by the HTTP protocol's deadline (api/http.py).
        async for chunk in request.stream():
            raw += len(chunk)
            if inflater is not None:
                if raw > limit:  # compressed data larger than the inflated limit: refuse early
                    raise _too_large(limit)
                try:
                    # max_length bounds the output of this call; leftovers stay in the inflater.
                    chunk = inflater.decompress(chunk, limit + 1 - size)
                except zlib.error:
                    raise invalid("The request body is not valid gzip data.") from None
                if inflater.unconsumed_tail:
                    raise _too_large(limit)
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise invalid("The client disconnected before sending the whole body.") from None
    if inflater is not None:
        try:
            tail = inflater.flush()
        except zlib.error:
            raise invalid("The request body is not valid gzip data.") from None
        if size + len(tail) > limit:
            raise _too_large(limit)
        chunks.append(tail)
        if not inflater.eof:
            raise invalid("The request body is truncated gzip data.")
        if inflater.unused_data:
            raise invalid("The request body has data after the end of its gzip stream.")
    return b"".join(chunks)


def require_json_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type")
    if content_type is None:
        return  # lenient: a body without a declared type is read as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in JSON_TYPES:
        raise APIError(
            415,
            "unsupported_media_type",
            f"Content-Type '{media[:60]}' is not supported; "
            "use application/vnd.api+json or application/json.",
        )


def decode_json(body: bytes, type_: type[T]) -> T:
    """Decode and validate `body` as `type_`; every failure is a pointed 400."""
    if not body.strip():
        raise invalid("The request body is empty; a JSON:API document is required.")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise from_validation_error(exc) from None
    except UnicodeDecodeError:
        raise invalid("The request body is not valid UTF-8.") from None
    except msgspec.DecodeError as exc:
        # msgspec < 0.23 raised UnicodeDecodeError for bad UTF-8; later versions a DecodeError.
        if "UTF-8" in str(exc):
            raise invalid("The request body is not valid UTF-8.") from None
        raise invalid(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise invalid("The request body is nested too deeply.") from None


def decode_any_json(body: bytes) -> Any:
    """Decode JSON of any shape (legacy endpoints); raises ValueError on any failure."""
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
