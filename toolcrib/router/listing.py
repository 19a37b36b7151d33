"""An upstream's catalog snapshot (tools, resources, templates, prompts) and how it is fetched."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp import Client


@dataclass(frozen=True)
class Listing:
    """A snapshot of an upstream's catalog."""

    tools: tuple[types.Tool, ...] = ()
    resources: tuple[types.Resource, ...] = ()
    templates: tuple[types.ResourceTemplate, ...] = ()
    prompts: tuple[types.Prompt, ...] = ()


def astuple_shallow(listing: Listing) -> tuple[tuple[Any, ...], ...]:
    """``(tools, resources, templates, prompts)``, in :class:`Listing`'s field order."""
    return (listing.tools, listing.resources, listing.templates, listing.prompts)


async def fetch_listing(client: Client, kinds: set[str], old: Listing | None = None) -> Listing:
    """Re-list ``kinds`` (tools, resources (with templates), prompts) the server declares; keep the rest of ``old``."""
    caps = client.server_capabilities
    old = old or Listing()
    tools, resources, templates, prompts = old.tools, old.resources, old.templates, old.prompts
    if "tools" in kinds and caps.tools is not None:
        tools = tuple(await all_pages(lambda c: client.list_tools(cursor=c, cache_mode="bypass"), "tools"))
    if "resources" in kinds and caps.resources is not None:
        resources = tuple(await all_pages(lambda c: client.list_resources(cursor=c, cache_mode="bypass"), "resources"))
        templates = tuple(
            await all_pages(
                lambda c: client.list_resource_templates(cursor=c, cache_mode="bypass"),
                "resource_templates",
            )
        )
    if "prompts" in kinds and caps.prompts is not None:
        prompts = tuple(await all_pages(lambda c: client.list_prompts(cursor=c, cache_mode="bypass"), "prompts"))
    return Listing(tools, resources, templates, prompts)


async def all_pages(fetch: Callable[[str | None], Awaitable[Any]], attr: str, cap: int = 100) -> list[Any]:
    """Every item of a paginated list, following ``nextCursor`` for at most ``cap`` pages."""
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(cap):
        page = await fetch(cursor)
        items.extend(getattr(page, attr))
        cursor = page.next_cursor
        if not cursor:
            break
    return items
