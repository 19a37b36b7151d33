"""Who is calling: API keys, OAuth 2.1 bearer JWTs (resource server), or the local operator.

Credentials travel only in the ``Authorization: Bearer`` header; a request carrying a token-like
query parameter (``access_token=``, ``api_key=``...) is refused even when the header is fine.
Everything fails closed: an unreadable key store or an unreachable JWKS refuses the request
(:class:`AuthUnavailable`, HTTP 503) rather than letting it through. Authentication runs per
request, so a key revoked from the CLI stops working at once, live sessions included.

Map exceptions to HTTP: :class:`AuthError` -> 401 with :func:`www_authenticate` (``error`` from the
exception's ``error`` attribute), :class:`InsufficientScope` -> 403 with ``error="insufficient_scope"``,
:class:`AuthUnavailable` -> 503. All carry a ``status`` attribute.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp
import anyio
import jwt

from toolcrib.config import AuthConfig, Config
from toolcrib.errors import AuthError, ConfigError, Forbidden
from toolcrib.gateway.trust.apikeys import KEY_PREFIX, ApiKeyInfo, ApiKeyStore, AuthUnavailable
from toolcrib.gateway.trust.identity import ANONYMOUS, Principal
from toolcrib.gateway.trust.policy import is_loopback

__all__ = ["ApiKeyInfo", "ApiKeyStore", "AuthUnavailable", "Authenticator", "JwtValidator", "Principal"]
QUERY_TOKEN_PARAMS = frozenset(
    {"access_token", "id_token", "token", "api_key", "apikey", "key", "auth", "authorization", "bearer", "jwt"}
)
ASYMMETRIC_ALGORITHMS = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}  # fmt: skip
"""The only algorithms a JWT may use, with the JWK key type (and curve) each requires."""
MAX_TOKEN_LENGTH = 16384
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class InvalidToken(AuthError):
    """Missing, malformed, unknown, revoked, expired or otherwise unacceptable credentials (401)."""

    status = 401
    error: str | None = "invalid_token"


class InvalidRequest(InvalidToken):
    """Credentials sent the wrong way: in the query string, or in several headers (400)."""

    status = 400
    error = "invalid_request"


class InsufficientScope(Forbidden):
    """A valid token that lacks a required scope (403)."""

    status = 403
    error = "insufficient_scope"

    def __init__(self, message: str, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class Authenticator(Protocol):
    """Turns request headers and query parameters into a :class:`Principal`, or raises."""

    async def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Principal: ...


def bearer_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """The one bearer token of a request; raise for tokens in the URL and malformed headers."""
    leaked = sorted(k for k in query if k.lower() in QUERY_TOKEN_PARAMS)
    if leaked:
        raise InvalidRequest(
            f"credentials in the URL ({', '.join(leaked)}) are refused; send `Authorization: Bearer TOKEN`"
        )
    values = [v for k, v in headers.items() if k.lower() == "authorization"]
    if not values:
        raise InvalidToken("no credentials; send `Authorization: Bearer TOKEN`")
    if len(values) > 1:
        raise InvalidRequest("more than one Authorization header; send exactly one")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":
        raise InvalidToken("the Authorization scheme must be Bearer")  # no bearer credentials: 401 (RFC 6750 s3)
    if not token or len(token) > MAX_TOKEN_LENGTH or not _B64TOKEN.fullmatch(token):
        raise InvalidToken("the bearer token is empty, too long or has characters a token cannot have")
    return token


class ApiKeyAuthenticator:
    """Bearer ``tcb_...`` keys from an :class:`ApiKeyStore`."""

    def __init__(self, store: ApiKeyStore) -> None:
        self.store = store

    async def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Principal:
        return self.check(bearer_token(headers, query))

    def check(self, token: str) -> Principal:
        principal = self.store.lookup(token) if token.startswith(KEY_PREFIX) else None
        if principal is None:
            raise InvalidToken("unknown or revoked API key")
        return principal


class JwtValidator:
    """OAuth 2.1 resource server: bearer JWTs checked against the issuer's JWKS (RFC 9068 style).

    The JWKS is cached for ``cache_ttl`` seconds and refetched early when a token names an unknown
    ``kid``, at most once per ``refetch_interval``. A token's ``alg`` must be in the configured
    allow-list (asymmetric algorithms only) and match the JWK's key type and curve, so ``none`` and
    HS/RS confusion cannot happen. ``iss``, ``aud`` (this gateway's resource URI), ``exp`` and ``sub``
    are required; ``exp``/``nbf`` allow ``leeway`` seconds of skew.
    """

    def __init__(
        self,
        cfg: AuthConfig,
        *,
        cache_ttl: float = 300.0,
        refetch_interval: float = 30.0,
        http_timeout: float = 5.0,
    ) -> None:
        missing = [k for k in ("issuer", "jwks_url", "audience") if not getattr(cfg, k)]
        if missing:
            raise ConfigError(f"[auth] {', '.join(missing)} must be set for OAuth; see the README's auth section")
        bad = [a for a in cfg.algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if bad or not cfg.algorithms:
            raise ConfigError(
                f"[auth] algorithms {bad or '[]'} not allowed; use some of {sorted(ASYMMETRIC_ALGORITHMS)}"
            )
        self.cfg = cfg
        self.cache_ttl, self.refetch_interval, self.http_timeout = cache_ttl, refetch_interval, http_timeout
        self._keys: dict[str, tuple[dict[str, Any], jwt.PyJWK]] = {}
        self._fetched_at = float("-inf")
        self._lock = anyio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> JwtValidator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Principal:
        return await self.check(bearer_token(headers, query))

    async def check(self, token: str) -> Principal:
        """Validate one JWT and map it to a principal."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the bearer token is not a well-formed JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.cfg.algorithms:
            raise InvalidToken(f"token algorithm {alg!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token header has no kid")
        jwk, key = await self._key(kid)
        kty, crv = ASYMMETRIC_ALGORITHMS[alg]
        if jwk.get("kty") != kty or (crv and jwk.get("crv") != crv) or jwk.get("alg", alg) != alg:
            raise InvalidToken(f"token algorithm {alg} does not match key {kid}")
        if jwk.get("use", "sig") != "sig":
            raise InvalidToken(f"key {kid} is not a signing key")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.cfg.audience,
                issuer=self.cfg.issuer,
                leeway=self.cfg.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is not meant for this gateway (aud)") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token comes from another issuer (iss)") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token was refused ({type(exc).__name__})") from None
        return self._principal(claims)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("the token's sub claim must be a non-empty string")
        scopes = _strings(claims.get("scope")) | _strings(claims.get("scp"))
        missing = sorted(set(self.cfg.required_scopes) - scopes)
        if missing:
            needed = " ".join(self.cfg.required_scopes)
            raise InsufficientScope(f"the token lacks scope {' '.join(missing)}", needed)
        groups = {g for s in scopes for g in self.cfg.scope_groups.get(s, ())}
        if self.cfg.groups_claim:
            groups |= _strings(claims.get(self.cfg.groups_claim))
        return Principal("oauth", sub, frozenset(groups), frozenset(scopes))

    async def _key(self, kid: str) -> tuple[dict[str, Any], jwt.PyJWK]:
        if time.monotonic() - self._fetched_at < self.cache_ttl and kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            if age >= self.cache_ttl or (kid not in self._keys and age >= self.refetch_interval):
                await self._fetch()
        if kid not in self._keys:
            raise InvalidToken(f"unknown signing key {kid!r}")
        return self._keys[kid]

    async def _fetch(self) -> None:
        url = str(self.cfg.jwks_url)
        self.fetches += 1
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.http_timeout))
            async with self._session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = await resp.content.read(1_000_001)
            data = json.loads(body)
            if len(body) > 1_000_000 or not isinstance(data.get("keys"), list):
                raise ValueError("not a JWKS document")
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
            self._keys, self._fetched_at = {}, float("-inf")
            raise AuthUnavailable(f"cannot fetch the issuer's keys from {url} ({exc}); refusing tokens") from None
        keys = {}
        for jwk in data["keys"]:
            if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str) and "d" not in jwk:
                with contextlib.suppress(jwt.PyJWTError, ValueError, TypeError, KeyError):
                    keys[jwk["kid"]] = (jwk, jwt.PyJWK(jwk))
        self._keys, self._fetched_at = keys, time.monotonic()


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list):
        return {v for v in value if isinstance(v, str)}
    return set()


