"""A live server's ``instructions`` reach the tool index (issue 14, servers as well as tools).

The ``entries`` fixture names its domain (a calendar) only in the ``instructions`` of its initialize
result; its server name and its tools (``add_entry``, ``list_entries``, ``remove_entry``) never do.
Two real gateways in dispatcher mode (the shipped MiniLM model, the default ranking) serve it beside
the echo fixture (the distractor): one with the instructions, one with the same fixture serving
none (``FIXTURE_NO_INSTRUCTIONS``). Queries naming only the domain go through ``search_tools`` with
the SDK client. Echo's scores are the same in both runs, the entries tools score higher with the
instructions for every query, and for the queries below they move above every echo tool only then.
Both gateways keep their state in one place (one directory, or one PostgreSQL database): the
second opens the index the first stored, as a restarted or second replica does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from tests.e2e.conftest import make_config, stdio_server
from tests.servers.entries import INSTRUCTIONS
from toolcrib.app import running_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: Queries that name only the fixture's domain; with the instructions every entries tool ranks above
#: every echo tool, without them at least one echo tool is among them.
ABOVE = ["what is on my calendar this week", "put the team meeting in my calendar"]
#: The brief's query: with the default ``server_weight`` (0.2) the entries tools rise (ranks 7, 8, 10
#: -> 3, 4, 9 on the shipped model) but echo's ``add_tool`` keeps the top: its description is closer
#: to "schedule" by cosine than the server term adds (issue 14 progress note).
RISES = ["schedule a meeting with Bob on Friday"]
ENTRIES = {"entries__add_entry", "entries__list_entries", "entries__remove_entry"}

Ranking = list[tuple[str, float]]


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def _rankings(tmp_path: Path, *, instructions: bool) -> dict[str, Ranking]:
    """``{query: [(tool, score), ...]}`` best first, as ``search_tools`` answers through a real gateway."""
    entries = stdio_server("tests.servers.entries")
    if not instructions:
        entries["env"] = {"FIXTURE_NO_INSTRUCTIONS": "1"}
    servers: dict[str, Any] = {"entries": entries, "echo": stdio_server("tests.servers.echo")}
    cfg = make_config(servers, tmp_path, mode="dispatcher")
    out = {}
    async with running_gateway(cfg, connect_wait=20) as rt, Client(rt.url) as client:
        assert rt.pool.upstreams["entries"].state.instructions == (INSTRUCTIONS if instructions else None)
        for query in ABOVE + RISES:
            found = await client.call_tool("search_tools", {"query": query, "limit": 20})
            assert not found.is_error, _text(found)
            out[query] = [(item["name"], float(item["score"])) for item in json.loads(_text(found))]
    return out


def _ranks(ranking: Ranking, echo: bool) -> list[int]:
    return [i for i, (name, _) in enumerate(ranking) if name.startswith("echo__") == echo]


async def test_live_instructions_reach_the_index(tmp_path: Path) -> None:
    # One state directory (or, under PostgreSQL storage, one database) for both gateways: the second
    # opens the index the first stored, so the server's dropped instructions must replace its stored
    # server document there (they did not when a server saying nothing counted as "unknown").
    with_ = await _rankings(tmp_path, instructions=True)
    without = await _rankings(tmp_path, instructions=False)
    for query in ABOVE + RISES:
        on, off = dict(with_[query]), dict(without[query])
        assert set(on) == set(off) == ENTRIES | {n for n in on if n.startswith("echo__")}, (on, off)
        for name in on:  # the instructions move the entries tools and nothing else
            if name in ENTRIES:
                assert on[name] > off[name] + 0.01, (query, name, on[name], off[name])
            else:
                assert on[name] == pytest.approx(off[name], abs=1e-4), (query, name)
        assert sum(_ranks(with_[query], echo=False)) < sum(_ranks(without[query], echo=False)), query
    for query in ABOVE:
        assert max(_ranks(with_[query], echo=False)) < min(_ranks(with_[query], echo=True)), with_[query]
        assert max(_ranks(without[query], echo=False)) > min(_ranks(without[query], echo=True)), without[query]
