"""``Accept`` on ``POST /mcp`` is honoured (issue 9 item 6), with raw HTTP against a live gateway.

JSON only: never SSE, also when the call reports progress (the notifications are dropped, the final
response is JSON). SSE only: SSE, also for a response that is all there is. Neither: 406, one line,
and nothing is started (no session).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import GatewayFactory, stdio_server

pytestmark = pytest.mark.anyio

EVERYTHING = {"ev": stdio_server("tests.servers.everything")}
PROGRESS_TOOL = "ev__test_tool_with_progress"
BOTH = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "accept", "version": "1"}},
}
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


async def _post(
    s: aiohttp.ClientSession, url: str, body: Any, accept: str | None, **headers: str
) -> tuple[int, str, str]:
    """``(status, content type, body text)``; ``accept=None`` sends no Accept header at all."""
    hdrs = {"Content-Type": "application/json", **headers}
    if accept is not None:
        hdrs["Accept"] = accept
    async with s.post(url, data=json.dumps(body).encode(), headers=hdrs, skip_auto_headers=["Accept"]) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]


async def _session(s: aiohttp.ClientSession, url: str) -> dict[str, str]:
    async with s.post(url, json=INIT, headers={"Accept": BOTH}) as r:
        assert r.status == 200
        sid = r.headers["Mcp-Session-Id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with s.post(url, json=note, headers={"Accept": BOTH, "Mcp-Session-Id": sid}) as r:
        assert r.status == 202
    return {"Mcp-Session-Id": sid}


def _progress_call(rid: int, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    params = {"name": PROGRESS_TOOL, "arguments": {}, "_meta": {"progressToken": f"p{rid}", **(meta or {})}}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


async def test_json_only_never_gets_sse_even_with_progress(gateway: GatewayFactory) -> None:
    async with gateway(EVERYTHING) as rt, aiohttp.ClientSession() as s:
        sid = await _session(s, rt.url)
        # control: accepting both, the progress notifications come first, so the answer is SSE
        status, ctype, text = await _post(s, rt.url, _progress_call(2), BOTH, **sid)
        assert status == 200 and ctype.startswith("text/event-stream")
        assert [e.get("method") for e in _events(text)][:1] == ["notifications/progress"]
        for rid, accept in ((3, "application/json"), (4, "application/json, text/event-stream;q=0")):
            status, ctype, text = await _post(s, rt.url, _progress_call(rid), accept, **sid)
            assert status == 200 and ctype.startswith("application/json"), (accept, ctype)
            body = json.loads(text)
            assert body["id"] == rid and "executed successfully" in json.dumps(body["result"])


async def test_json_only_stateless_call_with_progress(gateway: GatewayFactory) -> None:
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": PROGRESS_TOOL}
    async with gateway(EVERYTHING) as rt, aiohttp.ClientSession() as s:
        status, ctype, text = await _post(s, rt.url, _progress_call(5, MODERN_META), "application/json", **headers)
        assert status == 200 and ctype.startswith("application/json"), text
        assert json.loads(text)["id"] == 5


async def test_sse_only_gets_sse_for_a_plain_response(gateway: GatewayFactory) -> None:
    async with gateway(EVERYTHING) as rt, aiohttp.ClientSession() as s:
        status, ctype, text = await _post(s, rt.url, INIT, "text/event-stream")
        assert status == 200 and ctype.startswith("text/event-stream")
        (event,) = _events(text)
        assert event["id"] == 1 and "protocolVersion" in event["result"]
        sid = await _session(s, rt.url)
        status, ctype, text = await _post(
            s, rt.url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, "text/*", **sid
        )
        assert status == 200 and ctype.startswith("text/event-stream")
        assert PROGRESS_TOOL in json.dumps(_events(text)[-1]["result"])


async def test_neither_type_acceptable_is_406_and_starts_nothing(gateway: GatewayFactory) -> None:
    async with gateway(EVERYTHING) as rt, aiohttp.ClientSession() as s:
        for accept in ("text/html", "application/json;q=0, text/event-stream;q=0", "image/*"):
            status, _ctype, text = await _post(s, rt.url, INIT, accept)
            assert status == 406, accept
            assert len(text.strip().splitlines()) == 1 and "Accept: application/json, text/event-stream" in text
        assert not rt.http.sessions
        # no Accept header at all means */*: accepted, answered as JSON
        status, ctype, _ = await _post(s, rt.url, INIT, None)
        assert status == 200 and ctype.startswith("application/json")
        # a notification has no response body: Accept does not matter
        status, _, _ = await _post(s, rt.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, "text/html")
        assert status == 202


async def test_get_stream_accepts_wildcards(gateway: GatewayFactory) -> None:
    async with gateway(EVERYTHING) as rt, aiohttp.ClientSession() as s:
        async with s.get(rt.url, headers={"Accept": "application/json"}) as r:
            assert r.status == 406
        async with s.get(rt.url, headers={"Accept": "*/*"}) as r:
            assert r.status == 405  # acceptable; refused only because there is no session


def _search(rid: int, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": "search_tools", "arguments": {"query": "progress"}}
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


async def test_search_tools_answered_in_place_honours_accept_in_both_eras(gateway: GatewayFactory) -> None:
    """search_tools runs in the request's own task (toolcrib answers it: no upstream), and its answer
    takes the shape Accept asks for, as every other call's does."""
    modern = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "search_tools"}
    async with gateway(EVERYTHING, mode="dispatcher") as rt, aiohttp.ClientSession() as s:
        sid = await _session(s, rt.url)
        for rid, accept, headers, body in (
            (2, "application/json", sid, _search(2)),
            (3, "text/event-stream", sid, _search(3)),
            (4, BOTH, sid, _search(4)),
            (5, "application/json", modern, _search(5, MODERN_META)),
            (6, "text/event-stream", modern, _search(6, MODERN_META)),
        ):
            status, ctype, text = await _post(s, rt.url, body, accept, **headers)
            assert status == 200, text
            answer = _events(text)[-1] if accept == "text/event-stream" else json.loads(text)
            assert ctype.startswith("text/event-stream" if accept == "text/event-stream" else "application/json")
            assert answer["id"] == rid and PROGRESS_TOOL in json.dumps(answer["result"]), (rid, answer)
        assert rt.http.inflight == 0
