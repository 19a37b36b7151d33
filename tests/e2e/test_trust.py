"""The trust layer end to end: identity, a policy matrix over every path, approvals, canary secrets, audit."""

from __future__ import annotations

import base64
import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.conftest import (
    ROOT,
    approval_store,
    audit_log,
    database,
    key_store,
    make_config,
    stdio_server,
    stored_audit,
)
from toolcrib.app import Running, running_gateway
from toolcrib.index.embedder import HashingEmbedder

pytestmark = pytest.mark.anyio

ECHO = "tests.servers.echo"
CANARY = "canary-7f3a9c2e5b1d4086"
RULES = [
    {"id": "guests-no-add", "tools": ["echo__add"], "groups": ["guests"], "action": "deny"},
    {"id": "no-rm", "tools": ["echo__echo"], "when": {"/text": {"regex": "rm .*"}}, "action": "deny"},
    {"id": "sleep-needs-approval", "tools": ["echo__sleep"], "action": "approve"},
]


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


@asynccontextmanager
async def trusted_gateway(
    tmp_path: Path, mode: str, servers: dict[str, Any] | None = None, **policy: Any
) -> AsyncIterator[tuple[Running, dict[str, str]]]:
    policy = {"rules": RULES, "default": "allow", "approval_mode": "pending", **policy}
    cfg = make_config(servers or {"echo": stdio_server(ECHO)}, tmp_path, policy, mode=mode, auth="keys")
    keys = key_store(cfg)
    tokens = {"alice": keys.add("alice", ["admins"]), "bob": keys.add("bob", ["guests"])}
    async with running_gateway(cfg, connect_wait=20, embedder=HashingEmbedder()) as rt:
        if rt.reindexer is not None:
            await rt.reindexer.sync(set(cfg.enabled_servers))
        yield rt, tokens


@asynccontextmanager
async def client_as(rt: Running, token: str, mode: str = "auto") -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(rt.url, http_client=http), mode=mode) as c,
    ):
        yield c


async def test_requests_without_a_valid_key_are_refused(tmp_path: Path) -> None:
    async with trusted_gateway(tmp_path, "passthrough") as (rt, tokens), aiohttp.ClientSession() as s:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        for auth in (None, "Bearer nope", f"Bearer {tokens['alice']}x", "Basic abc"):
            h = dict(headers, **({"Authorization": auth} if auth else {}))
            async with s.post(rt.url, data=body, headers=h) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with s.post(f"{rt.url}?access_token={tokens['alice']}", data=body, headers=headers) as r:
            assert r.status in (400, 401)


async def test_revoked_key_stops_a_live_session(tmp_path: Path) -> None:
    async with (
        trusted_gateway(tmp_path, "passthrough") as (rt, tokens),
        client_as(rt, tokens["bob"], mode="legacy") as c,
    ):
        assert (await c.list_tools()).tools
        key_store(rt.config).revoke("bob")
        # embedded: refused at the next request; PostgreSQL: once the NOTIFY arrives (the bound: 1 s)
        with anyio.fail_after(1), pytest.raises(Exception):  # noqa: B017 - the 401 surfaces as several errors
            while True:
                await c.list_tools()
                await anyio.sleep(0.02)


