"""toolcrib's stdio client transport: the SDK's process handling, toolcrib's own pipe tasks.

An upstream run as a child process speaks newline-delimited JSON-RPC on its stdin and stdout
(MCP basic/transports, "stdio": each message one line of UTF-8 JSON, no embedded newlines). The
SDK's ``stdio_client`` parses every stdout line into pydantic models and hands it to the session
through a memory stream, and serialises every request from models; on the hot path (a
``tools/call`` framed by :mod:`toolcrib.router.wire`) that is two model round trips and two task
hops per call for nothing. :func:`stdio_transport` keeps the SDK's parts that are about the
process, reused as they are (spawn in a new process group, the spec's shutdown order: close stdin,
wait, SIGTERM then SIGKILL to the group, drain stdout meanwhile), and replaces the pipe tasks:

- the reader splits stdout into lines (at most :data:`MAX_LINE` bytes each, 64 MiB as an SSE
  line over HTTP; a longer one is dropped up to its newline) and parses each once (``orjson``,
  exact for integers beyond 64 bits: :func:`~toolcrib.gateway.trust.matchers.loads_json`); an
  answer to one of toolcrib's own requests (:class:`StdioConn` ``answer`` returns True) is settled
  right there, with no model and no stream hop; any other message is parsed by the SDK's own
  JSON-RPC adapter (as the SDK transport does) and delivered on the read stream in order. Once a
  message went that way, the next answer follows it the same way (the SDK transport's order
  exactly), so what a server sends before an answer (a server request, a log line, progress) is
  handled before the answer ends the call; the reader also gives the session's reader a loop
  turn after each hand-off;
- a line that is not a JSON-RPC message is skipped and counted
  (:func:`~toolcrib.router.stdio_noise.non_json_line`), blank lines silently: a line that does not
  start with ``{`` without any parser, bytes that are not UTF-8 too (the SDK transport's strict
  decoding ended the connection); a line the strict parser refuses (``NaN``, ``1e400``) still goes
  to the SDK's parser, which decides as before. The reader takes a loop turn at least every
  :data:`YIELD_EVERY` lines, so a child flooding stdout cannot hold the event loop;
- writes (toolcrib's requests from the calling task, :meth:`StdioConn.exchange`, and the SDK
  session's messages from a writer task) go through :meth:`StdioConn.write`: one whole line at a
  time, each writer waiting for the child to take what is buffered *before* it writes, so a child
  that stops reading holds at most one line in the gateway's memory beyond the pipe's buffer, and
  a call abandoned at its deadline while waiting was never sent.

The process helpers are the SDK's private functions of ``mcp.client.stdio`` (mcp 2.x, pinned
``<3`` in pyproject.toml): writing them again would copy the SDK's tree kill and its Windows job
handling for no gain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
from mcp import StdioServerParameters
from mcp.client.stdio import (
    _create_platform_compatible_process,
    _drain_stdout,
    _get_executable_command,
    _stop_server_process,
    get_default_environment,
)
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import CONNECTION_CLOSED, JSONRPCError, JSONRPCResponse, jsonrpc_message_adapter
from pydantic import ValidationError

from toolcrib.gateway.trust.matchers import loads_json
from toolcrib.router.http_transport import MAX_EVENT_BYTES
from toolcrib.router.stdio_noise import non_json_line

log = logging.getLogger("toolcrib.upstream")

WRITER_FLUSH_TIMEOUT = 0.5
"""Seconds the writer task gets at shutdown to write what the session already handed it (the SDK's value)."""
MAX_LINE = MAX_EVENT_BYTES
"""The longest stdout line kept (bytes, 64 MiB: the Streamable HTTP transport's cap on an SSE line)."""
YIELD_EVERY = 64
"""Lines the reader parses at most between two loop turns (a child flooding stdout cannot starve the gateway)."""


class StdioConn:
    """The write side of one stdio connection, shared by toolcrib's own requests
    (:mod:`toolcrib.router.wire`) and the SDK session's writer task, and the hook the reader uses
    to settle the answers to toolcrib's requests."""

    def __init__(self, stdin: asyncio.StreamWriter) -> None:
        self._writer = stdin
        self._lock = asyncio.Lock()
        self.answer: Callable[[dict[str, Any]], bool] | None = None
        """Settles a wire-form answer to a request of toolcrib's own; False when not one (set by :meth:`exchange`)."""

    async def write(self, line: bytes) -> None:
        """Write ``line`` (one message and its newline) whole, one writer at a time.

        A writer first waits until the child has taken what is buffered (below the transport's
        high-water mark, 64 KiB), then writes without a pause: at most one line waits in memory
        beyond that mark, however many callers a child that stopped reading keeps waiting, and a
        caller cancelled while it waits (its deadline) has written nothing. Costs no loop turn when
        the pipe is keeping up. Raises :class:`MCPError` ``CONNECTION_CLOSED`` when the child's
        stdin is closed or broken (the SDK's contract for a closed connection)."""
        async with self._lock:
            try:
                await self._writer.drain()
                if self._writer.transport.is_closing():
                    raise ConnectionResetError
                self._writer.write(line)
            except (ConnectionError, OSError, RuntimeError):
                raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None

    async def exchange(
        self, rid: str, body: bytes, answer: Callable[[dict[str, Any]], bool], extra: Mapping[str, str] | None = None
    ) -> None:
        """Write request ``rid`` (one JSON object, UTF-8, no newline) as one line (:meth:`write`);
        its answer will be given to ``answer`` by the reader. ``extra`` (HTTP headers) has no
        meaning on stdio. Raises :class:`MCPError` ``CONNECTION_CLOSED`` as :meth:`write`."""
        self.answer = answer
        await self.write(body + b"\n")


class Lines:
    """Splits a byte stream into lines at ``\\n`` (the newline is not part of a line; a ``\\r``
    before it is, and :func:`parse_line` reads it as JSON whitespace). A line split across chunks is
    joined once, when its end arrives; bytes after the last newline wait for the next chunk. A line
    longer than ``limit`` bytes is not kept: its bytes are dropped up to its newline and
    :attr:`oversized` counts it (memory stays bounded whatever a child writes)."""

    __slots__ = ("_partial", "_size", "_skipping", "limit", "oversized")

    def __init__(self, limit: int) -> None:
        self._partial: list[bytes] = []
        self._size = 0
        self._skipping = False
        self.limit = limit
        self.oversized = 0
        """Lines dropped for their length since this counter was last reset by its reader."""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes, in order (none when it holds no newline)."""
        if b"\n" not in chunk:
            if chunk and not self._skipping:
                self._partial.append(chunk)
                self._size += len(chunk)
                if self._size > self.limit:
                    self._partial.clear()
                    self._size, self._skipping = 0, True
            return []
        lines = chunk.split(b"\n")
        if self._skipping:
            lines[0] = b""
            self._skipping = False
            self.oversized += 1
        elif self._partial:
            if self._size + len(lines[0]) > self.limit:
                lines[0] = b""
                self.oversized += 1
            else:
                self._partial.append(lines[0])
                lines[0] = b"".join(self._partial)
            self._partial.clear()
            self._size = 0
        last = lines.pop()
        if len(chunk) > self.limit:  # only then can a line within this chunk be too long
            for i, line in enumerate(lines):
                if len(line) > self.limit:
                    lines[i] = b""
                    self.oversized += 1
            if len(last) > self.limit:
                last, self._skipping = b"", True
        if last:
            self._partial.append(last)
            self._size = len(last)
        return lines


def parse_line(line: bytes, answer: Callable[[dict[str, Any]], bool] | None) -> SessionMessage | None:
    """One stdout line (no newline) as the message to deliver, or None when there is nothing to
    deliver: an answer ``answer`` settled, a blank line, or a line that is not a JSON-RPC message
    (counted by :func:`~toolcrib.router.stdio_noise.non_json_line`)."""
    first = line.lstrip(b" \t\r")[:1]
    if not first:
        return None
    if first != b"{":  # every JSON-RPC message is an object: no parser needed to skip this
        non_json_line(line)
        return None
    try:
        data = loads_json(line)  # orjson, or json where orjson would turn a long integer into a float
    except ValueError:
        data = None  # not JSON (or not RFC 8259 JSON), or nested too deeply: the SDK's parser decides
    else:
        if (
            answer is not None
            and type(data) is dict
            and "method" not in data
            and ("result" in data or "error" in data)
            and answer(data)
        ):
            return None
    try:
        return SessionMessage(jsonrpc_message_adapter.validate_json(line, by_name=False))
    except (ValidationError, ValueError, RecursionError):
        non_json_line(line)
        return None


def _asyncio_writer(stdin: Any) -> asyncio.StreamWriter:
    """The asyncio ``StreamWriter`` under anyio's process stdin (toolcrib runs on asyncio only):
    :meth:`StdioConn.write` needs its drain-before-write, which anyio's ``send`` (write, then
    drain) does not offer. Raises RuntimeError when anyio's wrapper no longer holds one."""
    writer = getattr(stdin, "_stream", None)
    if not isinstance(writer, asyncio.StreamWriter):
        raise RuntimeError(f"toolcrib's stdio transport needs anyio's asyncio process streams, got {type(stdin)!r}")
    return writer


