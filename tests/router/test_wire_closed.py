"""A request whose connection dies while it is being written fails once, with nothing left unretrieved.

When a stdio child dies, the connection's end fails every request of toolcrib's own still waiting
(``Backchannel._lose_wire``) while the request's own write fails on the closed pipe. The request then
raised without reading its answer future, and asyncio reported "Future exception was never
retrieved" (seen as an error raised into anyio's test runner by
``tests/e2e/test_upstream_faults.py::test_killed_stdio_child_recovers`` under load). Real anyio
streams, a real Backchannel and Wire; the connection is ended while the write is blocked.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import anyio
import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from toolcrib.router.backchannel import Backchannel
from toolcrib.router.wire import Wire

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_write_failing_on_a_dead_connection_leaves_no_unretrieved_future() -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        bc = Backchannel("echo")
        write_send, write_recv = anyio.create_memory_object_stream[Any](0)  # a write blocks until read
        read_send, read_recv = anyio.create_memory_object_stream[Any](0)
        ended = anyio.Event()
        failure: list[BaseException] = []

        async def connection() -> None:
            async with bc.attach(read_recv, write_send, anyio.Event()):
                await ended.wait()
            write_recv.close()  # after the connection's end failed the waiting requests: the pipe breaks

        async def call(wire: Wire) -> None:
            try:
                await wire.request("tools/call", {"name": "echo", "arguments": {}})
            except MCPError as exc:
                failure.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(connection)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(call, Wire(bc, write_send))
            await anyio.wait_all_tasks_blocked()  # the request is registered and its write is blocked
            ended.set()
        assert len(failure) == 1
        assert isinstance(failure[0], MCPError) and failure[0].error.code == types.CONNECTION_CLOSED
        failure.clear()
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
        assert not [c for c in reported if "never retrieved" in str(c.get("message", ""))], reported
    finally:
        loop.set_exception_handler(previous)
        for stream in (read_send, read_recv, write_send, write_recv):
            stream.close()
