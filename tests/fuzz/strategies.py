"""Shared input strategies: JSON values, JSON-RPC-shaped objects, byte-level mutations."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

MCP_METHODS = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/read",
    "resources/subscribe",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "notifications/cancelled",
    "notifications/initialized",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
wrong: st.SearchStrategy[Any] = (
    scalars | st.lists(scalars, max_size=2) | st.dictionaries(st.text(max_size=4), scalars, max_size=2)
)
"""A cheap value of any JSON type, for members that should have another type."""
ids = st.integers() | st.text(max_size=20) | wrong
methods = st.sampled_from(MCP_METHODS) | st.text(max_size=30)

rpc_shaped: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "2.0", "1.0", "", "2"]) | wrong,
        "id": ids,
        "method": methods | wrong,
        "params": st.dictionaries(st.text(max_size=8), json_values, max_size=3) | wrong,
        "result": json_values,
        "error": st.fixed_dictionaries(
            {"code": st.integers() | wrong, "message": st.text(max_size=20) | wrong},
            optional={"data": wrong},
        )
        | wrong,
        "extra": wrong,
    },
)
"""Objects with the JSON-RPC members, each well-typed or not."""

valid_requests: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "id": st.integers(-(2**53), 2**53) | st.text(max_size=20), "method": methods},
    optional={"params": st.dictionaries(st.text(max_size=8), json_values, max_size=3)},
)
"""Well-formed JSON-RPC 2.0 requests (id: integer or string; params: an object)."""


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with a few bytes inserted, deleted or replaced."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.binary(min_size=1, max_size=3))
        if action == "insert" or not data:
            data[pos:pos] = byte
        elif action == "delete":
            del data[max(0, pos - 1) : pos + len(byte)]
        else:
            data[max(0, pos - 1) : max(0, pos - 1) + len(byte)] = byte
    return bytes(data)


nested = st.tuples(st.integers(1, 200_000), st.sampled_from([b"[", b'{"a":'])).map(
    lambda t: t[1] * t[0] + (b"]" if t[1] == b"[" else b"1}") * t[0]
)
"""Deeply nested arrays / objects (the recursion limit is about 1,000)."""

tricky_json = st.sampled_from(
    [
        b"",
        b"NaN",
        b"-Infinity",
        b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":NaN}}',
        b'{"jsonrpc":"2.0","id":1e400,"method":"x"}',
        b'{"jsonrpc":"2.0","id":"\\ud800","method":"\\udfff"}',
        b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"x"}',
        b'{"jsonrpc":"2.0","id":1,"method":"x"}{"jsonrpc":"2.0","id":2,"method":"y"}',
        b'[{"jsonrpc":"2.0","id":1,"method":"x"}]',
        b'{"jsonrpc":"2.0","id":1,"id":2,"method":"x"}',
        b"\xff\xfe{\x00}\x00",
        b"1" * 5000,
        b'"' + b"\\u0000" * 100 + b'"',
    ]
)
