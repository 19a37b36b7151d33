"""toolcrib's lean HTTP/1.1 client (toolcrib.router.h1) against real servers on 127.0.0.1: every
framing (length, chunked, end of connection), any cut of the bytes on the wire (hypothesis), gzip,
SSE with back-pressure, cookies shared with aiohttp, kept-alive connections the server closes,
abandoned answers, header injection; on asyncio's loop and on uvloop (``toolcrib serve``'s)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolcrib.router import h1
from toolcrib.router.h1 import ConnectFailed, Origin, check_headers

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return "asyncio", {"use_uvloop": request.param}


@contextlib.asynccontextmanager
async def _app(keepalive: float = 75.0) -> AsyncIterator[str]:
    """A real aiohttp server on 127.0.0.1 with one route per case; yields its base URL."""
    stop = asyncio.Event()

    async def json_answer(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return web.json_response(
            {
                "echo": json.loads(body),
                "auth": request.headers.get("Authorization"),
                "cookie": request.headers.get("Cookie"),
            }
        )

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for piece in (b'{"a":', b" [1, 2", b", 3]}"):
            await resp.write(piece)
        await resp.write_eof()
        return resp

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"event: message\ndata: {i}\n\n".encode())
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    async def gz(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=gzip.compress(b'{"zipped": true}'),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    async def cookie(request: web.Request) -> web.StreamResponse:
        resp = web.json_response({})
        resp.set_cookie("affinity", "node-7")
        return resp

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect("/json")

    async def hang(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 1\n\n")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 30)  # never answers in full (until the server stops)
        return resp

    app = web.Application()
    for path, fn in [
        ("/json", json_answer),
        ("/chunked", chunked),
        ("/sse", sse),
        ("/gzip", gz),
        ("/cookie", cookie),
        ("/redirect", redirect),
        ("/hang", hang),
    ]:
        app.router.add_post(path, fn)
    runner = web.AppRunner(app, keepalive_timeout=keepalive)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _origin(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[Origin]:
    async with aiohttp.ClientSession() as http:
        origin = Origin(url, headers or {}, 5.0, http)
        try:
            yield origin
        finally:
            origin.close()


JSON = {"Content-Type": "application/json"}


async def _post(origin: Origin, body: bytes = b'{"x": 1}', headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with origin.post(body, headers or JSON) as resp:
        raw = await resp.read()
        return resp.status, raw


async def test_json_answers_over_one_kept_alive_connection_with_the_configured_headers() -> None:
    async with _app() as base, _origin(base + "/json", {"Authorization": "Bearer tok"}) as origin:
        for i in range(5):
            status, raw = await _post(origin, json.dumps({"i": i}).encode())
            assert status == 200
            assert json.loads(raw) == {"echo": {"i": i}, "auth": "Bearer tok", "cookie": None}
        assert len(origin._idle) == 1  # sequential requests reuse one connection


async def test_chunked_gzip_and_an_sse_stream_read_as_they_come() -> None:
    async with _app() as base:
        async with _origin(base + "/chunked") as origin:
            assert json.loads((await _post(origin))[1]) == {"a": [1, 2, 3]}
        async with _origin(base + "/gzip") as origin:
            assert json.loads((await _post(origin))[1]) == {"zipped": True}
        async with _origin(base + "/sse") as origin, origin.post(b"{}", JSON) as resp:
            assert resp.headers["content-type"] == "text/event-stream"
            text = b"".join([chunk async for chunk in resp.content.iter_any()])
            assert text == b"".join(f"event: message\ndata: {i}\n\n".encode() for i in range(3))


async def test_cookies_are_shared_with_the_aiohttp_session() -> None:
    # unsafe: the jar takes cookies from an IP address (aiohttp's default jar refuses them, on both paths)
    async with _app() as base, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        setter = Origin(base + "/cookie", {}, 5.0, http)
        echo = Origin(base + "/json", {}, 5.0, http)
        await _post(setter)
        assert [c.value for c in http.cookie_jar] == ["node-7"]  # set by an h1 answer, kept by aiohttp's jar
        assert json.loads((await _post(echo))[1])["cookie"] == "affinity=node-7"  # and sent back by h1
        setter.close()
        echo.close()


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async with _app(keepalive=0.05) as base, _origin(base + "/json") as origin:
        for _ in range(3):
            status, _ = await _post(origin)
            assert status == 200
            await asyncio.sleep(0.3)  # the server closes the idle connection meanwhile


async def test_an_abandoned_answer_closes_its_connection_and_the_next_request_works() -> None:
    async with _app() as base:
        async with _origin(base + "/hang") as origin:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5), origin.post(b"{}", JSON) as resp:
                    async for _ in resp.content.iter_any():
                        pass
            assert origin._idle == []
        async with _origin(base + "/json") as origin:
            async with origin.post(b"{}", JSON) as resp:
                pass  # left unread: not reused
            assert origin._idle == []
            assert (await _post(origin))[0] == 200


async def test_a_redirect_is_handed_back_unread() -> None:
    async with _app() as base, _origin(base + "/redirect") as origin:
        status, _ = await _post(origin)
        assert status == 307


async def test_no_server_is_a_connect_failure_naming_the_cause() -> None:
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        async with _origin(f"http://127.0.0.1:{port}/mcp") as origin:
            with pytest.raises(ConnectFailed) as caught:
                await _post(origin)
            assert isinstance(caught.value.__cause__, ConnectionRefusedError)


@pytest.mark.parametrize(
    "headers",
    [{"X-A": "1\r\nX-Injected: 2"}, {"X-A": "a\nb"}, {"X-A": "nul\0"}, {"Bad Name": "x"}, {"X:A": "x"}, {"": "x"}],
)
def test_header_injection_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        check_headers(headers)
    with pytest.raises(h1.UnsendableHeader):  # the transport's cue to leave the request to aiohttp
        check_headers(headers)


# ---- any framing, any cut of the bytes (a raw server) --------------------------------------------


def _frame(status: int, headers: list[tuple[str, str]], body: bytes, framing: str, pieces: int) -> bytes:
    head = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers]
    if framing == "length":
        head.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked":
        head.append("Transfer-Encoding: chunked")
        size = max(1, len(body) // max(1, pieces))
        parts = [body[i : i + size] for i in range(0, len(body), size)]
        payload = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"
    else:  # the body ends with the connection
        head.append("Connection: close")
        payload = body
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


async def _raw_server(wire: bytes, cuts: list[int]) -> tuple[asyncio.Server, str]:
    bounds = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n\r\n")
                for lo, hi in itertools.pairwise(bounds):
                    writer.write(wire[lo:hi])
                    await writer.drain()
                    await asyncio.sleep(0)
                if b"Connection: close" not in wire:
                    await reader.read()  # kept open until the client closes it
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/mcp"


HEADER_VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    status=st.sampled_from([200, 202, 400, 404, 500]),
    headers=st.lists(st.tuples(st.sampled_from(["X-A", "Mcp-Session-Id", "Content-Type"]), HEADER_VALUE), max_size=3),
    body=st.binary(max_size=3000),
    framing=st.sampled_from(["length", "chunked", "eof"]),
    pieces=st.integers(1, 5),
    cuts=st.lists(st.integers(0, 3500), max_size=8),
)
async def test_any_framing_cut_anywhere_reads_back_exactly(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    framing: str,
    pieces: int,
    cuts: list[int],
) -> None:
    wire = _frame(status, headers, body, framing, pieces)
    server, url = await _raw_server(wire, cuts)
    try:
        async with _origin(url) as origin, origin.post(b"{}", JSON) as resp:
            assert resp.status == status
            for name, value in headers:
                assert value in resp.headers.getall(name)
            assert await resp.read() == body
    finally:
        server.close()


async def test_a_body_over_the_cap_fails_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h1, "MAX_BODY", 1000)
    server, url = await _raw_server(_frame(200, [], b"x" * 5000, "length", 1), [])
    try:
        async with _origin(url) as origin:
            with pytest.raises(ConnectionError, match="exceeded 1000 bytes"):
                await _post(origin)
    finally:
        server.close()


async def test_an_answer_that_is_not_http_fails_as_a_broken_connection() -> None:
    server, url = await _raw_server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", [])
    try:
        async with _origin(url) as origin:
            with pytest.raises(ConnectionError):
                await _post(origin)
    finally:
        server.close()


async def test_a_request_header_replaces_a_configured_one_of_the_same_name() -> None:
    async with _app() as base, _origin(base + "/json", {"Authorization": "Bearer configured"}) as origin:
        _, raw = await _post(origin, headers={**JSON, "authorization": "Bearer per-request"})
        assert json.loads(raw)["auth"] == "Bearer per-request"
        _, raw = await _post(origin)
        assert json.loads(raw)["auth"] == "Bearer configured"
