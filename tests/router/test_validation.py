"""Argument validation with remote ``$ref`` s: validated locally, never fetched."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.errors import InvalidArguments
from toolcrib.router.validation import local_only, validate_arguments


@pytest.fixture
def listener() -> Any:
    """A real TCP listener on 127.0.0.1: a fetch of a ``$ref`` pointing at it would show up as a connection."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def _accepted_any(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def _schema(port: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "item": {"$ref": f"http://127.0.0.1:{port}/item.json", "description": "remote"},
            "tag": {"$ref": "https://schemas.example.com/tag.json#/$defs/tag"},
            "rel": {"$ref": "other.json"},
            "urn": {"$ref": "urn:example:thing"},
            "count": {"$ref": "#/$defs/count"},
        },
        "required": ["item", "count"],
        "$defs": {"count": {"type": "integer", "minimum": 1}},
    }


def test_remote_refs_accept_anything_local_rules_still_apply(listener: socket.socket) -> None:
    schema = _schema(listener.getsockname()[1])
    validate_arguments("t", schema, {"item": {"any": ["thing"]}, "tag": 3, "rel": None, "urn": "x", "count": 2})
    with pytest.raises(InvalidArguments, match="count"):
        validate_arguments("t", schema, {"item": 1, "count": 0})
    with pytest.raises(InvalidArguments, match="'count' is a required property"):
        validate_arguments("t", schema, {"item": 1})
    assert not _accepted_any(listener)


def test_a_local_ref_to_nowhere_leaves_validation_to_the_server() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    validate_arguments("t", schema, {"a": 1})


def test_ref_shaped_data_is_not_touched() -> None:
    schema = {"type": "object", "properties": {"a": {"const": {"$ref": "https://x"}}}}
    assert local_only(schema) == schema
    validate_arguments("t", schema, {"a": {"$ref": "https://x"}})
    with pytest.raises(InvalidArguments):
        validate_arguments("t", schema, {"a": {}})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["#/a", "https://x/y", "http://z", "rel.json", "s"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["$ref", "type", "properties", "items", "const", "enum", "x"]), children, max_size=4
        )
    ),
    max_leaves=20,
)


def _non_local_refs(value: Any, in_data: bool = False) -> int:
    if isinstance(value, list):
        return sum(_non_local_refs(v, in_data) for v in value)
    if not isinstance(value, dict):
        return 0
    own = int(not in_data and isinstance(value.get("$ref"), str) and not value["$ref"].startswith("#"))
    return own + sum(
        _non_local_refs(v, in_data or k in {"const", "enum", "default", "examples"}) for k, v in value.items()
    )


@settings(max_examples=1000)
@given(schema=JSON)
def test_local_only_removes_exactly_the_non_local_refs(schema: Any) -> None:
    out = local_only(schema)
    assert _non_local_refs(out) == 0
    assert local_only(out) == out
    if _non_local_refs(schema) == 0:
        assert out == schema
