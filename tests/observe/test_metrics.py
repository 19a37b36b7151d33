"""``GET /metrics`` on a real gateway after known traffic: the counters match it exactly (issue 13)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import key_store, make_config, stdio_server
from toolcrib.app import Running, running_gateway
from toolcrib.index.embedder import HashingEmbedder
from toolcrib.observe.savings import utc_day

pytestmark = pytest.mark.anyio

ECHO = "tests.servers.echo"
PROBE = "tests.servers.trace_probe"
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
POLICY = {
    "approval_mode": "pending",
    "rules": [
        {"id": "no-big", "tools": ["echo__big"], "action": "deny"},
        {"id": "no-forbidden", "tools": ["echo__echo"], "when": {"/text": {"regex": "forbidden.*"}}, "action": "deny"},
        {"id": "ask-env", "tools": ["echo__env"], "action": "approve"},
        {"id": "rest", "action": "allow"},
    ],
}


@asynccontextmanager
async def dispatcher(tmp_path: Path, **gateway: Any) -> AsyncIterator[Running]:
    servers = {"echo": stdio_server(ECHO), "probe": stdio_server(PROBE)}
    cfg = make_config(servers, tmp_path, POLICY, mode="dispatcher", **gateway)
    async with running_gateway(cfg, connect_wait=20, embedder=HashingEmbedder()) as rt:
        assert rt.reindexer is not None
        await rt.reindexer.sync(set(cfg.enabled_servers))
        yield rt


class Session:
    """A raw 2025-11-25 Streamable HTTP session: one JSON-RPC request per POST, ids counted."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url, self.sid, self.next_id = http, url, "", 1
        self.headers: dict[str, str] = {}
        """Extra HTTP headers on every later request."""

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            body["params"] = params
        self.next_id += 1
        headers = {**HEADERS, **self.headers, **({"Mcp-Session-Id": self.sid} if self.sid else {})}
        async with self.http.post(self.url, data=json.dumps(body), headers=headers) as r:
            assert r.status == 200, await r.text()
            self.sid = r.headers.get("Mcp-Session-Id", self.sid)
            text = await r.text()
        if r.headers.get("Content-Type", "").startswith("text/event-stream"):
            answers = [
                json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()
            ]
            text = json.dumps(next(a for a in answers if a.get("id") == body["id"]))
        answer: dict[str, Any] = json.loads(text)
        return answer

    async def open(self) -> None:
        init = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "metrics-test", "version": "1"},
        }
        assert "result" in await self.request("initialize", init)
        async with self.http.post(
            self.url,
            data=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            headers={**HEADERS, "Mcp-Session-Id": self.sid},
        ) as r:
            assert r.status == 202

    async def invoke(self, tool: str, **arguments: Any) -> dict[str, Any]:
        answer = await self.request(
            "tools/call", {"name": "invoke", "arguments": {"tool": tool, "arguments": arguments}}
        )
        result: dict[str, Any] = answer["result"]
        return result


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def requests(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[tuple[str, str, str, str], float]:
    """``{(method, server, tool, outcome): count}`` of ``toolcrib_requests_total``."""
    out = {}
    for (name, labels), value in samples.items():
        if name == "toolcrib_requests_total":
            d = dict(labels)
            out[(d["method"], d["server"], d["tool"], d["outcome"])] = value
    return out


async def test_counters_match_the_traffic(tmp_path: Path) -> None:
    async with dispatcher(tmp_path) as rt, aiohttp.ClientSession() as http:
        s = Session(http, rt.url)
        await s.open()
        await s.request("tools/list")
        found = await s.request("tools/call", {"name": "search_tools", "arguments": {"query": "add two numbers"}})
        hits = json.loads(found["result"]["content"][0]["text"])
        for i in range(3):
            assert not (await s.invoke("echo__add", a=i, b=1)).get("isError")
        assert (await s.invoke("echo__echo", text="forbidden words"))["isError"]  # the policy layer's deny
        assert (await s.invoke("echo__big", n_bytes=3))["isError"]  # hidden by policy: refused before the pipeline
        assert (await s.invoke("probe__fail"))["isError"]  # the upstream answers a JSON-RPC error
        assert (await s.invoke("echo__env", name="HOME"))["isError"]  # needs approval (pending mode)
        assert rt.parts.telemetry is not None

        async with http.get(rt.url.replace("/mcp", "/metrics")) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == CONTENT_TYPE_LATEST
            text = await r.text()
        assert rt.parts.savings is not None
        (today,) = rt.parts.savings.days(utc_day(time.time()), utc_day(time.time()))

    samples = scrape(text)
    assert requests(samples) == {
        ("initialize", "", "", "ok"): 1,
        ("tools/list", "", "", "ok"): 1,
        ("tools/call", "", "search_tools", "ok"): 1,
        ("tools/call", "echo", "echo__add", "ok"): 3,
        ("tools/call", "echo", "echo__echo", "denied"): 1,
        ("tools/call", "echo", "echo__big", "denied"): 1,
        ("tools/call", "probe", "probe__fail", "protocol_error"): 1,
        ("tools/call", "echo", "echo__env", "pending"): 1,
    }
    count = {name: v for (name, labels), v in samples.items() if not labels}
    by_method = {
        dict(labels)["method"]: v
        for (name, labels), v in samples.items()
        if name == "toolcrib_request_duration_seconds_count"
    }
    assert by_method == {"initialize": 1, "tools/list": 1, "tools/call": 8}
    assert count["toolcrib_search_duration_seconds_count"] == 1
    assert count["toolcrib_search_results_count"] == 1
    assert count["toolcrib_search_results_sum"] == len(hits) > 0
    assert count["toolcrib_approval_wait_seconds_count"] == 1
    assert count["toolcrib_approvals_pending"] == 1
    assert count["toolcrib_sessions"] == 1
    assert count["toolcrib_tool_tokens_full_total"] == today.full > 0  # the ledger's records, exactly
    assert count["toolcrib_tool_tokens_loaded_total"] == today.loaded > 0
    assert count["toolcrib_audit_write_duration_seconds_count"] >= 1
    assert "toolcrib_audit_queue_depth" in count
    up = {dict(labels)["server"]: v for (name, labels), v in samples.items() if name == "toolcrib_upstream_up"}
    assert up == {"echo": 1, "probe": 1}
    restarts = {
        dict(labels)["server"]: v for (name, labels), v in samples.items() if name == "toolcrib_upstream_restarts_total"
    }
    assert restarts == {}


async def test_restart_and_down_are_counted(tmp_path: Path) -> None:
    """An upstream that crashes mid-call: the call is upstream_crash, its return is one restart, up is 1 again."""
    async with dispatcher(tmp_path) as rt, aiohttp.ClientSession() as http:
        s = Session(http, rt.url)
        await s.open()
        crashed = await s.invoke("echo__crash")
        assert crashed["isError"]
        restarted = ("toolcrib_upstream_restarts_total", (("server", "echo"),))
        with anyio.fail_after(30):  # the supervisor restarts it; listeners hear "connected" right after
            while True:
                async with http.get(rt.url.replace("/mcp", "/metrics")) as r:
                    samples = scrape(await r.text())
                if restarted in samples:
                    break
                await anyio.sleep(0.1)
    assert requests(samples)[("tools/call", "echo", "echo__crash", "upstream_crash")] == 1
    assert samples[restarted] == 1
    assert samples[("toolcrib_upstream_up", (("server", "echo"),))] == 1


async def test_metrics_is_for_operators_only(tmp_path: Path) -> None:
    cfg = make_config({"echo": stdio_server(ECHO)}, tmp_path, mode="passthrough", auth="keys")
    keys = key_store(cfg)
    guest, admin = keys.add("guest", ["guests"]), keys.add("root", ["admins"])
    async with running_gateway(cfg, connect_wait=20) as rt, aiohttp.ClientSession() as http:
        url = rt.url.replace("/mcp", "/metrics")
        async with http.get(url) as r:
            assert r.status == 401
        async with http.get(url, headers={"Authorization": f"Bearer {guest}"}) as r:
            assert r.status == 403
        async with http.get(url, headers={"Authorization": f"Bearer {admin}"}) as r:
            assert r.status == 200
            assert "toolcrib_upstream_up" in await r.text()


async def test_two_gateways_keep_their_own_registries(tmp_path: Path) -> None:
    one = make_config({"echo": stdio_server(ECHO)}, tmp_path / "one", mode="passthrough")
    two = make_config({"echo": stdio_server(ECHO)}, tmp_path / "two", mode="passthrough")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    async with (
        running_gateway(one, connect_wait=20) as a,
        running_gateway(two, connect_wait=20) as b,
        aiohttp.ClientSession() as http,
    ):
        s = Session(http, a.url)
        await s.open()
        async with http.get(a.url.replace("/mcp", "/metrics")) as r:
            first = requests(scrape(await r.text()))
        async with http.get(b.url.replace("/mcp", "/metrics")) as r:
            second = requests(scrape(await r.text()))
    assert first == {("initialize", "", "", "ok"): 1}
    assert second == {}
