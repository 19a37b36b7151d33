"""The Streamable HTTP endpoint's protocol handling, with raw HTTP (aiohttp) against a live gateway."""

from __future__ import annotations

import json
import sys
from typing import Any

import aiohttp
import anyio
import pytest

from tests.e2e.conftest import GatewayFactory

pytestmark = pytest.mark.anyio

TIME = {"time": {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}}
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "1"},
    },
}


async def _post(s: aiohttp.ClientSession, url: str, body: Any, **headers: str) -> tuple[int, dict[str, str], str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with s.post(url, data=data, headers={**JSON_HEADERS, **headers}) as r:
        return r.status, dict(r.headers), await r.text()


async def _init(s: aiohttp.ClientSession, url: str) -> str:
    status, headers, _ = await _post(s, url, INIT)
    assert status == 200
    sid = headers["Mcp-Session-Id"]
    await _post(s, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, **{"Mcp-Session-Id": sid})
    return sid


async def test_session_lifecycle(gateway: GatewayFactory) -> None:
    async with gateway(TIME) as rt, aiohttp.ClientSession() as s:
        sid = await _init(s, rt.url)
        assert len(sid) == 32 and int(sid, 16) >= 0
        status, _, text = await _post(
            s, rt.url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, **{"Mcp-Session-Id": sid}
        )
        assert status == 200
        assert "time__get_current_time" in text
        async with s.delete(rt.url, headers={"Mcp-Session-Id": sid}) as r:
            assert r.status == 204
        status, _, _ = await _post(
            s, rt.url, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, **{"Mcp-Session-Id": sid}
        )
        assert status == 404


async def test_unknown_session_is_404(gateway: GatewayFactory) -> None:
    async with gateway(TIME) as rt, aiohttp.ClientSession() as s:
        status, _, _ = await _post(
            s, rt.url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, **{"Mcp-Session-Id": "f" * 32}
        )
        assert status == 404


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"{not json", -32700), (b"[]", -32600), (b'{"jsonrpc": "1.0", "id": 1}', -32600), (b'"text"', -32600)],
)
async def test_malformed_json_rpc(gateway: GatewayFactory, body: bytes, code: int) -> None:
    async with gateway(TIME) as rt, aiohttp.ClientSession() as s:
        sid = await _init(s, rt.url)
        status, _, text = await _post(s, rt.url, body, **{"Mcp-Session-Id": sid})
        assert status == 400
        assert json.loads(text)["error"]["code"] == code
        # the session's read loop survives
        status, _, text = await _post(
            s, rt.url, {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, **{"Mcp-Session-Id": sid}
        )
        assert status == 200 and "time__" in text


async def test_unknown_method_is_32601(gateway: GatewayFactory) -> None:
    async with gateway(TIME) as rt, aiohttp.ClientSession() as s:
        sid = await _init(s, rt.url)
        _, _, text = await _post(s, rt.url, {"jsonrpc": "2.0", "id": 5, "method": "no/such"}, **{"Mcp-Session-Id": sid})
        assert json.loads(text)["error"]["code"] == -32601


async def test_host_and_origin_checks(gateway: GatewayFactory) -> None:
    async with gateway(TIME) as rt, aiohttp.ClientSession() as s:
        status, _, _ = await _post(s, rt.url, INIT, Host="evil.example")
        assert status == 403
        status, _, _ = await _post(s, rt.url, INIT, Origin="http://evil.example")
        assert status == 403
        status, _, _ = await _post(s, rt.url, INIT, Origin="http://localhost:3000")
        assert status == 200


async def test_body_cap_is_413(gateway: GatewayFactory) -> None:
    async with gateway(TIME, max_body_bytes=4096) as rt, aiohttp.ClientSession() as s:
        big = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * 10_000}}
        status, _, _ = await _post(s, rt.url, big)
        assert status == 413


async def test_get_stream_needs_session_and_accept(gateway: GatewayFactory) -> None:
    async with gateway(TIME) as rt, aiohttp.ClientSession() as s:
        async with s.get(rt.url, headers={"Accept": "application/json"}) as r:
            assert r.status == 406
        async with s.get(rt.url, headers={"Accept": "text/event-stream"}) as r:
            assert r.status == 405


async def test_stateless_modern_request(gateway: GatewayFactory) -> None:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"_meta": meta}}
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}
    async with gateway(TIME) as rt, aiohttp.ClientSession() as s:
        status, resp_headers, text = await _post(s, rt.url, body, **headers)
        assert status == 200
        assert "Mcp-Session-Id" not in resp_headers
        assert "time__convert_time" in text


async def test_healthz(gateway: GatewayFactory) -> None:
    async with gateway(TIME) as rt, aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{rt.port}/healthz") as r:
            data = await r.json()
        assert data["upstreams"]["time"]["status"] == "connected"


async def test_unsupported_protocol_version_header_is_400(gateway: GatewayFactory) -> None:
    async with gateway(TIME) as rt, aiohttp.ClientSession() as s:
        sid = await _init(s, rt.url)
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        status, _, text = await _post(s, rt.url, body, **{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "1999-01-01"})
        assert status == 400 and "1999-01-01" in text
        status, _, _ = await _post(s, rt.url, body, **{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
        assert status == 200


async def test_session_cap(gateway: GatewayFactory) -> None:
    """At the cap the least recently used idle session makes room; when every session is busy, 503."""
    async with gateway(TIME, max_sessions=2) as rt, aiohttp.ClientSession() as s:
        first = await _init(s, rt.url)
        second = await _init(s, rt.url)
        third = await _init(s, rt.url)
        ping = {"jsonrpc": "2.0", "id": 5, "method": "ping"}
        assert (await _post(s, rt.url, ping, **{"Mcp-Session-Id": first}))[0] == 404
        streams = [
            await s.get(rt.url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid})
            for sid in (second, third)
        ]
        try:
            status, _, text = await _post(s, rt.url, INIT)
            assert status == 503 and "max_sessions" in text
        finally:
            for stream in streams:
                stream.close()


async def test_idle_sessions_expire(gateway: GatewayFactory) -> None:
    async with gateway(TIME, session_ttl=0.5) as rt, aiohttp.ClientSession() as s:
        sid = await _init(s, rt.url)
        assert rt.http is not None
        await anyio.sleep(1.0)
        rt.http.table.expire_idle()
        status, _, _ = await _post(
            s, rt.url, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, **{"Mcp-Session-Id": sid}
        )
        assert status == 404
