"""2025-11-25 sessions any replica serves: two gateways on one real PostgreSQL database, raw HTTP.

The replicas run in this process on their own ports (the nginx + 3 processes set-up is
``test_replicas.py``); each has its own upstream children and state files, and shares only the
database, exactly as two machines would.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from tests.e2e.conftest import make_config, stdio_server
from tests.e2e.test_upstream_faults import _free_port, _start_http, _stop
from toolcrib.app import Running, running_gateway
from toolcrib.index.embedder import HashingEmbedder

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.replicas,  # scale-out suites: `make replicas` (and .ci/run), not `make test`
    pytest.mark.skipif(
        os.environ.get("TOOLCRIB_TEST_STORAGE") == "postgresql",
        reason="PostgreSQL-only already: run once, by make test",
    ),
]


@pytest.fixture(autouse=True)
def shared_audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every replica of one database shares the audit key (a secret; here from the environment)."""
    monkeypatch.setenv("TOOLCRIB_SECRET_TOOLCRIB_AUDIT_HMAC", "ab" * 32)


ECHO = "tests.servers.echo"
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "replicas", "version": "1"}},
}


@asynccontextmanager
async def replicas(
    tmp_path: Path, pg_url: str, n: int = 2, servers: dict[str, Any] | None = None, **gateway: Any
) -> AsyncIterator[list[Running]]:
    gateway.setdefault("mode", "dispatcher")
    async with AsyncExitStack() as stack:
        out = []
        for i in range(n):
            cfg = make_config(servers or {"echo": stdio_server(ECHO)}, tmp_path / f"r{i}", **gateway)
            cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"url": pg_url})})
            rt = await stack.enter_async_context(running_gateway(cfg, connect_wait=20, embedder=HashingEmbedder()))
            if rt.reindexer is not None:
                await rt.reindexer.sync({"echo"})
            out.append(rt)
        yield out


async def rpc(s: aiohttp.ClientSession, url: str, body: dict[str, Any], sid: str | None) -> tuple[int, Any]:
    headers = {**HEADERS, **({"Mcp-Session-Id": sid} if sid else {})}
    async with s.post(url, data=json.dumps(body), headers=headers) as r:
        text = await r.text()
        if r.headers.get("Content-Type", "").startswith("text/event-stream"):
            datas = [
                json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()
            ]
            return r.status, next((d for d in datas if "id" in d), datas[-1] if datas else None)
        return r.status, (json.loads(text) if text.strip().startswith("{") else text)


async def loaded_on(s: aiohttp.ClientSession, url: str, sid: str, tool: str) -> None:
    """``tools/list`` of ``sid`` on ``url`` shows ``tool`` within 1 s: the bound for cross-replica
    effects (the other replica re-reads the session when the saving replica's NOTIFY reaches it,
    which is sent before the answer: under load its delivery can trail the client's next request)."""
    names: list[str] = []
    with anyio.fail_after(1):
        while tool not in names:
            status, answer = await rpc(s, url, {"jsonrpc": "2.0", "id": 99, "method": "tools/list"}, sid)
            assert status == 200, answer
            names = [t["name"] for t in answer["result"]["tools"]]
            if tool not in names:
                await anyio.sleep(0.02)


async def first_event_on_get_stream(
    s: aiohttp.ClientSession, url: str, sid: str, opened: anyio.Event, got: list[dict[str, Any]]
) -> None:
    """Hold ``sid``'s GET stream on ``url``: set ``opened`` once it is open, append its first message."""
    async with s.get(url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid}) as r:
        assert r.status == 200
        opened.set()
        async for line in r.content:
            text = line.decode().strip()
            if text.startswith("data:") and text[5:].strip():
                got.append(json.loads(text[5:]))
                return


