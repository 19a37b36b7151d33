"""Upstream changes told to connected clients: list changes and updates of subscribed resources.

The pool reports ``(server, what)`` (``tools_changed``, ``resources_changed``, ``prompts_changed``,
``connected``, ``disconnected``, ``resource_updated:<uri>``); each stateful client connection
(:class:`toolcrib.gateway.server.Peer`) gets the matching ``notifications/*`` at most once, and a
resource update only if it subscribed to that resource and its policy lets it reach it. A client
that does not take a notification within 2 seconds misses it (debug log), never blocks the others.
The same events go to 2026-07-28 clients' ``subscriptions/listen`` streams, under the same rules
(:mod:`toolcrib.gateway.listen`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)

if TYPE_CHECKING:
    from toolcrib.gateway.server import Gateway, Peer

log = logging.getLogger("toolcrib.gateway")
EVENTS: dict[str, ServerEvent] = {
    "notifications/tools/list_changed": ToolsListChanged(),
    "notifications/prompts/list_changed": PromptsListChanged(),
    "notifications/resources/list_changed": ResourcesListChanged(),
}


async def upstream_changed(gateway: Gateway, server: str, what: str) -> None:
    """Tell the clients of ``gateway`` what changed on upstream ``server``."""
    note: types.ServerNotification | None = None
    if what.startswith("resource_updated:"):
        uri = gateway.pool.catalog.resource_uri(server, what.split(":", 1)[1])
        gateway.listeners.publish(ResourceUpdated(uri=uri))
        update = types.ResourceUpdatedNotification(params=types.ResourceUpdatedNotificationParams(uri=uri))
        for peer in list(gateway.peers):
            if uri in peer.subscriptions and gateway.may_use(peer.principal, uri, "resource"):
                await notify(peer, update)
        return
    if what in ("tools_changed", "connected", "disconnected"):
        if gateway.mode == "passthrough" or gateway.config.gateway.always_expose:
            note = types.ToolListChangedNotification()
    elif what == "resources_changed":
        note = types.ResourceListChangedNotification()
    elif what == "prompts_changed":
        note = types.PromptListChangedNotification()
    if note is not None:
        gateway.listeners.publish(EVENTS[note.method])
        for peer in list(gateway.peers):
            await notify(peer, note)


async def notify(peer: Peer, note: Any) -> None:
    """Send ``note`` to one client connection, best effort (2 s at most)."""
    if peer.outbound is None:
        return
    try:
        with anyio.move_on_after(2):
            await peer.outbound.send_notification(note)
    except Exception:
        log.debug("could not notify peer %s", peer.id, exc_info=True)
