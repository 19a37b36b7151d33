"""The guard: one aiohttp middleware in front of every HTTP route, present and future.

Every request passes, in this order:

1. **Host / Origin** (DNS-rebinding and cross-site protection): ``Host`` must name this gateway
   (its bind address, a loopback name, or ``[gateway] allowed_hosts``); an ``Origin``, when sent,
   must be loopback or in ``allowed_origins``. Else 403.
2. **Declared size**: a ``Content-Length`` over ``max_body_bytes`` is refused at once (413).
3. **Authentication** to a typed :class:`~toolcrib.gateway.trust.identity.Principal`, kept under
   :data:`PRINCIPAL`. Failures get the status RFC 6750 assigns and a generic body that says what to
   do and nothing about the gateway's internals: 400 ``invalid_request`` (credentials in the URL,
   several ``Authorization`` headers), 401 ``invalid_token`` (missing, not Bearer, unknown,
   expired), 403 ``insufficient_scope``, 503 (the key store or the issuer's keys are unreadable:
   fail closed). Every refusal is reported to ``on_refused`` (the audit log) with its detail.
4. **Route access**, declared once per route when it is added, with :func:`access`:
   ``"client"`` (``/mcp``: any authenticated principal), ``"operator"`` (``/admin/*``: a principal in
   the operators group, and for state-changing methods ``Content-Type: application/json`` (415
   otherwise), so no HTML form or CORS "simple request" can change anything), ``"public"``
   (``/healthz``, OAuth metadata: credentials optional; an authenticated principal is still
   attached when valid ones are sent), ``"console"`` (``/console/*`` pages: an operator logged in
   with the console cookie, see below) and ``"console-public"`` (the login page and the console's
   static files). A route that declares nothing is treated as ``"operator"``.
5. **Body**, only for a caller that got this far: the WHOLE body is read, however it arrives
   (several TCP segments, chunked transfer encoding), and kept under :data:`BODY`; a body that
   grows past the cap while read is 413.

The web console (:mod:`toolcrib.console`) authenticates by its sealed login cookie
(:mod:`toolcrib.console.session`) instead of an ``Authorization`` header, re-checked on every request;
a GET without a valid operator login is redirected (303) to ``/console/login``. Every state-changing
console request (HTML forms are allowed there: ``application/x-www-form-urlencoded``) must be
same-origin (``Origin`` equal to this gateway's ``Host``, or without ``Origin`` a same-origin
``Sec-Fetch-Site`` or ``Referer``; a loopback page on another port is another origin) and, once
logged in, carry the login's CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``); else
403. A console read (GET/HEAD) whose ``Sec-Fetch-Site`` names another origin is refused (403) unless
it is a top-level navigation (``Sec-Fetch-Mode: navigate``): another page cannot make the console
work as the operator by embedding it. Console responses get a strict Content-Security-Policy (:data:`CONSOLE_HEADERS`).

Every ``/mcp`` request is logged on ``toolcrib.requests`` at INFO (``toolcrib -v``), one line when it
ends: HTTP method, JSON-RPC method, target (tool, prompt or resource URI; for ``invoke`` the tool it
calls), principal id, HTTP status, outcome (``ok``, ``tool_error``, ``error CODE``) and duration in
ms; never arguments, headers or credentials. The fields are also on the record as ``request`` (a
dict) for ``--log-json``.

With ``auth = "none"`` (loopback binds only) ``/mcp`` clients are the anonymous principal, and
operator and public routes see the local operator when the peer address is loopback (the Host check
above is what keeps a DNS-rebinding page from being that peer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal
from urllib.parse import parse_qs, quote, urlsplit

from aiohttp import web

from toolcrib.config import Config
from toolcrib.console.session import COOKIE, CSRF_FIELD, CSRF_HEADER, ConsoleLogin, ConsoleLogins, csrf_matches
from toolcrib.errors import AuthError, Forbidden
from toolcrib.gateway.trust.identity import ANONYMOUS, LOCAL_OPERATOR, OPERATORS_GROUP, Principal
from toolcrib.gateway.trust.policy import is_loopback

log = logging.getLogger("toolcrib.guard")
request_log = logging.getLogger("toolcrib.requests")

Access = Literal["client", "operator", "public", "console", "console-public"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Authenticate = Callable[[Mapping[str, str], Mapping[str, str]], Awaitable[Principal]]
Refused = Callable[[web.Request, str, int], None]
"""``(request, detail, status)``: told of every refused authentication (for the audit log)."""
Challenge = Callable[[web.Request, Exception], dict[str, str]]

PRINCIPAL = web.RequestKey("toolcrib_principal", Principal)
"""The authenticated caller of this request (``public`` routes: absent unless credentials were valid)."""
BODY = web.RequestKey("toolcrib_body", bytes)
"""The whole request body, read by the guard (empty for methods without one)."""
CONSOLE = web.RequestKey("toolcrib_console", ConsoleLogin)
"""The console login of a ``console`` request (and of a ``console-public`` one when logged in)."""
FORM = web.RequestKey[dict[str, str]]("toolcrib_form", dict)
"""A console request's urlencoded form fields (first value of each), parsed once by the guard."""
CONSOLE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
"""Headers of every ``/console`` response: no inline script or style, nothing from another origin,
never framed (clickjacking), never cached."""
NOTE = web.RequestKey[dict[str, str]]("toolcrib_note", dict)
"""What handlers add to the request log line (``method``, ``target``, ``outcome``); present only when it is logged."""

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")
_ACCESS_ATTR = "_toolcrib_access"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_GENERIC = {
    400: ("invalid_request", "send credentials only as one `Authorization: Bearer TOKEN` header, never in the URL"),
    401: ("invalid_token", "authentication required: send a valid `Authorization: Bearer TOKEN` header"),
    403: ("insufficient_scope", "the credentials are valid but lack the scope this endpoint needs"),
    503: ("temporarily_unavailable", "authentication is temporarily unavailable; retry shortly"),
}


