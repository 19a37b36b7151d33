"""An upstream's catalog snapshot (tools, resources, templates, prompts) and how it is fetched.

Listings are read defensively, because upstreams misbehave:

- tools are the point of a server: a failing ``tools/list`` fails the connection attempt;
- resources, resource templates and prompts are optional: one that errors (``-32601`` or any other
  error, a malformed page) or does not answer within ``optional_timeout`` seconds degrades only
  that capability (its previous snapshot is kept, empty at first), with one warning per server and
  capability; a lost connection still ends the attempt;
- paging (basic/utilities/pagination) is followed for at most :data:`MAX_PAGES` pages and
  :data:`MAX_ITEMS` items; a cursor seen before ends the listing; items repeated under the same
  name (URI for resources, URI template for templates) keep the first; each with one warning.

Freshness (SEP-2549, 2026-07-28 "Caching"): a list result's ``ttlMs`` says how long it stays
fresh. The listing remembers, per kind (``tools``, ``resources`` with templates, ``prompts``), the
shortest positive ``ttlMs`` of its pages and when it was fetched; :func:`due` names the kinds to
re-list. ``ttlMs`` 0 (the SDK default, "immediately stale") or absent sets no schedule: such a
listing is refreshed on change notifications only, never polled. A refresh is never sooner than
:data:`MIN_TTL_REFRESH` seconds after the last fetch, whatever the upstream asks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.shared.exceptions import MCPError

log = logging.getLogger("toolcrib.upstream")

MAX_PAGES = 100
MAX_ITEMS = 10_000
MIN_TTL_REFRESH = 5.0
"""Seconds: the soonest an upstream's ``ttlMs`` may make toolcrib list the same kind again."""
KINDS = ("tools", "resources", "prompts")

_KEYS: dict[str, Callable[[Any], str]] = {
    "tools": lambda t: t.name,
    "resources": lambda r: str(r.uri),
    "resource_templates": lambda t: t.uri_template,
    "prompts": lambda p: p.name,
}


@dataclass(frozen=True)
class Listing:
    """A snapshot of an upstream's catalog."""

    tools: tuple[types.Tool, ...] = ()
    resources: tuple[types.Resource, ...] = ()
    templates: tuple[types.ResourceTemplate, ...] = ()
    prompts: tuple[types.Prompt, ...] = ()
    ttl_ms: Mapping[str, int] = field(default_factory=dict, compare=False, kw_only=True)
    """Per kind: the shortest positive ``ttlMs`` the upstream gave on that listing's pages (absent: none)."""
    fetched_at: Mapping[str, float] = field(default_factory=dict, compare=False, kw_only=True)
    """Per kind: ``time.monotonic()`` when it was last listed."""


def due(listing: Listing, now: float) -> tuple[set[str], float]:
    """``(kinds, wait)``: the kinds whose ``ttlMs`` ran out at ``now`` (a ``time.monotonic()`` value),
    and seconds until the next one does (``math.inf`` when no kind has a TTL). A kind is due no
    sooner than :data:`MIN_TTL_REFRESH` seconds after it was fetched."""
    kinds: set[str] = set()
    wait = math.inf
    for kind, ttl in listing.ttl_ms.items():
        fetched = listing.fetched_at.get(kind)
        if ttl <= 0 or fetched is None:
            continue
        left = fetched + max(ttl / 1000, MIN_TTL_REFRESH) - now
        if left <= 0:
            kinds.add(kind)
        else:
            wait = min(wait, left)
    return kinds, wait


def changed_kinds(old: Listing, new: Listing, kinds: Iterable[str]) -> set[str]:
    """Which of ``kinds`` list different items in ``new`` than in ``old`` (resources count templates)."""
    return {k for k in kinds if _items(old, k) != _items(new, k)}


def _items(listing: Listing, kind: str) -> tuple[Any, ...]:
    if kind == "resources":
        return (listing.resources, listing.templates)
    return tuple(getattr(listing, kind, ()))


def astuple_shallow(listing: Listing) -> tuple[tuple[Any, ...], ...]:
    """``(tools, resources, templates, prompts)``, in :class:`Listing`'s field order."""
    return (listing.tools, listing.resources, listing.templates, listing.prompts)


class _Warner:
    """One warning per (server, what): ``warned`` persists across reconnects."""

    def __init__(self, server: str, warned: set[str] | None) -> None:
        self.server = server
        self.warned = warned if warned is not None else set()

    def __call__(self, what: str, message: str) -> None:
        if what in self.warned:
            log.debug("upstream %s: %s", self.server, message)
            return
        self.warned.add(what)
        log.warning("upstream %s: %s", self.server, message)


