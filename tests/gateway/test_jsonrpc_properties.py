"""Property tests of the HTTP edge's body parser (:func:`toolcrib.gateway.edge.jsonrpc.parse_message`):
whatever the bytes, the answer is a typed message or a -32700/-32600 refusal, never an exception."""

from __future__ import annotations

import json
import math
from typing import Any

import mcp_types as types
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp_types.jsonrpc import jsonrpc_message_adapter
from pydantic import ValidationError

from toolcrib.gateway.edge.jsonrpc import BadMessage, parse_message

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
IDS = st.integers(min_value=-(2**53), max_value=2**53) | st.text(min_size=1, max_size=12)
METHODS = st.sampled_from(["tools/call", "tools/list", "resources/read", "ping", "initialize", "x/y"])


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_message_or_a_refusal(body: bytes) -> None:
    out = parse_message(body)
    if isinstance(out, BadMessage):
        assert out.code in (types.PARSE_ERROR, types.INVALID_REQUEST) and "\n" not in out.message
    else:
        raw, message = out
        assert isinstance(raw, dict) and message.jsonrpc == "2.0"


@settings(max_examples=1000)
@given(IDS, METHODS, st.dictionaries(st.text(max_size=8), JSON, max_size=4))
def test_valid_requests_round_trip(rid: Any, method: str, params: dict[str, Any]) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode()
    out = parse_message(body)
    assert not isinstance(out, BadMessage), out
    raw, message = out
    assert isinstance(message, types.JSONRPCRequest)
    assert message.id == rid and message.method == method and raw["params"] == params


@settings(max_examples=1000)
@given(JSON, st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"]), st.integers(0, 3))
def test_non_finite_numbers_anywhere_are_a_parse_error(value: Any, constant: str, where: int) -> None:
    doc = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {"v": value}}}
    text = json.dumps(doc)
    spots = [text.index('"v": ') + 5, text.index('"id": ') + 6]
    spot = spots[where % len(spots)]
    end = text.index("}", spot) if where % 2 == 0 else text.index(",", spot)
    body = (text[:spot] + constant + text[end:]).encode()
    out = parse_message(body)
    assert isinstance(out, BadMessage) and out.code == types.PARSE_ERROR, body


@settings(max_examples=1000)
@given(st.lists(JSON, min_size=1, max_size=3))
def test_batches_and_scalars_are_invalid_requests(items: list[Any]) -> None:
    for doc in (items, items[0]):
        if isinstance(doc, dict):
            continue
        out = parse_message(json.dumps(doc).encode())
        assert isinstance(out, BadMessage) and out.code == types.INVALID_REQUEST


def test_finite_floats_still_parse() -> None:
    out = parse_message(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":1.5e300}}')
    assert not isinstance(out, BadMessage) and math.isfinite(out[0]["params"]["x"])


MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0"]),
        "id": st.one_of(IDS, st.sampled_from([None, True, 1.5, [1]])),
        "method": st.one_of(METHODS, st.sampled_from([3, None])),
        "params": st.one_of(st.dictionaries(st.text(max_size=4), JSON, max_size=3), st.sampled_from([None, [1], "p"])),
        "result": st.one_of(st.dictionaries(st.text(max_size=4), JSON, max_size=3), st.sampled_from([None, "r"])),
        "error": st.one_of(
            st.fixed_dictionaries({"code": st.integers(-33000, 0), "message": st.text(max_size=8)}),
            st.sampled_from([None, "e", {"code": "x"}]),
        ),
        "extra": JSON,
    },
)


@settings(max_examples=3000)
@given(MESSAGES)
def test_the_typed_message_is_the_sdk_unions(doc: dict[str, Any]) -> None:
    """Whatever path parse_message takes (a plain request is validated as a request), its message is
    the one the SDK's JSON-RPC union makes of the same object, or both refuse it."""
    out = parse_message(json.dumps(doc).encode())
    try:
        expected = jsonrpc_message_adapter.validate_python(json.loads(json.dumps(doc)))
    except ValidationError:
        assert isinstance(out, BadMessage) and out.code == types.INVALID_REQUEST
        return
    assert not isinstance(out, BadMessage), out
    message = out[1]
    assert type(message) is type(expected) and message.model_dump() == expected.model_dump()
