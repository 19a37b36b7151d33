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
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from toolcrib.config import Config
from toolcrib.errors import ToolNotFound, UpstreamUnavailable
from toolcrib.router.catalog import Catalog, Entry
from toolcrib.router.listing import Listing, astuple_shallow
from toolcrib.router.upstreams import SecretExpander, Upstream, _identity

log = logging.getLogger("toolcrib.pool")

Listener = Callable[[str, str], Awaitable[None]]
"""``(server, what)`` with what in connected, disconnected, tools_changed, resources_changed,
prompts_changed, resource_updated:URI."""


@dataclass(frozen=True)
class ReloadReport:
    """What :meth:`Pool.reconfigure` did: server names (sorted) per kind of change."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """``servers: +a, -b, ~c (restarted), N unchanged`` or ``servers unchanged``."""
        parts = [f"+{n}" for n in self.added] + [f"-{n}" for n in self.removed]
        parts += [f"~{n} (restarted)" for n in self.changed]
        if not parts:
            return "servers unchanged"
        return f"servers: {', '.join(parts)}, {len(self.unchanged)} unchanged"


class Pool:
    """All upstreams and the aggregated catalog."""

    def __init__(
        self, config: Config, *, expand_secret: SecretExpander = _identity, scrub: Callable[[Any], Any] | None = None
    ) -> None:
        """``scrub`` (a pydantic model -> the same model with known secrets removed) is applied to every
        listed tool, prompt, resource and template before clients can see it."""
        self.config = config
        self._scrub = scrub
        self._expand = expand_secret
        self.upstreams: dict[str, Upstream] = {name: self._new(name) for name in config.enabled_servers}
        self.catalog = Catalog(config.gateway.separator, config.gateway.keep_names)
        self._listeners: list[Listener] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._reconfiguring = anyio.Lock()

    def _new(self, name: str) -> Upstream:
        return Upstream(name, self.config.servers[name], expand_secret=self._expand, on_change=self._changed)

    @property
    def task_group(self) -> anyio.abc.TaskGroup | None:
        """Where work that lives as long as the pool serves runs (parked calls); None when not running."""
        return self._tg

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @asynccontextmanager
    async def running(self, *, wait: float = 0.0) -> AsyncIterator[Pool]:
        """Start every upstream in parallel; on exit stop them all (children terminated, then killed).

        ``wait`` bounds how long to wait for the first connection of each upstream before
        yielding; upstreams that are not ready keep connecting in the background.
        """
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for up in self.upstreams.values():
                tg.start_soon(up.run, name=f"upstream:{up.name}")
            if wait > 0:
                async with anyio.create_task_group() as waiters:
                    for up in self.upstreams.values():
                        waiters.start_soon(up.wait_ready, wait)
            try:
                yield self
            finally:
                self._tg = None
                with anyio.CancelScope(shield=True):
                    for up in self.upstreams.values():
                        await up.stop()
                    with anyio.move_on_after(10):
                        for up in self.upstreams.values():
                            await up.finished.wait()

    async def reconfigure(
        self, config: Config, *, stop_timeout: float = 10.0, ready_timeout: float = 10.0
    ) -> ReloadReport:
        """Apply ``config``'s ``[servers]`` to the running pool without touching unchanged upstreams.

        A removed server's upstream is stopped (child terminated) and its tools, prompts and
        resources leave the catalog; an added one is started and joins when it connects; a changed
        one (any field of its table, or enabled toggled) is stopped and started again with the new
        settings (calls in flight to a stopped upstream fail). Listeners hear ``tools_changed``,
        ``resources_changed`` and ``prompts_changed`` for each server that left (so clients get
        ``list_changed`` and the index drops its tools) and ``connected`` when a new upstream
        connects. Only ``[servers]`` is taken from ``config``; the pool keeps its ``[gateway]``
        naming settings. Waits up to ``stop_timeout`` seconds per stopped upstream, then up to
        ``ready_timeout`` seconds for the started ones' first attempt (one still connecting joins
        later). Raises :class:`RuntimeError` when the pool is not running."""
        async with self._reconfiguring:
            if self._tg is None:
                raise RuntimeError("the pool is not running")
            old, new = self.config.enabled_servers, config.enabled_servers
            report = ReloadReport(
                added=sorted(new.keys() - old.keys()),
                removed=sorted(old.keys() - new.keys()),
                changed=sorted(n for n in old.keys() & new.keys() if old[n] != new[n]),
                unchanged=sorted(n for n in old.keys() & new.keys() if old[n] == new[n]),
            )
            self.config = self.config.model_copy(update={"servers": config.servers})
            gone = [self.upstreams.pop(name) for name in report.removed + report.changed]
            for up in gone:
                await up.stop()
            with anyio.move_on_after(stop_timeout * max(1, len(gone))):
                for up in gone:
                    await up.finished.wait()
            if gone:
                self.rebuild()
                for up in gone:
                    for what in ("tools_changed", "resources_changed", "prompts_changed"):
                        await self._tell(up.name, what)
            started = [self._new(name) for name in report.added + report.changed]
            for up in started:
                self.upstreams[up.name] = up
                self._tg.start_soon(up.run, name=f"upstream:{up.name}")
            if started:
                async with anyio.create_task_group() as waiters:
                    for up in started:
                        waiters.start_soon(up.wait_ready, ready_timeout)
                self.rebuild()
            return report

    async def _changed(self, upstream: Upstream, what: str) -> None:
        if self.upstreams.get(upstream.name) is not upstream:
            return  # an upstream removed or replaced by reconfigure(): its last words are stale
        if not what.startswith("resource_updated:"):
            self.rebuild()
        await self._tell(upstream.name, what)

    async def _tell(self, server: str, what: str) -> None:
        for listener in list(self._listeners):
            try:
                await listener(server, what)
            except Exception:
                log.exception("listener failed on %s %s", server, what)

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

    def not_connected(self) -> list[tuple[str, str]]:
        """``[(server, status)]``, by name, for each upstream whose tools are missing from the catalog
        because it is not connected (never connected, or down and its last listing empty); ``status``
        is its supervisor state (``starting``, ``reconnecting``, ...). The error behind it (a command
        line, an internal URL, an upstream's own message) is for the operator (``toolcrib serve``,
        ``toolcrib status``, the console), not for clients, so it is not returned here. A server that
        went down after listing its tools keeps them in the catalog, and a call to one answers why it
        is unavailable."""
        listed = {e.server for e in self.catalog.tools.values()}
        return [
            (name, up.state.status)
            for name, up in sorted(self.upstreams.items())
            if up.state.status != "connected" and name not in listed
        ]

    def upstream(self, server: str) -> Upstream:
        up = self.upstreams.get(server)
        if up is None:
            raise UpstreamUnavailable(f"no enabled server named {server!r}; check [servers] in the config")
        return up
