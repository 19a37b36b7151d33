"""``subscriptions/listen`` (SEP-2575) through a real toolcrib in front of the everything fixture (stdio).

Two API-key principals: alice may use everything; bob everything except the fixture's watched
resource. Clients speak 2026-07-28 stateless HTTP; listen streams are read frame by frame off the SSE
answer of their POST. "Nothing arrived" is never waited out: a later event that does arrive on the
same stream proves an earlier one was not sent (events leave in the order they happen).
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.e2e.conftest import ROOT, audit_log, key_store, make_config, serve_process, stdio_server
from toolcrib.app import Running, running_gateway

pytestmark = pytest.mark.anyio

VERSION = "2026-07-28"
TASKS = "io.modelcontextprotocol/tasks"
SUB = "io.modelcontextprotocol/subscriptionId"
WATCHED = "every+test://watched-resource"
UNKNOWN = "ghost+test://watched-resource"  # no such server: unknown to toolcrib
TOOLS_CHANGED, PROMPTS_CHANGED = "notifications/tools/list_changed", "notifications/prompts/list_changed"
UPDATED, ACK = "notifications/resources/updated", "notifications/subscriptions/acknowledged"
POLICY = {
    "default": "deny",
    "rules": [
        {"id": "alice-all", "principals": ["key:alice"], "action": "allow"},
        {"id": "bob-not-watched", "principals": ["key:bob"], "resources": [WATCHED], "action": "deny"},
        {"id": "bob-rest", "principals": ["key:bob"], "action": "allow"},
    ],
}
_ids = itertools.count(100)


def _meta(tasks: bool = False) -> dict[str, Any]:
    caps: dict[str, Any] = {"extensions": {TASKS: {}}} if tasks else {}
    return {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "listen-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": caps,
    }


def _headers(token: str | None, method: str, accept: str = "application/json, text/event-stream") -> dict[str, str]:
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return {**auth, "MCP-Protocol-Version": VERSION, "Mcp-Method": method, "Accept": accept}


async def call(http: httpx.AsyncClient, url: str, token: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One stateless request; its JSON-RPC answer."""
    body = {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": {**params, "_meta": _meta(tasks=True)}}
    headers = _headers(token, method, "application/json")
    name = params.get("name")
    if isinstance(name, str):
        headers["Mcp-Name"] = name
    answer: dict[str, Any] = (await http.post(url, json=body, headers=headers)).json()
    return answer


async def trigger(http: httpx.AsyncClient, url: str, token: str, tool: str) -> None:
    answer = await call(http, url, token, "tools/call", {"name": f"every__{tool}", "arguments": {}})
    assert answer.get("result", {}).get("isError") is not True, answer


class Listen:
    """An open listen stream: ``await next()`` -> the next JSON-RPC frame off its SSE answer."""

    def __init__(self, rid: int, lines: AsyncIterator[str]) -> None:
        self.rid, self._lines = rid, lines

    async def next(self) -> dict[str, Any]:
        with anyio.fail_after(20):
            async for line in self._lines:
                if line.startswith("data:"):
                    frame: dict[str, Any] = json.loads(line[5:])
                    return frame
        raise AssertionError("the listen stream ended")

    async def until(self, method: str) -> list[dict[str, Any]]:
        """Frames up to and including the first ``method`` one."""
        frames = [await self.next()]
        while frames[-1].get("method") != method:
            frames.append(await self.next())
        return frames


@asynccontextmanager
async def listen(
    http: httpx.AsyncClient, url: str, token: str | None, notifications: dict[str, Any], *, tasks: bool = False
) -> AsyncIterator[Listen]:
    rid = next(_ids)
    body = {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "subscriptions/listen",
        "params": {"notifications": notifications, "_meta": _meta(tasks)},
    }
    headers = _headers(token, "subscriptions/listen")
    async with http.stream("POST", url, json=body, headers=headers) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        yield Listen(rid, resp.aiter_lines())


@asynccontextmanager
async def toolcrib(tmp_path: Path, **gateway: Any) -> AsyncIterator[tuple[Running, dict[str, str]]]:
    servers = {"every": stdio_server("tests.servers.everything")}
    cfg = make_config(servers, tmp_path, POLICY, mode="passthrough", auth="keys", **gateway)
    keys = key_store(cfg)
    tokens = {"alice": keys.add("alice", ["admins"]), "bob": keys.add("bob", ["guests"])}
    async with running_gateway(cfg, connect_wait=20) as rt:
        yield rt, tokens


async def test_ack_first_then_list_changes_tagged_and_advertised(tmp_path: Path) -> None:
    async with toolcrib(tmp_path) as (rt, tokens), httpx.AsyncClient(timeout=30) as http:
        alice = tokens["alice"]
        caps = (await call(http, rt.url, alice, "server/discover", {}))["result"]["capabilities"]
        assert caps["tools"]["listChanged"] and caps["prompts"]["listChanged"] and caps["resources"]["listChanged"]
        assert caps["resources"]["subscribe"] is True
        wanted = {"toolsListChanged": True, "promptsListChanged": True}
        async with listen(http, rt.url, alice, wanted) as stream:
            ack = await stream.next()
            assert ack["method"] == ACK and ack["params"]["_meta"][SUB] == stream.rid
            assert ack["params"]["notifications"] == wanted
            await trigger(http, rt.url, alice, "test_trigger_tool_change")
            tools = await stream.until(TOOLS_CHANGED)
            await trigger(http, rt.url, alice, "test_trigger_prompt_change")
            prompts = await stream.until(PROMPTS_CHANGED)
        assert all(frame["params"]["_meta"][SUB] == stream.rid for frame in [*tools, *prompts])


async def test_filter_is_honoured(tmp_path: Path) -> None:
    async with toolcrib(tmp_path) as (rt, tokens), httpx.AsyncClient(timeout=30) as http:
        alice = tokens["alice"]
        async with listen(http, rt.url, alice, {"promptsListChanged": True}) as stream:
            assert (await stream.next())["params"]["notifications"] == {"promptsListChanged": True}
            await trigger(http, rt.url, alice, "test_trigger_tool_change")
            await trigger(http, rt.url, alice, "test_trigger_prompt_change")
            frames = await stream.until(PROMPTS_CHANGED)
        assert [f["method"] for f in frames] == [PROMPTS_CHANGED]  # the tool change came first and was not sent


async def test_resource_update_reaches_only_the_subscribed_reader(tmp_path: Path) -> None:
    async with toolcrib(tmp_path) as (rt, tokens), httpx.AsyncClient(timeout=30) as http:
        alice, bob = tokens["alice"], tokens["bob"]
        both = {"toolsListChanged": True, "resourceSubscriptions": [WATCHED]}
        async with (
            listen(http, rt.url, alice, both) as reader,
            listen(http, rt.url, alice, {"toolsListChanged": True}) as unsubscribed,
            listen(http, rt.url, bob, both) as hidden,
            listen(http, rt.url, bob, {"toolsListChanged": True, "resourceSubscriptions": [UNKNOWN]}) as unknown,
        ):
            assert (await reader.next())["params"]["notifications"] == both
            assert (await unsubscribed.next())["method"] == ACK
            # a resource bob may not read is answered exactly like one that does not exist: left out
            hidden_ack, unknown_ack = (await hidden.next())["params"], (await unknown.next())["params"]
            assert hidden_ack["notifications"] == unknown_ack["notifications"] == {"toolsListChanged": True}
            await trigger(http, rt.url, alice, "test_trigger_resource_update")
            await trigger(http, rt.url, alice, "test_trigger_tool_change")
            got = await reader.until(TOOLS_CHANGED)
            updates = [f for f in got if f["method"] == UPDATED]
            assert [u["params"]["uri"] for u in updates] == [WATCHED] and updates[0]["params"]["_meta"][
                SUB
            ] == reader.rid
            for other in (unsubscribed, hidden, unknown):
                assert [f["method"] for f in await other.until(TOOLS_CHANGED)] == [TOOLS_CHANGED]
    with audit_log(rt.config) as audit:
        rows = audit.query(principal="key:bob", limit=100)
    assert any(r["target"] == WATCHED and r["outcome"] == "denied" for r in rows)  # the refusal is audited
    assert not any(
        r["target"] == WATCHED and r["method"] == "resources/subscribe" and r["outcome"] == "ok" for r in rows
    )


async def test_task_status_reaches_its_owner_under_the_sealed_id(tmp_path: Path) -> None:
    async with toolcrib(tmp_path) as (rt, tokens), httpx.AsyncClient(timeout=30) as http:
        alice, bob = tokens["alice"], tokens["bob"]
        args = {"seconds": 1, "label": "listen"}
        created = await call(http, rt.url, alice, "tools/call", {"name": "every__slow_compute", "arguments": args})
        token = created["result"]["taskId"]
        async with listen(http, rt.url, bob, {"taskIds": [token]}, tasks=True) as foreign:
            assert (await foreign.next())["params"]["notifications"] == {}  # another principal's task: left out
        async with listen(http, rt.url, alice, {"taskIds": [token]}, tasks=True) as stream:
            assert (await stream.next())["params"]["notifications"] == {"taskIds": [token]}
            frames = await stream.until("notifications/tasks")
            while frames[-1]["params"]["status"] != "completed":
                frames += await stream.until("notifications/tasks")
        notes = [f["params"] for f in frames]
        assert notes[0]["status"] == "working" and notes[-1]["result"]["content"][0]["text"].startswith("Computed")
        assert all(n["taskId"] == token and n["_meta"][SUB] == stream.rid for n in notes)
        # without the extension declared, asking for task notifications is -32021 (SEP-2663)
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "subscriptions/listen",
            "params": {"notifications": {"taskIds": [token]}, "_meta": _meta(tasks=False)},
        }
        resp = await http.post(rt.url, json=body, headers=_headers(alice, "subscriptions/listen"))
        assert resp.status_code == 400 and resp.json()["error"]["code"] == -32021


