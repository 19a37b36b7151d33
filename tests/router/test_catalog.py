"""Namespacing: no collisions, names valid for strict clients, URIs reversible."""

from __future__ import annotations

import re

import mcp_types as types

from toolcrib.config import ServerConfig
from toolcrib.router.catalog import Catalog

VALID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _tool(name: str) -> types.Tool:
    return types.Tool(name=name, description=f"{name} tool", input_schema={"type": "object"})


def _build(tools: dict[str, list[str]], **kw: object) -> Catalog:
    cfg = ServerConfig(command="x")
    listings = {s: (cfg, [_tool(n) for n in names], []) for s, names in tools.items()}
    return Catalog.build(listings, {}, **kw)  # type: ignore[arg-type]


def test_names_are_namespaced_and_valid() -> None:
    cat = _build({"a": ["read", "weird.name/with spaces", "x" * 100], "b": ["read"]})
    assert {"a__read", "b__read"} <= set(cat.tools)
    assert all(VALID.match(k) for k in cat.tools)
    assert len(cat.tools) == 4
    assert cat.tools["a__weird_name_with_spaces"].name == "weird.name/with spaces"


def test_sanitising_clash_gets_a_hash_suffix() -> None:
    cat = _build({"a": ["do.it", "do_it"]})
    assert len(cat.tools) == 2
    assert {e.name for e in cat.tools.values()} == {"do.it", "do_it"}


def test_include_exclude_globs() -> None:
    cfg = ServerConfig(command="x", include=["get_*"], exclude=["get_secret"])
    cat = Catalog.build({"s": (cfg, [_tool("get_a"), _tool("get_secret"), _tool("put")], [])}, {})
    assert set(cat.tools) == {"s__get_a"}


def test_resource_uris_round_trip() -> None:
    cat = Catalog()
    for uri in ("echo://info", "file:///tmp/x", "relative/path"):
        mapped = cat.resource_uri("srv", uri)
        assert mapped.startswith("srv+")
        assert cat.split_uri(mapped, ["srv"]) == ("srv", uri)
    assert cat.split_uri("other+echo://info", ["srv"]) is None


def test_keep_names() -> None:
    cat = _build({"only": ["read"]}, keep_names=True)
    assert set(cat.tools) == {"read"}
    assert cat.resource_uri("only", "echo://x") == "echo://x"


def test_compact_schema_drops_titles_but_not_a_property_named_title() -> None:
    from toolcrib.router.dispatcher import compact_schema

    schema = {
        "type": "object",
        "title": "Args",
        "properties": {"title": {"type": "string", "title": "Title"}, "n": {"type": "integer", "enum": [{"title": 1}]}},
        "required": ["title"],
    }
    assert compact_schema(schema) == {
        "type": "object",
        "properties": {"title": {"type": "string"}, "n": {"type": "integer", "enum": [{"title": 1}]}},
        "required": ["title"],
    }
