"""GET /openapi.json: trackhouse's OpenAPI document (built by scripts/build-openapi from
Klaviyo's published specification and trackhouse's extensions). No key needed."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

DOCUMENT = (Path(__file__).parent / "openapi.json").read_bytes()


async def get_openapi(request: Request) -> Response:
    return Response(DOCUMENT, media_type="application/json")
