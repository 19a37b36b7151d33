"""The upstream SSE reader (``toolcrib.router.http_transport``: ``_lines`` + ``_Conn.events``).

Properties: (1) any bytes, cut into chunks anywhere (inside a CRLF, inside a UTF-8 sequence), give
exactly the messages the same bytes give in one chunk, and nothing raises; (2) a stream built by the
rules of the SSE format (WHATWG HTML "Server-sent events": ``data:`` lines joined with LF, an event
dispatched at a blank line, comments and ``id``/``retry`` fields ignored, an unterminated last event
discarded; LF or CRLF line ends) delivers exactly its ``message`` events' JSON-RPC messages, in order.

The body stands in for an ``aiohttp.ClientResponse`` (``resp.content.iter_any()`` yields the chunks as
given), so the chunk boundaries are the fuzzer's; the parser and ``_Conn`` are the real ones.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import anyio
from hypothesis import strategies as st
from mcp_types.jsonrpc import jsonrpc_message_adapter

from tests.fuzz.engine import Target
from tests.fuzz.strategies import rpc_shaped, valid_requests
from toolcrib.router.http_transport import _Conn


class _Body:
    """What ``_Conn.events`` reads of a response: ``content.iter_any()``."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.content = self
        self.chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


async def _read(chunks: list[bytes], rid: Any) -> list[tuple[Any, Any]]:
    send, recv = anyio.create_memory_object_stream[Any](math.inf)
    conn = _Conn(cast(aiohttp.ClientSession, None), "http://fuzz.invalid/mcp", send)  # events() never uses http
    async with send, recv:
        await conn.events(cast(aiohttp.ClientResponse, _Body(chunks)), rid)
        out = []
        while True:
            try:
                item = recv.receive_nowait()
            except anyio.WouldBlock:
                return out
            out.append((item.message.model_dump(by_alias=True, exclude_none=True), item.metadata))


async def _read_all(chunkings: list[list[bytes]], rid: Any) -> list[list[tuple[Any, Any]]]:
    return [await _read(chunks, rid) for chunks in chunkings]


def read(chunkings: list[list[bytes]], rid: Any = None) -> list[list[tuple[Any, Any]]]:
    """The messages ``_Conn.events`` delivers for each way of cutting the body (one event loop)."""
    return asyncio.run(_read_all(chunkings, rid))


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@st.composite
def sse_stream(draw: st.DrawFn) -> tuple[bytes, list[dict[str, Any]]]:
    """A well-formed SSE body and the messages it must deliver, in order."""
    out: list[bytes] = []
    expected: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 6))):
        eol = draw(st.sampled_from([b"\n", b"\r\n"]))
        kind = draw(st.sampled_from(["message", "message", "named", "other", "junk"]))
        message = draw(valid_requests)
        text = json.dumps(message, indent=draw(st.sampled_from([None, 1])), ensure_ascii=draw(st.booleans()))
        if kind == "junk":
            text = draw(st.text(max_size=20).filter(lambda t: "\n" not in t and "\r" not in t)) or "x"
        lines = [(b"data: " if draw(st.booleans()) else b"data:") + part.encode() for part in text.split("\n")]
        extra = [
            draw(st.sampled_from([b": keep-alive", b"id: 7", b"retry: 1000", b":", b"unknown: x"]))
            for _ in range(draw(st.integers(0, 2)))
        ]
        if kind == "other":
            extra.append(b"event: " + draw(st.sampled_from([b"ping", b"endpoint", b"x"])))
        elif kind == "named":
            extra.append(b"event: message")
        for line in extra:  # anywhere among the data lines, which keep their order
            lines.insert(draw(st.integers(0, len(lines))), line)
        out.append(eol.join(lines) + eol + eol)
        if kind in ("message", "named"):
            expected.append(message)
    if draw(st.booleans()):
        out.append(b"data: " + json.dumps(draw(valid_requests)).encode() + b"\n")  # unterminated: discarded
    return b"".join(out), expected


def check(case: tuple[str, bytes, Any, list[int], list[dict[str, Any]] | None]) -> None:
    _, data, rid, points, expected = case
    bytewise = [bytes([b]) for b in data[:512]] + [data[512:]]
    whole, chunked, slow = read([[data], cut(data, points), bytewise], rid)
    assert chunked == whole, "chunking changed the events"
    assert slow == whole, "byte-by-byte reading changed the events"
    if expected is None:
        return
    want = [jsonrpc_message_adapter.validate_python(m).model_dump(by_alias=True, exclude_none=True) for m in expected]
    got = [m for m, _ in whole]
    if rid is not None:  # no answer to rid in the stream: the reader ends with a "connection closed" error for it
        assert got[-1]["id"] == rid and "error" in got[-1], got[-1]
        got = got[:-1]
    assert got == want


_random_bytes = st.one_of(
    st.binary(max_size=400),
    st.lists(
        st.sampled_from(
            [
                b"data: ",
                b"data:",
                b"event: message",
                b"event: x",
                b"\n",
                b"\r\n",
                b"\r",
                b":",
                b"\xc3",
                b"\xa9",
                b"{",
                b"}",
            ]
        )
        | rpc_shaped.map(lambda m: json.dumps(m).encode())
        | st.binary(max_size=8),
        max_size=40,
    ).map(b"".join),
)

TARGET = Target(
    "sse",
    st.one_of(
        st.tuples(st.just("bytes"), _random_bytes, st.none(), st.lists(st.integers(0, 10_000), max_size=12), st.none()),
        sse_stream().flatmap(
            lambda s: st.tuples(
                st.just("stream"),
                st.just(s[0]),
                st.none() | st.integers() | st.text(max_size=8),
                st.lists(st.integers(0, 10_000), max_size=12),
                st.just(s[1]),
            )
        ),
    ),
    check,
)
