"""The console's routes: login, static files, and each page module's handlers.

``Console(config, parts, logins).add_routes(app)`` registers, every one with its access level
(:func:`toolcrib.gateway.edge.guard.access`):

- ``console-public``: ``GET/POST /console/login`` (paste an API key or access token; an operator
  gets the cookie, anyone else a refusal that names the ``admins`` group), ``GET /console/static/NAME``,
  and with ``[console] oauth_client_id`` ``GET /console/oauth/start`` and ``GET /console/oauth/callback``
  ("Log in with ISSUER": authorization code + PKCE, :mod:`toolcrib.console.oauth`; the token it gets
  is checked and kept exactly as a pasted one).
- ``console``: ``POST /console/logout`` and every page of :data:`PAGES` (each a module with
  ``routes(console) -> [(method, path, handler)]``).

Pages read the gateway's live parts (pool, trust, audit, approvals, index, savings): the console is a
view of this replica's process and the shared stores, never a second copy of them.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode, urlsplit

from aiohttp import web

from toolcrib.config import Config
from toolcrib.console import web as cw
from toolcrib.console.oauth import CALLBACK_PATH, COOKIE_PATH, STATE_COOKIE, STATE_TTL, ConsoleOAuth, OAuthLoginError
from toolcrib.console.session import COOKIE, ConsoleLogins
from toolcrib.errors import AuthError, Forbidden
from toolcrib.gateway.audit.rows import refused_auth_event
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
        self.oauth = ConsoleOAuth(config, parts.gateway.sealer)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console/login", access("console-public", self.get_login))
        app.router.add_post("/console/login", access("console-public", self.post_login))
        app.router.add_get("/console/static/{name}", access("console-public", self.get_static))
        app.router.add_get("/console/oauth/start", access("console-public", self.oauth_start))
        app.router.add_get(CALLBACK_PATH, access("console-public", self.oauth_callback))
        app.router.add_post("/console/logout", access("console", self.post_logout))
        for name in PAGES:
            module = importlib.import_module(f"toolcrib.console.pages.{name}")
            for method, path, handler in module.routes(self):
                app.router.add_route(method, path, access("console", handler))

    # ---- login ---------------------------------------------------------------------------------

    async def get_login(self, request: web.Request) -> web.Response:
        if CONSOLE in request:
            raise cw.back(_next(request.query.get("next")))
        return self._login_page(request, _next(request.query.get("next")))

    def _login_page(
        self, request: web.Request, target: str, *, status: int = 200, error: str | None = None
    ) -> web.Response:
        oauth = self.oauth.label if self.oauth.enabled else None
        return cw.page("login.html", request, status=status, next=target, error=error, oauth=oauth)

    async def post_login(self, request: web.Request) -> web.Response:
        fields = cw.form(request)
        target = _next(fields.get("next"))
        if self.config.gateway.auth == "none":
            return self._login_page(
                request, target, status=403,
                error='This gateway has auth = "none": the console is open to the local operator on loopback only.',
            )  # fmt: skip
        address = request.remote or "-"
        wait = self.logins.throttle.retry_after(address)
        if wait is not None:
            log.warning("console login refused from %s: too many failed logins", address)
            seconds = math.ceil(wait)
            msg = f"Too many failed logins from {address}: wait {seconds} s, then paste the key again."
            page = self._login_page(request, target, status=429, error=msg)
            page.headers["Retry-After"] = str(seconds)
            return page
        try:
            principal, cookie = await self.logins.login(fields.get("credential", ""))
        except (AuthError, Forbidden) as exc:
            self.logins.throttle.failed(address)
            log.info("console login refused from %s: %s", request.remote, exc.message)
            msg = "That key or token is not valid. Paste an operator API key (tcb_...) or a current access token."
            return self._login_page(request, target, status=401, error=msg)
        self.logins.throttle.succeeded(address)
        if not principal.is_operator:
            log.info("console login refused for %s: not an operator", principal.id)
            msg = f"{principal.id} is not an operator: the console needs a key in the 'admins' group."
            return self._login_page(request, target, status=403, error=msg)
        log.info("console login: %s from %s", principal.id, request.remote)
        response = web.HTTPSeeOther(target)
        self._set_login_cookie(response, cookie)
        raise response

    def _set_login_cookie(self, response: web.StreamResponse, cookie: str) -> None:
        response.set_cookie(
            COOKIE, cookie, path="/console", httponly=True, samesite="Strict", secure=self.secure_cookie,
            max_age=int(self.logins.ttl),
        )  # fmt: skip

    # ---- OAuth login (authorization code + PKCE) ----------------------------------------------

    def _origin(self) -> str:
        """This gateway's public origin: ``[gateway] public_url``, else the bound origin."""
        return self.parts.origin.get("url", "").rstrip("/")

    async def oauth_start(self, request: web.Request) -> web.StreamResponse:
        """``GET /console/oauth/start?next=PATH``: to the authorization server, with a fresh attempt cookie."""
        target = _next(request.query.get("next"))
        if not self.oauth.enabled:
            return self._login_page(request, target, status=404, error="OAuth login is not configured on this gateway.")
        origin = self._origin()
        if not self.config.gateway.public_url and request.host.lower() != urlsplit(origin).netloc.lower():
            # the callback lands on the bound origin: start there, so the attempt cookie goes with it
            raise web.HTTPSeeOther(f"{origin}/console/oauth/start?{urlencode({'next': target})}")
        try:
            url, attempt = await self.oauth.start(origin + CALLBACK_PATH, target)
        except OAuthLoginError as exc:
            log.warning("console OAuth login unavailable: %s", exc.detail)
            return self._login_page(request, target, status=exc.status, error=exc.message)
        response = web.HTTPSeeOther(url)
        response.set_cookie(
            STATE_COOKIE, attempt, path=COOKIE_PATH, httponly=True, samesite="Lax", secure=self.secure_cookie,
            max_age=int(STATE_TTL),
        )  # fmt: skip  # Lax: the callback is a top-level navigation from the authorization server's site
        raise response

    async def oauth_callback(self, request: web.Request) -> web.StreamResponse:
        """``GET /console/oauth/callback?code=&state=``: exchange, validate as ``/mcp`` does, require an operator.

        On success the console cookie is set and the answer is a small page that moves on to ``next``
        by itself (``Refresh``): a same-site navigation, so the browser sends the ``SameSite=Strict``
        console cookie, which it would withhold on a redirect in this cross-site chain."""
        try:
            done = await self.oauth.finish(request.query, request.cookies.get(STATE_COOKIE))
        except OAuthLoginError as exc:
            return self._oauth_refused(request, exc.message, exc.status, exc.detail)
        target = _next(done.next)
        try:
            principal, cookie = await self.logins.login(done.access_token)
        except (AuthError, Forbidden) as exc:
            msg = f"The token from {self.oauth.label} is not accepted by this gateway: {exc.message}."
            return self._oauth_refused(request, msg, 401, f"OAuth console login token refused: {exc.message}", target)
        if not principal.is_operator:
            msg = (
                f"{principal.id} is not an operator: the console needs the 'admins' group "
                "(through [auth] scope_groups or groups_claim)."
            )
            return self._oauth_refused(request, msg, 403, f"{principal.id} is not an operator (OAuth login)", target)
        log.info("console login (OAuth): %s from %s", principal.id, request.remote)
        response = cw.page("login.html", request, next=target, error=None, oauth=None, done=principal.id)
        response.headers["Refresh"] = f"0; url={target}"
        self._set_login_cookie(response, cookie)
        response.del_cookie(STATE_COOKIE, path=COOKIE_PATH)
        return response

    def _oauth_refused(
        self, request: web.Request, message: str, status: int, detail: str, target: str = "/console"
    ) -> web.Response:
        log.info("console OAuth login refused from %s: %s", request.remote, detail)
        self.parts.writer.submit(refused_auth_event(request, detail, status))
        response = self._login_page(request, target, status=status, error=message)
        response.del_cookie(STATE_COOKIE, path=COOKIE_PATH)  # one attempt, one answer
        return response

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
        """The ended calls of the last ``seconds``: completed ``call`` rows and ``outcome`` rows
        (refused calls, and calls of logs written before ``call`` rows), newest last, at most 10,000."""
        since = time.time() - seconds
        rows = self.parts.audit.query(kind="outcome", since=since, limit=10_000)
        calls = self.parts.audit.query(kind="call", since=since, limit=10_000)
        rows += [r for r in calls if r.get("completed") is not None]
        rows.sort(key=lambda r: int(r["seq"]))
        return rows[-10_000:]


def _next(value: str | None) -> str:
    """A post-login target: a path on ``/console`` only (never another site: an open redirect; never
    a dot segment, plain or percent-encoded, which a browser resolves to a path outside ``/console``),
    without control characters. Anything else gives ``/console``."""
    if not value:
        return "/console"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not (value == "/console" or value.startswith("/console/")) or "\\" in value:
        return "/console"
    if not value.isprintable() or any(unquote(seg) in (".", "..") for seg in parts.path.split("/")):
        return "/console"
    return value
