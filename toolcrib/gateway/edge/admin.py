"""The operator's HTTP API beside ``/mcp``, behind the guard like every route.

- ``GET /healthz`` (public, liveness): always 200 while the process serves HTTP,
  ``{"status": "ok" | "degraded"}`` (degraded when an upstream is not connected); an operator gets
  per-upstream detail (state, protocol, tool count, last error). It never looks at the database.
- ``GET /readyz`` (public, readiness; for a load balancer): 200 ``{"status": "ready", "checks":
  {NAME: {"ok": true}, ...}}`` when every check passes, else 503 ``{"status": "not_ready", ...}``.
  Checks: ``upstreams`` (at least one configured upstream connected, or none configured) and the
  composition root's ``ready_checks`` (e.g. ``database``), run concurrently, each given
  :data:`READY_CHECK_TIMEOUT` seconds. An operator also gets each check's ``detail`` (why it
  fails; for ``upstreams`` the ones not connected); others get only ``ok``, as with healthz.
- Operator routes (a principal in the operators group, see :mod:`toolcrib.gateway.edge.guard`;
  with ``auth = "none"`` the local operator from loopback; state changes need
  ``Content-Type: application/json``): ``POST /admin/reindex``, ``GET /admin/audit``,
  ``GET /admin/approvals``, ``POST /admin/approvals/{id}`` with ``{"decision": "approve" | "deny"}``.
- RFC 9728 protected-resource metadata at ``/.well-known/oauth-protected-resource[/mcp]`` (public)
  when OAuth is on, added by the composition root.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from aiohttp import web

from toolcrib.config import Config
from toolcrib.errors import ToolcribError
from toolcrib.gateway.audit.backends import AuditLog
from toolcrib.gateway.audit.writer import AuditWriter
from toolcrib.gateway.edge.guard import BODY, PRINCIPAL, access, error_body
from toolcrib.gateway.trust.approvals import AsyncApprovals
from toolcrib.gateway.trust.matchers import loads_json
from toolcrib.router.pool import Pool

ReadyCheck = Callable[[], Awaitable[str | None]]
"""A readiness check: ``None`` when ready, else one line saying why not. An exception or running
past :data:`READY_CHECK_TIMEOUT` counts as not ready."""
READY_CHECK_TIMEOUT = 3.0
"""Seconds each readiness check may take (a load balancer's probe must not hang on a stuck database)."""


class AdminApi:
    """Handlers bound to the live pool, audit log, approval store and (optionally) reindexer.

    ``ready_checks``: extra ``/readyz`` checks by name (``{"database": check}``), see :data:`ReadyCheck`."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        audit: AuditLog,
        writer: AuditWriter,
        approvals: AsyncApprovals,
        reindex: Callable[[str | None, bool], Awaitable[Any]] | None = None,
        ready_checks: Mapping[str, ReadyCheck] | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.audit = audit
        self.writer = writer
        self.approvals = approvals
        self.reindex = reindex
        self.ready_checks: dict[str, ReadyCheck] = dict(ready_checks or {})
        self.ready_timeout = READY_CHECK_TIMEOUT

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", access("public", self.healthz))
        app.router.add_get("/readyz", access("public", self.readyz))
        app.router.add_post("/admin/reindex", access("operator", self.post_reindex))
        app.router.add_get("/admin/audit", access("operator", self.get_audit))
        app.router.add_get("/admin/approvals", access("operator", self.get_approvals))
        app.router.add_post("/admin/approvals/{id}", access("operator", self.post_approval))

    async def healthz(self, request: web.Request) -> web.Response:
        ups = self.pool.upstreams
        status = "ok" if all(up.state.status == "connected" for up in ups.values()) else "degraded"
        who = request.get(PRINCIPAL)
        if who is None or not who.is_operator:
            return web.json_response({"status": status})
        detail = {
            name: {
                "status": up.state.status,
                "protocol": up.state.protocol_version,
                "tools": len(up.listing.tools),
                "error": up.state.error,
            }
            for name, up in ups.items()
        }
        return web.json_response({"status": status, "upstreams": detail})

    async def readyz(self, request: web.Request) -> web.Response:
        results: dict[str, str | None] = {"upstreams": self._upstreams_detail()}
        passed: dict[str, bool] = {"upstreams": self._upstreams_ready()}

        async def run(name: str, check: ReadyCheck) -> None:
            try:
                with anyio.fail_after(self.ready_timeout):
                    why = await check()
            except TimeoutError:
                why = f"no answer within {self.ready_timeout:g} s"
            except Exception as exc:  # a check that raises is a failing check, never a 500
                why = f"{type(exc).__name__}: {exc}"
            results[name], passed[name] = why, why is None

        async with anyio.create_task_group() as tg:
            for name, check in self.ready_checks.items():
                tg.start_soon(run, name, check)
        ready = all(passed.values())
        who = request.get(PRINCIPAL)
        detailed = who is not None and who.is_operator
        checks = {
            name: {"ok": passed[name], **({"detail": results[name]} if detailed and results[name] else {})}
            for name in passed
        }
        body = {"status": "ready" if ready else "not_ready", "checks": checks}
        return web.json_response(body, status=200 if ready else 503)

    def _upstreams_ready(self) -> bool:
        ups = self.pool.upstreams
        return not ups or any(up.state.status == "connected" for up in ups.values())

    def _upstreams_detail(self) -> str | None:
        down = sorted(name for name, up in self.pool.upstreams.items() if up.state.status != "connected")
        if not down:
            return None
        return f"not connected: {', '.join(down)}" + ("" if self._upstreams_ready() else " (none connected)")

    async def post_reindex(self, request: web.Request) -> web.Response:
        if self.reindex is None:
            return error_body(409, "not_available", 'no index in passthrough mode; set [gateway] mode = "dispatcher"')
        server = request.query.get("server")
        full = request.query.get("full", "").lower() in ("1", "true", "yes")
        try:
            report = await self.reindex(server, full)
        except ToolcribError as exc:
            return error_body(500, "reindex_failed", exc.message)
        return web.json_response(dataclasses.asdict(report))

    async def get_audit(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            since = float(q["since"]) if "since" in q else None
            limit = min(int(q.get("limit", "100")), 10_000)
        except ValueError:
            return error_body(400, "bad_request", "since must be a UNIX time and limit an integer")
        await self.writer.flush()
        rows = self.audit.query(
            principal=q.get("principal"), tool=q.get("tool"), since=since, outcome=q.get("outcome"), limit=limit
        )
        return web.json_response({"events": rows})

    async def get_approvals(self, request: web.Request) -> web.Response:
        items = [dataclasses.asdict(a) for a in await self.approvals.list(request.query.get("status"))]
        return web.json_response({"approvals": items, "now": time.time()})

    async def post_approval(self, request: web.Request) -> web.Response:
        who = request[PRINCIPAL]
        try:
            body = loads_json(request[BODY])
        except (ValueError, RecursionError):
            body = {}
        decision = body.get("decision") if isinstance(body, dict) else None
        note = body.get("note") if isinstance(body, dict) else None
        if decision not in ("approve", "deny") or not isinstance(note, str | None):
            return error_body(400, "bad_request", 'send {"decision": "approve" | "deny", "note": "optional text"}')
        try:
            act = self.approvals.approve if decision == "approve" else self.approvals.deny
            approval = await act(request.match_info["id"], who.id, note=note)
        except ToolcribError as exc:
            return error_body(409, "conflict", exc.message)
        return web.json_response(dataclasses.asdict(approval))
