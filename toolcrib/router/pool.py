"""The pool: every configured upstream, started in parallel, and the catalog built from them.

The pool owns one :class:`~toolcrib.router.upstreams.Upstream` per enabled server, each
supervised in its own task. When any listing changes the catalog is rebuilt (an immutable
snapshot, swapped atomically) and listeners are told, so the gateway can forward
``notifications/*/list_changed`` and the index can reindex.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from toolcrib.config import Config
from toolcrib.errors import ToolNotFound, UpstreamUnavailable
from toolcrib.router.catalog import Catalog, Entry
from toolcrib.router.listing import Listing, astuple_shallow
from toolcrib.router.upstreams import SecretExpander, Upstream, _identity

log = logging.getLogger("toolcrib.pool")

Listener = Callable[[str, str], Awaitable[None]]
"""``(server, what)`` with what in connected, disconnected, tools_changed, resources_changed,
prompts_changed, resource_updated:URI."""


class Pool:
    """All upstreams and the aggregated catalog."""

    def __init__(
        self, config: Config, *, expand_secret: SecretExpander = _identity, scrub: Callable[[Any], Any] | None = None
    ) -> None:
        """``scrub`` (a pydantic model -> the same model with known secrets removed) is applied to every
        listed tool, prompt, resource and template before clients can see it."""
        self.config = config
        self._scrub = scrub
        self.upstreams: dict[str, Upstream] = {
            name: Upstream(name, cfg, expand_secret=expand_secret, on_change=self._changed)
            for name, cfg in config.enabled_servers.items()
        }
        self.catalog = Catalog(config.gateway.separator, config.gateway.keep_names)
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @asynccontextmanager
    async def running(self, *, wait: float = 0.0) -> AsyncIterator[Pool]:
        """Start every upstream in parallel; on exit stop them all (children terminated, then killed).

        ``wait`` bounds how long to wait for the first connection of each upstream before
        yielding; upstreams that are not ready keep connecting in the background.
        """
        async with anyio.create_task_group() as tg:
            for up in self.upstreams.values():
                tg.start_soon(up.run, name=f"upstream:{up.name}")
            if wait > 0:
                async with anyio.create_task_group() as waiters:
                    for up in self.upstreams.values():
                        waiters.start_soon(up.wait_ready, wait)
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    for up in self.upstreams.values():
                        await up.stop()
                    with anyio.move_on_after(10):
                        for up in self.upstreams.values():
                            await up.finished.wait()

    async def _changed(self, upstream: Upstream, what: str) -> None:
        if not what.startswith("resource_updated:"):
            self.rebuild()
        for listener in list(self._listeners):
            try:
                await listener(upstream.name, what)
            except Exception:
                log.exception("listener failed on %s %s", upstream.name, what)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until every upstream has connected once, or ``timeout`` seconds."""
        async with anyio.create_task_group() as tg:
            for up in self.upstreams.values():
                tg.start_soon(up.wait_ready, timeout)

    def rebuild(self) -> Catalog:
        listings = {}
        resources = {}
        for name, up in self.upstreams.items():
            if up.state.status != "connected" and not up.listing.tools:
                continue
            listing = up.listing
            if self._scrub is not None:
                scrub = self._scrub
                listing = Listing(*(tuple(scrub(item) for item in items) for items in astuple_shallow(listing)))
            listings[name] = (up.cfg, listing.tools, listing.prompts)
            resources[name] = (listing.resources, listing.templates)
        self.catalog = Catalog.build(
            listings,
            resources,
            separator=self.config.gateway.separator,
            keep_names=self.config.gateway.keep_names,
            previous=self.catalog,  # renames are logged once, when a server's tools first appear
        )
        return self.catalog

    def entry(self, key: str) -> Entry:
        entry = self.catalog.tools.get(key)
        if entry is None:
            raise ToolNotFound(f"unknown tool {key!r}; call search_tools to find the exact name")
        return entry

    def upstream(self, server: str) -> Upstream:
        up = self.upstreams.get(server)
        if up is None:
            raise UpstreamUnavailable(f"no enabled server named {server!r}; check [servers] in the config")
        return up
