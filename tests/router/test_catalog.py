"""Namespacing: no collisions, names valid for strict clients, URIs reversible."""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any

import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.config import ServerConfig
from toolcrib.router.catalog import Catalog, exposed_name

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
    assert cat.tools[exposed_name("a", "weird.name/with spaces")].name == "weird.name/with spaces"
    assert exposed_name("a", "weird.name/with spaces").startswith("a__weird_name_with_spaces_")


def test_sanitising_clash_gets_a_hash_suffix() -> None:
    cat = _build({"a": ["do.it", "do_it"]})
    assert len(cat.tools) == 2
    assert {e.name for e in cat.tools.values()} == {"do.it", "do_it"}


def test_a_name_depends_only_on_its_own_server_and_name() -> None:
    """Issue 9 item 7: the sanitised tool keeps its key whichever tools come before it or exist at all."""
    alone = _build({"a": ["do.it"]})
    crowded = _build({"a": ["do_it", "do.it", "do-it"], "b": ["do.it"]})
    reordered = _build({"a": ["do-it", "do.it", "do_it"]})
    key = exposed_name("a", "do.it")
    for cat in (alone, crowded, reordered):
        assert cat.tools[key].name == "do.it"
    assert crowded.tools["a__do_it"].name == "do_it"


def test_renames_are_logged_once_with_the_original_name(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "toolcrib.catalog")
    first = _build({"a": ["do.it", "plain"]})
    lines = [r.getMessage() for r in caplog.records if "do.it" in r.getMessage()]
    assert len(lines) == 1 and exposed_name("a", "do.it") in lines[0], lines
    caplog.clear()
    cfg = ServerConfig(command="x")
    Catalog.build({"a": (cfg, [_tool("do.it"), _tool("plain")], [])}, {}, previous=first)
    assert not [r for r in caplog.records if "do.it" in r.getMessage()], "logged again on a rebuild"


def _hash_collision() -> tuple[str, str]:
    """Two names with the same sanitised form and the same 8-hex suffix (a birthday search, ~100k hashes)."""
    seen: dict[str, str] = {}
    for combo in itertools.product("./!~ ", repeat=10):
        name = "t" + "".join(combo)
        suffix = exposed_name("a", name)[-8:]
        if suffix in seen:
            return seen[suffix], name
        seen[suffix] = name
    raise AssertionError("no collision found")


def test_a_hash_collision_refuses_the_later_name_whatever_the_order(caplog: pytest.LogCaptureFixture) -> None:
    one, two = sorted(_hash_collision())
    assert exposed_name("a", one) == exposed_name("a", two)
    for order in ([one, two], [two, one]):
        caplog.clear()
        cat = _build({"a": order})
        assert [e.name for e in cat.tools.values()] == [one]
        assert any(r.levelno == logging.ERROR and repr(two) in r.getMessage() for r in caplog.records)


@settings(max_examples=1000, deadline=None, database=None)
@given(
    st.sampled_from(["a", "a_", "b-c", "s" * 48]),
    st.text(max_size=70) | st.sampled_from(["_x", "x__y", "do.it", "do_it", "a" * 70]),
    st.lists(st.text(max_size=20) | st.sampled_from(["_x", "do_it", "do.it"]), max_size=6),
    st.randoms(use_true_random=False),
)
def test_property_name_is_independent_of_order_and_other_tools(
    server: str, name: str, others: list[str], rnd: Any
) -> None:
    alone = _build({server: [name]})
    mixed = [name, *others]
    rnd.shuffle(mixed)
    crowded = _build({"a": others, "a_": others, "zz": [name, *others], server: mixed})
    want = exposed_name(server, name)
    assert set(alone.tools) == {want}
    assert crowded.tools[want].name == name and crowded.tools[want].server == server


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
