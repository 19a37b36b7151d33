"""Parsing one JSON-RPC 2.0 message from an HTTP body, the way ``/mcp`` accepts it.

The body is strict JSON (RFC 8259, :func:`~toolcrib.gateway.trust.matchers.loads_json`): ``NaN``,
``Infinity``, ``-Infinity``, overflowing literals and strings holding a lone surrogate (which
Python's ``json`` accepts) are refused, so a non-finite number can never reach a policy condition or
an upstream, nor a string without a UTF-8 form any layer behind the edge (each refusal's message
says which, in one line). Exactly one
message object is accepted (JSON-RPC batches were removed from MCP in 2025-06-18). Failures map
to the JSON-RPC codes of the spec: -32700 parse error, -32600 invalid request.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp_types.jsonrpc import jsonrpc_message_adapter
from pydantic import ValidationError

from toolcrib.gateway.trust.matchers import loads_json

_REQUEST_KEYS = frozenset({"jsonrpc", "id", "method", "params"})


@dataclass(frozen=True)
class BadMessage:
    """Why a body is not one acceptable JSON-RPC message: ``code`` (-32700 / -32600) and a one-line message."""

    code: int
    message: str


def parse_message(body: bytes) -> tuple[dict[str, Any], types.JSONRPCMessage] | BadMessage:
    """``(raw object, typed message)`` for a body holding one JSON-RPC 2.0 message, else a :class:`BadMessage`."""
    try:
        raw = loads_json(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return BadMessage(types.PARSE_ERROR, "Parse error: the body is not valid JSON (RFC 8259; no NaN or Infinity)")
    except ValueError as exc:  # loads_json's own refusals: one line each, saying what to send instead
        return BadMessage(types.PARSE_ERROR, f"Parse error: {exc}")
    if not isinstance(raw, dict):
        return BadMessage(types.INVALID_REQUEST, "Invalid Request: send one JSON-RPC 2.0 message object, not a batch")
    if "id" in raw and "method" in raw and raw.keys() <= _REQUEST_KEYS:
        # Only a request's members: a response or error cannot validate (no result / error) and a
        # notification sets fewer fields, so the union's smart mode could only pick the request. It is
        # validated as one, at half the cost; when refused (a null id, say) the union decides as before.
        with contextlib.suppress(ValidationError, ValueError, TypeError, RecursionError):
            return raw, types.JSONRPCRequest.model_validate(raw)
    try:
        message = jsonrpc_message_adapter.validate_python(raw)
    except (ValidationError, ValueError, TypeError, RecursionError):
        return BadMessage(types.INVALID_REQUEST, "Invalid Request: expected one JSON-RPC 2.0 message object")
    return raw, message