class CompositeAuthenticator:
    """``keys+oauth``: ``tcb_`` bearer tokens go to the key store, everything else to the JWT validator."""

    def __init__(self, keys: ApiKeyAuthenticator, oauth: JwtValidator) -> None:
        self.keys, self.oauth = keys, oauth

    async def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Principal:
        token = bearer_token(headers, query)
        if token.startswith(KEY_PREFIX):
            return self.keys.check(token)
        return await self.oauth.check(token)


class StaticAuthenticator:
    """Everyone is one fixed principal: loopback ``auth = "none"`` (:data:`ANONYMOUS`)."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    async def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Principal:
        return self.principal


def build_authenticator(config: Config, keys_store: ApiKeyStore | None = None) -> Authenticator:
    """The authenticator for ``[gateway] auth``; refuses ``none`` on a non-loopback bind.
    ``keys_store``: the API keys (default: the file ``[auth] keys_path``; with ``[storage] url``
    the ``keys`` document in PostgreSQL, see :func:`~toolcrib.gateway.trust.apikeys.key_document`)."""
    mode = config.gateway.auth
    if mode == "none":
        if not is_loopback(config.gateway.host):
            raise ConfigError(
                f'auth = "none" is allowed only on a loopback bind, not {config.gateway.host}; '
                'set [gateway] auth = "keys" or "oauth"'
            )
        return StaticAuthenticator(ANONYMOUS)
    keys = ApiKeyAuthenticator(keys_store or ApiKeyStore(config.auth.keys_path))
    if mode == "keys":
        return keys
    oauth = JwtValidator(config.auth)
    return oauth if mode == "oauth" else CompositeAuthenticator(keys, oauth)


def resource_metadata_url(base_url: str, resource_path: str = "/mcp") -> str:
    """Where RFC 9728 metadata for the resource at ``resource_path`` lives (path-suffixed form)."""
    return f"{base_url.rstrip('/')}/.well-known/oauth-protected-resource{resource_path}"


def www_authenticate(
    resource_metadata_url: str, error: str | None = None, scope: str | None = None, description: str | None = None
) -> str:
    """The ``WWW-Authenticate`` value of a 401/403 (RFC 6750 + RFC 9728 ``resource_metadata``)."""
    params = {"resource_metadata": resource_metadata_url, "error": error, "error_description": description}
    params["scope"] = scope
    return "Bearer " + ", ".join(f'{k}="{_quote(v)}"' for k, v in params.items() if v)


def _quote(value: str) -> str:
    printable = "".join(ch for ch in value if " " <= ch != "\x7f")
    return printable.replace("\\", "\\\\").replace('"', '\\"')


def protected_resource_metadata(cfg: AuthConfig, base_url: str) -> dict[str, Any]:
    """The RFC 9728 document served at ``/.well-known/oauth-protected-resource[/mcp]``."""
    doc: dict[str, Any] = {
        "resource": cfg.audience or f"{base_url.rstrip('/')}/mcp",
        "authorization_servers": [cfg.issuer] if cfg.issuer else [],
        "bearer_methods_supported": ["header"],
        "resource_name": "toolcrib",
    }
    scopes = sorted(set(cfg.scope_groups) | set(cfg.required_scopes))
    if scopes:
        doc["scopes_supported"] = scopes
    return doc


def challenger(config: Config, base_url: Callable[[], str]) -> Callable[[Any, Exception], dict[str, str]]:
    """The ``WWW-Authenticate`` header of a refused request (RFC 6750 section 3; RFC 9728 section 5.1
    ``resource_metadata`` when OAuth is on). ``base_url`` is read per call: the port is known late."""

    def challenge(_request: Any, exc: Exception) -> dict[str, str]:
        if config.gateway.auth not in ("oauth", "keys+oauth"):
            return {"WWW-Authenticate": 'Bearer realm="toolcrib"'}
        scope = getattr(exc, "scope", None)
        error = "insufficient_scope" if scope else "invalid_token"
        return {"WWW-Authenticate": www_authenticate(resource_metadata_url(base_url()), error=error, scope=scope)}

    return challenge