async def test_a_session_alternating_replicas(tmp_path: Path, pg_url: str) -> None:
    async with replicas(tmp_path, pg_url) as (a, b), aiohttp.ClientSession() as s:
        async with s.post(a.url, data=json.dumps(INIT), headers=HEADERS) as r:
            assert r.status == 200
            sid = r.headers["Mcp-Session-Id"]
        status, _ = await rpc(s, b.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
        assert status == 202
        for i, rt in enumerate([b, a, b, a]):
            status, answer = await rpc(s, rt.url, {"jsonrpc": "2.0", "id": 10 + i, "method": "tools/list"}, sid)
            assert status == 200, answer
            assert [t["name"] for t in answer["result"]["tools"]][:2] == ["search_tools", "invoke"]
        # search_tools on B loads echo__echo into the session; A sees it and can call it by name
        call = {"name": "search_tools", "arguments": {"query": "echo text back", "limit": 2}}
        status, answer = await rpc(s, b.url, {"jsonrpc": "2.0", "id": 20, "method": "tools/call", "params": call}, sid)
        assert status == 200 and not answer["result"].get("isError"), answer
        await loaded_on(s, a.url, sid, "echo__echo")
        by_name = {"name": "echo__echo", "arguments": {"text": "across replicas"}}
        status, answer = await rpc(
            s, a.url, {"jsonrpc": "2.0", "id": 22, "method": "tools/call", "params": by_name}, sid
        )
        assert answer["result"]["content"][0]["text"] == "across replicas"
        # DELETE on A ends it on B too, once B has the NOTIFY (B serves its copy from memory until
        # then: milliseconds; the bound for cross-replica effects is 1 s)
        async with s.delete(a.url, headers={"Mcp-Session-Id": sid}) as r:
            assert r.status == 204
        with anyio.fail_after(1):
            while (await rpc(s, b.url, {"jsonrpc": "2.0", "id": 30, "method": "tools/list"}, sid))[0] != 404:
                await anyio.sleep(0.02)


async def test_tools_a_search_loaded_reach_another_replica_within_the_bound(tmp_path: Path, pg_url: str) -> None:
    """Eight sessions: each search on B loads a tool that A lists within the 1 s bound. The state is
    now saved (and its NOTIFY sent) by the handler that changed it, before the answer exists; it used
    to be saved when the POST ended, after an SSE answer, and CI under load saw A list the old state
    on the client's next request (timing alone cannot pin the order in a test; this pins the bound)."""
    async with replicas(tmp_path, pg_url) as (a, b), aiohttp.ClientSession() as s:
        for _ in range(8):
            async with s.post(a.url, data=json.dumps(INIT), headers=HEADERS) as r:
                sid = r.headers["Mcp-Session-Id"]
            await rpc(s, a.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
            call = {"name": "search_tools", "arguments": {"query": "echo text back", "limit": 1}}
            status, answer = await rpc(
                s, b.url, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}, sid
            )
            assert status == 200 and not answer["result"].get("isError"), answer
            await loaded_on(s, a.url, sid, "echo__echo")


async def test_list_changed_reaches_the_get_stream_held_by_another_replica(tmp_path: Path, pg_url: str) -> None:
    async with replicas(tmp_path, pg_url) as (a, b), aiohttp.ClientSession() as s:
        async with s.post(a.url, data=json.dumps(INIT), headers=HEADERS) as r:
            sid = r.headers["Mcp-Session-Id"]
        await rpc(s, a.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
        got: list[dict[str, Any]] = []
        opened = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(first_event_on_get_stream, s, a.url, sid, opened, got)
            with anyio.fail_after(10):
                await opened.wait()
            call = {"name": "search_tools", "arguments": {"query": "echo text back", "limit": 2}}
            status, answer = await rpc(
                s, b.url, {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": call}, sid
            )
            assert status == 200, answer
            with anyio.fail_after(10):
                while not got:
                    await anyio.sleep(0.05)
        assert got[0]["method"] == "notifications/tools/list_changed"


async def test_an_unknown_session_is_404_on_every_replica(tmp_path: Path, pg_url: str) -> None:
    async with replicas(tmp_path, pg_url) as pair, aiohttp.ClientSession() as s:
        for rt in pair:
            status, _ = await rpc(s, rt.url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, "f" * 32)
            assert status == 404


async def test_an_upstream_list_change_seen_by_one_replica_reaches_sessions_on_another(
    tmp_path: Path, pg_url: str
) -> None:
    """One Streamable HTTP upstream shared by both replicas: a tool added through replica A is
    announced only on A's upstream session; B re-lists on NOTIFY and tells the session whose GET
    stream it holds."""
    port = _free_port()
    upstream = _start_http(port, "--legacy")  # 2025-11-25: list_changed goes only to the calling session
    try:
        servers = {"echo": {"url": f"http://127.0.0.1:{port}/mcp"}}
        async with (
            replicas(tmp_path, pg_url, servers=servers, mode="passthrough") as (a, b),
            aiohttp.ClientSession() as s,
        ):
            async with s.post(b.url, data=json.dumps(INIT), headers=HEADERS) as r:
                sid = r.headers["Mcp-Session-Id"]
            await rpc(s, b.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
            status, answer = await rpc(s, b.url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, sid)
            assert "echo__fresh" not in [t["name"] for t in answer["result"]["tools"]]
            got: list[dict[str, Any]] = []
            opened = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(first_event_on_get_stream, s, b.url, sid, opened, got)
                with anyio.fail_after(10):
                    await opened.wait()
                add = {"name": "echo__add_tool", "arguments": {"name": "fresh"}}
                async with s.post(a.url, data=json.dumps(INIT), headers=HEADERS) as r:
                    other = r.headers["Mcp-Session-Id"]
                await rpc(s, a.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, other)
                status, answer = await rpc(
                    s, a.url, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": add}, other
                )
                assert status == 200 and not answer["result"].get("isError"), answer
                with anyio.fail_after(15):
                    while not got:
                        await anyio.sleep(0.05)
            assert got[0]["method"] == "notifications/tools/list_changed"
            status, answer = await rpc(s, b.url, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, sid)
            assert "echo__fresh" in [t["name"] for t in answer["result"]["tools"]]
    finally:
        _stop(upstream)


async def test_a_stale_copys_loop_ending_late_keeps_the_copy_adopted_after_it(tmp_path: Path, pg_url: str) -> None:
    """B's copy of a session is closed (idle expiry) and a request adopts the id again before the old
    copy's loop has ended: that loop's end must not drop the new copy (it did: by id), which was then
    served by no table, re-adopted on every request and never closed (its stream leaked)."""
    async with replicas(tmp_path, pg_url) as (a, b), aiohttp.ClientSession() as s:
        async with s.post(a.url, data=json.dumps(INIT), headers=HEADERS) as r:
            sid = r.headers["Mcp-Session-Id"]
        await rpc(s, a.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
        assert (await rpc(s, b.url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid))[0] == 200
        old = b.http.sessions[sid]
        old.last_seen -= b.config.gateway.session_ttl + 1
        b.http.table.expire_idle()  # what B's reaper does to an idle copy
        assert sid not in b.http.sessions
        assert (await rpc(s, b.url, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, sid))[0] == 200
        new = b.http.sessions[sid]
        assert new is not old
        b.http.table.drop(old)  # the old copy's loop ending now, late
        assert b.http.sessions.get(sid) is new
        assert (await rpc(s, b.url, {"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, sid))[0] == 200
        assert b.http.sessions.get(sid) is new  # served by that copy, not adopted once more
    assert old.closed.is_set() and new.closed.is_set()  # the replicas' shutdown closed both
