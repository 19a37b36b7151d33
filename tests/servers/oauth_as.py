"""A small, real OAuth 2.0 authorization server for tests (aiohttp on 127.0.0.1).

- ``GET /.well-known/oauth-authorization-server`` (RFC 8414 metadata; ``issuer`` is :attr:`issuer`),
  or with ``rfc8414=False`` only ``GET /.well-known/openid-configuration``.
- ``GET /authorize``: checks ``response_type=code``, ``client_id``, the exact ``redirect_uri`` (one of
  :attr:`redirect_uris`; empty: any ``http://127.0.0.1`` one), ``code_challenge_method=S256``; then
  auto-approves :attr:`user` (302 back with ``code``, ``state`` and ``iss``) or, with :attr:`deny`,
  answers ``error=access_denied``.
- ``POST /token``: ``grant_type=authorization_code``; checks client authentication (Basic or
  ``client_secret_post`` when :attr:`client_secret` is set, else a public ``client_id``), the code (one
  use only: a second use is ``invalid_grant``), ``redirect_uri`` and the PKCE verifier; issues an RS256
  JWT (``iss``, ``aud`` = the ``resource`` asked for, ``sub``, ``exp``, ``scope``, and the groups in
  :attr:`groups_claim`) signed with a key whose JWKS is ``GET /jwks``.

Everything it saw is kept (``authorize_requests``, ``token_requests``) for assertions.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


@dataclass
class User:
    subject: str
    groups: list[str] = field(default_factory=list)


@dataclass
class OAuthServer:
    """State and settings of the running server (change them between requests)."""

    client_id: str = "toolcrib-console"
    client_secret: str | None = None
    user: User = field(default_factory=lambda: User("alice", ["admins"]))
    deny: bool = False
    groups_claim: str = "groups"
    host: str = "127.0.0.1"
    """The name the issuer URL uses (``localhost`` makes the gateway on 127.0.0.1 another site)."""
    redirect_uris: list[str] = field(default_factory=list)
    rfc8414: bool = True
    """False: metadata only at ``/.well-known/openid-configuration`` (an OpenID Connect provider)."""
    port: int = 0
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    kid: str = "as1"
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    def jwks(self) -> dict[str, Any]:
        data: dict[str, Any] = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**data, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    # ---- handlers ------------------------------------------------------------------------------

    async def metadata(self, request: web.Request) -> web.Response:
        if self.rfc8414 != (request.path == "/.well-known/oauth-authorization-server"):
            raise web.HTTPNotFound()
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": self.jwks_url,
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
                "authorization_response_iss_parameter_supported": True,
            }
        )

    async def get_jwks(self, _request: web.Request) -> web.Response:
        return web.json_response(self.jwks())

    def _redirect_ok(self, uri: str) -> bool:
        if self.redirect_uris:
            return uri in self.redirect_uris
        return uri.startswith("http://127.0.0.1:")

    async def authorize(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.authorize_requests.append(q)
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or not self._redirect_ok(redirect_uri):
            # never redirect to an unverified URI (RFC 6749 4.1.2.1): show the error here
            return web.Response(status=400, text="invalid client_id or redirect_uri\n")
        back: dict[str, str] = {"state": q.get("state", ""), "iss": self.issuer}
        if self.deny:
            back["error"] = "access_denied"
        elif q.get("response_type") != "code":
            back["error"] = "unsupported_response_type"
        elif q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            back.update(error="invalid_request", error_description="PKCE S256 required")
        else:
            code = secrets.token_urlsafe(24)
            self.codes[code] = {
                "redirect_uri": redirect_uri,
                "challenge": q["code_challenge"],
                "resource": q.get("resource"),
                "scope": q.get("scope", ""),
                "user": self.user,
                "exp": time.time() + 60,
            }
            back["code"] = code
        raise web.HTTPFound(f"{redirect_uri}?{urlencode(back)}")

    def _client(self, request: web.Request, form: dict[str, str]) -> str | None:
        """The authenticated client id, or None."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                pair = base64.b64decode(header[6:]).decode()
            except ValueError:
                return None
            cid, _, secret = pair.partition(":")
            cid, secret = unquote(cid), unquote(secret)
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        if cid != self.client_id:
            return None
        if self.client_secret is not None and not secrets.compare_digest(secret, self.client_secret):
            return None
        return cid

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append({**form, "auth": request.headers.get("Authorization", "")[:6]})
        if self._client(request, form) is None:
            return _token_error(401, "invalid_client")
        if form.get("grant_type") != "authorization_code":
            return _token_error(400, "unsupported_grant_type")
        code = form.get("code", "")
        grant = self.codes.get(code)
        if grant is None or code in self.used or grant["exp"] < time.time():
            return _token_error(400, "invalid_grant")
        self.used.add(code)  # one use only, even when the rest is wrong
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return _token_error(400, "invalid_grant")
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or digest != grant["challenge"]:
            return _token_error(400, "invalid_grant")
        user: User = grant["user"]
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": grant["resource"] or self.client_id,
            "sub": user.subject,
            "iat": now,
            "exp": now + 600,
            "scope": grant["scope"],
            self.groups_claim: user.groups,
        }
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": 600, "scope": grant["scope"]},
            headers={"Cache-Control": "no-store"},
        )


def _token_error(status: int, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status, headers={"Cache-Control": "no-store"})


@asynccontextmanager
async def oauth_server(**settings: Any) -> AsyncIterator[OAuthServer]:
    """Run an :class:`OAuthServer` on 127.0.0.1 (an ephemeral port) until the block ends."""
    server = OAuthServer(**settings)
    app = web.Application()
    app.router.add_get("/.well-known/oauth-authorization-server", server.metadata)
    app.router.add_get("/.well-known/openid-configuration", server.metadata)
    app.router.add_get("/jwks", server.get_jwks)
    app.router.add_get("/authorize", server.authorize)
    app.router.add_post("/token", server.token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield server
    finally:
        await runner.cleanup()
