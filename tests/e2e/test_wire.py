"""toolcrib's own ``tools/call`` framing (toolcrib/router/wire.py) end to end: a real gateway in front
of the real ``tests.servers.wire_probe`` upstream, a 2025-11-25 (handshake-era) server, over stdio and
Streamable HTTP (SSE answers, and ``--json-response`` answers, which take the inline-JSON path of
``_Conn.exchange``).

Every probe answer names the JSON-RPC id its request carried; ``tc-N`` is the wire's own id
scheme, so each test also proves the call went through :class:`~toolcrib.router.wire.Wire` and not
through the SDK's ``ClientSession``.

Back-channel isolation on the wire path (two principals, one upstream) is proven by
``tests/e2e/test_backchannel.py``: its 2025-11-25 Streamable HTTP upstream is framed by the wire.
A 2026-07-28 upstream (the SDK path) is covered by ``tests/e2e/test_http_upstream.py``; here one
comparison test runs the output-schema case on both paths.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.e2e.conftest import GatewayFactory, make_config, stdio_server
from tests.test_fixtures import http_server
from toolcrib.app import Running, running_gateway
from toolcrib.index.embedder import HashingEmbedder

pytestmark = pytest.mark.anyio

MODULE = "wire_probe"
TRANSPORTS = ["stdio", "http-sse", "http-json"]
CLIENT_ERAS = ["legacy", "2026-07-28"]
"""The gateway's client (the SDK ``Client`` mode): ``legacy`` speaks 2025-11-25 to the gateway (the
relay path); ``2026-07-28`` the modern era (a handshake-era upstream's call runs parked in the background)."""


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _payload(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, _text(result)
    parsed: dict[str, Any] = json.loads(_text(result))
    return parsed


def _wire_id(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("tc-")


@contextmanager
def probe(transport: str, *flags: str, **extra: Any) -> Iterator[dict[str, Any]]:
    """A ``[servers.wp]`` table for the probe over ``transport``; an HTTP probe is stopped on exit."""
    if transport == "stdio":
        yield stdio_server(f"tests.servers.{MODULE}", *flags, **extra)
        return
    json_flags = ("--json-response",) if transport == "http-json" else ()
    with http_server(MODULE, *flags, *json_flags) as url:
        yield {"url": url, **extra}


@asynccontextmanager
async def probe_gateway(gateway: GatewayFactory, transport: str, *flags: str, **extra: Any) -> AsyncIterator[Running]:
    with probe(transport, *flags, **extra) as server:
        async with gateway({"wp": server}) as rt:
            expected = "2026-07-28" if "--modern" in flags else "2025-11-25"
            assert rt.pool.upstream("wp").state.protocol_version == expected
            yield rt


async def _seen(c: Client) -> dict[str, Any]:
    return _payload(await c.call_tool("wp__seen", {}))


# ---- 1. exact numbers and text ---------------------------------------------------------------

UPSTREAM_ERAS = [pytest.param((), id="upstream-2025-11-25"), pytest.param(("--modern",), id="upstream-2026-07-28")]
"""The probe's own era: the wire frames both (a 2026-07-28 request with the SDK session's stamp)."""

EXACT = {
    "big": 2**70,
    "negative_big": -(2**70),
    "u64_max": 2**64 - 1,
    "text": 'héllo — 日本語 ✓ 🚀 \u2028 "quoted" \\ back',
    "small": 7,
    "fraction": 1.5,
    "nested": {"list": [2**70, "ü", None, True]},
}


@pytest.mark.parametrize("upstream", UPSTREAM_ERAS)
@pytest.mark.parametrize("client_era", CLIENT_ERAS)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_big_integers_and_non_ascii_arrive_and_return_exactly(
    gateway: GatewayFactory, transport: str, client_era: str, upstream: tuple[str, ...]
) -> None:
    async with probe_gateway(gateway, transport, *upstream) as rt, Client(rt.url, mode=client_era) as c:
        result = await c.call_tool("wp__echo_args", EXACT)
        seen = _payload(result)
        assert _wire_id(seen["request_id"]), seen
        # what the upstream parsed: the same values, integers still integers
        assert seen["arguments"] == EXACT
        assert seen["types"] == {
            "big": "int",
            "negative_big": "int",
            "u64_max": "int",
            "text": "str",
            "small": "int",
            "fraction": "float",
            "nested": "dict",
        }
        # and what came back to the client, as structured content
        assert result.structured_content == {"arguments": EXACT}


EDGE_INTEGERS = [-(2**63) - 1, -(10**19) + 1]
"""19-digit integers below the signed 64-bit range: no 20-digit run, yet beyond what orjson reads
as an integer (it reads them as floats)."""


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_negative_integers_below_int64_arrive_exactly(gateway: GatewayFactory, transport: str) -> None:
    async with probe_gateway(gateway, transport) as rt, Client(rt.url, mode="legacy") as c:
        args = {f"n{i}": value for i, value in enumerate(EDGE_INTEGERS)}
        seen = _payload(await c.call_tool("wp__echo_args", args))
        assert seen["arguments"] == args and set(seen["types"].values()) == {"int"}, seen


async def test_upstream_json_answer_keeps_negative_integers_below_int64(gateway: GatewayFactory) -> None:
    async with probe_gateway(gateway, "http-json") as rt, Client(rt.url, mode="legacy") as c:
        for value in EDGE_INTEGERS:
            result = await c.call_tool("wp__emit_int", {"digits": str(value)})
            assert _payload(result)["value"] == value
            assert result.structured_content == {"value": value}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_upstream_answer_keeps_integers_beyond_64_bits(gateway: GatewayFactory, transport: str) -> None:
    """Only the answer's parsing: the upstream makes the integer itself (the gateway never saw it)."""
    async with probe_gateway(gateway, transport) as rt, Client(rt.url, mode="legacy") as c:
        values = [2**70, -(2**70), 2**64, 10**30 + 1, *EDGE_INTEGERS]
        for value in values:
            result = await c.call_tool("wp__emit_int", {"digits": str(value)})
            assert result.structured_content == {"value": value}
            assert _wire_id(_payload(result)["request_id"])


# ---- 2. progress -----------------------------------------------------------------------------


@pytest.mark.parametrize("upstream", UPSTREAM_ERAS)
@pytest.mark.parametrize("client_era", CLIENT_ERAS)
@pytest.mark.parametrize("transport", ["stdio", "http-sse"])
async def test_progress_reaches_the_asking_client_in_order_before_the_result(
    gateway: GatewayFactory, transport: str, client_era: str, upstream: tuple[str, ...]
) -> None:
    events: list[tuple[str, float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append(("progress", progress, total, message))

    async with probe_gateway(gateway, transport, *upstream) as rt, Client(rt.url, mode=client_era) as c:
        with anyio.fail_after(30):
            result = await c.call_tool("wp__progress", {"steps": 4}, progress_callback=on_progress)
        events.append(("result", 0, None, None))
        seen = _payload(result)
        assert _wire_id(seen["request_id"])
        assert seen["token"] == seen["request_id"]  # the wire asks with its own id as the token
        assert events == [
            *[("progress", float(i), 4.0, f"step {i}") for i in range(1, 5)],
            ("result", 0, None, None),
        ]
        # a client that did not ask gets the result alone; a 2025-11-25 client's call asks the
        # upstream for no progress (a 2026-07-28 client's runs parked, which always takes it)
        quiet = _payload(await c.call_tool("wp__progress", {"steps": 2}))
        assert _wire_id(quiet["request_id"])
        if client_era == "legacy":
            assert quiet["token"] is None


# ---- 3. the upstream's JSON-RPC error ----------------------------------------------------------

ERROR_CODE = -32042
ERROR_MESSAGE = "probe refused: ünïcode reason"


@pytest.mark.parametrize("upstream", UPSTREAM_ERAS)
@pytest.mark.parametrize("client_era", CLIENT_ERAS)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_upstream_jsonrpc_error_reaches_a_passthrough_client_unchanged(
    gateway: GatewayFactory, transport: str, client_era: str, upstream: tuple[str, ...]
) -> None:
    async with probe_gateway(gateway, transport, *upstream) as rt, Client(rt.url, mode=client_era) as c:
        with pytest.raises(MCPError) as caught:
            await c.call_tool("wp__fail", {"code": ERROR_CODE, "message": ERROR_MESSAGE})
        assert caught.value.error.code == ERROR_CODE
        assert caught.value.error.message == ERROR_MESSAGE
        # the connection is fine afterwards
        assert _wire_id(_payload(await c.call_tool("wp__echo_args", {"x": 1}))["request_id"])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_upstream_jsonrpc_error_is_a_tool_error_under_invoke(tmp_path: Path, transport: str) -> None:
    with probe(transport) as server:
        cfg = make_config({"wp": server}, tmp_path, mode="dispatcher")
        async with running_gateway(cfg, connect_wait=20, embedder=HashingEmbedder()) as rt, Client(rt.url) as c:
            assert rt.pool.upstream("wp").state.protocol_version == "2025-11-25"
            args = {"code": ERROR_CODE, "message": ERROR_MESSAGE}
            result = await c.call_tool("invoke", {"tool": "wp__fail", "arguments": args})
            assert result.is_error
            assert _text(result) == f"wp answered with an error: {ERROR_MESSAGE}"
            ok = await c.call_tool("invoke", {"tool": "wp__echo_args", "arguments": {"big": 2**70}})
            assert _payload(ok)["arguments"] == {"big": 2**70}


# ---- 4. deadline cancellation ----------------------------------------------------------------


@pytest.mark.parametrize("client_era", CLIENT_ERAS)
@pytest.mark.parametrize("transport", ["stdio", "http-sse", "http-json"])
async def test_deadline_cancels_upstream_request_and_connection_keeps_working(
    gateway: GatewayFactory, transport: str, client_era: str
) -> None:
    async with (
        probe_gateway(gateway, transport, timeout=1.0) as rt,
        Client(rt.url, mode=client_era) as c,
    ):
        pid = (await _seen(c))["pid"]
        connects = rt.pool.upstream("wp").state.connects
        result = await c.call_tool("wp__sleep", {"seconds": 30, "tag": "slow"})
        assert result.is_error
        assert "exceeded the 1 s deadline" in _text(result) and "[servers.wp] timeout" in _text(result)
        seen: dict[str, Any] = {}
        with anyio.fail_after(10):
            while True:
                seen = await _seen(c)
                if seen["sleeps"].get("slow") in seen["cancel_notes"] and "slow" in seen["handler_cancelled"]:
                    break
                await anyio.sleep(0.1)
        rid = seen["sleeps"]["slow"]
        assert _wire_id(rid)
        assert seen["cancel_notes"].count(rid) == 1
        # the same connection (same process, no reconnect) answers the next calls
        fast = _payload(await c.call_tool("wp__sleep", {"seconds": 0, "tag": "fast"}))
        assert fast["slept"] == "fast" and _wire_id(fast["request_id"])
        assert (await _seen(c))["pid"] == pid
        assert rt.pool.upstream("wp").state.connects == connects
        assert rt.pool.upstream("wp").state.status == "connected"


# ---- 6. output schema ------------------------------------------------------------------------

Outcome = tuple[str, Any, Any]
"""``("result", is_error, structured_content)`` or ``("error", code, message)``."""


async def _shaped(c: Client) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    for mode in ("ok", "mismatch", "missing"):
        try:
            result = await c.call_tool("wp__shaped", {"mode": mode})
        except MCPError as exc:
            outcomes[mode] = ("error", exc.error.code, exc.error.message)
        else:
            outcomes[mode] = ("result", result.is_error, result.structured_content)
    return outcomes


SDK_PATH_OUTCOMES: dict[str, Outcome] = {
    "ok": ("result", False, {"count": 3}),
    "mismatch": ("result", True, None),
    "missing": ("result", True, None),
}
"""What a client gets on either path (the SDK's ``ClientSession`` for a 2026-07-28 upstream, the wire
for a 2025-11-25 one), compared by ``test_output_schema_outcomes_match_the_sdk_path``: the output-schema
check's ``RuntimeError`` becomes a tool error naming the violation (``UpstreamInvalidResult``)."""


@pytest.mark.parametrize("client_era", CLIENT_ERAS)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_structured_content_that_misses_its_output_schema_is_refused_as_on_the_sdk_path(
    gateway: GatewayFactory, transport: str, client_era: str
) -> None:
    async with probe_gateway(gateway, transport) as rt, Client(rt.url, mode=client_era) as c:
        assert await _shaped(c) == SDK_PATH_OUTCOMES
        # the upstream connection is unharmed: no reconnect, the next call is answered
        assert rt.pool.upstream("wp").state.connects == 1
        assert _wire_id(_payload(await c.call_tool("wp__echo_args", {}))["request_id"])


@pytest.mark.parametrize("transport", ["stdio", "http-json"])
async def test_output_schema_outcomes_match_the_sdk_path(gateway: GatewayFactory, transport: str) -> None:
    """The same probe in both eras (each framed by the wire): the client sees the same thing."""
    outcomes: dict[str, dict[str, Outcome]] = {}
    for era, flags in (("2025-11-25", ()), ("2026-07-28", ("--modern",))):
        async with probe_gateway(gateway, transport, *flags) as rt, Client(rt.url, mode="legacy") as c:
            outcomes[era] = await _shaped(c)
            request_id = _payload(await c.call_tool("wp__echo_args", {}))["request_id"]
            assert _wire_id(request_id), request_id
    assert outcomes["2025-11-25"] == outcomes["2026-07-28"] == SDK_PATH_OUTCOMES


@pytest.mark.parametrize("transport", ["stdio", "http-json"])
async def test_output_schema_violation_is_a_tool_error_naming_it(gateway: GatewayFactory, transport: str) -> None:
    async with probe_gateway(gateway, transport) as rt, Client(rt.url, mode="legacy") as c:
        result = await c.call_tool("wp__shaped", {"mode": "mismatch"})
        assert result.is_error
        assert "Invalid structured content returned by tool shaped" in _text(result)


# ---- progress and a log line in the same read as the answer (stdio) ----------------------------


@pytest.mark.parametrize("client_era", CLIENT_ERAS)
async def test_progress_and_log_in_one_read_with_the_answer_come_before_it(
    gateway: GatewayFactory, client_era: str
) -> None:
    """The stdio reader settles the answer from its line; the three progress notifications and the
    log line written in the same chunk before it still reach the client, progress before the
    result (the call waits for their delivery), the log line routed to this (legacy) client's call."""
    events: list[str] = []
    logs: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append(f"progress {progress:g}/{total:g}")

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    async with (
        gateway({"b": stdio_server("tests.servers.burst")}) as rt,
        Client(rt.url, mode=client_era, logging_callback=on_log) as c,
    ):
        for _ in range(5):
            events.clear()
            with anyio.fail_after(30):
                result = await c.call_tool("b__burst", {}, progress_callback=on_progress)
            events.append("result " + _text(result))
            assert events == ["progress 1/3", "progress 2/3", "progress 3/3", "result done"]
        if client_era == "legacy":  # a 2026-07-28 request gets log lines only when its _meta asks for a level
            with anyio.move_on_after(10):  # the client handles notifications in its own task: let it catch up
                while len(logs) < 5:
                    await anyio.sleep(0.05)
            assert logs == ["burst log"] * 5
