"""Approvals: the pending queue, live, and the history; approve or deny with a note.

- ``GET /console/approvals``: the page (queue + the last :data:`HISTORY` decided requests).
- ``GET /console/approvals/queue?known=V``: the queue as a fragment, polled every second by htmx;
  204 (nothing to swap, so a note being typed survives) while the pending set is still ``V``.
- ``POST /console/approvals/{id}``: form ``decision=approve|deny``, optional ``note``; the same store
  call as ``POST /admin/approvals/{id}`` and ``toolcrib approvals approve``, so the held call on any
  replica is released at once. Redirects back to the page (post/redirect/get).
"""

from __future__ import annotations

import hashlib
import time
from urllib.parse import quote

from aiohttp import web

from toolcrib.console import web as cw
from toolcrib.console.app import Console, Route
from toolcrib.errors import ToolcribError
from toolcrib.gateway.edge.guard import PRINCIPAL
from toolcrib.gateway.trust.approvals import Approval

HISTORY = 50
"""Decided approval requests shown under the queue, newest first."""
MAX_NOTE = 500
"""Longest note an operator may attach to a decision (characters)."""


def routes(console: Console) -> list[Route]:
    store = console.parts.approvals

    async def queue_items() -> tuple[list[Approval], str]:
        pending = sorted(await store.list("pending"), key=lambda a: a.created)
        version = hashlib.sha256(",".join(a.id for a in pending).encode()).hexdigest()[:16]
        return pending, version

    async def page(request: web.Request) -> web.Response:
        pending, version = await queue_items()
        decided = [a for a in await store.list() if a.status != "pending"]
        decided.sort(key=lambda a: a.decided or a.expires, reverse=True)
        return cw.page(
            "approvals.html", request, page_id="approvals", pending=pending, version=version,
            history=decided[:HISTORY], now=time.time(), message=cw.notice(request),
        )  # fmt: skip

    async def queue(request: web.Request) -> web.Response:
        pending, version = await queue_items()
        if request.query.get("known") == version:
            return web.Response(status=204)
        return cw.fragment("approvals_queue.html", request, pending=pending, version=version, now=time.time())

    async def decide(request: web.Request) -> web.Response:
        fields = cw.form(request)
        decision, note = fields.get("decision"), fields.get("note", "").strip()[:MAX_NOTE] or None
        if decision not in ("approve", "deny"):
            return web.Response(status=400, text="choose approve or deny\n")
        approval_id = request.match_info["id"]
        act = store.approve if decision == "approve" else store.deny
        try:
            await act(approval_id, request[PRINCIPAL].id, note=note)
        except ToolcribError as exc:
            raise cw.back(f"/console/approvals?done={_quote(exc.message)}") from None
        verb = "approved" if decision == "approve" else "denied"
        raise cw.back(f"/console/approvals?done={_quote(f'{approval_id} {verb}')}")

    return [
        ("GET", "/console/approvals", page),
        ("GET", "/console/approvals/queue", queue),
        ("POST", "/console/approvals/{id}", decide),
    ]


def _quote(text: str) -> str:
    return quote(text[:200], safe="")
