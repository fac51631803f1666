"""The shapes of Klaviyo's flow definitions, taken from Klaviyo's own OpenAPI schemas (as
copied into trackhouse's api/openapi.json by scripts/build-openapi) and made strict: every
object that lists its properties refuses others, as Klaviyo's strict shapes do, and OpenAPI
3.0's `nullable` becomes JSON Schema's null type (and `oneOf` an `anyOf`: Klaviyo's
`oneOf: [integer, number]` would refuse every integer). `jsonschema` checks a trigger or an action
against them; what a schema cannot say (ids, links, references, time zones, what this server
can run) is checked by flows/definition.py.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

_DROPPED = {"description", "example", "readOnly", "writeOnly", "title", "deprecated", "format"}
MAX_MESSAGE = 300


@cache
def _components() -> dict[str, Any]:
    document = json.loads(resources.files("trackhouse.api").joinpath("openapi.json").read_text())
    schemas: dict[str, Any] = document["components"]["schemas"]
    return schemas


def _strict(node: Any, seen: tuple[str, ...] = ()) -> Any:
    """A schema with its references inlined, `nullable` as a null type, and closed objects."""
    if isinstance(node, list):
        return [_strict(item, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen:  # (no flow schema refers to itself; be safe)
            return {}
        found = _strict(_components()[name], (*seen, name))
        return {"anyOf": [found, {"type": "null"}]} if node.get("nullable") else found
    out = {k: _strict(v, seen) for k, v in node.items() if k not in _DROPPED and k != "nullable"}
    if "oneOf" in out:  # Klaviyo's oneOf(integer, number) matches 5 twice: any one will do
        out["anyOf"] = out.pop("oneOf")
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        elif "enum" not in out:
            out = {"anyOf": [out, {"type": "null"}]}
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


@cache
def validator(name: str) -> Draft7Validator:
    """A validator of the named component schema (e.g. "TimeDelayAction")."""
    return Draft7Validator(_strict(_components()[name], (name,)))


def first_error(name: str, value: Any, pointer: str) -> tuple[str, str] | None:
    """(pointer, detail) of the most relevant way `value` breaks the schema, or None."""
    errors = sorted(validator(name).iter_errors(value), key=_relevance)
    if not errors:
        return None
    error = errors[0]
    while error.validator in ("anyOf", "oneOf") and error.context:
        # Into the alternative that came nearest (not the `null` of a nullable object).
        inner = [e for e in error.context if e.validator != "type" or e.validator_value != "null"]
        error = sorted(inner or error.context, key=_relevance)[0]
    at = pointer + "".join("/" + _escape(str(p)) for p in error.absolute_path)
    return at, _detail(error)


def _relevance(error: ValidationError) -> tuple[int, int]:
    # The deepest error first (it names the field), and unknown keys before type errors.
    return (-len(error.absolute_path), 0 if error.validator == "additionalProperties" else 1)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _detail(error: ValidationError) -> str:
    kind = error.validator
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = (
            sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        )
        return (
            f"unknown key {extra[0]!r}; allowed: {', '.join(allowed)}" if extra else "unknown key"
        )
    if kind == "required":
        return error.message.replace("is a required property", "is required")
    if kind == "enum":
        values = [v for v in error.validator_value if v is not None]
        if len(values) > 12:  # the time zones
            return f"must be one of the {len(values)} values the specification lists"
        return f"must be one of {', '.join(map(str, values))}"
    if kind == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return f"must be of type {wanted}"
    if kind in ("oneOf", "anyOf"):
        return "does not match any shape the specification allows here"
    return error.message[:MAX_MESSAGE]