@asynccontextmanager
async def stdio_transport(
    server: StdioServerParameters, on_conn: Callable[[StdioConn], None] | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """Spawn ``server`` and yield ``(read, write)`` memory streams for the SDK session, as the SDK's
    ``stdio_client`` does; ``on_conn`` receives the connection's :class:`StdioConn` before the
    streams are yielded. On exit the child is stopped the SDK's way (bounded, shielded from
    cancellation). Raises ``OSError`` when the command cannot be started."""
    command = await _get_executable_command(server.command)
    process = await _create_platform_compatible_process(
        command=command, args=server.args, env=get_default_environment() | (server.env or {}), cwd=server.cwd
    )
    # No await until the task group is entered: a cancellation in the gap would leak the live child.
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
    assert process.stdin is not None and process.stdout is not None
    try:
        conn = StdioConn(_asyncio_writer(process.stdin))
    except RuntimeError:
        with anyio.CancelScope(shield=True):
            await _stop_server_process(process)
        raise
    stopping = False
    writer_done = anyio.Event()

    async def reader() -> None:
        stdout = process.stdout
        assert stdout is not None
        try:
            async with read_writer:
                try:
                    lines = Lines(MAX_LINE)
                    parsed = 0
                    routed = False  # a message went to the session since the last answer
                    while True:
                        try:
                            chunk = await stdout.receive()
                        except anyio.EndOfStream:
                            return
                        for line in lines.feed(chunk):
                            # After a message for the session (a server request, a log line,
                            # progress), the next answer goes the same way, behind it.
                            message = parse_line(line, None if routed else conn.answer)
                            parsed += 1
                            if message is not None:
                                routed = not isinstance(message.message, JSONRPCResponse | JSONRPCError)
                                try:
                                    await read_writer.send(message)
                                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                                    return  # the session is gone; only the drain below remains
                            if message is not None or parsed >= YIELD_EVERY:
                                # One loop turn: after a hand-off, the session's reader (woken by it)
                                # notes the message (a progress callback started, a log line queued
                                # to its call) before a later line's answer can settle and end the
                                # call; and every YIELD_EVERY lines, so a child flooding stdout with
                                # lines that are skipped cannot hold the event loop (a read returns
                                # without a pause while the pipe has data).
                                parsed = 0
                                await anyio.lowlevel.checkpoint()
                        if lines.oversized:
                            for _ in range(lines.oversized):
                                non_json_line(f"(a line of over {MAX_LINE} bytes, dropped)".encode())
                            lines.oversized = 0
                finally:
                    await _drain_stdout(process)
        except anyio.ClosedResourceError:
            pass  # our own shutdown closed stdout under the read
        except (anyio.BrokenResourceError, ConnectionError):
            if not stopping:
                log.warning("reading the stdout of upstream process %s failed", process.pid, exc_info=True)

    async def writer() -> None:
        try:
            async with write_reader:
                async for item in write_reader:
                    text = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await conn.write(text.encode() + b"\n")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, MCPError):
            # The child may still be alive: end the read stream so the session sees the connection
            # end instead of a request waiting forever.
            await read_writer.aclose()
        finally:
            writer_done.set()

    async def shutdown() -> None:
        read_stream.close()  # the reader goes on draining stdout, so a child blocked on writing can exit
        write_stream.close()
        with anyio.move_on_after(WRITER_FLUSH_TIMEOUT):
            await writer_done.wait()
        await _stop_server_process(process)
        for stream in (read_stream, write_stream, read_writer, write_reader):
            await stream.aclose()
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(writer)
        if on_conn is not None:
            on_conn(conn)
        try:
            yield read_stream, write_stream
        finally:
            stopping = True
            conn.answer = None
            with anyio.CancelScope(shield=True):
                await shutdown()
            tg.cancel_scope.cancel()
