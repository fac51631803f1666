"""Klaviyo's own OpenAPI documents as an oracle for the request bodies our tests send.

The specs are the raw `stable.json` files under `shared/klaviyo-openapi/<revision>/`, kept
beside the project checkout (or wherever `TRACKHOUSE_SHARED_DIR` points). Validating a body
against the spec of the revision it is sent with shows that a test speaks Klaviyo's wire
format, not a dialect only trackhouse understands.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator, oas30_format_checker

__all__ = [
    "Operation",
    "ValidationError",
    "error_pointer",
    "operation",
    "spec_errors",
    "validate_request",
]

SPEC_DIRS = ("2023-01-24", "2024-02-15", "2026-04-15", "2026-07-15")
JSON_MEDIA_TYPES = ("application/vnd.api+json", "application/json")


def shared_dir() -> Path:
    """`shared/` beside the checkout (as in CI), else `$TRACKHOUSE_SHARED_DIR`."""
    candidates = [Path(__file__).resolve().parents[2] / "shared"]
    if os.environ.get("TRACKHOUSE_SHARED_DIR"):
        candidates.append(Path(os.environ["TRACKHOUSE_SHARED_DIR"]))
    for candidate in candidates:
        if (candidate / "klaviyo-openapi").is_dir():
            return candidate
    raise FileNotFoundError(
        "Klaviyo's OpenAPI files were not found in "
        + " or ".join(str(c / "klaviyo-openapi") for c in candidates)
        + "; check out shared/ beside the repository or set TRACKHOUSE_SHARED_DIR."
    )


@cache
def load_spec(spec_dir: str) -> dict[str, Any]:
    """One revision's whole OpenAPI document (1-3 MB; loaded once per test session)."""
    path = shared_dir() / "klaviyo-openapi" / spec_dir / "stable.json"
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Operation:
    """Where and how an operation takes its request body, as its revision's spec says."""

    spec_dir: str
    operation_id: str
    method: str
    path: str  # as the spec writes it: "/api/events/" before 2024-10-15, "/api/events" after
    content_type: str
    schema: dict[str, Any]  # the requestBody schema, usually a `#/components/...` $ref


@cache
def operation(spec_dir: str, operation_id: str) -> Operation:
    spec = load_spec(spec_dir)
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and op.get("operationId") == operation_id:
                content = op["requestBody"]["content"]
                content_type = next(t for t in JSON_MEDIA_TYPES if t in content)
                return Operation(
                    spec_dir,
                    operation_id,
                    method.upper(),
                    path,
                    content_type,
                    content[content_type]["schema"],
                )
    raise LookupError(f"revision {spec_dir} has no operation {operation_id!r}")


@cache
def _validator(spec_dir: str, operation_id: str) -> OAS30Validator:
    # The schema's `#/components/...` references resolve against the root, so the root
    # carries the document's components beside the request schema.
    schema = {
        **operation(spec_dir, operation_id).schema,
        "components": load_spec(spec_dir)["components"],
    }
    return OAS30Validator(schema, format_checker=oas30_format_checker)


def spec_errors(spec_dir: str, operation_id: str, body: Any) -> list[ValidationError]:
    """Every way `body` breaks the operation's request schema (empty when it conforms)."""
    errors = _validator(spec_dir, operation_id).iter_errors(body)
    return sorted(errors, key=lambda e: list(map(str, e.absolute_path)))


def error_pointer(error: ValidationError) -> str:
    """The JSON pointer (as in a JSON:API error's `source.pointer`) of what `error` is about."""
    return "".join(
        "/" + str(part).replace("~", "~0").replace("/", "~1") for part in error.absolute_path
    )


def validate_request(spec_dir: str, operation_id: str, body: Any) -> None:
    """Raise `ValidationError` unless `body` is a valid request body for the operation in
    Klaviyo's OpenAPI document of revision `spec_dir` (e.g. "2026-07-15")."""
    errors = spec_errors(spec_dir, operation_id, body)
    if errors:
        first = errors[0]
        raise ValidationError(
            f"{operation_id} body is invalid by Klaviyo's {spec_dir} spec at "
            f"{error_pointer(first) or '/'}: "
            f"{first.message}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
            path=first.absolute_path,
            validator=first.validator,
            validator_value=first.validator_value,
            instance=first.instance,
            schema=first.schema,
        )