async def fetch_listing(
    client: Client,
    kinds: set[str],
    old: Listing | None = None,
    *,
    server: str = "?",
    warned: set[str] | None = None,
    optional_timeout: float = 10.0,
) -> Listing:
    """Re-list ``kinds`` (tools, resources (with templates), prompts) the server declares; keep the rest of ``old``.

    Raises what ``tools/list`` raises, and :class:`MCPError` ``CONNECTION_CLOSED`` from any listing.
    """
    caps = client.server_capabilities
    old = old or Listing()
    warn = _Warner(server, warned)
    tools, resources, templates, prompts = old.tools, old.resources, old.templates, old.prompts
    ttls = _Ttls()

    async def optional(fetch: Callable[[str | None], Awaitable[Any]], attr: str, kept: tuple[Any, ...]) -> Any:
        try:
            with anyio.fail_after(optional_timeout):
                return tuple(await all_pages(ttls.watch(kind_of[attr], fetch), attr, warn=warn))
        except MCPError as exc:
            if exc.error.code == types.CONNECTION_CLOSED:
                raise
            reason = f"error {exc.error.code}: {exc.error.message}"
        except TimeoutError:
            reason = f"no answer within {optional_timeout:g} s"
        except Exception as exc:  # a malformed page degrades the capability, like an error
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        listed = attr.replace("_", " ")
        warn(f"{attr}-failed", f"listing {listed} failed ({reason}); continuing without them")
        return kept

    kind_of = {"resources": "resources", "resource_templates": "resources", "prompts": "prompts"}
    if "tools" in kinds and caps.tools is not None:
        fetch_tools = ttls.watch("tools", lambda c: client.list_tools(cursor=c, cache_mode="bypass"))
        tools = tuple(await all_pages(fetch_tools, "tools", warn=warn))
    if "resources" in kinds and caps.resources is not None:
        resources = await optional(
            lambda c: client.list_resources(cursor=c, cache_mode="bypass"), "resources", old.resources
        )
        templates = await optional(
            lambda c: client.list_resource_templates(cursor=c, cache_mode="bypass"), "resource_templates", old.templates
        )
    if "prompts" in kinds and caps.prompts is not None:
        prompts = await optional(lambda c: client.list_prompts(cursor=c, cache_mode="bypass"), "prompts", old.prompts)
    now = time.monotonic()
    listed = {k for k in KINDS if k in kinds}
    ttl_ms = {k: v for k, v in old.ttl_ms.items() if k not in listed} | ttls.shortest
    fetched_at = {**old.fetched_at, **dict.fromkeys(listed, now)}
    return Listing(tools, resources, templates, prompts, ttl_ms=ttl_ms, fetched_at=fetched_at)


class _Ttls:
    """Collects the shortest positive ``ttlMs`` of the pages fetched, per kind."""

    def __init__(self) -> None:
        self.shortest: dict[str, int] = {}

    def watch(self, kind: str, fetch: Callable[[str | None], Awaitable[Any]]) -> Callable[[str | None], Awaitable[Any]]:
        async def fetched(cursor: str | None) -> Any:
            page = await fetch(cursor)
            ttl = getattr(page, "ttl_ms", None)
            if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0:
                self.shortest[kind] = min(ttl, self.shortest.get(kind, ttl))
            return page

        return fetched


async def all_pages(
    fetch: Callable[[str | None], Awaitable[Any]],
    attr: str,
    cap: int = MAX_PAGES,
    *,
    max_items: int = MAX_ITEMS,
    warn: Callable[[str, str], None] | None = None,
) -> list[Any]:
    """Every distinct item of a paginated list: at most ``cap`` pages and ``max_items`` items, stopping at a
    repeated cursor; duplicates (by :data:`_KEYS`) keep the first. ``warn(what, message)`` hears of each."""
    items: list[Any] = []
    seen_keys: set[str] = set()
    seen_cursors: set[str] = set()
    duplicates = 0
    cursor: str | None = None
    key = _KEYS.get(attr)
    listed = attr.replace("_", " ")
    note = warn or (lambda what, message: log.warning("%s", message))
    for _ in range(cap):
        page = await fetch(cursor)
        for item in getattr(page, attr):
            k = key(item) if key is not None else None
            if k is not None and k in seen_keys:
                duplicates += 1
                continue
            if len(items) >= max_items:
                note(f"{attr}-items", f"listed more than {max_items} {listed}; keeping the first {max_items}")
                return items
            if k is not None:
                seen_keys.add(k)
            items.append(item)
        cursor = page.next_cursor
        if not cursor:
            break
        if cursor in seen_cursors:
            note(f"{attr}-cursor", f"the {listed} listing repeated the cursor {cursor[:40]!r}; stopping there")
            break
        seen_cursors.add(cursor)
    else:
        note(f"{attr}-pages", f"the {listed} listing had more than {cap} pages; keeping the first {cap}")
    if duplicates:
        note(f"{attr}-duplicates", f"the {listed} listing repeated {duplicates} name(s); keeping the first of each")
    return items
