"""Argument validation against a tool's input schema, before anything is forwarded.

Validators are compiled once per schema (cached by the schema's canonical JSON) and found again by
the schema object itself on the hot path (the catalog hands out the same dict for every call). References are
resolved only inside the schema itself and nothing is ever fetched: the 2026-07-28 specification
says clients must not dereference network ``$ref`` s (server/tools, "Input schema"). What can be
validated locally is; the rest is left to the upstream:

- a ``$ref`` that is not a local JSON pointer (``#...``), e.g. ``https://...``, ``http://...``,
  ``other.json`` or ``urn:...``, accepts anything (its sibling keywords still apply);
- a local ``$ref`` that leads nowhere, or a schema that is not a valid JSON Schema, skips
  validation for that tool (the upstream validates).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jsonschema
import referencing
import referencing.exceptions

from toolcrib.errors import InvalidArguments

log = logging.getLogger("toolcrib.validation")
_REGISTRY: referencing.Registry[Any] = referencing.Registry()  # its default retrieve refuses every URI
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
"""Keywords whose values are instance data, not schemas: a ``"$ref"`` key inside them is data."""


def local_only(schema: Any) -> Any:
    """``schema`` with every non-local ``$ref`` (one not starting with ``#``) removed; other keys kept.

    Shape: JSON in, JSON out (a new object; the input is not modified)."""
    if isinstance(schema, list):
        return [local_only(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
            continue
        out[key] = value if key in _DATA_KEYWORDS else local_only(value)
    return out


@lru_cache(maxsize=4096)
def _validator(schema_json: str) -> Any:
    schema = local_only(json.loads(schema_json))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError:
        return None
    return cls(schema, registry=_REGISTRY, format_checker=None)


_BY_OBJECT: OrderedDict[int, tuple[Mapping[str, Any], Any]] = OrderedDict()
"""``id(schema) -> (schema, validator)``: the entry holds the schema, so its id cannot be reused while cached."""
_BY_OBJECT_MAX = 4096


def _validator_of(schema: Mapping[str, Any]) -> Any:
    entry = _BY_OBJECT.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1]
    validator = _validator(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    _BY_OBJECT[id(schema)] = (schema, validator)
    if len(_BY_OBJECT) > _BY_OBJECT_MAX:
        _BY_OBJECT.popitem(last=False)
    return validator


def validate_arguments(tool: str, schema: Mapping[str, Any] | None, arguments: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidArguments` with a message a model can act on; return on success.

    ``schema`` must not be modified after it was first used here (it is cached by identity)."""
    if not schema:
        return
    validator = _validator_of(schema)
    if validator is None:
        return
    try:
        if validator.is_valid(arguments):
            return
        errors = sorted(validator.iter_errors(dict(arguments)), key=lambda e: list(e.path))
    except referencing.exceptions.Unresolvable as exc:
        log.debug("%s: input schema has an unresolvable $ref (%s); arguments left to the server", tool, exc)
        return
    if errors:
        parts = []
        for err in errors[:5]:
            where = "/".join(str(p) for p in err.path) or "(arguments)"
            parts.append(f"{where}: {err.message}")
        raise InvalidArguments(f"invalid arguments for {tool}: " + "; ".join(parts) + ". Fix them and call again.")
