"""toolcrib's stdio transport (toolcrib.router.stdio_transport): line splitting over any chunking,
one parse per line with answers to toolcrib's own requests settled without the SDK's models, the
SDK's parser for everything else, non-JSON lines counted and skipped; and a request written to a
child that is gone fails as a closed connection."""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

import anyio
import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import StdioServerParameters
from mcp.shared.exceptions import MCPError

from toolcrib.router import stdio_noise
from toolcrib.router.stdio_transport import Lines, StdioConn, parse_line, stdio_transport

LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(LINE, max_size=12), tail=LINE, cuts=st.lists(st.integers(0, 600), max_size=12))
def test_lines_come_out_whole_however_the_stream_is_cut(lines: list[bytes], tail: bytes, cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines) + tail
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    splitter, out = Lines(10_000), []
    for lo, hi in itertools.pairwise(bounds):
        out.extend(splitter.feed(stream[lo:hi]))
    assert out == lines  # the tail, without its newline, is not a line yet
    assert splitter.feed(b"\n") == [tail]


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


class Answers:
    """The reader's ``answer`` hook: settles ids starting with ``tc-``, records what it got."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def __call__(self, message: dict[str, Any]) -> bool:
        if not str(message.get("id", "")).startswith("tc-"):
            return False
        self.got.append(message)
        return True


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 10**6), result=st.dictionaries(st.text(max_size=6), JSON_VALUE, max_size=4))
def test_an_answer_to_our_request_is_settled_from_the_line_exactly(n: int, result: dict[str, Any]) -> None:
    answers = Answers()
    line = json.dumps({"jsonrpc": "2.0", "id": f"tc-{n}", "result": result}, ensure_ascii=False).encode()
    assert parse_line(line, answers) is None
    assert answers.got == [{"jsonrpc": "2.0", "id": f"tc-{n}", "result": result}]  # integers beyond 64 bits exact


@settings(max_examples=300, deadline=None)
@given(
    message=st.one_of(
        st.builds(
            lambda i, r: {"jsonrpc": "2.0", "id": i, "result": r},
            st.integers(0, 2**40) | st.text(max_size=6).filter(lambda s: not s.startswith("tc-")),
            st.dictionaries(st.text(max_size=5), JSON_VALUE, max_size=3),
        ),
        st.builds(
            lambda m, p: {"jsonrpc": "2.0", "method": m, "params": p},
            st.sampled_from(["notifications/message", "notifications/progress", "notifications/x"]),
            st.dictionaries(st.text(max_size=5), JSON_VALUE, max_size=3),
        ),
        st.builds(
            lambda i, m: {"jsonrpc": "2.0", "id": i, "method": m},
            st.integers(0, 2**40) | st.text(max_size=6),
            st.sampled_from(["ping", "roots/list", "sampling/createMessage"]),
        ),
    )
)
def test_any_other_message_is_what_the_sdk_parser_makes_of_the_line(message: dict[str, Any]) -> None:
    answers = Answers()
    line = json.dumps(message).encode()
    parsed = parse_line(line, answers)
    assert answers.got == []
    assert parsed is not None
    assert parsed.message == types.jsonrpc_message_adapter.validate_json(line, by_name=False)


@settings(max_examples=300, deadline=None)
@given(line=st.binary(max_size=60))
def test_a_line_that_is_no_jsonrpc_message_is_skipped_and_counted(line: bytes) -> None:
    line = line.replace(b"\n", b"")
    try:
        types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        return  # a real message (unlikely from random bytes): covered above
    except ValueError:
        pass
    token = stdio_noise.current_upstream.set("prop")
    before = stdio_noise._SEEN.get("prop")
    count = before.suppressed if before is not None else 0
    try:
        answers = Answers()
        assert parse_line(line, answers) is None
        assert answers.got == []
        blank = not line.strip(b" \t\r")
        seen = stdio_noise._SEEN.get("prop")
        after = seen.suppressed if seen is not None else 0
        warned = seen is not None and seen.suppressed == 0  # a warning reset the count
        assert blank or warned or after == count + 1
    finally:
        stdio_noise.current_upstream.reset(token)


def test_a_malformed_answer_to_our_request_still_reaches_the_hook() -> None:
    """The hook decides (it fails the call at once with -32603): not dropped as noise."""
    answers = Answers()
    assert parse_line(b'{"jsonrpc":"2.0","id":"tc-1","result":[1]}', answers) is None
    assert answers.got == [{"jsonrpc": "2.0", "id": "tc-1", "result": [1]}]


@pytest.mark.anyio
async def test_writing_to_a_child_that_is_gone_is_a_closed_connection() -> None:
    conns: list[StdioConn] = []
    params = StdioServerParameters(command=sys.executable, args=["-c", "import sys; sys.stdin.readline()"])
    async with stdio_transport(params, on_conn=conns.append) as (read, _write):
        [conn] = conns
        await conn.exchange("tc-1", b'{"jsonrpc":"2.0","id":"tc-1","method":"ping"}', Answers())
        with anyio.fail_after(10):
            with pytest.raises(anyio.EndOfStream):  # the child read one line and exited
                await read.receive()
        with pytest.raises(MCPError) as caught:
            for _ in range(50):  # the pipe may take a write or two before it reports the reader gone
                await conn.exchange("tc-2", b"{}", Answers())
                await anyio.sleep(0.01)
        assert caught.value.error.code == types.CONNECTION_CLOSED


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=10),
    limit=st.integers(1, 25),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_a_line_over_the_limit_is_dropped_whole_and_counted(lines: list[bytes], limit: int, cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    splitter, out = Lines(limit), []
    for lo, hi in itertools.pairwise(bounds):
        out.extend(splitter.feed(stream[lo:hi]))
    kept = [line for line in lines if len(line) <= limit]
    # a dropped line leaves an empty line in its place only when its last bytes came in one chunk
    # with its newline after earlier chunks were dropped; either way it is no longer there
    assert [line for line in out if line] == [line for line in kept if line]
    assert splitter.oversized == len(lines) - len(kept)


def test_a_line_that_is_not_an_object_is_skipped_without_a_parser() -> None:
    answers = Answers()
    for line in (b"[1,2]", b"  x", b'"tc-1"', b"\xef\xbb\xbf{}", b"12"):
        assert parse_line(line, answers) is None
    assert answers.got == []
