"""Token savings end to end: a real gateway in dispatcher mode, two principals with different policy
views, SDK clients doing tools/list and search_tools. The ledger's full/loaded numbers must equal
counts this test computes itself from the catalog's JSON and from what the clients received, and
must be in the store (savings.db, or PostgreSQL's token_savings) after shutdown."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.conftest import database, key_store, make_config, stdio_server
from toolcrib.app import Running, running_gateway
from toolcrib.index.embedder import HashingEmbedder
from toolcrib.observe.savings import SavingsLedger, open_savings_store
from toolcrib.router.dispatcher import DISPATCHER_TOOLS
from toolcrib.tokens import count_tokens

pytestmark = pytest.mark.anyio
ECHO = "tests.servers.echo"


def tokens_of(tool: types.Tool) -> int:
    """Computed here, not by the ledger: the tool's wire JSON (camelCase, unset fields left out)."""
    return count_tokens(tool.model_dump_json(by_alias=True, exclude_none=True))


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


@asynccontextmanager
async def client_as(rt: Running, token: str) -> AsyncIterator[Client]:
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(getattr(message, "root", message), types.ToolListChangedNotification):
            changed.set()

    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(rt.url, http_client=http), mode="legacy", message_handler=on_message) as c,
    ):
        c.changed = changed  # type: ignore[attr-defined]
        yield c


async def test_ledger_matches_independent_counts(tmp_path: Path) -> None:
    servers = {"echo": stdio_server(ECHO), "time": stdio_server(ECHO, env={"FIXTURE_TOOLS_PREFIX": "t_"})}
    policy = {
        "default": "deny",
        "rules": [
            {"id": "bob-time-only", "principals": ["key:bob"], "tools": ["time__*"], "action": "allow"},
            {"id": "alice-all", "principals": ["key:alice"], "action": "allow"},
        ],
    }
    cfg = make_config(servers, tmp_path, policy, mode="dispatcher", auth="keys")
    keys = key_store(cfg)
    tokens = {"alice": keys.add("alice", ["admins"]), "bob": keys.add("bob", ["guests"])}
    expected: dict[str, list[int]] = {"alice": [0, 0, 0], "bob": [0, 0, 0]}  # full, loaded, lists
    async with running_gateway(cfg, connect_wait=20, embedder=HashingEmbedder()) as rt:
        assert rt.reindexer is not None and rt.parts.savings is not None
        await rt.reindexer.sync(set(cfg.enabled_servers))
        catalog = rt.pool.catalog.tools
        full = {
            "alice": sum(tokens_of(e.tool) for e in catalog.values()),
            "bob": sum(tokens_of(e.tool) for k, e in catalog.items() if k.startswith("time__")),
        }
        assert 0 < full["bob"] < full["alice"]
        for who in ("alice", "bob"):
            async with client_as(rt, tokens[who]) as c:
                first = (await c.list_tools()).tools
                assert [t.name for t in first] == ["search_tools", "invoke"]
                found = await c.call_tool("search_tools", {"query": "echo text back", "limit": 2})
                assert not found.is_error
                with anyio.fail_after(10):
                    await c.changed.wait()  # type: ignore[attr-defined]
                second = (await c.list_tools()).tools
                assert len(second) > 2  # the found tools are loaded now
                e = expected[who]
                e[0] += 2 * full[who]
                # the definitions the gateway sent, by the names the client received (the SDK client
                # re-orders schema keys when it parses them, which moves a token or two)
                sent = {t.name: t for t in DISPATCHER_TOOLS} | {k: e.tool for k, e in catalog.items()}
                e[1] += sum(tokens_of(sent[t.name]) for t in [*first, *second]) + count_tokens(text_of(found))
                e[2] += 2
        ledger = rt.parts.savings
        today = ledger.today()
        got = {r.subject: [r.full, r.loaded, r.lists] for r in ledger.by_principal(today, today)}
        assert got == expected
        assert {r.kind for r in ledger.by_principal(today, today)} == {"key"}
        saved = sum(f - lo for f, lo, _ in expected.values())
        assert ledger.saved_today() == saved > 0
    # closed: the last flush reached the store
    reader = SavingsLedger(open_savings_store(cfg, database(cfg), create=False), flush_every=None)
    try:
        day = reader.today()
        rows = reader.days(day - dt.timedelta(days=1), day)
        assert sum(r.saved for r in rows) == saved
        stored = {r.subject: [r.full, r.loaded, r.lists] for r in reader.by_principal(day - dt.timedelta(days=1), day)}
        assert stored == expected
    finally:
        reader.close()
