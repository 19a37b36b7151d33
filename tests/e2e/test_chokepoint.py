"""Issue 8's reproductions: every route behind one guard, every upstream-bound request through one
pipeline, every upstream-to-client message redacted. Each test failed on the main before the fix."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import warnings
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.e2e.conftest import audit_log, embedded_only, key_store, make_config, stdio_server
from tests.e2e.test_http import INIT, JSON_HEADERS
from toolcrib.app import Running, running_gateway

pytestmark = pytest.mark.anyio
ECHO = "tests.servers.echo"
CANARY = "Canary-7f3a9c2e5b1d4086"
ONLY_TIME = [{"id": "bob-time-only", "principals": ["key:bob"], "tools": ["time__*"], "action": "allow"}]


@asynccontextmanager
async def two_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Running, dict[str, str]]]:
    """``echo`` (holding an injected secret) and ``time`` behind keys auth; bob may use only ``time__*``."""
    monkeypatch.setenv("TOOLCRIB_SECRET_ECHO_TOKEN", CANARY)
    servers = {
        "echo": stdio_server(ECHO, env={"ECHO_TOKEN": "secret:echo/token"}),
        "time": stdio_server(ECHO, env={"FIXTURE_TOOLS_PREFIX": "t_"}),
    }
    policy = {"rules": [*ONLY_TIME, {"id": "alice-all", "principals": ["key:alice"], "action": "allow"}]}
    policy["default"] = "deny"
    cfg = make_config(servers, tmp_path, policy, mode="passthrough", auth="keys")
    keys = key_store(cfg)
    tokens = {"alice": keys.add("alice", ["admins"]), "bob": keys.add("bob", ["guests"])}
    async with running_gateway(cfg, connect_wait=20) as rt:
        yield rt, tokens


@asynccontextmanager
async def client_as(rt: Running, token: str, mode: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(rt.url, http_client=http), mode=mode) as c,
    ):
        yield c


@pytest.mark.parametrize("mode", ["legacy", "auto"])  # a 2025-11-25 session, and stateless 2026-07-28
async def test_policy_governs_resources_prompts_completion_and_subscribe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    async with two_servers(tmp_path, monkeypatch) as (rt, tokens), client_as(rt, tokens["bob"], mode) as bob:
        assert all(r.uri.startswith("time+") for r in (await bob.list_resources()).resources)
        assert [p.name for p in (await bob.list_prompts()).prompts] == []  # time's prompt is not a tool
        probes = [
            bob.read_resource("echo+echo://env/ECHO_TOKEN"),
            bob.read_resource("echo+echo://fail/ECHO_TOKEN"),
            bob.get_prompt("echo__greet", {"name": "x"}),
            bob.complete(types.PromptReference(type="ref/prompt", name="echo__greet"), {"name": "name", "value": "a"}),
        ]
        async with AsyncExitStack() as stack:
            if mode == "legacy":
                alice = await stack.enter_async_context(client_as(rt, tokens["alice"], mode))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # resources/subscribe: removed in 2026-07-28, live in 2025-11-25
                    await alice.subscribe_resource("echo+echo://info")
                    probes.append(bob.subscribe_resource("echo+echo://info"))
                    # alice's subscription must not turn bob's unsubscribe into a success (an oracle)
                    probes.append(bob.unsubscribe_resource("echo+echo://info"))
            for probe in probes:
                with pytest.raises(MCPError) as err, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    await probe
                assert CANARY not in str(err.value) and "Unknown" in err.value.error.message
        assert (await bob.call_tool("time__t_echo", {"text": "ok"})).is_error is False
    with audit_log(rt.config) as audit:
        refused = [r for r in audit.query(principal="key:bob", limit=100) if r["outcome"] == "denied"]
    methods = {r["method"] for r in refused}
    assert any(r["target"] == "echo+echo://env/ECHO_TOKEN" for r in refused)
    assert {"resources/read", "prompts/get", "completion/complete"} <= methods
    assert all(r["rule"] == "default" for r in refused)  # the rule that decided, never "hidden"


async def test_redaction_on_resources_errors_and_every_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_servers(tmp_path, monkeypatch) as (rt, tokens), client_as(rt, tokens["alice"], "legacy") as c:
        read = await c.read_resource("echo+echo://env/ECHO_TOKEN")
        assert "[REDACTED]" in read.model_dump_json() and CANARY not in read.model_dump_json()
        with pytest.raises(MCPError) as err:
            await c.read_resource("echo+echo://fail/ECHO_TOKEN")
        assert CANARY not in str(err.value) and "[REDACTED]" in str(err.value)
        variants = [
            CANARY.upper(),
            CANARY.lower(),
            urllib.parse.quote(CANARY, safe="").lower(),
            "\u200b".join(CANARY),
            CANARY[:5] + "\u2060\ufeff" + CANARY[5:],
        ]
        for text in variants:
            out = (await c.call_tool("echo__echo", {"text": f"<{text}>"})).model_dump_json()
            assert json.loads(out)["content"][0]["text"] == "<[REDACTED]>", text


async def test_admin_and_health_are_behind_the_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with two_servers(tmp_path, monkeypatch) as (rt, tokens), aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{rt.port}"
        alice, bob = ({"Authorization": f"Bearer {tokens[n]}"} for n in ("alice", "bob"))
        evil = {**alice, "Host": "attacker.example"}
        for path in ("/admin/audit", "/admin/approvals", "/healthz"):
            async with s.get(base + path, headers=evil) as r:
                assert r.status == 403, path
        form = {**alice, "Content-Type": "text/plain"}
        async with s.post(f"{base}/admin/approvals/x", data=b'{"decision":"approve"}', headers=form) as r:
            assert r.status == 415
        async with s.get(f"{base}/admin/audit", headers=bob) as r:
            assert r.status == 403  # authenticated, not an operator
        async with s.get(f"{base}/healthz") as r:
            assert await r.json() == {"status": "ok"}
        async with s.get(f"{base}/healthz", headers=alice) as r:
            assert set((await r.json())["upstreams"]) == {"echo", "time"}


@embedded_only  # it corrupts keys.json itself
async def test_auth_failures_get_their_status_and_a_generic_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_servers(tmp_path, monkeypatch) as (rt, tokens), aiohttp.ClientSession() as s:
        cases = [
            ({}, rt.url + "?access_token=" + tokens["bob"], 400),
            ({"Authorization": "Basic dXNlcjpwYXNz"}, rt.url, 401),
            ({}, rt.url, 401),
            ({"Authorization": "Bearer tcb_nope"}, rt.url, 401),
        ]
        for headers, url, status in cases:
            async with s.post(url, data=json.dumps(INIT), headers={**JSON_HEADERS, **headers}) as r:
                body = await r.text()
                assert r.status == status, (headers, body)
                assert "keys.json" not in body and str(tmp_path) not in body
        Path(rt.config.auth.keys_path).write_text("{not json")
        async with s.post(
            rt.url, data=json.dumps(INIT), headers={**JSON_HEADERS, "Authorization": "Bearer tcb_x"}
        ) as r:
            body = await r.text()
            assert r.status == 503 and "keys.json" not in body and "Expecting" not in body
    with audit_log(rt.config) as audit:
        auth_rows = [r for r in audit.query(limit=100) if r["kind"] == "auth"]
    assert len(auth_rows) >= 5


async def _raw_post(port: int, head: str, parts: list[bytes], pause: float) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode())
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(pause)
    data = await reader.read(65536)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.decode(errors="replace")


async def test_bodies_arriving_in_pieces_are_read_whole(tmp_path: Path) -> None:
    cfg = make_config({"echo": stdio_server(ECHO)}, tmp_path, {"default": "allow"}, mode="passthrough")
    async with running_gateway(cfg, connect_wait=20) as rt:
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo__echo"}}
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        for size in (10, 200_000):
            call["params"] = {"name": "echo__echo", "arguments": {"text": "x" * size}, "_meta": meta}
            body = json.dumps(call).encode()
            head = (
                f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{rt.port}\r\nContent-Type: application/json\r\n"
                "Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n"
                "Mcp-Method: tools/call\r\nMcp-Name: echo__echo\r\nConnection: close\r\n"
            )
            half = len(body) // 2
            status, text = await _raw_post(
                rt.port, head + f"Content-Length: {len(body)}\r\n\r\n", [body[:half], body[half:]], 0.3
            )
            assert status == 200 and "Parse error" not in text, text[:300]
            chunks = [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:half], body[half:])] + [b"0\r\n\r\n"]
            status, text = await _raw_post(rt.port, head + "Transfer-Encoding: chunked\r\n\r\n", chunks, 0.1)
            assert status == 200 and "Parse error" not in text, text[:300]


async def test_malformed_and_racing_requests_never_500(tmp_path: Path) -> None:
    cfg = make_config({"echo": stdio_server(ECHO)}, tmp_path, {"default": "allow"}, mode="passthrough")
    async with running_gateway(cfg, connect_wait=20) as rt, aiohttp.ClientSession() as s:

        async def post(body: Any, **headers: str) -> tuple[int, str]:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with s.post(rt.url, data=data, headers={**JSON_HEADERS, **headers}) as r:
                return r.status, await r.text()

        async with s.post(rt.url, data=json.dumps(INIT), headers=JSON_HEADERS) as r:
            sid = r.headers["Mcp-Session-Id"]
        session = {"Mcp-Session-Id": sid}
        await post({"jsonrpc": "2.0", "method": "notifications/initialized"}, **session)
        for rid in ({}, [], None, True, 1.5):
            note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}}
            status, _ = await post(note, **session)
            assert status == 202, rid
        for meta in ("abc", [1], 5):  # _meta that is not an object carries no progress token; never a 500
            call = {"jsonrpc": "2.0", "id": 11, "method": "tools/call"}
            call["params"] = {"name": "echo__echo", "arguments": {"text": "x"}, "_meta": meta}
            status, _ = await post(call, **session)
            assert status in (200, 400), meta
        for origin in ("http://[evil", "http://[zz]", "http://evil]", "http://[::1"):
            status, _ = await post({"jsonrpc": "2.0", "id": 12, "method": "ping"}, Origin=origin, **session)
            assert status == 403, origin
        for bad in (b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"x":NaN}}', b"[1e400]", b"[-Infinity]"):
            status, text = await post(bad, **session)
            assert status == 400 and "-32700" in text, bad
        sleep = {
            "jsonrpc": "2.0",
            "id": 9,
            "method": "tools/call",
            "params": {"name": "echo__sleep", "arguments": {"seconds": 2}},
        }
        racing = asyncio.ensure_future(post(sleep, **session))
        await asyncio.sleep(0.5)
        async with s.delete(rt.url, headers=session) as r:
            assert r.status == 204
        status, _ = await racing
        assert status in (200, 404)
        status, _ = await post({"jsonrpc": "2.0", "id": 10, "method": "tools/list"}, **session)
        assert status == 404


async def test_one_principal_cannot_exhaust_sessions(tmp_path: Path) -> None:
    cfg = make_config(
        {"echo": stdio_server(ECHO)}, tmp_path, {"default": "allow"}, mode="passthrough", auth="keys",
        max_sessions=20, max_sessions_per_principal=5,
    )  # fmt: skip
    keys = key_store(cfg)
    greedy, other = keys.add("greedy"), keys.add("other")
    async with running_gateway(cfg, connect_wait=20) as rt, aiohttp.ClientSession() as s:
        for _ in range(30):
            async with s.post(
                rt.url, data=json.dumps(INIT), headers={**JSON_HEADERS, "Authorization": f"Bearer {greedy}"}
            ) as r:
                assert r.status == 200
        assert sum(1 for x in rt.http.sessions.values() if x.peer.principal.subject == "greedy") == 5
        async with s.post(
            rt.url, data=json.dumps(INIT), headers={**JSON_HEADERS, "Authorization": f"Bearer {other}"}
        ) as r:
            assert r.status == 200


async def test_listings_are_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that puts its secret in a tool description (it is upstream-to-client text too)."""
    monkeypatch.setenv("TOOLCRIB_SECRET_ECHO_TOKEN", CANARY)
    env = {"ECHO_TOKEN": "secret:echo/token", "FIXTURE_ECHO_DESCRIPTION": "uses secret:echo/token"}
    cfg = make_config({"echo": stdio_server(ECHO, env=env)}, tmp_path, {"default": "allow"}, mode="passthrough")
    async with running_gateway(cfg, connect_wait=20) as rt, Client(rt.url) as c:
        listed = (await c.list_tools()).model_dump_json()
    assert CANARY not in listed and "uses [REDACTED]" in listed
