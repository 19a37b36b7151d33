"""An upstream that answers -32601 to completion/complete or resources/subscribe (issue 9, item 3):
one warning per server per capability, and later requests of that kind are answered by the gateway
at once, without reaching the upstream again."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.e2e.conftest import GatewayFactory, stdio_server

pytestmark = pytest.mark.anyio


def _warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and needle in r.getMessage()]


async def test_refused_completion_and_subscribe_degrade_once(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    received = tmp_path / "received.log"
    server = stdio_server("tests.servers.no_extras", env={"FIXTURE_LOG": str(received)})
    async with gateway({"extras": server}) as rt, Client(rt.url, mode="legacy") as c:
        assert rt.pool.upstreams["extras"].state.status == "connected"
        (prompt,) = [p.name for p in (await c.list_prompts()).prompts]
        (uri,) = [str(r.uri) for r in (await c.list_resources()).resources]
        ref = types.PromptReference(type="ref/prompt", name=prompt)
        for _ in range(3):
            result = await c.complete(ref, {"name": "name", "value": "a"})
            assert result.completion.values == []  # no suggestions, not an error
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # resources/subscribe: removed in 2026-07-28, live in 2025-11-25
                with pytest.raises(MCPError, match="does not support resource subscriptions") as refused:
                    await c.subscribe_resource(uri)
            assert refused.value.error.code == types.METHOD_NOT_FOUND
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await c.unsubscribe_resource(uri)  # nothing was subscribed: answered at once
        lines = received.read_text().splitlines()
        assert sorted(lines) == ["completion/complete", "resources/subscribe"]  # each reached it once
        assert len(_warnings(caplog, "upstream extras does not support completion/complete (error -32601")) == 1
        assert len(_warnings(caplog, "upstream extras does not support resources/subscribe (error -32601")) == 1
        assert (await c.call_tool("extras__echo", {"text": "still"})).content[0].text == "still"  # type: ignore[union-attr]
        assert rt.pool.upstreams["extras"].state.connects == 1
