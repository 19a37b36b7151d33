"""2026-07-28 stateless rules at toolcrib's edge (edge/stateless.py, edge/headers.py), SEP-2549 caching
through the gateway and TTL-driven re-listing of an upstream (router/listing.py), with raw HTTP
against a live gateway in front of real fixture servers over stdio."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import anyio
import pytest

from tests.e2e.conftest import GatewayFactory, stdio_server

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
EVERYTHING = {"everything": stdio_server("tests.servers.everything")}
TTL = {"ttl": stdio_server("tests.servers.ttl_lists")}
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
NAME_KEY = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


async def rpc(
    s: aiohttp.ClientSession,
    url: str,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    meta: dict[str, Any] | None = META,
    headers: dict[str, str] | None = None,
    rid: int = 7,
) -> tuple[int, list[dict[str, Any]]]:
    """POST one request the way a 2026-07-28 client does (or as told); (HTTP status, messages received)."""
    body_params = dict(params or {})
    if meta is not None:
        body_params["_meta"] = meta
    sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    sent |= {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if method in NAME_KEY and NAME_KEY[method] in body_params:
        sent["Mcp-Name"] = str(body_params[NAME_KEY[method]])
    sent |= headers or {}
    body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": body_params}
    async with s.post(url, data=json.dumps(body), headers=sent) as r:
        text = await r.text()
        if r.content_type == "text/event-stream":
            lines = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
            return r.status, [json.loads(line) for line in lines]
        return r.status, [json.loads(text)] if text else []


def error_of(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(messages[-1]["error"])


async def test_removed_methods_meta_and_versions(gateway: GatewayFactory) -> None:
    async with gateway(EVERYTHING, keep_names=True) as rt, aiohttp.ClientSession() as s:
        status, out = await rpc(s, rt.url, "server/discover", meta=None, rid=101)
        assert (status, error_of(out)["code"], out[0]["id"]) == (400, -32602, 101)
        partial = {k: v for k, v in META.items() if not k.endswith("clientCapabilities")}
        status, out = await rpc(s, rt.url, "tools/list", meta=partial)
        assert (status, error_of(out)["code"]) == (400, -32602)

        for method in ("initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"):
            status, out = await rpc(s, rt.url, method, {"uri": "x://y"} if "subscribe" in method else {}, rid=500)
            assert (status, error_of(out)["code"], out[0]["id"]) == (404, -32601, 500), method
            assert "\n" not in error_of(out)["message"]
        status, out = await rpc(s, rt.url, "unknown/method")
        assert (status, error_of(out)["code"]) == (404, -32601)

        v999 = {**META, "io.modelcontextprotocol/protocolVersion": "v999.0.0"}
        status, out = await rpc(s, rt.url, "server/discover", meta=v999, headers={"MCP-Protocol-Version": "v999.0.0"})
        error = error_of(out)
        assert (status, error["code"]) == (400, -32022)
        assert error["data"] == {"supported": [MODERN], "requested": "v999.0.0"}
        status, out = await rpc(s, rt.url, "server/discover")
        assert status == 200 and set(error["data"]["supported"]) <= set(out[0]["result"]["supportedVersions"])

        status, out = await rpc(s, rt.url, "tools/list", headers={"Mcp-Method": "prompts/list"})
        assert (status, error_of(out)["code"]) == (400, -32020)
        status, out = await rpc(s, rt.url, "tools/call", {"name": "test_simple_text"}, headers={"Mcp-Name": "other"})
        assert (status, error_of(out)["code"]) == (400, -32020)

        status, out = await rpc(s, rt.url, "tools/list")
        result = out[-1]["result"]
        assert status == 200 and result["cacheScope"] == "private" and isinstance(result["ttlMs"], int)


async def test_session_path_is_unchanged(gateway: GatewayFactory) -> None:
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
    async with gateway(EVERYTHING, keep_names=True) as rt, aiohttp.ClientSession() as s:
        plain = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}
        async with s.post(rt.url, data=json.dumps(body), headers=plain) as r:
            assert r.status == 200 and len(r.headers["Mcp-Session-Id"]) == 32
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        async with s.post(rt.url, data=json.dumps(body), headers=plain) as r:
            error = (await r.json())["error"]
            assert r.status == 400 and error["code"] == -32600 and "call initialize first" in error["message"]


async def test_mcp_param_headers_checked_against_the_tool_schema(gateway: GatewayFactory) -> None:
    tool = "test_custom_headers"
    async with gateway(EVERYTHING, keep_names=True) as rt, aiohttp.ClientSession() as s:

        async def call(arguments: dict[str, Any], headers: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
            return await rpc(s, rt.url, "tools/call", {"name": tool, "arguments": arguments}, headers=headers)

        args = {"region": "Hello", "priority": 3, "urgent": True}
        good = {"Mcp-Param-Region": "Hello", "Mcp-Param-Priority": "3", "Mcp-Param-Urgent": "true"}
        status, out = await call(args, good)
        assert status == 200 and "result" in out[-1]
        status, out = await call(args, {**good, "Mcp-Param-Region": "=?base64?SGVsbG8=?="})
        assert status == 200 and "result" in out[-1]
        for bad in ("=?base64?SGVsbG8?=", "=?base64?SGVs!!!bG8=?=", "Goodbye"):
            status, out = await call(args, {**good, "Mcp-Param-Region": bad})
            assert (status, error_of(out)["code"]) == (400, -32020), bad
        missing = {k: v for k, v in good.items() if k != "Mcp-Param-Priority"}
        status, out = await call(args, missing)
        assert (status, error_of(out)["code"]) == (400, -32020)


async def test_logs_only_when_the_request_asks(gateway: GatewayFactory) -> None:
    async with gateway(EVERYTHING, keep_names=True) as rt, aiohttp.ClientSession() as s:
        status, out = await rpc(s, rt.url, "tools/call", {"name": "test_logging_tool", "arguments": {}})
        assert status == 200 and "result" in out[-1]
        assert not [m for m in out if m.get("method") == "notifications/message"]
        meta = {**META, "io.modelcontextprotocol/logLevel": "debug"}
        status, out = await rpc(s, rt.url, "tools/call", {"name": "test_logging_tool", "arguments": {}}, meta=meta)
        assert status == 200 and [m for m in out if m.get("method") == "notifications/message"]


async def test_upstream_ttl_drives_relisting_and_results_are_private(gateway: GatewayFactory) -> None:
    async with gateway(TTL, keep_names=True) as rt, aiohttp.ClientSession() as s:

        async def names() -> set[str]:
            _, out = await rpc(s, rt.url, "tools/list")
            return {t["name"] for t in out[-1]["result"]["tools"]}

        async def listings() -> int:
            _, out = await rpc(s, rt.url, "tools/call", {"name": "listings", "arguments": {}})
            return int(out[-1]["result"]["content"][0]["text"])

        first = {n for n in await names() if n.startswith("gen_")}
        started, before = time.monotonic(), await listings()
        with anyio.fail_after(40):
            while {n for n in await names() if n.startswith("gen_")} == first:
                await anyio.sleep(0.5)
        await anyio.sleep(6)
        # ttlMs 1000 asks for a listing every second; toolcrib lists at most every 5 s (+1 in flight)
        elapsed = time.monotonic() - started
        assert (await listings()) - before <= elapsed / 5 + 2

        _, out = await rpc(s, rt.url, "resources/read", {"uri": "ttl://doc"})
        result = out[-1]["result"]
        assert result["ttlMs"] == 60_000 and result["cacheScope"] == "private"  # upstream said public
        _, out = await rpc(s, rt.url, "resources/list")
        assert out[-1]["result"]["cacheScope"] == "private"
