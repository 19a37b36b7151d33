"""A stateless (2026-07-28) client that calls a found tool by name is told to use ``invoke`` (issue 9 item 18).

Stateless requests have no session to load found tools into, so in dispatcher mode a by-name call of
a tool the principal may use gets an error that names the exact ``invoke`` call (only then: a name
that is unknown or hidden by policy gets the plain "Unknown tool" and reveals nothing).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from tests.e2e.conftest import stdio_server
from tests.e2e.test_dispatcher import ECHO, _text, dispatcher

pytestmark = pytest.mark.anyio


async def test_stateless_by_name_call_gets_an_invoke_hint(tmp_path: Path) -> None:
    async with dispatcher(tmp_path, {"echo": stdio_server(ECHO)}) as rt, Client(rt.url) as c:
        found = json.loads(_text(await c.call_tool("search_tools", {"query": "echo text back", "limit": 3})))
        assert "echo__echo" in [item["name"] for item in found]
        with pytest.raises(Exception, match=r'Unknown tool: echo__echo; .*invoke.*"tool": "echo__echo"') as err:
            await c.call_tool("echo__echo", {"text": "x"})
        assert "\n" not in str(err.value)
        with pytest.raises(Exception, match="Unknown tool: echo__nope") as err:
            await c.call_tool("echo__nope", {})
        assert "invoke" not in str(err.value)
        result = await c.call_tool("invoke", {"tool": "echo__echo", "arguments": {"text": "via invoke"}})
        assert _text(result) == "via invoke"
