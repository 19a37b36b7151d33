"""Slow clients against a real aiohttp server on 127.0.0.1, set up the way toolcrib.app sets up its own.

Figures asserted: 200 sockets trickling one header line every 0.5 s are all closed by the server
within ``header_timeout`` + 10 s (and none before 1 s), while a normal client is answered
throughout; an idle keep-alive connection is closed after ``idle_timeout``, not after the header
timeout; a handler running longer than the header timeout is not cut.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from toolcrib.config import GatewayConfig
from toolcrib.gateway.edge.slowclients import apply_client_timeouts

pytestmark = pytest.mark.anyio

HEADER_TIMEOUT = 2.0
IDLE_TIMEOUT = 6.0
SLOW_SOCKETS = 200
GIVE_UP = HEADER_TIMEOUT + 10.0


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(HEADER_TIMEOUT * 2.5)
    return web.Response(text="slow ok")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """An aiohttp app on an ephemeral port, built like ``toolcrib.app._start_http`` builds the gateway's."""
    app = web.Application(client_max_size=GatewayConfig().max_body_bytes + 1024)
    app.router.add_get("/", _hello)
    app.router.add_get("/slow", _slow)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    apply_client_timeouts(runner, header_timeout=HEADER_TIMEOUT, idle_timeout=IDLE_TIMEOUT)
    site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _closed_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trickle: bytes | None) -> float:
    """Seconds until the server closes the connection (inf if not within GIVE_UP), trickling meanwhile."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < GIVE_UP:
        try:
            data = await asyncio.wait_for(reader.read(65536), 0.5)
        except TimeoutError:
            if trickle is not None:
                try:
                    writer.write(trickle)
                    await writer.drain()
                except ConnectionError:
                    return loop.time() - start
            continue
        except ConnectionError:
            return loop.time() - start
        if not data:
            return loop.time() - start
    return float("inf")


async def _slowloris(port: int, n: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await writer.drain()
        return await _closed_after(reader, writer, f"X-Trickle-{n}: x\r\n".encode())
    finally:
        writer.close()


async def test_slow_headers_are_closed_while_normal_clients_are_served(port: int) -> None:
    url = f"http://127.0.0.1:{port}/"
    attack = [asyncio.ensure_future(_slowloris(port, n)) for n in range(SLOW_SOCKETS)]
    answered = 0
    async with aiohttp.ClientSession() as http:
        while not all(task.done() for task in attack):
            async with http.get(url) as resp:
                assert resp.status == 200
                assert await resp.text() == "ok"
                answered += 1
            await asyncio.sleep(0.2)
    closed = [task.result() for task in attack]
    assert len(closed) == SLOW_SOCKETS
    assert max(closed) <= HEADER_TIMEOUT + 10, f"{sum(c == float('inf') for c in closed)} slow sockets left open"
    assert min(closed) >= 1.0, "a slow socket was closed long before the header timeout"
    assert answered >= 5, "the normal client was not served during the attack"


async def test_head_sent_in_pieces_within_the_timeout_is_served(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in (b"GET / HT", b"TP/1.1\r\nHost: 127.0.0.1\r\n", b"Connection: close\r\n", b"\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.3)
        response = await asyncio.wait_for(reader.read(), GIVE_UP)
    finally:
        writer.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:80]
    assert response.endswith(b"ok")


async def test_idle_keepalive_connection_closes_after_idle_timeout_not_header_timeout(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GIVE_UP)
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(2) == b"ok"
        closed = await _closed_after(reader, writer, None)
    finally:
        writer.close()
    assert IDLE_TIMEOUT - 2 <= closed <= IDLE_TIMEOUT + 10, closed


async def test_slow_second_head_on_a_keepalive_connection_is_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GIVE_UP)
        await reader.readexactly(2)
        writer.write(b"GET / HTTP/1.1\r\n")
        await writer.drain()
        closed = await _closed_after(reader, writer, b"X-Trickle: x\r\n")
    finally:
        writer.close()
    assert 1.0 <= closed <= HEADER_TIMEOUT + 10, closed
    assert closed < IDLE_TIMEOUT, "closed by the idle timer, not the header timer"


async def test_a_handler_running_longer_than_the_header_timeout_is_not_cut(port: int) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/slow") as resp:
        assert resp.status == 200
        assert await resp.text() == "slow ok"


async def test_apply_before_setup_or_with_bad_timeouts_is_refused() -> None:
    runner = web.AppRunner(web.Application())
    with pytest.raises(RuntimeError, match="after `await runner"):
        apply_client_timeouts(runner, header_timeout=1, idle_timeout=1)
    with pytest.raises(ValueError, match="positive"):
        apply_client_timeouts(runner, header_timeout=0, idle_timeout=1)


def test_gateway_config_defaults() -> None:
    cfg = GatewayConfig()
    assert (cfg.header_timeout, cfg.idle_timeout) == (10.0, 60.0)
