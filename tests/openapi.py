"""Klaviyo's own OpenAPI documents as an oracle for the request bodies our tests send and
the response bodies trackhouse answers with.

The specs are the raw `stable.json` files under `shared/klaviyo-openapi/<revision>/`, kept
beside the project checkout (or wherever `TRACKHOUSE_SHARED_DIR` points). Validating a body
against the spec of the revision it is sent with shows that a test speaks Klaviyo's wire
format, not a dialect only trackhouse understands; validating a response shows that a client
generated from that spec can read what we send back.
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
    "response_errors",
    "response_schema",
    "spec_errors",
    "validate_request",
    "validate_response",
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
    """One revision's whole OpenAPI document (1-3 MB; loaded once per test session), with
    one mend: its `oneOf`s become `anyOf`s. Klaviyo's alternatives overlap: a number is
    `oneOf: [integer, number]`, which every integer matches twice (so `"value": 50`, which
    Klaviyo takes, would be refused), and a flow message is one of FlowEmail, FlowSms,
    FlowWebhook… of which FlowEmail requires nothing, so that every message matches two."""
    path = shared_dir() / "klaviyo-openapi" / spec_dir / "stable.json"
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    _any_of(spec)
    return spec


def _any_of(node: Any) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("oneOf"), list):
            node["anyOf"] = node.pop("oneOf")
        for value in node.values():
            _any_of(value)
    elif isinstance(node, list):
        for value in node:
            _any_of(value)


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


# -- responses ---------------------------------------------------------------------------------


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `{"$ref": "#/components/..."}` (responses may be references too)."""
    seen = 0
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/") or seen > 20:
            raise LookupError(f"cannot resolve $ref {ref!r}")
        node = spec
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        seen += 1
    return node


@cache
def response_schema(spec_dir: str, operation_id: str, status: int) -> dict[str, Any]:
    """The JSON schema of the operation's `status` response: its exact status code, else its
    class (`4XX`), else `default`; usually a `#/components/schemas/...` $ref."""
    spec = load_spec(spec_dir)
    for item in spec["paths"].values():
        for op in item.values():
            if isinstance(op, dict) and op.get("operationId") == operation_id:
                responses = op["responses"]
                key = next(
                    (k for k in (str(status), f"{str(status)[0]}XX", "default") if k in responses),
                    None,
                )
                if key is None:
                    raise LookupError(
                        f"{operation_id} in revision {spec_dir} documents no {status} response "
                        f"(only {', '.join(responses)})"
                    )
                content = _resolve(spec, responses[key]).get("content", {})
                media = next((t for t in JSON_MEDIA_TYPES if t in content), None)
                if media is None:
                    raise LookupError(
                        f"{operation_id} {key} in revision {spec_dir} has no JSON body"
                    )
                return content[media]["schema"]
    raise LookupError(f"revision {spec_dir} has no operation {operation_id!r}")


def _null_in_compositions(node: Any) -> Any:
    """A copy of `node` in which `nullable: true` beside a type-less `oneOf`/`anyOf` admits
    null. Klaviyo writes e.g. a profile's `location.latitude` as `{"nullable": true, "oneOf":
    [string, number]}` and sends `null` for it; by OAS 3.0.3 `nullable` without `type` has no
    effect, so a strict validator would reject Klaviyo's own responses (its generated SDK
    models read the field as Optional, as intended)."""
    if isinstance(node, list):
        return [_null_in_compositions(item) for item in node]
    if not isinstance(node, dict):
        return node
    copy = {key: _null_in_compositions(value) for key, value in node.items()}
    # Klaviyo's `value: {oneOf: [integer, number]}` (segment definitions' numeric filters):
    # by JSON Schema a whole number matches both branches, so `oneOf` would reject every
    # integer Klaviyo itself sends; it means "either", which is `anyOf`.
    if copy.get("oneOf") == [{"type": "integer"}, {"type": "number"}]:
        copy["anyOf"] = copy.pop("oneOf")
    if copy.get("nullable") is True and "type" not in copy:
        for keyword in ("oneOf", "anyOf"):
            if keyword in copy:
                copy[keyword] = [*copy[keyword], {"enum": [None]}]
    return copy


@cache
def _response_components(spec_dir: str) -> dict[str, Any]:
    return _null_in_compositions(load_spec(spec_dir)["components"])


@cache
def _response_validator(spec_dir: str, operation_id: str, status: int) -> OAS30Validator:
    schema = {
        **response_schema(spec_dir, operation_id, status),
        "components": _response_components(spec_dir),
    }
    return OAS30Validator(schema, format_checker=oas30_format_checker)


def response_errors(
    spec_dir: str, operation_id: str, status: int, body: Any
) -> list[ValidationError]:
    """Every way `body` breaks the operation's `status` response schema."""
    errors = _response_validator(spec_dir, operation_id, status).iter_errors(body)
    return sorted(errors, key=lambda e: list(map(str, e.absolute_path)))


def validate_response(spec_dir: str, operation_id: str, status: int, body: Any) -> None:
    """Raise `ValidationError` unless `body` is a valid `status` response body of the
    operation in Klaviyo's OpenAPI document of revision `spec_dir` (e.g. "2026-07-15")."""
    errors = response_errors(spec_dir, operation_id, status, body)
    if errors:
        raise ValidationError(
            f"{operation_id} {status} response is invalid by Klaviyo's {spec_dir} spec:\n"
            + "\n".join(f"  at {error_pointer(e) or '/'}: {e.message[:300]}" for e in errors[:10])
            + (f"\n  (and {len(errors) - 10} more)" if len(errors) > 10 else ""),
            path=errors[0].absolute_path,
            validator=errors[0].validator,
            validator_value=errors[0].validator_value,
            instance=errors[0].instance,
            schema=errors[0].schema,
        )
