"""Search playground: a query as a chosen principal sees it, with the parts of every score.

``GET /console/search?q=QUERY&as=KIND:SUBJECT&limit=N&server=NAME`` (all optional; without ``q`` the
empty form). The search is ``search_tools``' own (:func:`toolcrib.router.dispatcher.search` over the
live catalog, the gateway's index (unwrapped: not counted in ``/metrics``) and
:meth:`~toolcrib.gateway.server.Gateway.may_use` for that principal), so the ranked list is what
that principal's ``search_tools`` returns, with each score's parts
(:func:`toolcrib.index.search.score_parts`: dense cosine, BM25 and how they were fused). Below it,
"hidden by policy": the tools that would rank in the same top ``limit`` if policy let everything
through, but that this principal may not use, each with what hides it (``quarantine`` or the policy
rule's id, :meth:`~toolcrib.gateway.trust.quarantine.Trust.refusing_rule`).

Principals to choose from: the local operator (``operator:local``), ``anonymous:anonymous`` and
every API key of the key store (``key:NAME`` with the key's groups); an unknown one is refused with
the list. Nothing is audited and nothing is loaded into any session: the playground only looks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from aiohttp import web

from toolcrib.console import web as cw
from toolcrib.console.app import Console, Route
from toolcrib.console.plot import term_bar
from toolcrib.errors import ToolcribError
from toolcrib.gateway.edge.guard import PRINCIPAL
from toolcrib.gateway.trust.apikeys import ApiKeyStore, key_document
from toolcrib.gateway.trust.identity import ANONYMOUS, LOCAL_OPERATOR, Principal
from toolcrib.index.search import TERM, Hit, ToolIndex, describe_parts
from toolcrib.router import dispatcher as disp

log = logging.getLogger("toolcrib.console")

DEFAULT_LIMIT = 10
"""Results shown when the form does not say (``search_tools`` defaults to 5; at most 20)."""


@dataclass
class Explaining:
    """A :class:`~toolcrib.router.dispatcher.Searcher` over the gateway's index that asks it for the
    parts of every score and keeps them by tool key (the dispatcher itself only passes scores on)."""

    index: disp.Searcher
    parts: dict[str, dict[str, float]] = field(default_factory=dict)

    def search(
        self,
        query: str | Sequence[str],
        *,
        limit: int = 5,
        server: str | None = None,
        allowed: Callable[[str], bool] | None = None,
    ) -> Sequence[Any]:
        if isinstance(self.index, ToolIndex):
            hits: Sequence[Hit] = self.index.search(query, limit=limit, server=server, allowed=allowed, explain=True)
        else:  # another Searcher (a test double, a future wrapper): scores without parts
            hits = self.index.search(query, limit=limit, server=server, allowed=allowed)
        for hit in hits:
            parts = getattr(hit, "parts", None)
            if parts is not None:
                self.parts[hit.key] = parts
        return hits

    def needs_model(self, query: str | Sequence[str]) -> bool:
        return self.index.needs_model(query)


def principals(console: Console) -> list[Principal]:
    """Whom the playground can search as: the local operator, anonymous, then every API key
    (``key:NAME`` with its groups) in name order. Raises :class:`ToolcribError` when the key store
    cannot be read."""
    store = ApiKeyStore(key_document(console.parts.db, console.config.auth.keys_path))
    keys = sorted(store.list(), key=lambda k: k.name)
    return [LOCAL_OPERATOR, ANONYMOUS, *(Principal("key", k.name, frozenset(k.groups)) for k in keys)]


def _terms(parts: dict[str, float] | None) -> list[tuple[str, float, str]]:
    if not parts:
        return []
    return [
        (name[: -len(TERM)], value, f"term {name[: -len(TERM)]}")
        for name, value in parts.items()
        if name.endswith(TERM)
    ]


def routes(console: Console) -> list[Route]:
    parts = console.parts

    async def page(request: web.Request) -> web.Response:
        query = request.query.get("q", "").strip()
        server = request.query.get("server", "").strip() or None
        actor: Principal = request[PRINCIPAL]
        values: dict[str, Any] = {
            "page_id": "search",
            "q": query,
            "server": server or "",
            "servers": sorted(parts.pool.upstreams),
            "error": None,
            "results": [],
            "hidden": [],
            "searched": False,
        }
        try:
            choices = await anyio.to_thread.run_sync(principals, console)
        except ToolcribError as exc:
            choices = [LOCAL_OPERATOR, ANONYMOUS]
            values["error"] = (
                f"The API key store could not be read ({exc.message}); only built-in principals are listed."
            )
        by_id = {p.id: p for p in choices}
        default = actor.id if actor.id in by_id else LOCAL_OPERATOR.id
        as_id = request.query.get("as", "").strip() or default
        values.update(choices=choices, as_id=as_id)
        limit_text = request.query.get("limit", "").strip() or str(DEFAULT_LIMIT)
        values["limit"] = limit_text
        if not query:
            return cw.page("search.html", request, **values)
        principal = by_id.get(as_id)
        if principal is None:
            values["error"] = f"Unknown principal {as_id!r}: choose one of {', '.join(by_id)}."
            return cw.page("search.html", request, status=400, **values)
        arguments: dict[str, Any] = {"query": query, "limit": int(limit_text) if _small_int(limit_text) else limit_text}
        if server:
            arguments["server"] = server
        try:
            args = disp.parse_search_args(arguments)
        except ToolcribError as exc:
            values["error"] = exc.message.replace("search_tools `limit`", "Results").replace(
                "search_tools", "The search"
            )
            return cw.page("search.html", request, status=400, **values)
        # the index itself, not the gateway's timed wrapper: playground searches stay out of the metrics
        index = parts.reindexer.index if parts.reindexer is not None else parts.gateway.index
        if index is None:
            values["error"] = (
                "Search is unavailable: this gateway has no tool index (passthrough mode or still loading)."
            )
            return cw.page("search.html", request, status=503, **values)
        gateway, catalog, trust = parts.gateway, parts.pool.catalog, parts.trust
        seen, everything = Explaining(index), Explaining(index)

        def run() -> tuple[list[tuple[Any, float]], list[tuple[Any, float]]]:
            visible = disp.search(seen, catalog, args, lambda k: gateway.may_use(principal, k))
            unfiltered = disp.search(everything, catalog, args, lambda k: True)
            return visible, unfiltered

        visible, unfiltered = await anyio.to_thread.run_sync(run)
        scale = max((s for _, s in unfiltered), default=1.0) or 1.0
        values["results"] = [_row(i + 1, e, s, seen.parts.get(e.key), scale) for i, (e, s) in enumerate(visible)]
        hidden = []
        for rank, (entry, score) in enumerate(unfiltered, start=1):
            if not gateway.may_use(principal, entry.key):
                row = _row(rank, entry, score, everything.parts.get(entry.key), scale)
                row["why"] = trust.refusing_rule(principal, entry.key, {})
                hidden.append(row)
        values.update(hidden=hidden, searched=True, principal_groups=sorted(principal.groups))
        return cw.page("search.html", request, **values)

    return [("GET", "/console/search", page)]


def _row(rank: int, entry: Any, score: float, parts: dict[str, float] | None, scale: float) -> dict[str, Any]:
    return {
        "rank": rank,
        "key": entry.key,
        "server": entry.server,
        "description": (entry.tool.description or "")[:160],
        "score": score,
        "parts": parts,
        "how": describe_parts(parts) if parts else "",
        "bar": term_bar(_terms(parts), scale=scale) if parts else "",
    }


def _small_int(text: str) -> bool:
    """ASCII digits only, at most 9 of them (``"²".isdigit()`` is True, yet ``int("²")`` raises)."""
    return text.isascii() and text.isdigit() and len(text) <= 9
