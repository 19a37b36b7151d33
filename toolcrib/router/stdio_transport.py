"""toolcrib's stdio client transport: the SDK's process handling, toolcrib's own pipe tasks.

An upstream run as a child process speaks newline-delimited JSON-RPC on its stdin and stdout
(MCP basic/transports, "stdio": each message one line of UTF-8 JSON, no embedded newlines). The
SDK's ``stdio_client`` parses every stdout line into pydantic models and hands it to the session
through a memory stream, and serialises every request from models; on the hot path (a
``tools/call`` framed by :mod:`toolcrib.router.wire`) that is two model round trips and two task
hops per call for nothing. :func:`stdio_transport` keeps the SDK's parts that are about the
process, reused as they are (spawn in a new process group, the spec's shutdown order: close stdin,
wait, SIGTERM then SIGKILL to the group, drain stdout meanwhile), and replaces the pipe tasks:

- the reader splits stdout into lines and parses each once (``orjson``, exact for integers beyond
  64 bits: :func:`~toolcrib.gateway.trust.matchers.loads_json`); an answer to one of
  toolcrib's own requests (:class:`StdioConn` ``answer`` returns True) is settled right there, with
  no model and no stream hop; any other message is parsed by the SDK's own JSON-RPC adapter (as the
  SDK transport does) and delivered on the read stream in order; after each such hand-off the
  reader gives the session's reader one loop turn to note it, so what a server sends before an
  answer (a log line, progress, a server request) is routed before the answer settles and the
  call ends (as when the answer went the same way);
- a line that is not a JSON-RPC message is skipped and counted
  (:func:`~toolcrib.router.stdio_noise.non_json_line`), blank lines silently; bytes that are not
  UTF-8 are such a line (the SDK transport's strict decoding ended the connection);
- :meth:`StdioConn.exchange` writes a request framed by toolcrib straight to the child's stdin from
  the calling task; the SDK session's messages go through the write stream and a writer task as
  before. Each message is one ``write`` of a whole line, so the two never interleave.

The process helpers are the SDK's private functions of ``mcp.client.stdio`` (mcp 2.x, pinned
``<3`` in pyproject.toml): writing them again would copy the SDK's tree kill and its Windows job
handling for no gain.
"""

from __future__ import annotations

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
from mcp_types import CONNECTION_CLOSED, jsonrpc_message_adapter
from pydantic import ValidationError

from toolcrib.gateway.trust.matchers import loads_json
from toolcrib.router.stdio_noise import non_json_line

log = logging.getLogger("toolcrib.upstream")

WRITER_FLUSH_TIMEOUT = 0.5
"""Seconds the writer task gets at shutdown to write what the session already handed it (the SDK's value)."""
_BLANK = frozenset(b" \t\r")


class StdioConn:
    """The write side of one stdio connection for toolcrib's own requests (:mod:`toolcrib.router.wire`),
    and the hook its reader uses to settle their answers."""

    def __init__(self, stdin: Any) -> None:
        self._stdin = stdin
        self.answer: Callable[[dict[str, Any]], bool] | None = None
        """Settles a wire-form answer to a request of toolcrib's own; False when not one (set by :meth:`exchange`)."""

    async def exchange(
        self, rid: str, body: bytes, answer: Callable[[dict[str, Any]], bool], extra: Mapping[str, str] | None = None
    ) -> None:
        """Write request ``rid`` (one JSON object, UTF-8, no newline) as one line; its answer will be
        given to ``answer`` by the reader. ``extra`` (HTTP headers) has no meaning on stdio.

        Raises :class:`MCPError` ``CONNECTION_CLOSED`` when the child's stdin is closed or broken
        (the SDK's contract for a closed connection)."""
        self.answer = answer
        try:
            await self._stdin.send(body + b"\n")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError, RuntimeError):
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None


class Lines:
    """Splits a byte stream into lines at ``\\n`` (the newline is not part of a line; a ``\\r``
    before it is, and :func:`parse_line` reads it as JSON whitespace). A line split across chunks is
    joined once, when its end arrives; bytes after the last newline wait for the next chunk."""

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes, in order (none when it holds no newline)."""
        if b"\n" not in chunk:
            if chunk:
                self._partial.append(chunk)
            return []
        lines = chunk.split(b"\n")
        if self._partial:
            self._partial.append(lines[0])
            lines[0] = b"".join(self._partial)
            self._partial.clear()
        last = lines.pop()
        if last:
            self._partial.append(last)
        return lines


def parse_line(line: bytes, answer: Callable[[dict[str, Any]], bool] | None) -> SessionMessage | None:
    """One stdout line (no newline) as the message to deliver, or None when there is nothing to
    deliver: an answer ``answer`` settled, a blank line, or a line that is not a JSON-RPC message
    (counted by :func:`~toolcrib.router.stdio_noise.non_json_line`)."""
    if not line or _BLANK.issuperset(line):
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
    conn = StdioConn(process.stdin)
    stopping = False
    writer_done = anyio.Event()

    async def reader() -> None:
        stdout = process.stdout
        assert stdout is not None
        try:
            async with read_writer:
                try:
                    lines = Lines()
                    while True:
                        try:
                            chunk = await stdout.receive()
                        except anyio.EndOfStream:
                            return
                        for line in lines.feed(chunk):
                            message = parse_line(line, conn.answer)
                            if message is None:
                                continue
                            try:
                                await read_writer.send(message)
                            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                                return  # the session is gone; only the drain below remains
                            # One loop turn: the session's reader, woken by the hand-off, notes the
                            # message (a progress callback started, a log line queued to its call)
                            # before a later line's answer can settle and end the call.
                            await anyio.lowlevel.checkpoint()
                finally:
                    await _drain_stdout(process)
        except anyio.ClosedResourceError:
            pass  # our own shutdown closed stdout under the read
        except (anyio.BrokenResourceError, ConnectionError):
            if not stopping:
                log.warning("reading the stdout of upstream process %s failed", process.pid, exc_info=True)

    async def writer() -> None:
        stdin = process.stdin
        assert stdin is not None
        try:
            async with write_reader:
                async for item in write_reader:
                    text = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await stdin.send(text.encode() + b"\n")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError, RuntimeError):
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
