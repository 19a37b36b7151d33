"""Catalog: every upstream tool with its server, pin state and hash; a quarantined tool's diff with
an Approve button.

- ``GET /console/catalog?server=NAME&state=STATE``: every tool the connected upstreams list, one row
  each (filters optional; ``state`` one of :data:`STATES`), and each server's ``include``/``exclude``
  globs as configured. States: ``pinned`` (the current definition is the pinned one), ``quarantined``
  (changed since it was pinned), ``new`` (a tool a known server did not have before, held under
  ``new_tools = "quarantine"``), ``refused`` (named like the dispatcher's own tools: never callable),
  ``unpinned`` (no pin yet, e.g. the pin store was unreadable), ``excluded`` (left out by the
  server's ``include``/``exclude``: never offered).
- ``GET /console/catalog/{key}``: one tool by its pin key (``server__name``): its definition and,
  when held, the pinned and the current description and input schema side by side, with the
  unified diff of ``toolcrib tools diff``.
- ``POST /console/catalog/{key}/approve``: what ``toolcrib tools approve KEY`` does
  (:meth:`~toolcrib.router.pins.PinStore.approve`), then re-checks the quarantine at once
  (:meth:`~toolcrib.gateway.trust.quarantine.Trust.refresh`) and, in dispatcher mode, re-indexes
  the server so the tool is searchable again. The CLI records no audit event for an approval, so
  the acting operator is logged (``toolcrib.console`` logger, WARNING). Redirects to the tool's page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import anyio
from aiohttp import web

from toolcrib.console import web as cw
from toolcrib.console.app import Console, Route
from toolcrib.errors import ToolcribError
from toolcrib.gateway.edge.guard import PRINCIPAL
from toolcrib.router.catalog import included
from toolcrib.router.pins import RESERVED_NAMES, tool_definition, tool_hash

log = logging.getLogger("toolcrib.console")

STATES = ("pinned", "quarantined", "new", "refused", "unpinned", "excluded")
"""Every pin state a row can show (see the module docstring)."""
SHORT = 12
"""Hex digits of a hash shown in the table (the full hash is in the cell's title)."""


@dataclass(frozen=True)
class Row:
    """One upstream tool as the catalog page shows it."""

    key: str
    """The pin key (``server__name``): the URL of the tool's page and what the CLI takes."""
    exposed: str | None
    """The name clients see (None when excluded or refused a name)."""
    server: str
    name: str
    state: str
    hash: str
    """SHA-256 of the current definition (:func:`~toolcrib.router.pins.tool_hash`)."""
    pinned_hash: str | None
    reason: str | None
    description: str


def routes(console: Console) -> list[Route]:
    parts = console.parts
    pins = parts.trust.pins

    def pin_data() -> dict[str, Any]:
        data: dict[str, Any] = pins.document.load()
        return data

    def rows(data: Mapping[str, Any]) -> list[Row]:
        catalog = parts.pool.catalog
        exposed = {(e.server, e.name): key for key, e in catalog.tools.items()}
        quarantined = parts.trust.quarantined
        out = []
        for server, up in sorted(parts.pool.upstreams.items()):
            cfg = console.config.servers.get(server)
            for tool in up.listing.tools:
                key = pins.key(server, tool.name)
                name = exposed.get((server, tool.name))
                pin, pending = data["pins"].get(key), data["pending"].get(key)
                digest = tool_hash(tool)
                reason = quarantined.get(name or key) or (pending or {}).get("reason")
                if cfg is not None and not included(tool.name, cfg):
                    state = "excluded"
                elif tool.name in RESERVED_NAMES:
                    state = "refused"
                elif pin is not None and pin["hash"] == digest:
                    state, reason = "pinned", None
                elif pending is not None:
                    state = "new" if pin is None else "quarantined"
                else:
                    state = "unpinned"
                out.append(
                    Row(key, name, server, tool.name, state, digest, pin["hash"] if pin else None, reason,
                        tool.description or "")
                )  # fmt: skip
        out.sort(key=lambda r: r.state not in ("quarantined", "new"))  # held tools first, else as listed
        return out

    async def listing(request: web.Request) -> web.Response:
        server = request.query.get("server") or None
        state = request.query.get("state") or None
        error = None
        if state is not None and state not in STATES:
            error, state = f"unknown state {state[:40]!r}; choose one of {', '.join(STATES)}", None
        data = await anyio.to_thread.run_sync(pin_data)
        every = rows(data)
        counts = {s: sum(1 for r in every if r.state == s) for s in STATES}
        shown = [r for r in every if (server is None or r.server == server) and (state is None or r.state == state)]
        servers = [
            {
                "name": name,
                "status": up.state.status,
                "tools": len(up.listing.tools),
                "include": cfg.include if (cfg := console.config.servers.get(name)) else [],
                "exclude": cfg.exclude if cfg else [],
            }
            for name, up in sorted(parts.pool.upstreams.items())
        ]
        return cw.page(
            "catalog.html", request, status=400 if error else 200, page_id="catalog", rows=shown, servers=servers,
            counts=counts, total=len(every), server=server, state=state, states=STATES, error=error, short=SHORT,
            new_tools=console.config.policy.new_tools, message=cw.notice(request),
            clear=urlencode({k: v for k, v in (("server", server),) if v}),
        )  # fmt: skip

    async def detail(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        data = await anyio.to_thread.run_sync(pin_data)
        row = next((r for r in rows(data) if r.key == key), None)
        pin, pending = data["pins"].get(key), data["pending"].get(key)
        if row is None and pin is None and pending is None:
            return cw.page(
                "catalog_tool.html", request, status=404, page_id="catalog", key=key, row=None, old=None, new=None,
                diff="", current=None, message=None, short=SHORT, pinned_at=None,
            )  # fmt: skip
        old = pin["definition"] if pin else None
        new = pending["definition"] if pending else None
        current = None
        if row is not None:
            up = parts.pool.upstreams.get(row.server)
            tool = next((t for t in up.listing.tools if t.name == row.name), None) if up else None
            current = tool_definition(tool) if tool is not None else None
        diff = ""
        if pending is not None:
            try:
                diff = await anyio.to_thread.run_sync(pins.diff, key)
            except ToolcribError as exc:
                diff = exc.message
        return cw.page(
            "catalog_tool.html", request, page_id="catalog", key=key, row=row, old=old, new=new, diff=diff,
            current=current, message=cw.notice(request), short=SHORT,
            pinned_at=pin.get("pinned_at") if pin else None,
        )  # fmt: skip

    async def approve(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        operator = request[PRINCIPAL].id
        try:
            digest = await anyio.to_thread.run_sync(pins.approve, key)
        except ToolcribError as exc:
            raise cw.back(f"/console/catalog/{quote(key, safe='')}?done={_quote(exc.message)}") from None
        log.warning("console: %s approved tool %s, pinned %s", operator, key, digest)
        await anyio.to_thread.run_sync(parts.trust.refresh)
        server = next(
            (s for s, up in parts.pool.upstreams.items() if any(pins.key(s, t.name) == key for t in up.listing.tools)),
            None,
        )
        if parts.reindexer is not None and server is not None:
            try:
                await parts.reindexer.sync({server})
            except ToolcribError as exc:
                log.error("reindex of %s after approving %s failed: %s", server, key, exc.message)
        msg = f"{key} approved by {operator}: pinned {digest[:SHORT]}; it is searchable and callable again"
        raise cw.back(f"/console/catalog/{quote(key, safe='')}?done={_quote(msg)}")

    return [
        ("GET", "/console/catalog", listing),
        ("GET", "/console/catalog/{key}", detail),
        ("POST", "/console/catalog/{key}/approve", approve),
    ]


def _quote(text: str) -> str:
    return quote(text[:300], safe="")
