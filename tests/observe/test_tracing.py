"""OpenTelemetry traces of a real gateway, exported over OTLP/HTTP to an in-process collector (issue 13).

The collector is an aiohttp server on 127.0.0.1 decoding ``ExportTraceServiceRequest`` protobufs;
the upstream is :mod:`tests.servers.trace_probe`, which answers with the ``params._meta`` it received,
so the test sees the ``traceparent`` toolcrib sent upstream (toolcrib's own ``tools/call`` framing,
router/wire.py, and the SDK client's ``prompts/get``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.e2e.conftest import make_config, stdio_server
from tests.observe.test_metrics import POLICY, Session
from toolcrib.app import Running, running_gateway
from toolcrib.config import Config, TelemetryConfig
from toolcrib.index.embedder import HashingEmbedder

pytestmark = pytest.mark.anyio

ECHO = "tests.servers.echo"
PROBE = "tests.servers.trace_probe"
SERVER, CLIENT, INTERNAL = 2, 3, 1  # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_ERROR = 2


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    error: bool
    service: str


@dataclass
class Collector:
    url: str = ""
    spans: list[Span] = field(default_factory=list)
    posts: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> Span:
        found = self.named(name)
        assert len(found) == 1, (name, [s.name for s in self.spans])
        return found[0]

    def children(self, parent: Span) -> list[Span]:
        return [s for s in self.spans if s.parent == parent.span_id and s.trace_id == parent.trace_id]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@asynccontextmanager
async def collector() -> AsyncIterator[Collector]:
    """An OTLP/HTTP traces endpoint (``POST /v1/traces``, protobuf) on an ephemeral loopback port.

    It runs on its own event loop in a thread of this process: the gateway flushes its spans
    synchronously when it stops (``TracerProvider.shutdown``), which would leave a collector on the
    gateway's own loop unserved until the export timed out."""
    got = Collector()
    ready, stopped = threading.Event(), threading.Event()
    control: dict[str, Any] = {}

    async def export(request: web.Request) -> web.Response:
        got.posts += 1
        got.headers.append(dict(request.headers))
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for rs in message.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.spans.append(
                        Span(
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent=s.parent_span_id.hex(),
                            attributes={kv.key: _value(kv.value) for kv in s.attributes},
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                            error=s.status.code == STATUS_ERROR,
                            service=str(resource.get("service.name")),
                        )
                    )
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", export)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        stop = asyncio.Event()
        control["loop"], control["stop"] = asyncio.get_running_loop(), stop
        got.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/traces"
        ready.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            stopped.set()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="otlp-collector", daemon=True)
    thread.start()
    assert ready.wait(10), "the collector did not start"
    try:
        yield got
    finally:
        control["loop"].call_soon_threadsafe(control["stop"].set)
        thread.join(10)
        assert stopped.is_set()


def config(tmp_path: Path, endpoint: str | None) -> Config:
    servers = {"echo": stdio_server(ECHO), "probe": stdio_server(PROBE)}
    cfg = make_config(servers, tmp_path, POLICY, mode="dispatcher")
    telemetry = TelemetryConfig(
        otlp_endpoint=endpoint, service_name="toolcrib-test", headers={"x-collector-token": "secret:otel/token"}
    )
    return cfg.model_copy(update={"telemetry": telemetry})


@asynccontextmanager
async def gateway(cfg: Config) -> AsyncIterator[Running]:
    async with running_gateway(cfg, connect_wait=20, embedder=HashingEmbedder()) as rt:
        assert rt.reindexer is not None
        await rt.reindexer.sync(set(cfg.enabled_servers))
        yield rt


