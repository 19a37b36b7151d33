"""The console's "Log in with OAuth": the authorization code grant with PKCE, as a confidential or
public client of the gateway's own ``[auth] issuer``.

Specs: RFC 6749 section 4.1 (authorization code grant), RFC 7636 (PKCE, ``S256`` only), RFC 9700
(OAuth 2.0 security best current practice: PKCE, exact redirect URI, one-time ``state`` bound to the
browser, ``iss`` checked when sent, RFC 9207), RFC 8707 (``resource`` = ``[auth] audience``, so the
token is minted for this gateway), RFC 8414 / OpenID Connect Discovery 1.0 (endpoints).

The flow, driven by :mod:`toolcrib.console.app`:

1. ``GET /console/oauth/start?next=PATH`` -> :meth:`ConsoleOAuth.start` returns the authorization
   URL (``response_type=code``, ``client_id``, ``redirect_uri``, ``scope``, ``state``,
   ``code_challenge`` + ``code_challenge_method=S256``, ``resource``) and the value of the
   :data:`STATE_COOKIE`: a :class:`~toolcrib.gateway.trust.sealed.Sealer` token (purpose
   :data:`STATE_PURPOSE`, :data:`STATE_TTL` seconds) holding the state, the PKCE verifier, the
   redirect URI and ``next``. Nothing is stored server-side, so any replica can finish the login.
2. ``GET /console/oauth/callback?code=&state=`` -> :meth:`ConsoleOAuth.finish` opens the cookie,
   compares ``state`` in constant time, refuses an authorization server error, exchanges the code
   at the token endpoint (``client_secret_basic``, or ``client_secret_post`` when the server's
   metadata lists only that; no client authentication for a public client) and returns the access
   token. The caller validates it with the gateway's own authenticator (issuer, audience, signature,
   expiry) and requires operator rights, exactly as a pasted token.

Every failure raises :class:`OAuthLoginError`: ``message`` is one line for the login page,
``status`` the HTTP status to answer with, ``detail`` what to log and audit (never a code, token,
verifier or secret).

Endpoints come from ``[console] oauth_authorization_endpoint`` / ``oauth_token_endpoint`` when set,
otherwise from the issuer's metadata: ``/.well-known/oauth-authorization-server`` (RFC 8414, path
inserted after the host) and then ``ISSUER/.well-known/openid-configuration``; the document's
``issuer`` must equal ``[auth] issuer`` (RFC 8414 section 3.3). Metadata is cached for
:data:`METADATA_TTL` seconds; a failure is not cached.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import anyio

from toolcrib.config import Config
from toolcrib.errors import ToolcribError
from toolcrib.gateway.trust.apikeys import KEY_PREFIX
from toolcrib.gateway.trust.sealed import InvalidToken, Sealer
from toolcrib.gateway.trust.secrets import ChainStore, CredentialStore, missing_secret

log = logging.getLogger("toolcrib.console")

STATE_COOKIE = "toolcrib_console_oauth"
"""The cookie that carries one login attempt from ``/start`` to ``/callback``."""
STATE_PURPOSE = "console_oauth"
STATE_TTL = 600.0
"""Seconds a login attempt may take at the authorization server (10 minutes)."""
COOKIE_PATH = "/console/oauth"
CALLBACK_PATH = "/console/oauth/callback"
METADATA_TTL = 3600.0
"""Seconds discovered authorization server metadata is reused."""
HTTP_TIMEOUT = 10.0
"""Seconds for one request to the authorization server (metadata or token)."""
MAX_RESPONSE = 1_000_000
"""Largest metadata or token response read (bytes)."""
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class OAuthLoginError(ToolcribError):
    """A console OAuth login that cannot go on: ``message`` for the page, ``detail`` for the log."""

    def __init__(self, message: str, *, status: int = 401, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail or message


@dataclass(frozen=True)
class Endpoints:
    """Where the console sends the browser (``authorization``) and exchanges the code (``token``)."""

    authorization: str
    token: str
    auth_methods: tuple[str, ...] = ()
    """``token_endpoint_auth_methods_supported`` (empty: not advertised; RFC 8414 default basic)."""


@dataclass(frozen=True)
class Finished:
    """A finished authorization: the access token and the console path to land on."""

    access_token: str
    next: str


def pkce_pair() -> tuple[str, str]:
    """A PKCE ``(code_verifier, code_challenge)``, method S256 (RFC 7636 sections 4.1-4.2).

    The verifier is 86 characters of ``[A-Za-z0-9_-]`` (512 random bits), within 43..128."""
    verifier = secrets.token_urlsafe(64)
    return verifier, _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def metadata_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may live, in the order tried: RFC 8414 section 3.1 (the well-known
    segment inserted between host and path) and OpenID Connect Discovery (appended to the issuer)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    return [
        f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{path}",
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
    ]


class ConsoleOAuth:
    """The console's OAuth client (see the module docstring). ``secrets`` resolves
    ``[console] oauth_client_secret`` (default: environment, keyring, ``[secrets] file``)."""

    def __init__(
        self,
        config: Config,
        sealer: Sealer,
        *,
        secrets_store: CredentialStore | None = None,
        http_timeout: float = HTTP_TIMEOUT,
    ) -> None:
        self.config = config
        self.console = config.console
        self.auth = config.auth
        self._sealer = sealer
        self._secrets = secrets_store or ChainStore(config.secrets.file)
        self._timeout = aiohttp.ClientTimeout(total=http_timeout)
        self._endpoints: tuple[float, Endpoints] | None = None
        self._lock = anyio.Lock()
        if self.console.oauth_client_id and not self.enabled:
            log.warning(
                '[console] oauth_client_id is ignored: it needs [gateway] auth = "oauth" or "keys+oauth" '
                "and [auth] issuer and audience"
            )

    @property
    def enabled(self) -> bool:
        """True when the login page offers "Log in with ..." (a client id, OAuth on, issuer and audience set)."""
        return bool(
            self.console.oauth_client_id
            and self.config.gateway.auth in ("oauth", "keys+oauth")
            and self.auth.issuer
            and self.auth.audience
        )

    @property
    def label(self) -> str:
        """The issuer's host (and port), for the button: ``Log in with LABEL``."""
        return urlsplit(self.auth.issuer or "").netloc or "OAuth"

    # ---- endpoints -----------------------------------------------------------------------------

    async def endpoints(self) -> Endpoints:
        """The authorization and token endpoints (configured, else discovered and cached).

        Raises :class:`OAuthLoginError` (503) when the metadata cannot be read or is unusable."""
        auth_url, token_url = self.console.oauth_authorization_endpoint, self.console.oauth_token_endpoint
        if auth_url and token_url:
            return Endpoints(auth_url, token_url)
        cached = self._endpoints
        if cached is not None and time.monotonic() - cached[0] < METADATA_TTL:
            return cached[1]
        async with self._lock:
            cached = self._endpoints
            if cached is not None and time.monotonic() - cached[0] < METADATA_TTL:
                return cached[1]
            found = await self._discover()
            endpoints = Endpoints(auth_url or found.authorization, token_url or found.token, found.auth_methods)
            self._endpoints = (time.monotonic(), endpoints)
            return endpoints

    async def _discover(self) -> Endpoints:
        issuer = str(self.auth.issuer)
        why: list[str] = []
        async with aiohttp.ClientSession(timeout=self._timeout) as http:
            for url in metadata_urls(issuer):
                try:
                    async with http.get(url, allow_redirects=False, headers={"Accept": "application/json"}) as resp:
                        body = await resp.content.read(MAX_RESPONSE + 1)
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    why.append(f"{url}: {type(exc).__name__} {exc}".strip())
                    continue
                if status != 200:
                    why.append(f"{url}: HTTP {status}")
                    continue
                try:
                    return _parse_metadata(body, issuer)
                except ValueError as exc:
                    why.append(f"{url}: {exc}")
        detail = "; ".join(why)
        raise OAuthLoginError(
            f"cannot read the authorization server's metadata from {issuer} ({why[0] if why else 'no answer'}); "
            "check [auth] issuer or set [console] oauth_authorization_endpoint and oauth_token_endpoint",
            status=503,
            detail=f"OAuth metadata unreachable: {detail}",
        )

    # ---- 1. start ------------------------------------------------------------------------------

    async def start(self, redirect_uri: str, next_path: str) -> tuple[str, str]:
        """``(authorization URL, state cookie value)`` for one login attempt landing on ``next_path``."""
        endpoints = await self.endpoints()
        state = secrets.token_urlsafe(32)
        verifier, challenge = pkce_pair()
        params = {
            "response_type": "code",
            "client_id": str(self.console.oauth_client_id),
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.console.oauth_scopes),
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": str(self.auth.audience),
        }
        sep = "&" if urlsplit(endpoints.authorization).query else "?"
        url = endpoints.authorization + sep + urlencode(params, quote_via=quote)
        data = {"s": state, "v": verifier, "r": redirect_uri, "n": next_path}
        return url, self._sealer.seal(STATE_PURPOSE, "-", data, STATE_TTL)

    # ---- 2. callback ---------------------------------------------------------------------------

    async def finish(self, query: Mapping[str, str], cookie: str | None) -> Finished:
        """Check the callback's ``query`` against the attempt in ``cookie`` and exchange the code.

        Raises :class:`OAuthLoginError` for a missing or expired attempt, a state mismatch, an
        authorization server error (``error=access_denied``...), another issuer (``iss``), or a
        refused code exchange."""
        attempt = self._open(cookie)
        if attempt is None:
            raise OAuthLoginError(
                "This login attempt expired or was started in another browser: click Log in again.",
                detail="OAuth callback without a valid login attempt cookie",
            )
        sent = query.get("state", "")
        if not hmac.compare_digest(attempt["s"].encode(), sent.encode()):
            raise OAuthLoginError(
                "The login answer does not belong to this browser's login attempt (state mismatch): "
                "click Log in again.",
                status=403,
                detail="OAuth callback state mismatch (forged or stale)",
            )
        iss = query.get("iss")
        if iss is not None and iss != self.auth.issuer:  # RFC 9207: mix-up protection
            raise OAuthLoginError(
                "The login answer comes from another authorization server (iss): click Log in again.",
                status=403,
                detail=f"OAuth callback from issuer {iss[:200]!r}, expected {self.auth.issuer}",
            )
        error = query.get("error")
        if error is not None:
            code = error if _ERROR_CODE.fullmatch(error) else "invalid"
            what = "refused the login" if code == "access_denied" else f"answered {code}"
            raise OAuthLoginError(
                f"{self.label} {what} ({code}): nobody is logged in.",
                status=403 if code == "access_denied" else 401,
                detail=f"authorization server error {code}: {query.get('error_description', '')[:200]}",
            )
        code_value = query.get("code", "")
        if not code_value or len(code_value) > 4096:
            raise OAuthLoginError(
                "The login answer has no authorization code: click Log in again.", detail="OAuth callback without code"
            )
        token = await self._exchange(code_value, attempt)
        return Finished(token, attempt["n"])

    def _open(self, cookie: str | None) -> dict[str, str] | None:
        if not cookie:
            return None
        try:
            data = self._sealer.open(cookie, STATE_PURPOSE, "-")
        except InvalidToken:
            return None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in "svrn"):
            return None
        return {k: str(data[k]) for k in "svrn"}

    async def _exchange(self, code: str, attempt: Mapping[str, str]) -> str:
        endpoints = await self.endpoints()
        client_id = str(self.console.oauth_client_id)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": attempt["r"],
            "code_verifier": attempt["v"],
            "resource": str(self.auth.audience),
        }
        headers = {"Accept": "application/json"}
        secret = self._client_secret()
        if secret is None:
            form["client_id"] = client_id  # a public client names itself (RFC 6749 4.1.3)
        elif endpoints.auth_methods and "client_secret_basic" not in endpoints.auth_methods:
            form.update(client_id=client_id, client_secret=secret)  # client_secret_post
        else:  # client_secret_basic: each part form-urlencoded first (RFC 6749 2.3.1)
            pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as http,
                http.post(endpoints.token, data=form, headers=headers, allow_redirects=False) as resp,
            ):
                body = await resp.content.read(MAX_RESPONSE + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OAuthLoginError(
                f"cannot reach the token endpoint of {self.label} ({type(exc).__name__}): try again shortly.",
                status=503,
                detail=f"token endpoint {endpoints.token} unreachable: {type(exc).__name__} {exc}",
            ) from None
        try:
            doc = json.loads(body) if len(body) <= MAX_RESPONSE else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            doc = {}
        if status != 200:
            error = doc.get("error")
            code_name = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else f"HTTP {status}"
            raise OAuthLoginError(
                f"{self.label} refused to exchange the authorization code ({code_name}): click Log in again.",
                detail=f"token endpoint refused the code: {code_name}",
            )
        token, kind = doc.get("access_token"), doc.get("token_type")
        if not isinstance(token, str) or not token or not isinstance(kind, str) or kind.lower() != "bearer":
            raise OAuthLoginError(
                f"{self.label} answered the code exchange without a bearer access token: click Log in again.",
                detail="token endpoint answer without a bearer access_token",
            )
        if token.startswith(KEY_PREFIX):  # never let an authorization server hand back an API key
            raise OAuthLoginError(
                f"{self.label} answered with a token this gateway does not accept: click Log in again.",
                detail="token endpoint answered an API-key-shaped token",
            )
        return token

    def _client_secret(self) -> str | None:
        ref = self.console.oauth_client_secret
        if ref is None:
            return None
        value = self._secrets.get(ref)
        if value is None:
            exc = missing_secret(ref)
            raise OAuthLoginError(f"[console] oauth_client_secret: {exc.message}", status=503)
        return value


def _parse_metadata(body: bytes, issuer: str) -> Endpoints:
    if len(body) > MAX_RESPONSE:
        raise ValueError("the document is too large")
    try:
        doc: Any = json.loads(body)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("issuer") != issuer:
        raise ValueError(f"its issuer {str(doc.get('issuer'))[:200]!r} is not [auth] issuer")
    urls = []
    for name in ("authorization_endpoint", "token_endpoint"):
        url = doc.get(name)
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
            raise ValueError(f"no usable {name}")
        urls.append(str(url))
    methods = doc.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise ValueError("it does not support PKCE S256 (code_challenge_methods_supported)")
    auth_methods = doc.get("token_endpoint_auth_methods_supported")
    names = tuple(m for m in auth_methods if isinstance(m, str)) if isinstance(auth_methods, list) else ()
    return Endpoints(urls[0], urls[1], names)
