"""The catalog's name sanitiser (``toolcrib.router.catalog``): tool / prompt keys and resource URIs.

Properties: a key is at most 64 characters of ``[A-Za-z0-9_-]`` plus the separator's own characters;
``Catalog.build`` gives every distinct ``(server, tool)`` its own key (no tool is ever shadowed, also
when an upstream names a tool after another one's rewritten key), that key is ``exposed_name(server,
name)`` whatever else is listed, and every entry maps back to its server and upstream name;
``split_uri`` inverts ``resource_uri``.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from hypothesis import strategies as st

from tests.fuzz.engine import Target
from toolcrib.config import SERVER_NAME_RE, ServerConfig
from toolcrib.router.catalog import MAX_NAME, Catalog, exposed_name

separators = st.sampled_from(["__", "_", "-", ".", "--", "__x"]) | st.from_regex(r"[A-Za-z0-9_.-]{1,4}", fullmatch=True)
server_names = st.from_regex(SERVER_NAME_RE, fullmatch=True) | st.sampled_from(["a", "a-b", "srv", "s" * 48])
tool_names = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"[a-z_.\-]{0,70}", fullmatch=True),
    st.sampled_from(["a.b", "a_b", "a b", "a/b", "", "_", "é", "a" * 64, "a" * 65, "a" * 200]),
)


def rewritten(server: str, name: str, sep: str) -> str:
    """The upstream tool name that spells ``name``'s hashed key after the prefix: an adversarial name."""
    return exposed_name(server, name, sep)[len(server) + len(sep) :]


@st.composite
def listings(draw: st.DrawFn) -> tuple[str, dict[str, list[str]]]:
    sep = draw(separators)
    servers = draw(st.lists(server_names.filter(lambda s: sep not in s), min_size=1, max_size=3, unique=True))
    tools: dict[str, list[str]] = {}
    for server in servers:
        names = draw(st.lists(tool_names, max_size=8, unique=True))
        if names and draw(st.booleans()):  # adversarial: a tool named after another's clash key, listed first
            victim = draw(st.sampled_from(names))
            names.insert(0, rewritten(server, victim, sep))
            names.append(victim + ".")
            names = list(dict.fromkeys(names))
        tools[server] = names
    return sep, tools


def check(case: tuple[tuple[str, dict[str, list[str]]], str, str]) -> None:
    (sep, tools), uri, key_name = case
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") | set(sep)
    listing: dict[str, Any] = {
        server: (
            ServerConfig(command="x"),
            [types.Tool(name=n, input_schema={"type": "object"}) for n in names],
            [types.Prompt(name=n) for n in names],
        )
        for server, names in tools.items()
    }
    cat = Catalog.build(listing, {}, separator=sep)
    for kind in (cat.tools, cat.prompts):
        want = {(server, name) for server, names in tools.items() for name in names}
        got = {(entry.server, entry.name) for entry in kind.values()}
        assert got == want, f"shadowed: {sorted(want - got)}"
        for key, entry in kind.items():
            assert 1 <= len(key) <= MAX_NAME and set(key) <= allowed, key
            assert key.startswith(entry.server + sep) or len(entry.server + sep) > MAX_NAME - 9, key
            assert key == exposed_name(entry.server, entry.name, sep), "a key must depend only on (server, name)"
    server = next(iter(tools))
    one = Catalog(sep)
    assert set(one.tool_key(server, key_name)) <= allowed
    assert one.split_uri(one.resource_uri(server, uri), list(tools)) == (server, uri)


TARGET = Target(
    "names",
    st.tuples(
        listings(), st.text(max_size=40) | st.sampled_from(["a:b", ":x", "+", "s+:x", "file:///etc"]), tool_names
    ),
    check,
)