def _text(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


def _traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def _names(traceparent: str) -> tuple[str, str]:
    """``(trace id, parent span id)`` of a W3C ``traceparent`` (its flags may carry the random bit too)."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return trace_id, span_id


async def test_spans_follow_the_mcp_conventions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLCRIB_SECRET_OTEL_TOKEN", "t0ken-for-the-collector")
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    header_trace, header_span = secrets.token_hex(16), secrets.token_hex(8)
    async with collector() as got, gateway(config(tmp_path, got.url)) as rt, aiohttp.ClientSession() as http:
        s = Session(http, rt.url)
        await s.open()
        await s.request("tools/call", {"name": "search_tools", "arguments": {"query": "meta of this request"}})
        meta = {"traceparent": _traceparent(caller_trace, caller_span), "tracestate": "caller=1"}
        invoked = await s.request(
            "tools/call",
            {"name": "invoke", "arguments": {"tool": "probe__meta", "arguments": {}}, "_meta": meta},
        )
        tool_meta = json.loads(_text(invoked["result"]))
        prompt = await s.request("prompts/get", {"name": "probe__meta"})
        prompt_meta = json.loads(prompt["result"]["messages"][0]["content"]["text"])
        assert (await s.invoke("probe__fail"))["isError"]
        assert (await s.invoke("echo__echo", text="forbidden words"))["isError"]
        assert (await s.invoke("echo__env", name="HOME"))["isError"]  # approval pending
        # HTTP traceparent header: the parent when _meta has none (a session's tools/call, served in
        # the HTTP request's own task; the SDK's session loop carries no headers for other methods)
        s.headers = {"traceparent": _traceparent(header_trace, header_span)}
        await s.request("tools/call", {"name": "search_tools", "arguments": {"query": "header parented"}})
        # ... and a link when _meta names the parent
        await s.request(
            "tools/call",
            {"name": "invoke", "arguments": {"tool": "echo__add", "arguments": {"a": 1, "b": 2}}, "_meta": meta},
        )
        sid = s.sid
        # the gateway has stopped: its span processor was flushed on the way out

    assert got.posts >= 1
    assert all(h.get("x-collector-token") == "t0ken-for-the-collector" for h in got.headers)
    assert {s.service for s in got.spans} == {"toolcrib-test"}

    # initialize: a SERVER span named by the method alone
    init = got.one("initialize")
    assert init.kind == SERVER and init.attributes["mcp.method.name"] == "initialize"

    # search_tools: the SERVER span and its toolcrib.search child
    (search,) = [s for s in got.named("tools/call search_tools") if s.trace_id != header_trace]
    assert search.kind == SERVER
    assert search.attributes["gen_ai.tool.name"] == "search_tools"
    assert search.attributes["gen_ai.operation.name"] == "execute_tool"
    (index,) = [c for c in got.children(search) if c.name == "toolcrib.search"]
    assert index.kind == INTERNAL and index.attributes["toolcrib.search.results"] >= 1

    # invoke: named after the REAL tool, parented by the caller's _meta traceparent
    call = got.one("tools/call probe__meta")
    assert call.kind == SERVER and not call.error
    assert (call.trace_id, call.parent) == (caller_trace, caller_span)
    assert call.attributes["mcp.method.name"] == "tools/call"
    assert call.attributes["gen_ai.tool.name"] == "probe__meta"
    assert call.attributes["gen_ai.operation.name"] == "execute_tool"
    assert call.attributes["mcp.session.id"] == sid
    assert call.attributes["mcp.protocol.version"] == "2025-11-25"
    assert call.attributes["jsonrpc.request.id"] == "3"
    assert call.attributes["network.transport"] == "tcp"
    kids = {c.name: c for c in got.children(call)}
    assert kids["toolcrib.policy"].kind == INTERNAL
    assert kids["toolcrib.policy"].attributes["toolcrib.policy.action"] == "allow"
    upstream = kids["tools/call meta"]
    assert upstream.kind == CLIENT
    assert upstream.attributes["gen_ai.tool.name"] == "meta"
    assert upstream.attributes["toolcrib.server"] == "probe"
    # what the upstream received in params._meta (toolcrib's own tools/call framing) names the CLIENT span
    assert _names(tool_meta["traceparent"]) == (upstream.trace_id, upstream.span_id)

    # prompts/get goes through the SDK client, which injects the current (CLIENT) span's context
    prompt_span = got.one("prompts/get probe__meta")
    assert prompt_span.attributes["gen_ai.prompt.name"] == "probe__meta"
    assert "gen_ai.operation.name" not in prompt_span.attributes
    (sdk_upstream,) = [c for c in got.children(prompt_span) if c.kind == CLIENT]
    assert sdk_upstream.name == "prompts/get meta"
    assert _names(prompt_meta["traceparent"]) == (sdk_upstream.trace_id, sdk_upstream.span_id)

    # a failing upstream: error.type and status ERROR on the request and on the upstream span
    fail = got.one("tools/call probe__fail")
    assert fail.error and fail.attributes["error.type"] == "protocol_error"
    (fail_up,) = [c for c in got.children(fail) if c.kind == CLIENT]
    assert fail_up.error and fail_up.attributes["error.type"] == "protocol_error"

    # denied by the policy layer: no upstream span at all
    denied = got.one("tools/call echo__echo")
    assert denied.error and denied.attributes["error.type"] == "denied"
    denied_kids = {c.name: c for c in got.children(denied)}
    assert set(denied_kids) == {"toolcrib.policy"}
    assert denied_kids["toolcrib.policy"].attributes["toolcrib.policy.rule"] == "no-forbidden"

    # an approval: the wait is its own span; the call was not made
    env = got.one("tools/call echo__env")
    approval = {c.name: c for c in got.children(env)}["toolcrib.approval"]
    assert approval.attributes["toolcrib.outcome"] == "pending"
    assert env.attributes["error.type"] == "pending"

    # an HTTP traceparent header parents a request whose _meta has none, and is linked when _meta has one
    (by_header,) = [s for s in got.named("tools/call search_tools") if s.trace_id == header_trace]
    assert by_header.parent == header_span and by_header.links == []
    linked = got.one("tools/call echo__add")
    assert (linked.trace_id, linked.parent) == (caller_trace, caller_span)
    assert linked.links == [(header_trace, header_span)]


async def test_tracing_off_sends_nothing(tmp_path: Path) -> None:
    async with collector() as got:
        cfg = config(tmp_path, None)
        async with gateway(cfg) as rt, aiohttp.ClientSession() as http:
            assert rt.parts.telemetry is not None and rt.parts.telemetry.tracing is None
            s = Session(http, rt.url)
            await s.open()
            tool_meta = json.loads(_text(await s.invoke("probe__meta")))
            prompt = await s.request("prompts/get", {"name": "probe__meta"})
            prompt_meta = json.loads(prompt["result"]["messages"][0]["content"]["text"])
    assert "traceparent" not in tool_meta and "tracestate" not in tool_meta
    assert "traceparent" not in prompt_meta
    assert got.posts == 0 and got.spans == []


async def test_sample_ratio_zero_records_nothing_new(tmp_path: Path) -> None:
    """sample_ratio = 0: a request without a sampled parent is not recorded, and nothing goes upstream as sampled."""
    async with collector() as got:
        cfg = config(tmp_path, got.url)
        cfg = cfg.model_copy(
            update={"telemetry": cfg.telemetry.model_copy(update={"sample_ratio": 0.0, "headers": {}})}
        )
        async with gateway(cfg) as rt, aiohttp.ClientSession() as http:
            s = Session(http, rt.url)
            await s.open()
            tool_meta = json.loads(_text(await s.invoke("probe__meta")))
    assert got.spans == []
    flags = tool_meta["traceparent"].split("-")[3]
    assert int(flags, 16) & 1 == 0  # propagated, flagged not sampled


def test_bad_endpoint_is_a_clear_config_error() -> None:
    with pytest.raises(ValueError, match="otlp_endpoint must be an http:// or https:// URL"):
        TelemetryConfig(otlp_endpoint="localhost:4318")
    with pytest.raises(ValueError, match="less than or equal to 1"):
        TelemetryConfig(sample_ratio=1.5)