async def test_listen_needs_an_event_stream_accept(tmp_path: Path) -> None:
    async with toolcrib(tmp_path) as (rt, tokens), httpx.AsyncClient(timeout=30) as http:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "subscriptions/listen",
            "params": {"notifications": {}, "_meta": _meta()},
        }
        resp = await http.post(
            rt.url, json=body, headers=_headers(tokens["alice"], "subscriptions/listen", "application/json")
        )
        assert resp.status_code == 406 and "text/event-stream" in resp.text
        resp = await http.post(rt.url, json=body, headers=_headers("not-a-key", "subscriptions/listen"))
        assert resp.status_code == 401  # the same guard as every other request


async def test_stream_ends_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "toolcrib.toml"
    config.write_text(
        f"""
[gateway]
port = 0
mode = "passthrough"
[audit]
path = {json.dumps(str(tmp_path / "audit.db"))}
[servers.every]
command = {json.dumps(sys.executable)}
args = ["-m", "tests.servers.everything"]
cwd = {json.dumps(str(ROOT))}
"""
    )
    with serve_process(config, tmp_path) as proc:
        assert proc.stderr is not None
        line = ""
        with anyio.fail_after(60):
            while "connect clients to" not in line:
                line = await anyio.to_thread.run_sync(proc.stderr.readline)
        url = line.split("connect clients to ", 1)[1].split()[0]
        async with httpx.AsyncClient(timeout=30) as http, listen(http, url, None, {"toolsListChanged": True}) as stream:
            assert (await stream.next())["method"] == ACK
            proc.send_signal(signal.SIGTERM)
            last = await stream.next()
            assert last["id"] == stream.rid and last["result"]["_meta"][SUB] == stream.rid  # the graceful close
        assert await anyio.to_thread.run_sync(lambda: proc.wait(timeout=30)) == 0


