"""Attacks on the operator telemetry (issue 13) by a client and by an upstream: what reaches the
OTLP collector (secrets, unbounded client-chosen names), the trace context sent upstream, and the
``/metrics`` label sets. Real gateways, real fixture upstreams, a real OTLP/HTTP collector on
loopback (its raw protobuf bodies are kept, so nothing the exporter sends escapes the checks)."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
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
from tests.observe.test_metrics import POLICY, Session, dispatcher, scrape
from tests.observe.test_tracing import ECHO, PROBE, gateway
from toolcrib.config import Config, TelemetryConfig

pytestmark = pytest.mark.anyio

CANARY = "canary-" + "7f3a9c" * 4
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


@asynccontextmanager
async def raw_collector() -> AsyncIterator[tuple[str, list[bytes]]]:
    """``(url, bodies)``: an OTLP/HTTP ``/v1/traces`` endpoint on loopback keeping every raw body.
    On its own loop in a thread (the gateway flushes spans synchronously when it stops)."""
    bodies: list[bytes] = []
    ready = threading.Event()
    control: dict[str, Any] = {}

    async def export(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", export)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        control["loop"], control["stop"] = asyncio.get_running_loop(), asyncio.Event()
        control["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/traces"
        ready.set()
        try:
            await control["stop"].wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="otlp-raw", daemon=True)
    thread.start()
    assert ready.wait(10), "the collector did not start"
    try:
        yield control["url"], bodies
    finally:
        control["loop"].call_soon_threadsafe(control["stop"].set)
        thread.join(10)


def spans(bodies: list[bytes]) -> Iterator[Any]:
    """Every exported span (protobuf ``Span``) in ``bodies``."""
    for body in bodies:
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                yield from ss.spans


def config(tmp_path: Path, endpoint: str | None) -> Config:
    servers = {"echo": stdio_server(ECHO, env={"ECHO_TOKEN": "secret:echo/token"}), "probe": stdio_server(PROBE)}
    cfg = make_config(servers, tmp_path, POLICY, mode="dispatcher")
    return cfg.model_copy(update={"telemetry": TelemetryConfig(otlp_endpoint=endpoint, service_name="attack")})


def _text(answer: dict[str, Any]) -> str:
    return str(answer["result"]["content"][0]["text"])


async def test_a_secret_an_upstream_echoes_in_an_error_never_reaches_the_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """echo gets ECHO_TOKEN from a secret reference and fails a read with an error message holding
    it: the client sees it redacted, and so must every span (the upstream CLIENT span's status
    description carried it verbatim)."""
    monkeypatch.setenv("TOOLCRIB_SECRET_ECHO_TOKEN", CANARY)
    async with raw_collector() as (url, bodies):
        async with gateway(config(tmp_path, url)) as rt, aiohttp.ClientSession() as http:
            s = Session(http, rt.url)
            await s.open()
            answer = await s.request("resources/read", {"uri": "echo+echo://fail/ECHO_TOKEN"})
            assert answer["error"]["message"] == "failed with [REDACTED]"
            answer = await s.invoke("echo__env", name="ECHO_TOKEN")  # held for approval: no result yet
        assert bodies, "no spans were exported"
        failed = [sp for sp in spans(bodies) if sp.name == "resources/read" and sp.status.code == 2]
        assert len(failed) == 2  # the SERVER span and the upstream CLIENT span
        assert all("[REDACTED]" in sp.status.message for sp in failed if sp.status.message)
        assert not [b for b in bodies if CANARY.encode() in b]


async def test_client_trace_context_reaches_the_upstream_only_as_the_gateways_own(tmp_path: Path) -> None:
    """Malformed, oversized and header-injecting ``traceparent``/``tracestate`` values in a client's
    ``_meta``: the upstream receives one well-formed ``traceparent`` naming the gateway's span, and
    a ``tracestate`` only when it is valid W3C (bounded: 32 members, 512 characters)."""
    good = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    metas: list[dict[str, Any]] = [
        {"traceparent": f"{good}\r\nX-Injected: 1", "tracestate": "k=v\r\nX-Injected: 1"},
        {"traceparent": "ff-" + "a" * 32 + "-" + "b" * 16 + "-01"},
        {"traceparent": "00-" + "0" * 32 + "-" + "b" * 16 + "-01"},
        {"traceparent": good + "-" + "x" * 100_000},
        {"traceparent": good, "tracestate": ",".join(f"k{i}=" + "v" * 250 for i in range(40))},
        {"traceparent": good, "tracestate": "evil=" + "A" * 100_000},
        {"traceparent": 12345, "tracestate": ["x"]},
        {"traceparent": {"nested": good}},
    ]
    async with (
        raw_collector() as (url, _bodies),
        gateway(config(tmp_path, url)) as rt,
        aiohttp.ClientSession() as http,
    ):
        s = Session(http, rt.url)
        await s.open()
        for meta in metas:
            params = {"name": "invoke", "arguments": {"tool": "probe__meta", "arguments": {}}, "_meta": meta}
            seen = json.loads(_text(await s.request("tools/call", params)))
            assert TRACEPARENT.fullmatch(seen["traceparent"]), seen["traceparent"][:200]
            assert "X-Injected" not in json.dumps(seen)
            assert len(seen.get("tracestate", "")) <= 512
            assert "x" * 100 not in json.dumps(seen) and "A" * 100 not in json.dumps(seen)


async def test_tracing_off_forwards_no_client_trace_context(tmp_path: Path) -> None:
    async with gateway(config(tmp_path, None)) as rt, aiohttp.ClientSession() as http:
        s = Session(http, rt.url)
        await s.open()
        meta = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01\r\nX-Injected: 1", "tracestate": "k=v"}
        params = {"name": "invoke", "arguments": {"tool": "probe__meta", "arguments": {}}, "_meta": meta}
        seen = json.loads(_text(await s.request("tools/call", params)))
        assert "traceparent" not in seen and "tracestate" not in seen


async def test_client_chosen_names_are_bounded_in_spans(tmp_path: Path) -> None:
    """A client names 200 kB tools, prompts and resource URIs: span names and attribute values
    stay short (the collector gets no multi-kilobyte span for a request the gateway refused)."""
    huge = "x" * 200_000
    async with raw_collector() as (url, bodies):
        async with gateway(config(tmp_path, url)) as rt, aiohttp.ClientSession() as http:
            s = Session(http, rt.url)
            await s.open()
            await s.request("tools/call", {"name": huge, "arguments": {}})
            await s.request("tools/call", {"name": "invoke", "arguments": {"tool": huge, "arguments": {}}})
            await s.request("prompts/get", {"name": huge})
            await s.request("resources/read", {"uri": "echo+echo://" + huge})
        exported = list(spans(bodies))
        assert len(exported) >= 5
        for sp in exported:
            assert len(sp.name) <= 200, (sp.name[:80], len(sp.name))
            for kv in sp.attributes:
                assert len(kv.value.string_value) <= 1024, (kv.key, len(kv.value.string_value))
            assert len(sp.status.message) <= 1024


async def test_metrics_labels_stay_bounded_whatever_clients_name(tmp_path: Path) -> None:
    """Hundreds of distinct unknown tools (direct and behind ``invoke``), prompts, resources and
    JSON-RPC methods add no ``toolcrib_requests_total`` series beyond one per (method, outcome)."""
    async with dispatcher(tmp_path) as rt, aiohttp.ClientSession() as http:
        s = Session(http, rt.url)
        await s.open()
        for i in range(150):
            await s.request("tools/call", {"name": f"nope-{i}", "arguments": {}})
            await s.request("tools/call", {"name": "invoke", "arguments": {"tool": f"echo__nope{i}", "arguments": {}}})
            await s.request("prompts/get", {"name": f"p{i}"})
            await s.request("resources/read", {"uri": f"echo+echo://x{i}"})
            async with http.post(
                rt.url,
                data=json.dumps({"jsonrpc": "2.0", "id": 10_000 + i, "method": f"evil/{i}"}),
                headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                         "Mcp-Session-Id": s.sid},
            ) as r:  # fmt: skip
                await r.read()
        async with http.get(f"http://127.0.0.1:{rt.port}/metrics") as r:
            text = await r.text()
    series = [labels for (name, labels) in scrape(text) if name == "toolcrib_requests_total"]
    assert len(series) <= 12, series
    values = {v for labels in series for _, v in labels}
    assert not [v for v in values if "nope" in v or (v.startswith("p") and v[1:].isdigit()) or "evil/" in v]
    assert len(text) < 50_000