@pytest.mark.parametrize("mode", ["passthrough", "dispatcher"])
async def test_policy_matrix_every_path(tmp_path: Path, mode: str) -> None:
    """bob (guests) never reaches echo__add by any path, nor sees it; alice does."""
    async with trusted_gateway(tmp_path, mode) as (rt, tokens):
        for who, may_add in (("alice", True), ("bob", False)):
            async with client_as(rt, tokens[who], mode="legacy") as c:
                listed = {t.name for t in (await c.list_tools()).tools}
                if mode == "passthrough":
                    assert ("echo__add" in listed) is may_add
                    paths = [("echo__add", {"a": 1, "b": 2})]
                else:
                    found = await c.call_tool("search_tools", {"query": "add two numbers a b", "limit": 10})
                    names = [i["name"] for i in json.loads(_text(found))]
                    assert ("echo__add" in names) is may_add
                    paths = [("invoke", {"tool": "echo__add", "arguments": {"a": 1, "b": 2}})]
                    if may_add:  # loaded into the session by the search: callable by name too
                        paths.append(("echo__add", {"a": 1, "b": 2}))
                for name, args in paths:
                    try:
                        result = await c.call_tool(name, args)
                    except Exception as exc:  # an unknown tool is a protocol error in passthrough
                        assert not may_add, exc
                        continue
                    assert (not result.is_error) is may_add, _text(result)
                    if may_add:
                        assert "3" in _text(result)
                    else:
                        assert "3" not in _text(result)
                # argument conditions apply to everyone, on every path
                call = ("echo__echo", {"text": "rm -rf /"})
                if mode == "dispatcher":
                    call = ("invoke", {"tool": "echo__echo", "arguments": {"text": "rm -rf /"}})
                denied = await c.call_tool(*call)
                assert denied.is_error and "no-rm" in _text(denied)
        rows = audit_log(rt.config).query(limit=1000)
        outcomes = [r for r in rows if r["kind"] in ("outcome", "call")]
        # refused as unknown, recorded with the rule that decided (never a placeholder such as "hidden")
        hidden = [r for r in outcomes if r["rule"] == "guests-no-add" and r["principal"] == "key:bob"]
        assert hidden and all(r["tool"] == "echo__add" and r["outcome"] == "denied" for r in hidden)
        assert any(r["rule"] == "no-rm" for r in outcomes)


async def test_stdio_mode_runs_the_same_policy(tmp_path: Path) -> None:
    cfg = tmp_path / "toolcrib.toml"
    cfg.write_text(
        f"""
[gateway]
mode = "passthrough"
[[policy.rules]]
id = "no-add"
tools = ["echo__add"]
action = "deny"
[servers.echo]
command = "{sys.executable}"
args = ["-m", "{ECHO}"]
cwd = "{ROOT}"
"""
    )
    params = StdioServerParameters(
        command=str(Path(sys.executable).with_name("toolcrib")),
        args=["--config", str(cfg), "serve", "--stdio"],
        cwd=str(tmp_path),
    )
    async with Client(params) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "echo__echo" in names and "echo__add" not in names
        with pytest.raises(Exception, match="Unknown tool"):
            await c.call_tool("echo__add", {"a": 1, "b": 2})


async def test_approval_bound_to_exact_arguments(tmp_path: Path) -> None:
    async with trusted_gateway(tmp_path, "passthrough") as (rt, tokens), client_as(rt, tokens["alice"]) as c:
        first = await c.call_tool("echo__sleep", {"seconds": 0.01})
        assert first.is_error and "needs an operator's approval" in _text(first)
        approval_id = _text(first).split("(id ", 1)[1].split(",", 1)[0]
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{rt.port}/admin/approvals/{approval_id}"
            async with s.post(
                url, json={"decision": "approve"}, headers={"Authorization": f"Bearer {tokens['bob']}"}
            ) as r:
                assert r.status == 403  # a guest cannot approve
            async with s.post(
                url, json={"decision": "approve"}, headers={"Authorization": f"Bearer {tokens['alice']}"}
            ) as r:
                assert r.status == 200
        replay = await c.call_tool("echo__sleep", {"seconds": 0.02})
        assert replay.is_error and "approval" in _text(replay)  # different arguments: not covered
        ok = await c.call_tool("echo__sleep", {"seconds": 0.01})
        assert not ok.is_error
        again = await c.call_tool("echo__sleep", {"seconds": 0.01})
        assert again.is_error  # single use
        store = approval_store(rt.config)
        assert store.get(approval_id).status == "used"
        store.close()


