"""The console's routes: login, static files, and each page module's handlers.

``Console(config, parts, logins).add_routes(app)`` registers, every one with its access level
(:func:`toolcrib.gateway.edge.guard.access`):

- ``console-public``: ``GET/POST /console/login`` (paste an API key or access token; an operator
  gets the cookie, anyone else a refusal that names the ``admins`` group), ``GET /console/static/NAME``.
- ``console``: ``POST /console/logout`` and every page of :data:`PAGES` (each a module with
  ``routes(console) -> [(method, path, handler)]``).

Pages read the gateway's live parts (pool, trust, audit, approvals, index, savings): the console is a
view of this replica's process and the shared stores, never a second copy of them.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from toolcrib.config import Config
from toolcrib.console import web as cw
from toolcrib.console.session import COOKIE, ConsoleLogins
from toolcrib.errors import AuthError, Forbidden
from toolcrib.gateway.edge.guard import CONSOLE, access

if TYPE_CHECKING:
    from toolcrib.app import Parts

log = logging.getLogger("toolcrib.console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler]
PAGES = ("overview", "approvals", "catalog", "audit", "search", "savings")
"""Page modules under ``toolcrib.console.pages``, each with ``routes(console) -> list[Route]``."""
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".txt": "text/plain"}


class Console:
    """The console of one gateway: its config, live parts and login checker."""

    def __init__(self, config: Config, parts: Parts, logins: ConsoleLogins) -> None:
        self.config = config
        self.parts = parts
        self.logins = logins
        self.started = time.time()
        self._static = resources.files("toolcrib.console") / "static"
        self.secure_cookie = (config.gateway.public_url or "").lower().startswith("https://")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console/login", access("console-public", self.get_login))
        app.router.add_post("/console/login", access("console-public", self.post_login))
        app.router.add_get("/console/static/{name}", access("console-public", self.get_static))
        app.router.add_post("/console/logout", access("console", self.post_logout))
        for name in PAGES:
            module = importlib.import_module(f"toolcrib.console.pages.{name}")
            for method, path, handler in module.routes(self):
                app.router.add_route(method, path, access("console", handler))

    # ---- login ---------------------------------------------------------------------------------

    async def get_login(self, request: web.Request) -> web.Response:
        if CONSOLE in request:
            raise cw.back(_next(request.query.get("next")))
        return cw.page("login.html", request, error=None, next=_next(request.query.get("next")))

    async def post_login(self, request: web.Request) -> web.Response:
        fields = cw.form(request)
        target = _next(fields.get("next"))
        if self.config.gateway.auth == "none":
            return cw.page(
                "login.html", request, status=403, next=target,
                error='This gateway has auth = "none": the console is open to the local operator on loopback only.',
            )  # fmt: skip
        try:
            principal, cookie = await self.logins.login(fields.get("credential", ""))
        except (AuthError, Forbidden) as exc:
            log.info("console login refused from %s: %s", request.remote, exc.message)
            msg = "That key or token is not valid. Paste an operator API key (tcb_...) or a current access token."
            return cw.page("login.html", request, status=401, next=target, error=msg)
        if not principal.is_operator:
            log.info("console login refused for %s: not an operator", principal.id)
            msg = f"{principal.id} is not an operator: the console needs a key in the 'admins' group."
            return cw.page("login.html", request, status=403, next=target, error=msg)
        log.info("console login: %s from %s", principal.id, request.remote)
        response = web.HTTPSeeOther(target)
        response.set_cookie(
            COOKIE, cookie, path="/console", httponly=True, samesite="Strict", secure=self.secure_cookie,
            max_age=int(self.logins.ttl),
        )  # fmt: skip
        raise response

    async def post_logout(self, request: web.Request) -> web.Response:
        self.logins.logout(request.cookies.get(COOKIE))
        response = web.HTTPSeeOther("/console/login")
        response.del_cookie(COOKIE, path="/console")
        raise response

    # ---- static files --------------------------------------------------------------------------

    async def get_static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        suffix = name[name.rfind(".") :] if "." in name else ""
        item = self._static / name
        if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES or not item.is_file():
            raise web.HTTPNotFound()
        return web.Response(
            body=item.read_bytes(),
            content_type=STATIC_TYPES[suffix],
            headers={"Cache-Control": "private, max-age=3600"},
        )

    # ---- helpers for pages ---------------------------------------------------------------------

    def recent_outcomes(self, seconds: float) -> list[dict[str, Any]]:
        """Audit ``outcome`` rows of the last ``seconds`` (newest last, at most 10,000)."""
        return self.parts.audit.query(kind="outcome", since=time.time() - seconds, limit=10_000)


def _next(value: str | None) -> str:
    """A post-login target: a path on ``/console`` only (never another site: an open redirect)."""
    if not value:
        return "/console"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not (value == "/console" or value.startswith("/console/")) or "\\" in value:
        return "/console"
    return value
