"""Learning from use through a real gateway: search -> invoke ok -> mine -> a paraphrase ranks the
tool higher; a denied call is never mined; alice's usage never shows bob a tool hidden from him."""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp_types as types
import pytest

from tests.e2e.test_trust import client_as, trusted_gateway

pytestmark = pytest.mark.anyio

QUERY = "tally up my grocery bill"
PARAPHRASE = "please tally the grocery bill"


def _names(result: types.CallToolResult) -> list[str]:
    text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
    return [item["name"] for item in json.loads(text)]


def _score(rt: Any, key: str) -> float:
    hits = rt.reindexer.index.search(PARAPHRASE, limit=10)
    return next((h.score for h in hits if h.key == key), -1.0)


async def test_search_invoke_mine_then_a_paraphrase_ranks_the_tool_higher(tmp_path: Any) -> None:
    async with trusted_gateway(tmp_path, "dispatcher") as (rt, tokens):
        learner = rt.reindexer.learner
        assert learner is not None
        before = _score(rt, "echo__add")
        async with client_as(rt, tokens["bob"]) as bob:  # bob (guests) may not call echo__add
            await bob.call_tool("search_tools", {"query": QUERY, "limit": 10})
            denied = await bob.call_tool("invoke", {"tool": "echo__add", "arguments": {"a": 1, "b": 2}})
            assert denied.is_error
        await rt.parts.writer.flush()
        report = await anyio.to_thread.run_sync(learner.mine)
        assert report.pairs == 0 and report.anchors == 0  # a denied call teaches nothing
        async with client_as(rt, tokens["alice"]) as alice:
            assert "echo__add" in _names(await alice.call_tool("search_tools", {"query": QUERY, "limit": 10}))
            ok = await alice.call_tool("invoke", {"tool": "echo__add", "arguments": {"a": 2, "b": 3}})
            assert not ok.is_error
        for _ in range(50):  # the audit writer appends in the background
            report = await anyio.to_thread.run_sync(learner.mine)
            if report.pairs:
                break
            await anyio.sleep(0.1)
        assert report.pairs == 1 and report.anchors == 1
        after = _score(rt, "echo__add")
        assert after > before
        hit = next(h for h in rt.reindexer.index.search(PARAPHRASE, limit=10, explain=True) if h.key == "echo__add")
        assert hit.parts is not None and hit.parts["usage_term"] > 0
        async with client_as(rt, tokens["bob"]) as bob:  # alice's anchor never shows bob echo__add
            assert "echo__add" not in _names(await bob.call_tool("search_tools", {"query": PARAPHRASE, "limit": 10}))