async def test_canary_secrets_never_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLCRIB_SECRET_ECHO_TOKEN", CANARY)
    servers = {
        "echo": stdio_server(ECHO, env={"ECHO_TOKEN": "secret:echo/token"}),
        "other": stdio_server(ECHO, env={"FIXTURE_TOOLS_PREFIX": "p_"}),
    }
    b64 = base64.b64encode(CANARY.encode()).decode()
    async with trusted_gateway(tmp_path, "passthrough", servers) as (rt, tokens), client_as(rt, tokens["alice"]) as c:
        seen = [
            await c.call_tool("echo__env", {"name": "ECHO_TOKEN"}),
            await c.call_tool("echo__echo", {"text": f"raw {CANARY} b64 {b64} hex {CANARY.encode().hex()}"}),
            await c.call_tool("other__p_env", {"name": "ECHO_TOKEN"}),
            await c.call_tool("other__p_env", {"name": "TOOLCRIB_SECRET_ECHO_TOKEN"}),
        ]
        blob = json.dumps([r.model_dump(mode="json") for r in seen])
        assert "[REDACTED]" in _text(seen[0])
        assert _text(seen[2]) == "<unset>" and _text(seen[3]) == "<unset>"  # server B never gets A's secret
        assert CANARY not in blob and b64 not in blob and CANARY.encode().hex() not in blob
    data = stored_audit(rt.config)
    assert CANARY.encode() not in data and b64.encode() not in data
    assert tokens["alice"] not in data.decode("latin-1")


async def test_audit_has_one_completed_row_for_every_call(tmp_path: Path) -> None:
    async with trusted_gateway(tmp_path, "dispatcher") as (rt, tokens), client_as(rt, tokens["alice"]) as c:
        await c.call_tool("search_tools", {"query": "echo text"})
        await c.call_tool("invoke", {"tool": "echo__echo", "arguments": {"text": "hi"}})
        await c.call_tool("invoke", {"tool": "echo__add", "arguments": {"a": 1}})
    log = keyed_audit_log(rt.config)
    rows = log.query(limit=100)
    search = [r for r in rows if r["kind"] == "search"]
    assert search and search[0]["query"] == "echo text" and "echo__echo" in search[0]["results"]
    assert search[0]["method"] == "tools/call:direct"  # the client called search_tools by its name
    calls = [r for r in rows if r["kind"] == "call"]
    assert sorted(r["method"] for r in calls) == ["tools/call:invoke", "tools/call:invoke"]
    assert not [r for r in rows if r["kind"] in ("attempt", "outcome")]
    assert len(calls) == 2 and all(r["completed"] is not None and r["seal"] for r in calls)
    assert sorted(r["outcome"] for r in calls) == ["ok", "tool_error"]
    assert all(r["principal"] == "key:alice" and r["tool_hash"] and r["decision"] == "allow" for r in calls)
    assert log.verify().ok
    if (pg := database(rt.config)) is None:
        with sqlite3.connect(rt.config.audit.path) as db:
            db.execute("DROP TRIGGER events_complete_only")
            db.execute("UPDATE events SET outcome = 'ok' WHERE kind = 'call' AND outcome = 'tool_error'")
    else:  # the same tampering in the shared database, by someone able to lift its guard
        with pg.transaction() as conn:
            conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
            conn.execute("UPDATE audit_events SET outcome = 'ok' WHERE kind = 'call' AND outcome = 'tool_error'")
    problems = keyed_audit_log(rt.config).verify().problems
    assert len(problems) == 1 and "the seal of its completion is wrong" in problems[0]


def keyed_audit_log(cfg: Any) -> Any:
    """The audit log with its key (the .key file beside the SQLite log, or the shared secret): a
    completion's seal is checked only with the key."""
    from toolcrib.gateway.audit.backends import audit_key, open_audit_log
    from toolcrib.gateway.trust.secrets import ChainStore

    db = database(cfg)
    key = audit_key(cfg, db, ChainStore(cfg.secrets.file), create=False)
    return open_audit_log(cfg, db, hmac_key=key, create=False)


async def test_held_call_waits_for_the_operator(tmp_path: Path) -> None:
    async with (
        trusted_gateway(tmp_path, "passthrough", approval_mode="hold", approval_timeout=20) as (rt, tokens),
        client_as(rt, tokens["alice"]) as c,
    ):
        results: list[types.CallToolResult] = []

        async def call() -> None:
            results.append(await c.call_tool("echo__sleep", {"seconds": 0.01}))

        store = approval_store(rt.config)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                with anyio.fail_after(10):
                    while not store.list("pending"):
                        await anyio.sleep(0.05)
                assert not results  # held, not answered
                pending = store.list("pending")[0]
                assert pending.tool == "echo__sleep" and pending.principal == "key:alice"
                store.approve(pending.id, "operator:test")
            assert not results[0].is_error and "slept" in _text(results[0])
            assert store.get(pending.id).status == "used"
        finally:
            store.close()
