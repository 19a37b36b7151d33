"""The HTTP edge's JSON-RPC body parsing: any bytes give a message or a documented refusal, never a crash.

Under test: ``toolcrib.gateway.edge.jsonrpc.parse_message`` (what ``/mcp`` does with a body), which
returns ``(raw, message)`` or a ``BadMessage`` (-32700 / -32600) and documents that it raises nothing.
Properties: nothing escapes; a well-formed JSON-RPC 2.0 request parses to a request with the same id
and method; a body with a non-finite number (``NaN``, ``Infinity``, ``1e400``) is never accepted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import mcp_types as types
from hypothesis import strategies as st

from tests.fuzz.engine import Target
from tests.fuzz.strategies import dumps, json_values, mutated, nested, rpc_shaped, tricky_json, valid_requests
from toolcrib.gateway.edge.jsonrpc import parse_message

Parser = tuple[Callable[[bytes], Any], tuple[type[BaseException], ...]]
# The parser under test and the exceptions it documents (one line to point the target elsewhere).
BODY_PARSER: Parser = (parse_message, ())


def _message(result: Any) -> Any:
    """The typed message in a parser's result, or None for a refusal returned as a value."""
    if isinstance(result, tuple) and len(result) == 2:
        result = result[1]
    typed = types.JSONRPCRequest | types.JSONRPCNotification | types.JSONRPCResponse | types.JSONRPCError
    return result if isinstance(result, typed) else None


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


def check(case: tuple[bytes, dict[str, Any] | None]) -> None:
    body, request = case
    parse, allowed = BODY_PARSER
    try:
        result = parse(body)
    except allowed:
        result = None
    message = _message(result)
    if message is not None and BODY_PARSER[0] is parse_message:
        assert not _non_finite(json.loads(body)), f"a non-finite number was accepted: {body[:200]!r}"
    if request is not None:
        assert isinstance(message, types.JSONRPCRequest), f"a well-formed request was refused: {body[:200]!r}"
        assert (message.id, message.method) == (request["id"], request["method"])


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(dumps),
    rpc_shaped.map(dumps),
    mutated(rpc_shaped.map(dumps)),
    mutated(valid_requests.map(dumps)),
    nested,
    tricky_json,
    st.tuples(valid_requests, st.sampled_from([math.nan, math.inf, -math.inf, 1e308])).map(
        lambda t: dumps({**t[0], "params": {"n": t[1]}}).replace(b"1e+308", b"1e400")
    ),
)

TARGET = Target(
    "body",
    st.one_of(st.tuples(bodies, st.none()), valid_requests.map(lambda r: (dumps(r), r))),
    check,
)
