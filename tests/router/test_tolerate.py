"""Property tests of :mod:`toolcrib.router.tolerate`: whatever tolerated form an upstream sends, the
normalised result parses with the SDK's models for the request's revision, and what was sound is kept."""

from __future__ import annotations

from typing import Any

import mcp_types as types
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp_types.methods import validate_server_result

from toolcrib.router.tolerate import KNOWN_BLOCKS, honest_capabilities, tolerate

MODERN = "2026-07-28"
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5))
extras = st.dictionaries(st.text("xyzq", min_size=3, max_size=6), json_leaf, max_size=3)
metas = st.none() | st.dictionaries(st.sampled_from(["example.com/a", "x.org/b"]), json_leaf, max_size=2)
known = st.builds(lambda t, e: {"type": "text", "text": t, **e}, st.text(max_size=5), extras)
unknown = st.builds(
    lambda k, e: {"type": k, **e}, st.text("hologramv", min_size=1).filter(lambda k: k not in KNOWN_BLOCKS), extras
)


@settings(max_examples=300)
@given(
    blocks=st.lists(known | unknown, max_size=6),
    meta=metas,
    top=extras,
    version=st.sampled_from([MODERN, None]),
    is_error=st.none() | st.booleans(),
)
def test_tool_results_always_parse(
    blocks: list[dict[str, Any]], meta: Any, top: dict[str, Any], version: str | None, is_error: bool | None
) -> None:
    raw: dict[str, Any] = {"content": blocks, **top}
    if meta is not None:
        raw["_meta"] = meta
    if is_error is not None:
        raw["isError"] = is_error
    fixed = tolerate("tools/call", version, raw)
    validate_server_result("tools/call", version or "2025-11-25", fixed)
    result = types.CallToolResult.model_validate(fixed)
    assert [c.text for c in result.content if isinstance(c, types.TextContent)] == [
        b["text"] for b in blocks if b["type"] == "text"
    ]
    assert result.meta == meta


@given(method=st.sampled_from(["tools/list", "resources/list", "prompts/list", "resources/templates/list"]), top=extras)
def test_listings_without_hints_parse_at_2026(method: str, top: dict[str, Any]) -> None:
    key = {"tools/list": "tools", "resources/list": "resources", "prompts/list": "prompts"}.get(
        method, "resourceTemplates"
    )
    fixed = tolerate(method, MODERN, {key: [], **top})
    validate_server_result(method, MODERN, fixed)
    assert fixed["resultType"] == "complete" and fixed["ttlMs"] == 0 and fixed["cacheScope"] == "private"


@given(ttl=st.integers(0, 10_000), scope=st.sampled_from(["public", "private"]))
def test_explicit_values_are_kept(ttl: int, scope: str) -> None:
    raw = {"tools": [], "resultType": "complete", "ttlMs": ttl, "cacheScope": scope}
    assert tolerate("tools/list", MODERN, raw) is raw
    pending = {"resultType": "input_required", "inputRequests": {}}
    assert tolerate("tools/call", MODERN, pending) == pending


def test_absent_result_type_named_case() -> None:
    """The reported server: {"content":[{"type":"text","text":"hi"}]} and nothing else, over 2026-07-28."""
    fixed = tolerate("tools/call", MODERN, {"content": [{"type": "text", "text": "hi"}]})
    validate_server_result("tools/call", MODERN, fixed)
    assert fixed["resultType"] == "complete"


@given(
    caps=st.fixed_dictionaries(
        {},
        optional={"roots": st.fixed_dictionaries({}, optional={"listChanged": st.booleans()}), "sampling": st.just({})},
    )
)
def test_honest_capabilities_never_claims_roots_list_changed(caps: dict[str, Any]) -> None:
    init = honest_capabilities({"protocolVersion": "2025-11-25", "capabilities": caps, "clientInfo": {}})
    modern = honest_capabilities({"_meta": {"io.modelcontextprotocol/clientCapabilities": caps}})
    assert init is not None and modern is not None
    for declared in (init["capabilities"], modern["_meta"]["io.modelcontextprotocol/clientCapabilities"]):
        assert "listChanged" not in declared.get("roots", {})
        assert set(declared) == set(caps)


@given(
    params=st.none() | st.fixed_dictionaries({}, optional={"cursor": st.text(max_size=3), "name": st.text(max_size=3)})
)
def test_honest_capabilities_leaves_other_requests_alone(params: dict[str, Any] | None) -> None:
    """The same object back (the write side assigns only a changed one: an absent ``params`` must stay absent)."""
    assert honest_capabilities(params) is params
