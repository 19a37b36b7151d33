"""toolcrib.router.h1 against a hostile or broken upstream on 127.0.0.1 (raw asyncio servers):
decompression past the cap, endless heads, corrupt gzip, answers the client did not ask for, and
request headers a client can steer (a tool name with a lone surrogate); on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from toolcrib.router import h1
from toolcrib.router.h1 import Origin

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return "asyncio", {"use_uvloop": request.param}


def _answer(body: bytes, status: int = 200, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _empty(conn: int, request: int, writer: asyncio.StreamWriter) -> None:
    """A :func:`_server` script: every request answered ``{}``."""
    writer.write(_answer(b"{}"))


@contextlib.asynccontextmanager
async def _server(
    script: Callable[[int, int, asyncio.StreamWriter], Any],
    heads: list[bytes] | None = None,
    path: str = "/mcp",
) -> AsyncIterator[tuple[str, list[int]]]:
    """A raw server: ``script(connection_no, request_no, writer)`` answers each request (awaited if
    a coroutine); each request's head is appended to ``heads`` when given. Yields the URL (with
    ``path``) and the list of connections made (their numbers)."""
    conns: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = len(conns)
        conns.append(n)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                for i in range(1000):
                    head = await reader.readuntil(b"\r\n\r\n")
                    if heads is not None:
                        heads.append(head)
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    done = script(n, i, writer)
                    if asyncio.iscoroutine(done):
                        await done
                    await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}{path}", conns
    finally:
        server.close()


@contextlib.asynccontextmanager
async def _origin(url: str) -> AsyncIterator[Origin]:
    async with aiohttp.ClientSession() as http:
        origin = Origin(url, {}, 5.0, http)
        try:
            yield origin
        finally:
            origin.close()


async def _post(origin: Origin, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with asyncio.timeout(5), origin.post(b"{}", headers or JSON) as resp:
        return resp.status, await resp.read()


async def test_a_gzip_body_decoding_past_the_cap_fails_however_it_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each 40-byte piece decodes to less than the cap (7,740 bytes at most), all of them to far
    # more: the cap is on the whole body (a gzip bomb: 64 MiB on the wire is ~64 GiB decoded).
    monkeypatch.setattr(h1, "MAX_BODY", 20000)
    plain = b"".join(b"%04d," % (i % 300) for i in range(20000))  # 100 KB; 1,130 bytes gzipped
    zipped = gzip.compress(plain)
    pieces = [zipped[i : i + 40] for i in range(0, len(zipped), 40)]
    chunked = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    wire = b"HTTP/1.1 200 X\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked

    async def script(n: int, i: int, w: asyncio.StreamWriter) -> None:
        for j in range(0, len(wire), 40):
            w.write(wire[j : j + 40])
            await w.drain()
            await asyncio.sleep(0.001)

    async with _server(script) as (url, _), _origin(url) as origin:
        with pytest.raises(ConnectionError, match="exceeded 20000 bytes once decoded"):
            await _post(origin)


async def test_a_corrupt_gzip_body_is_a_broken_connection_not_a_zlib_error() -> None:
    # An OSError, as the transport catches (aiohttp: ClientPayloadError): else it escapes exchange().
    async def script(n: int, i: int, w: asyncio.StreamWriter) -> None:
        w.write(_answer(b"this is not gzip", extra="Content-Encoding: gzip\r\n"))

    async with _server(script) as (url, _), _origin(url) as origin:
        with pytest.raises(ConnectionError, match="gzip"):
            await _post(origin)


@pytest.mark.parametrize("shape", ["many headers", "one endless value", "endless interim answers"])
async def test_an_endless_head_fails_the_request_with_bounded_memory(shape: str) -> None:
    # aiohttp refuses past 8190 bytes a line, 128 headers; llhttp alone keeps every byte.
    async def script(n: int, i: int, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\n" if shape != "endless interim answers" else b"")
        if shape == "one endless value":
            w.write(b"X-A: ")
        for k in range(2000):  # 2000 x 1 KiB: far past any sane head
            if shape == "many headers":
                w.write(b"X-%d: %s\r\n" % (k, b"a" * 1000))
            elif shape == "one endless value":
                w.write(b"a" * 1024)
            else:
                w.write(b"HTTP/1.1 100 Continue\r\nX-A: " + b"a" * 990 + b"\r\n\r\n")
            await w.drain()
        await asyncio.sleep(10)

    async with _server(script) as (url, _), _origin(url) as origin:
        with pytest.raises(ConnectionError, match="head exceeded"):
            await _post(origin)


async def test_a_second_answer_in_the_same_packet_is_not_read_as_part_of_the_first() -> None:
    # Response splitting / pipelined garbage: the answer is the first message only, and the
    # connection that carried more than was asked is not reused.
    async def script(n: int, i: int, w: asyncio.StreamWriter) -> None:
        if n == 0:
            w.write(_answer(b'{"id": "a"}') + _answer(b'{"id": "b"}'))
        else:
            w.write(_answer(b'{"id": "fresh"}'))

    async with _server(script) as (url, conns), _origin(url) as origin:
        assert await _post(origin) == (200, b'{"id": "a"}')
        assert await _post(origin) == (200, b'{"id": "fresh"}')
        assert conns == [0, 1]


async def test_an_unasked_partial_answer_on_an_idle_connection_is_not_prefixed_to_the_next_one() -> None:
    # While the connection idles the server starts a message (status 500, one header open); the
    # next request's answer must not be parsed as its continuation.
    async def script(n: int, i: int, w: asyncio.StreamWriter) -> None:
        w.write(_answer(json.dumps({"n": n, "i": i}).encode()))
        if n == 0:
            w.write(b"HTTP/1.1 500 Evil\r\nX-Evil: ")

    async with _server(script) as (url, _), _origin(url) as origin:
        assert await _post(origin) == (200, b'{"n": 0, "i": 0}')
        await asyncio.sleep(0.1)
        assert await _post(origin) == (200, b'{"n": 1, "i": 0}')


async def test_a_header_with_a_lone_surrogate_is_sent_as_aiohttp_sends_it() -> None:
    # A client's tool name "to\ud800ol" (valid JSON) stamped as Mcp-Name: aiohttp drops the
    # surrogate; a UnicodeEncodeError here would escape the transport's exchange().
    seen: list[bytes] = []
    async with _server(_empty, heads=seen) as (url, _), _origin(url) as origin:
        assert await _post(origin, {**JSON, "Mcp-Name": "to\ud800ol"}) == (200, b"{}")
    assert b"\r\nMcp-Name: tool\r\n" in seen[0]


async def test_the_request_line_and_host_are_formed_as_aiohttp_forms_them() -> None:
    # A space or non-ASCII character in the configured URL's path went raw into the request line
    # ("POST /m cp HTTP/1.1": a malformed request); aiohttp percent-encodes it (yarl).
    heads: list[bytes] = []
    async with _server(_empty, heads=heads, path="/m cp/ツール?a=b c#frag") as (url, _):
        async with _origin(url) as origin:
            assert await _post(origin) == (200, b"{}")
        async with aiohttp.ClientSession() as http, http.post(url, data=b"{}") as resp:
            await resp.read()
    lines = [head.split(b"\r\n")[0] for head in heads]
    assert lines[0] == lines[1] == b"POST /m%20cp/%E3%83%84%E3%83%BC%E3%83%AB?a=b+c HTTP/1.1"
    async with aiohttp.ClientSession() as http:  # Host, without connecting
        for given, host in [
            ("http://[::1]:8080/mcp", "[::1]:8080"),
            ("http://[::1]/mcp", "[::1]"),
            ("http://Example.COM:80/mcp", "example.com"),
            ("http://bücher.example/mcp", "xn--bcher-kva.example"),
        ]:
            assert Origin(given, {}, 5.0, http)._defaults["Host"] == host


async def test_a_switching_protocols_answer_fails_the_request_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    # llhttp stops at a 101 with HttpParserUpgrade (no HttpParserError): it escaped data_received
    # (the loop logged a fatal error) and the request failed as "closed before answering".
    async def script(n: int, i: int, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxx")

    async with _server(script) as (url, _), _origin(url) as origin:
        with pytest.raises(ConnectionError, match="switch"):
            await _post(origin)
    assert "Fatal error" not in caplog.text


@pytest.mark.parametrize("coding", ["identity", "gzip"])
async def test_a_streamed_body_is_not_capped_as_a_whole(monkeypatch: pytest.MonkeyPatch, coding: str) -> None:
    # An SSE answer (a long tool call's progress) read piece by piece is bounded by back-pressure
    # and by the transport's per-line cap; aiohttp never capped it as a whole, h1 failed it at
    # MAX_BODY bytes in all. read() still is capped (test_a_body_over_the_cap_fails_the_request).
    monkeypatch.setattr(h1, "MAX_BODY", 1000)
    events = b"".join(b"data: %04d\n\n" % i for i in range(500))  # 6,000 bytes
    body = (
        gzip.compress(events) + b"trailing bytes after the gzip member: ignored" * 100 if coding == "gzip" else events
    )
    pieces = [body[i : i + 50] for i in range(0, len(body), 50)]  # each decodes to < 1000
    wire = b"HTTP/1.1 200 X\r\nContent-Type: text/event-stream\r\nContent-Encoding: %s\r\n" % coding.encode()
    wire += b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces)
    wire += b"0\r\n\r\n"

    async def script(n: int, i: int, w: asyncio.StreamWriter) -> None:
        w.write(wire)

    async with _server(script) as (url, _), _origin(url) as origin:
        async with asyncio.timeout(5), origin.post(b"{}", JSON) as resp:
            assert b"".join([chunk async for chunk in resp.content.iter_any()]) == events
        assert len(origin._idle) == 1


async def test_a_raw_deflate_body_is_read_as_aiohttp_reads_it() -> None:
    # "Content-Encoding: deflate" without the zlib header (what many servers send): aiohttp reads
    # it as raw deflate; h1 failed the request.
    squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = squeeze.compress(b'{"raw": "deflate"}') + squeeze.flush()

    async def script(n: int, i: int, w: asyncio.StreamWriter) -> None:
        w.write(_answer(raw, extra="Content-Encoding: deflate\r\n"))

    async with _server(script) as (url, _), _origin(url) as origin:
        assert await _post(origin) == (200, b'{"raw": "deflate"}')
        async with aiohttp.ClientSession() as http, http.post(url, data=b"{}") as resp:
            assert await resp.read() == b'{"raw": "deflate"}'


async def test_set_cookie_fields_are_parsed_as_aiohttp_parses_them() -> None:
    # An affinity cookie with an unparsable Expires: aiohttp keeps it (its lenient parser),
    # SimpleCookie.load dropped it, so the h1 path lost the load balancer's affinity.
    async def script(n: int, i: int, w: asyncio.StreamWriter) -> None:
        w.write(_answer(b"{}", extra="Set-Cookie: affinity=node-7; Expires=Wed, 99 Foo 99999 00:00:00 GMT\r\n"))

    async with _server(script) as (url, _):
        jars = []
        for lean in (True, False):
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                if lean:
                    origin = Origin(url, {}, 5.0, http)
                    await _post(origin)
                    origin.close()
                else:
                    async with http.post(url, data=b"{}") as resp:
                        await resp.read()
                jars.append([(c.key, c.value) for c in http.cookie_jar])
        assert jars[0] == jars[1] == [("affinity", "node-7")]


async def test_a_configured_cookie_is_kept_beside_the_jars_cookies() -> None:
    # The upstream's configured headers carry a credential cookie; a load balancer sets an
    # affinity cookie. aiohttp sends both (it merges the jar into the Cookie header); h1 replaced
    # the configured Cookie with the jar's, dropping the credential.
    heads: list[bytes] = []

    def affinity(conn: int, request: int, writer: asyncio.StreamWriter) -> None:
        writer.write(_answer(b"{}", extra="Set-Cookie: affinity=node-7\r\n"))

    async with _server(affinity, heads=heads) as (url, _):
        for lean in (True, False):
            configured = {"Cookie": "auth=secret"}
            async with aiohttp.ClientSession(headers=configured, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                origin = Origin(url, configured, 5.0, http)
                for _ in range(2):
                    if lean:
                        await _post(origin)
                    else:
                        async with http.post(url, data=b"{}", headers=JSON) as resp:
                            await resp.read()
                origin.close()
    seen = []
    for head in heads:
        cookie = [ln for ln in head.decode().split("\r\n") if ln.lower().startswith("cookie:")]
        seen.append(cookie[0].split(":", 1)[1].strip() if cookie else "")
    assert seen[2:] == ["auth=secret", "affinity=node-7; auth=secret"]  # aiohttp
    assert seen[:2] == seen[2:]  # h1


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/mcp", "http://127.0.0.1:port/mcp", "http://[::1/mcp"])
async def test_a_url_h1_cannot_use_is_left_to_aiohttp(url: str) -> None:
    # Constructing Origin raised ValueError (a port out of range) as the transport opened; before
    # h1 the transport opened and each request failed with aiohttp's own error, as it still does.
    from toolcrib.router.http_transport import aiohttp_transport

    assert not Origin.serves(url)
    async with aiohttp_transport(url, {}, timeout=1.0):
        pass


async def test_a_configured_header_h1_refuses_leaves_the_upstream_on_aiohttp() -> None:
    # A secret pasted with its newline into a configured header: Origin refuses it as it is built;
    # the transport opens all the same and aiohttp fails each request with its own error, as before h1.
    from toolcrib.router.http_transport import aiohttp_transport

    async with aiohttp_transport("http://127.0.0.1:9/mcp", {"Authorization": "Bearer tok\n"}, timeout=1.0):
        pass


async def test_configured_framing_headers_do_not_frame_the_request() -> None:
    # Content-Length / Transfer-Encoding among an upstream's configured headers were written
    # beside h1's own Content-Length: two lengths and a chunked claim on an unchunked body
    # (a request-smuggling shape). h1 frames the request itself.
    heads: list[bytes] = []
    async with _server(_empty, heads=heads) as (url, _), aiohttp.ClientSession() as http:
        origin = Origin(url, {"Content-Length": "0", "transfer-encoding": "chunked", "X-Up": "1"}, 5.0, http)
        assert await _post(origin) == (200, b"{}")
        origin.close()
    lines = heads[0].lower().split(b"\r\n")
    assert [ln for ln in lines if ln.startswith((b"content-length", b"transfer-encoding"))] == [b"content-length: 2"]
    assert b"x-up: 1" in lines