async def refused_listen(
    http: httpx.AsyncClient, url: str, token: str, notifications: dict[str, Any]
) -> dict[str, Any]:
    """A listen request expected to be refused: its JSON-RPC error (sent as JSON or as one SSE frame)."""
    body = {"jsonrpc": "2.0", "id": next(_ids), "method": "subscriptions/listen"}
    body["params"] = {"notifications": notifications, "_meta": _meta()}
    resp = await http.post(url, json=body, headers=_headers(token, "subscriptions/listen"))
    lines = [line[5:] for line in resp.text.splitlines() if line.startswith("data:")] or [resp.text]
    frames = [json.loads(line) for line in lines if line.strip()]
    error: dict[str, Any] = frames[-1]["error"]
    return error


async def test_streams_and_what_each_names_are_capped(tmp_path: Path) -> None:
    """One principal cannot hold more listen streams than sessions, nor name more than 100 resources or
    tasks in one: each is a pipeline run, an audit row and an upstream subscription or poller."""
    async with toolcrib(tmp_path, max_sessions_per_principal=2) as (rt, tokens), httpx.AsyncClient(timeout=30) as http:
        alice, bob = tokens["alice"], tokens["bob"]
        many = [f"every+test://static-text#{i}" for i in range(101)]
        error = await refused_listen(http, rt.url, alice, {"resourceSubscriptions": many})
        assert error["code"] == -32602 and "at most 100" in error["message"]
        wanted = {"toolsListChanged": True}
        async with listen(http, rt.url, alice, wanted) as one, listen(http, rt.url, alice, wanted) as two:
            await one.next()
            await two.next()
            error = await refused_listen(http, rt.url, alice, wanted)
            assert error["code"] == -32000 and "max_sessions_per_principal = 2" in error["message"]
            async with listen(http, rt.url, bob, wanted) as other:  # another principal is not affected
                assert (await other.next())["method"] == ACK
