"""Console logins: a sealed cookie that carries the operator's credential, and its CSRF token.

An operator logs in to ``/console`` by pasting an API key (or an OAuth access token) once. The
gateway checks it with the same authenticator as ``/mcp`` and answers with the cookie
:data:`COOKIE`: a :class:`~toolcrib.gateway.trust.sealed.Sealer` token (AES-256-GCM, purpose
``"console"``) holding the credential, the principal id it named at login, a random CSRF token and
a login id. The browser cannot read it (``HttpOnly``), sends it only to ``/console`` on this
origin's site (``Path=/console``, ``SameSite=Strict``; ``Secure`` when ``public_url`` is https),
and no replica stores anything: any replica sharing the audit secret accepts it.

Every console request re-authenticates the credential inside (so a revoked key, an expired token or
a principal that left the operators group loses the console at once), and must name the same
principal as at login. Logging out forgets the login id on this replica (a copied cookie still
works on other replicas until it expires or its key is revoked; lifetime :data:`LOGIN_TTL`).

The CSRF token (OWASP "synchronizer token") is sent with every state-changing console request as the
form field ``csrf_token`` or the header ``X-CSRF-Token``, and compared in constant time by the guard
(:mod:`toolcrib.gateway.edge.guard`). With ``auth = "none"`` (loopback only) there is no login: the
local operator's token is an HMAC of a per-process secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from toolcrib.errors import AuthError
from toolcrib.gateway.trust.identity import Principal
from toolcrib.gateway.trust.sealed import InvalidToken, Sealer

COOKIE = "toolcrib_console"
PURPOSE = "console"
LOGIN_TTL = 8 * 3600.0
"""Seconds a console login lasts (a working day); then the operator logs in again."""
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
MAX_CREDENTIAL = 16 * 1024
"""Longest credential accepted at login (characters); an OAuth JWT is well under this."""

Authenticate = Callable[[Mapping[str, str], Mapping[str, str]], Awaitable[Principal]]


@dataclass(frozen=True)
class ConsoleLogin:
    """Who a console request comes from, and the CSRF token its forms must carry."""

    principal: Principal
    csrf: str
    cookie: bool = True
    """False for the local operator of an ``auth = "none"`` gateway: nothing to log out of."""


class ConsoleLogins:
    """Mints and checks console cookies (see the module docstring).

    ``authenticate`` is the gateway's authenticator (headers, query) -> Principal, raising
    :class:`~toolcrib.errors.AuthError` / :class:`~toolcrib.errors.Forbidden`."""

    def __init__(self, sealer: Sealer, authenticate: Authenticate, *, ttl: float = LOGIN_TTL) -> None:
        self._sealer = sealer
        self._authenticate = authenticate
        self.ttl = ttl
        self._local_secret = secrets.token_bytes(32)
        self._logged_out: dict[str, float] = {}
        self.throttle = LoginThrottle()
        """Failed logins per remote address (:class:`LoginThrottle`), checked by ``POST /console/login``."""

    async def login(self, credential: str) -> tuple[Principal, str]:
        """Check ``credential`` and return ``(principal, cookie value)``.

        Raises what the authenticator raises for a bad credential; the caller checks operator rights."""
        credential = credential.strip()
        if not credential or len(credential) > MAX_CREDENTIAL:
            raise AuthError("paste an API key (tcb_...) or an access token")
        principal = await self._authenticate({"Authorization": f"Bearer {credential}"}, {})
        data = {"t": credential, "p": principal.id, "c": secrets.token_urlsafe(24), "j": secrets.token_urlsafe(12)}
        return principal, self._sealer.seal(PURPOSE, "-", data, self.ttl)

    async def check(self, cookie: str | None) -> ConsoleLogin | None:
        """The login a cookie carries, re-authenticated; None for no, forged, expired or logged-out cookies.

        Raises what the authenticator raises when the credential inside is no longer valid."""
        data = self._open(cookie)
        if data is None:
            return None
        principal = await self._authenticate({"Authorization": f"Bearer {data['t']}"}, {})
        if principal.id != data["p"]:
            return None
        return ConsoleLogin(principal, str(data["c"]))

    def logout(self, cookie: str | None) -> None:
        """Forget this cookie's login on this replica (until it would have expired anyway)."""
        data = self._open(cookie)
        if data is None:
            return
        now = time.time()
        self._logged_out = {j: exp for j, exp in self._logged_out.items() if exp > now}
        self._logged_out[str(data["j"])] = now + self.ttl

    def local(self, principal: Principal) -> ConsoleLogin:
        """The login of a principal the guard already authenticated without a cookie (``auth = "none"``)."""
        mac = hmac.new(self._local_secret, principal.id.encode(), hashlib.sha256).hexdigest()
        return ConsoleLogin(principal, mac[:32], cookie=False)

    def _open(self, cookie: str | None) -> dict[str, object] | None:
        if not cookie:
            return None
        try:
            data = self._sealer.open(cookie, PURPOSE, "-")
        except InvalidToken:
            return None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in "tpcj"):
            return None
        if data["j"] in self._logged_out:
            return None
        return data


class LoginThrottle:
    """Failed console logins per remote address: after :attr:`limit` failures within :attr:`window`
    seconds, every login from that address is refused until the oldest of them is ``window`` old.

    API keys are 256-bit random, so guessing one is hopeless anyway; the throttle bounds what a
    guesser costs (each attempt is a key-store lookup and an audit row) and makes the attempts
    visible. Memory is bounded: at most :attr:`max_addresses` addresses are tracked (the
    stalest are dropped first). Addresses are ``request.remote`` (behind a reverse proxy, the proxy's)."""

    def __init__(
        self,
        limit: int = 10,
        window: float = 300.0,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may try now."""
        recent = self._recent(address)
        if len(recent) < self.limit:
            return None
        return max(1.0, recent[-self.limit] + self.window - self._clock())

    def failed(self, address: str) -> None:
        """Count one failed login from ``address``."""
        recent = self._recent(address)
        recent.append(self._clock())
        del recent[: -self.limit]
        self._failures.pop(address, None)
        self._failures[address] = recent  # most recently failed last (dicts keep insertion order)
        while len(self._failures) > self.max_addresses:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, address: str) -> None:
        """Forget ``address``'s failures (an operator who mistyped, then got it right)."""
        self._failures.pop(address, None)

    def _recent(self, address: str) -> list[float]:
        since = self._clock() - self.window
        return [t for t in self._failures.get(address, ()) if t > since]


def csrf_matches(expected: str, sent: str | None) -> bool:
    """Constant-time comparison of the session's CSRF token with the one a request sent."""
    return sent is not None and hmac.compare_digest(expected.encode(), sent.encode())
