"""The operator's HTTP API beside ``/mcp``.

``GET /healthz`` is open. Admin routes (``POST /admin/reindex``, ``GET /admin/audit``,
``GET /admin/approvals``, ``POST /admin/approvals/{id}``) need: with ``auth = "none"``, a request
from loopback; otherwise an authenticated principal in the ``admins`` group (or the operator).
RFC 9728 protected-resource metadata is served at ``/.well-known/oauth-protected-resource[/mcp]``
when OAuth is on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from toolcrib.config import Config
from toolcrib.errors import AuthError, Forbidden, ToolcribError
from toolcrib.gateway.audit.log import SqliteAuditLog
from toolcrib.gateway.audit.writer import AuditWriter
from toolcrib.gateway.trust.approvals import ApprovalStore
from toolcrib.gateway.trust.identity import LOCAL_OPERATOR, OPERATORS_GROUP, Principal
from toolcrib.gateway.trust.policy import is_loopback
from toolcrib.router.pool import Pool

Authenticate = Callable[[web.Request], Awaitable[Principal]]


class AdminApi:
    """Handlers bound to the live pool, audit log, approval store and (optionally) reindexer."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        audit: SqliteAuditLog,
        writer: AuditWriter,
        approvals: ApprovalStore,
        authenticate: Authenticate,
        reindex: Callable[[str | None, bool], Awaitable[Any]] | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.audit = audit
        self.writer = writer
        self.approvals = approvals
        self.authenticate = authenticate
        self.reindex = reindex

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/admin/reindex", self.post_reindex)
        app.router.add_get("/admin/audit", self.get_audit)
        app.router.add_get("/admin/approvals", self.get_approvals)
        app.router.add_post("/admin/approvals/{id}", self.post_approval)

    async def _operator(self, request: web.Request) -> Principal | web.Response:
        if self.config.gateway.auth == "none":
            if not is_loopback(request.remote or ""):
                return _error(403, "forbidden", "the admin API is loopback-only without auth")
            return LOCAL_OPERATOR
        try:
            principal = await self.authenticate(request)
        except AuthError as exc:
            return _error(401, "unauthorized", exc.message)
        except Forbidden as exc:
            return _error(403, "forbidden", exc.message)
        if not principal.is_operator:
            return _error(403, "forbidden", f"{principal.id} is not in the {OPERATORS_GROUP!r} group")
        return principal

    async def healthz(self, request: web.Request) -> web.Response:
        ups = {
            name: {
                "status": up.state.status,
                "protocol": up.state.protocol_version,
                "tools": len(up.listing.tools),
                "error": up.state.error,
            }
            for name, up in self.pool.upstreams.items()
        }
        return web.json_response({"status": "ok", "upstreams": ups})

    async def post_reindex(self, request: web.Request) -> web.Response:
        who = await self._operator(request)
        if isinstance(who, web.Response):
            return who
        if self.reindex is None:
            return _error(409, "not_available", 'no index in passthrough mode; set [gateway] mode = "dispatcher"')
        server = request.query.get("server")
        full = request.query.get("full", "").lower() in ("1", "true", "yes")
        try:
            report = await self.reindex(server, full)
        except ToolcribError as exc:
            return _error(500, "reindex_failed", exc.message)
        return web.json_response(dataclasses.asdict(report))

    async def get_audit(self, request: web.Request) -> web.Response:
        who = await self._operator(request)
        if isinstance(who, web.Response):
            return who
        q = request.query
        try:
            since = float(q["since"]) if "since" in q else None
            limit = min(int(q.get("limit", "100")), 10_000)
        except ValueError:
            return _error(400, "bad_request", "since must be a UNIX time and limit an integer")
        await self.writer.flush()
        rows = self.audit.query(
            principal=q.get("principal"), tool=q.get("tool"), since=since, outcome=q.get("outcome"), limit=limit
        )
        return web.json_response({"events": rows})

    async def get_approvals(self, request: web.Request) -> web.Response:
        who = await self._operator(request)
        if isinstance(who, web.Response):
            return who
        items = [dataclasses.asdict(a) for a in self.approvals.list(request.query.get("status"))]
        return web.json_response({"approvals": items, "now": time.time()})

    async def post_approval(self, request: web.Request) -> web.Response:
        who = await self._operator(request)
        if isinstance(who, web.Response):
            return who
        try:
            body = await request.json()
        except ValueError:
            body = {}
        decision = body.get("decision") if isinstance(body, dict) else None
        if decision not in ("approve", "deny"):
            return _error(400, "bad_request", 'send {"decision": "approve"} or {"decision": "deny"}')
        try:
            act = self.approvals.approve if decision == "approve" else self.approvals.deny
            approval = act(request.match_info["id"], who.id)
        except ToolcribError as exc:
            return _error(409, "conflict", exc.message)
        return web.json_response(dataclasses.asdict(approval))


def _error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)
