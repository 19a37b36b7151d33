"""Argument validation against a tool's input schema, before anything is forwarded.

Validators are compiled once per schema (cached by the schema's canonical JSON). References are
resolved only inside the schema itself: a ``$ref`` to a network location is never fetched and
makes the schema unusable rather than reaching out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jsonschema
import referencing
import referencing.exceptions

from toolcrib.errors import InvalidArguments

_REGISTRY: referencing.Registry[Any] = referencing.Registry()  # its default retrieve refuses every URI


@lru_cache(maxsize=4096)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError:
        return None
    return cls(schema, registry=_REGISTRY, format_checker=None)


def validate_arguments(tool: str, schema: Mapping[str, Any] | None, arguments: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidArguments` with a message a model can act on; return on success."""
    if not schema:
        return
    validator = _validator(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    if validator is None:
        return
    try:
        errors = sorted(validator.iter_errors(dict(arguments)), key=lambda e: list(e.path))
    except referencing.exceptions.Unresolvable as exc:
        raise InvalidArguments(f"{tool}: its input schema has an unresolvable $ref ({exc}); not called") from None
    if errors:
        parts = []
        for err in errors[:5]:
            where = "/".join(str(p) for p in err.path) or "(arguments)"
            parts.append(f"{where}: {err.message}")
        raise InvalidArguments(f"invalid arguments for {tool}: " + "; ".join(parts) + ". Fix them and call again.")
