"""stdio mode (``toolcrib serve --stdio``): for desktop clients that launch their servers.

The client on the other end of stdin/stdout runs as the local operator principal. Logs go to
stderr; nothing but JSON-RPC is written to stdout.
"""

from __future__ import annotations

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.stdio import stdio_server
from mcp.shared.message import ServerMessageMetadata, SessionMessage

from toolcrib.gateway.server import Gateway, Peer, RequestInfo
from toolcrib.gateway.trust.identity import LOCAL_OPERATOR


async def serve_stdio(gateway: Gateway) -> None:
    """Serve one client over this process's stdin/stdout until it closes stdin."""
    peer = Peer(transport="stdio", principal=LOCAL_OPERATOR)
    info = RequestInfo(peer, LOCAL_OPERATOR)
    async with stdio_server() as (read, write):
        tagged_send, tagged_recv = anyio.create_memory_object_stream[SessionMessage | Exception](64)

        async def tag(
            src: MemoryObjectReceiveStream[SessionMessage | Exception],
            dst: MemoryObjectSendStream[SessionMessage | Exception],
        ) -> None:
            async with dst:
                async for item in src:
                    if isinstance(item, SessionMessage):
                        item = SessionMessage(item.message, ServerMessageMetadata(request_context=info))
                    await dst.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(tag, read, tagged_send)
            await gateway.server.run(tagged_recv, write, gateway.init_options)
            tg.cancel_scope.cancel()