def access(level: Access, handler: Handler) -> Handler:
    """``handler`` declared with an access level (see the module docstring); register the result."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        return await handler(request)

    setattr(guarded, _ACCESS_ATTR, level)
    return guarded


def _level(request: web.Request) -> Access:
    level: Access = getattr(request.match_info.handler, _ACCESS_ATTR, "operator")
    return level


def error_body(status: int, error: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """The guard's JSON error shape: ``{"error": CODE, "message": ONE LINE}``."""
    return web.json_response({"error": error, "message": message}, status=status, headers=headers)


class Guard:
    """Builds the middleware from the gateway config and the authenticator."""

    def __init__(
        self,
        config: Config,
        authenticate: Authenticate,
        *,
        on_refused: Refused | None = None,
        challenge: Challenge | None = None,
        console: ConsoleLogins | None = None,
    ) -> None:
        gw = config.gateway
        self.auth_mode = gw.auth
        self.max_body = gw.max_body_bytes
        self._hosts = {h.lower() for h in (gw.host, *LOOPBACK_NAMES, *gw.allowed_hosts)}
        self._origins = {o.rstrip("/").lower() for o in gw.allowed_origins}
        self._authenticate = authenticate
        self._on_refused = on_refused or (lambda _r, _d, _s: None)
        self._challenge = challenge or (lambda _r, _e: {})
        self.console = console

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/mcp" or not request_log.isEnabledFor(logging.INFO):
            return await self._guard(request, handler)
        start = time.monotonic()
        note: dict[str, str] = {}
        request[NOTE] = note
        status = 500
        try:
            resp = await self._guard(request, handler)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            principal = request.get(PRINCIPAL)
            fields = {
                "http": request.method,
                "method": note.get("method", "-"),
                "target": note.get("target", "-"),
                "principal": principal.id if principal is not None else "-",
                "status": status,
                "outcome": note.get("outcome", "-"),
                "ms": round((time.monotonic() - start) * 1000, 1),
            }
            request_log.info(
                "%(http)s /mcp %(method)s %(target)s principal=%(principal)s status=%(status)s %(outcome)s %(ms).1f ms",
                fields,
                extra={"request": fields},
            )

    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        bad = self.check_host_origin(request)
        if bad is not None:
            return bad
        if request.content_length is not None and request.content_length > self.max_body:
            return self._too_large()
        level = _level(request)
        if level in ("console", "console-public"):
            return await self._console(request, handler, level)
        principal = await self._principal(request, level)
        if isinstance(principal, web.Response):
            return principal
        if principal is not None:
            request[PRINCIPAL] = principal
        if level == "operator":
            refused = self._operator_only(request, principal)
            if refused is not None:
                return refused
        body = b""
        if request.method in _UNSAFE:
            read = await self._read_body(request)
            if isinstance(read, web.Response):
                return read
            body = read
        request[BODY] = body
        return await handler(request)

    # ---- 1. Host / Origin ----------------------------------------------------------------------

    def check_host_origin(self, request: web.Request) -> web.Response | None:
        host = (request.headers.get("Host") or "").strip().lower()
        name = host if host.endswith("]") else host.rsplit(":", 1)[0]
        if not host or (host not in self._hosts and name not in self._hosts):
            return web.Response(status=403, text="Forbidden: Host header not allowed (DNS-rebinding protection)\n")
        origin = request.headers.get("Origin")
        if origin is not None:
            o = origin.strip().rstrip("/").lower()
            try:
                hostname = urlsplit(o).hostname or ""
            except ValueError:  # not a URL (e.g. "http://[evil"): never an allowed origin
                hostname = ""
            if o not in self._origins and hostname not in ("localhost", "127.0.0.1", "::1"):
                return web.Response(
                    status=403, text="Forbidden: Origin not allowed; add it to [gateway] allowed_origins\n"
                )
        return None

    # ---- 2. body -------------------------------------------------------------------------------

    def _too_large(self) -> web.Response:
        return web.Response(status=413, text=f"Payload Too Large: the limit is {self.max_body} bytes\n")

    async def _read_body(self, request: web.Request) -> bytes | web.Response:
        content = request.content
        chunks: list[bytes] = []
        size = 0
        try:
            if content.is_eof():  # the whole body is already here (a small POST, usually): no waiting, no iterator
                body = content.read_nowait()
                return self._too_large() if len(body) > self.max_body else body
            async for chunk in content.iter_any():
                size += len(chunk)
                if size > self.max_body:
                    return self._too_large()
                chunks.append(chunk)
        except (ConnectionError, web.HTTPException):
            return web.Response(status=400, text="Bad Request: the body could not be read\n")
        return b"".join(chunks)

    # ---- 3. authentication ---------------------------------------------------------------------

    async def _principal(self, request: web.Request, level: Access) -> Principal | web.Response | None:
        if self.auth_mode == "none":
            if level == "client":
                return ANONYMOUS
            return LOCAL_OPERATOR if is_loopback(request.remote or "") else None
        if level == "public" and "Authorization" not in request.headers:
            return None
        try:
            return await self._authenticate(request.headers, request.query)
        except (AuthError, Forbidden) as exc:
            status = int(getattr(exc, "status", 401 if isinstance(exc, AuthError) else 403))
            self._on_refused(request, exc.message, status)
            log.info("refused %s %s from %s: %s", request.method, request.path, request.remote, exc.message)
            if level == "public":
                return None
            error, message = _GENERIC.get(status, _GENERIC[401])
            headers = self._challenge(request, exc) if status in (401, 403) else {}
            if status == 503:
                headers = {"Retry-After": "5"}
            return error_body(status, error, message, headers)

    # ---- the web console -----------------------------------------------------------------------

    async def _console(self, request: web.Request, handler: Handler, level: Access) -> web.StreamResponse:
        unsafe = request.method in _UNSAFE
        if self.console is None:
            raise web.HTTPNotFound()
        if unsafe and not self._same_origin(request):
            self._on_refused(request, "cross-site console request", 403)
            return _console_refusal(403, "refused: a console form must be sent from this console's own pages")
        if not unsafe and not self._fetch_allowed(request):
            log.info("refused %s %s from %s: embedded by another origin", request.method, request.path, request.remote)
            return _console_refusal(403, "refused: console pages load in their own tab, not inside another site's page")
        login = await self._console_login(request)
        if login is not None:
            request[CONSOLE] = login
            request[PRINCIPAL] = login.principal
        elif level == "console":
            if request.method in ("GET", "HEAD"):
                target = request.path_qs if request.path != "/console/login" else "/console"
                raise web.HTTPSeeOther(f"/console/login?next={quote(target, safe='/')}")
            return _console_refusal(401, "your console login has ended: log in again")
        request[BODY] = b""
        request[FORM] = {}
        if unsafe:
            body = await self._read_body(request)
            if isinstance(body, web.Response):
                return body
            request[BODY] = body
            if request.content_type == "application/x-www-form-urlencoded":
                fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=200)
                request[FORM] = {k: v[0] for k, v in fields.items()}
            if level == "console":
                assert login is not None
                sent = request.headers.get(CSRF_HEADER) or request[FORM].get(CSRF_FIELD)
                if not csrf_matches(login.csrf, sent):
                    self._on_refused(request, "console request without its CSRF token", 403)
                    return _console_refusal(403, "refused: the form is stale or forged; reload the page and retry")
        return await handler(request)

    async def _console_login(self, request: web.Request) -> ConsoleLogin | None:
        assert self.console is not None
        if self.auth_mode == "none":
            return self.console.local(LOCAL_OPERATOR) if is_loopback(request.remote or "") else None
        try:
            login = await self.console.check(request.cookies.get(COOKIE))
        except (AuthError, Forbidden) as exc:
            self._on_refused(request, f"console login no longer valid: {exc.message}", 401)
            return None
        if login is not None and not login.principal.is_operator:
            self._on_refused(request, f"{login.principal.id} is not an operator", 403)
            return None
        return login

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        """True when a state-changing request comes from this gateway's own pages (see the module docstring)."""
        host = (request.headers.get("Host") or "").strip().lower()
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        sender = request.headers.get("Origin") or request.headers.get("Referer")
        if sender is None or sender == "null":
            return site == "same-origin"
        try:
            parts = urlsplit(sender.strip())
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host

    @staticmethod
    def _fetch_allowed(request: web.Request) -> bool:
        """Fetch Metadata resource isolation (https://web.dev/articles/fetch-metadata) for console reads:
        a request from this origin, a typed URL or bookmark, or a top-level navigation from elsewhere.
        Not a subresource (``<img>``, ``fetch``, ``<script>``) of another origin's page: another port
        on the same loopback host is the same *site*, so the ``SameSite=Strict`` cookie rides along,
        and each console GET (the chain check, the export, a search) would run as the operator.
        Clients that send no ``Sec-Fetch-Site`` (curl, old browsers) are let through."""
        site = request.headers.get("Sec-Fetch-Site")
        if site is None or site in ("same-origin", "none"):
            return True
        return request.headers.get("Sec-Fetch-Mode") == "navigate" and request.headers.get("Sec-Fetch-Dest") in (
            "document",
            None,
        )

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare`` hook: :data:`CONSOLE_HEADERS` on every ``/console`` response."""
        if request.path == "/console" or request.path.startswith("/console/"):
            for name, value in CONSOLE_HEADERS.items():
                response.headers.setdefault(name, value)

    # ---- 4. operator routes --------------------------------------------------------------------

    def _operator_only(self, request: web.Request, principal: Principal | None) -> web.Response | None:
        if principal is None:
            return error_body(403, "forbidden", "the admin API answers only the local operator (loopback)")
        if not principal.is_operator:
            self._on_refused(request, f"{principal.id} is not an operator", 403)
            return error_body(403, "forbidden", f"this needs a principal in the {OPERATORS_GROUP!r} group")
        if request.method in _UNSAFE and request.content_type != "application/json":
            return error_body(415, "unsupported_media_type", "send the request body as Content-Type: application/json")
        return None


def _console_refusal(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=f"{message}\n", content_type="text/plain")
