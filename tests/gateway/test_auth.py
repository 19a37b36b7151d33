"""Auth: API keys and OAuth bearer JWTs against a real JWKS server, and a flood of bad credentials."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from toolcrib.config import AuthConfig, Config
from toolcrib.errors import AuthError, ConfigError, Forbidden
from toolcrib.gateway.trust.auth import (
    ApiKeyAuthenticator,
    ApiKeyStore,
    AuthUnavailable,
    CompositeAuthenticator,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    JwtValidator,
    StaticAuthenticator,
    build_authenticator,
    protected_resource_metadata,
    resource_metadata_url,
    www_authenticate,
)

ISSUER = "https://issuer.test"
AUDIENCE = "http://127.0.0.1:8765/mcp"
LEEWAY = 30


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ec: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    evil_rsa: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    evil_ec: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    rotated: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))

    def jwk(self, key: Any, kid: str) -> dict[str, Any]:
        algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
        data: dict[str, Any] = algo.to_jwk(key.public_key(), as_dict=True)
        return {**data, "kid": kid, "use": "sig"}

    def jwks(self) -> list[dict[str, Any]]:
        return [self.jwk(self.rsa, "rsa1"), self.jwk(self.ec, "ec1")]


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@dataclass
class JwksServer:
    url: str
    keys: list[dict[str, Any]]
    status: int = 200
    body: bytes | None = None
    hits: int = 0


@pytest.fixture
async def jwks(keys: Keys) -> AsyncIterator[JwksServer]:
    server = JwksServer(url="", keys=keys.jwks())

    async def handler(request: web.Request) -> web.Response:
        server.hits += 1
        if server.body is not None:
            return web.Response(body=server.body, status=server.status)
        return web.json_response({"keys": server.keys}, status=server.status)

    app = web.Application()
    app.router.add_get("/jwks", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/jwks"
    try:
        yield server
    finally:
        await runner.cleanup()


def auth_config(url: str, **over: Any) -> AuthConfig:
    base: dict[str, Any] = {
        "issuer": ISSUER,
        "jwks_url": url,
        "audience": AUDIENCE,
        "leeway": LEEWAY,
        "scope_groups": {"tools:read": ["readers"], "tools:admin": ["admins", "readers"]},
        "groups_claim": "groups",
    }
    return AuthConfig(**{**base, **over})


@pytest.fixture
async def validator(jwks: JwksServer) -> AsyncIterator[JwtValidator]:
    async with JwtValidator(auth_config(jwks.url)) as v:
        yield v


@pytest.fixture
def key_store(tmp_path: Path) -> ApiKeyStore:
    return ApiKeyStore(tmp_path / "keys.json")


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 600, "iat": now, "scope": "tools:read"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def sign(keys: Keys, which: str = "rsa", headers: dict[str, Any] | None = None, **over: Any) -> str:
    key, alg, kid = {"rsa": (keys.rsa, "RS256", "rsa1"), "ec": (keys.ec, "ES256", "ec1")}[which]
    hdr = {"kid": kid, **(headers or {})}
    return jwt.encode(claims(**over), key, algorithm=hdr.pop("alg", alg), headers=hdr)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hand_made(header: dict[str, Any] | str, payload: dict[str, Any] | str, signature: str = "") -> str:
    h = header if isinstance(header, str) else b64(json.dumps(header))
    p = payload if isinstance(payload, str) else b64(json.dumps(payload))
    return f"{h}.{p}.{signature}"


def hs_forged(alg: str, secret: bytes, header: dict[str, Any]) -> str:
    import hashlib
    import hmac

    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{b64(json.dumps({'alg': alg, 'typ': 'JWT', **header}))}.{b64(json.dumps(claims()))}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), digest).digest())}"


def bad_jwts(keys: Keys) -> Iterator[tuple[str, str]]:
    """(label, token): every one must be refused."""
    now = int(time.time())
    for which in ("rsa", "ec"):
        for aud in ["https://other.test/mcp", "http://127.0.0.1:8765", AUDIENCE + "/", "", ["https://x"], _DROP]:
            yield f"{which} aud={aud!r}", sign(keys, which, aud=aud)
        for iss in ["https://evil.test", ISSUER + "/", "", ISSUER.upper(), _DROP]:
            yield f"{which} iss={iss!r}", sign(keys, which, iss=iss)
        for age in [LEEWAY + 2, LEEWAY + 60, 3600, 86400 * 365]:
            yield f"{which} expired {age}s", sign(keys, which, exp=now - age)
        for ahead in [LEEWAY + 5, LEEWAY + 120, 3600, 86400 * 30]:
            yield f"{which} nbf +{ahead}s", sign(keys, which, nbf=now + ahead)
        for name, value in [("exp", _DROP), ("sub", _DROP), ("sub", ""), ("sub", 42), ("exp", "tomorrow")]:
            yield f"{which} {name}={value!r}", sign(keys, which, **{name: value})
        yield f"{which} iat in the future", sign(keys, which, iat=now + 3600)
        for kid in ["nope", "", "../../etc/passwd", "rsa1 " if which == "rsa" else "ec1 ", "' OR 1=1 --"]:
            yield f"{which} kid={kid!r}", sign(keys, which, headers={"kid": kid})
        for kid in [123, None, ["rsa1"]]:
            token = sign(keys, which)
            header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
            header["kid"] = kid
            yield f"{which} kid={kid!r} type", hand_made(header, token.split(".")[1], token.split(".")[2])
        good = sign(keys, which)
        h, p, s = good.split(".")
        for change in [
            {"sub": "admin"},
            {"aud": "https://other"},
            {"exp": now + 10**8},
            {"groups": ["admins"]},
            {"scope": "tools:admin"},
        ]:
            forged = {**claims(), **change}
            yield f"{which} tampered payload {change}", f"{h}.{b64(json.dumps(forged))}.{s}"
        raw_sig = base64.urlsafe_b64decode(s + "==")
        for pos in [0, len(raw_sig) // 2, len(raw_sig) - 1]:
            flipped = bytearray(raw_sig)
            flipped[pos] ^= 0x40
            yield f"{which} sig bit {pos}", f"{h}.{p}.{b64(bytes(flipped))}"
        yield f"{which} sig truncated", f"{h}.{p}.{s[:-8]}"
        yield f"{which} sig empty", f"{h}.{p}."
        yield f"{which} sig of another token", f"{h}.{p}.{sign(keys, which, sub='bob').split('.')[2]}"
        yield f"{which} header swapped", f"{sign(keys, 'ec' if which == 'rsa' else 'rsa').split('.')[0]}.{p}.{s}"
        for none in ["none", "None", "NONE", "nOnE"]:
            for hdr in [{"alg": none}, {"alg": none, "kid": "rsa1" if which == "rsa" else "ec1"}]:
                yield f"{which} alg {none} {hdr}", hand_made(hdr, claims())
                yield f"{which} alg {none} {hdr} with sig", hand_made(hdr, claims(), s)
    rsa_pem = pem(keys.rsa)
    rsa_pkcs1 = keys.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    secrets_to_try = [rsa_pem, rsa_pkcs1, json.dumps(keys.jwk(keys.rsa, "rsa1")).encode(), pem(keys.ec), b""]
    for alg in ["HS256", "HS384", "HS512"]:
        for i, secret in enumerate(secrets_to_try):
            for kid in ["rsa1", "ec1"]:
                yield f"{alg} confusion secret#{i} kid={kid}", hs_forged(alg, secret, {"kid": kid})
    for alg, key, kid in [
        ("RS256", keys.evil_rsa, "rsa1"),
        ("ES256", keys.evil_ec, "ec1"),
        ("RS256", keys.evil_rsa, "evil"),
        ("ES256", keys.evil_ec, "evil"),
    ]:
        for extra in [
            {},
            {"jku": "https://evil.test/jwks"},
            {"jwk": keys.jwk(key, kid)},
            {"x5u": "https://evil.test/c"},
        ]:
            yield (
                f"attacker {alg} kid={kid} {list(extra)}",
                jwt.encode(claims(), key, algorithm=alg, headers={"kid": kid, **extra}),
            )
    yield (
        "ES256 header on the RSA key id",
        jwt.encode(claims(), keys.evil_ec, algorithm="ES256", headers={"kid": "rsa1"}),
    )
    yield (
        "RS256 header on the EC key id",
        jwt.encode(claims(), keys.evil_rsa, algorithm="RS256", headers={"kid": "ec1"}),
    )
    for alg in ["PS256", "RS384", "RS512", "PS512"]:
        yield f"{alg} not in allow-list", jwt.encode(claims(), keys.rsa, algorithm=alg, headers={"kid": "rsa1"})
    yield (
        "ES384 not allowed",
        jwt.encode(claims(), ec.generate_private_key(ec.SECP384R1()), algorithm="ES384", headers={"kid": "ec1"}),
    )
    good = sign(keys)
    h, p, s = good.split(".")
    for label, token in [
        ("two segments", f"{h}.{p}"),
        ("four segments", f"{good}.{s}"),
        ("header not base64", f"!!!.{p}.{s}"),
        ("header not json", f"{b64('not json')}.{p}.{s}"),
        ("header json array", f"{b64('[1,2]')}.{p}.{s}"),
        ("payload not json", f"{h}.{b64('nope')}.{s}"),
        ("payload array", f"{h}.{b64('[]')}.{s}"),
        ("only dots", ".."),
        ("huge", good + "A" * 20000),
        ("nul in token", good[:10] + "\x00" + good[10:]),
        ("unicode in token", good[:10] + "é" + good[10:]),
        ("random", secrets.token_urlsafe(200)),
        ("crit header", hand_made({"alg": "RS256", "kid": "rsa1", "crit": ["exp"]}, claims(), s)),
        ("a tcb_ looking jwt", "tcb_" + good),
    ]:
        yield label, token


def bad_headers(keys: Keys, key: str) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    good = sign(keys)
    yield "no header", {}, {}
    for i, value in enumerate(
        [
            "",
            "Bearer",
            "Bearer ",
            "Bearer  \t",
            "Basic dXNlcjpwYXNz",
            f"Basic {good}",
            f"Token {good}",
            f"JWT {good}",
            f"Bearer {good} {good}",
            f"Bearer {good}, foo",
            f"Bearer {key} extra",
            f"Bearer\t{good}",
            f"Bearer{good}",
            "Bearer null",
            "Bearer undefined",
        ]
    ):
        yield f"Authorization #{i}: {value[:20]!r}", {"Authorization": value}, {}
    for q in ["access_token", "ACCESS_TOKEN", "token", "api_key", "id_token", "jwt", "key"]:
        yield f"query {q} only (jwt)", {}, {q: good}
        yield f"query {q} only (key)", {}, {q: key}
        yield f"query {q} + valid header", bearer(good), {q: good}


class MultiHeaders:
    """A header mapping with a repeated name, like aiohttp's CIMultiDictProxy."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def items(self) -> list[tuple[str, str]]:
        return self._items

    def __iter__(self) -> Iterator[str]:
        return iter(k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, key: str) -> str:
        return next(v for k, v in self._items if k.lower() == key.lower())


@pytest.mark.anyio
async def test_hundreds_of_bad_credentials_none_accepted(jwks: JwksServer, keys: Keys, key_store: ApiKeyStore) -> None:
    live_key = key_store.add("ci", ["ci"])
    revoked = [key_store.add(f"old{i}", ["admins"]) for i in range(3)]
    for i in range(3):
        key_store.revoke(f"old{i}")
    bad_keys: list[tuple[str, str]] = [(f"revoked #{i}", k) for i, k in enumerate(revoked)]
    bad_keys += [(f"random tcb_ #{i}", "tcb_" + secrets.token_urlsafe(32)) for i in range(60)]
    for i in range(1, 11):
        flipped = live_key[:-i] + ("A" if live_key[-i] != "A" else "B") + live_key[len(live_key) - i + 1 :]
        bad_keys.append((f"live key char -{i} changed", flipped))
    bad_keys += [(f"live key truncated {n}", live_key[:n]) for n in (4, 8, 20, 40, len(live_key) - 1)]
    bad_keys += [("upper-cased", live_key.upper()), ("TCB_ prefix", "TCB_" + live_key[4:]), ("no prefix", live_key[4:])]
    bad_keys += [
        ("live key + suffix", live_key + "x"),
        ("sha256 of live key", __import__("hashlib").sha256(live_key.encode()).hexdigest()),
    ]

    validator = JwtValidator(auth_config(jwks.url))
    keys_auth = ApiKeyAuthenticator(key_store)
    composite = CompositeAuthenticator(keys_auth, validator)
    cases: list[tuple[str, Any, dict[str, str]]] = []
    cases += [(label, bearer(token), {}) for label, token in bad_jwts(keys)]
    cases += [(label, bearer(token), {}) for label, token in bad_keys]
    cases += list(bad_headers(keys, live_key))
    cases.append(("two Authorization headers", MultiHeaders([("Authorization", f"Bearer {live_key}")] * 2), {}))
    cases.append(
        (
            "Authorization + authorization",
            MultiHeaders([("Authorization", f"Bearer {live_key}"), ("authorization", f"Bearer {sign(keys)}")]),
            {},
        )
    )
    labels = [c[0] for c in cases]
    assert len(set(labels)) == len(labels), "labels are unique"
    assert len(cases) >= 300, len(cases)

    accepted = []
    attempts = 0
    for authenticator in (composite, validator, keys_auth):
        for label, headers, query in cases:
            attempts += 1
            try:
                principal = await authenticator.authenticate(headers, query)
            except AuthError as exc:
                assert exc.message and "\n" not in exc.message
                assert not isinstance(exc, AuthUnavailable), f"{label}: {exc}"
                continue
            except Forbidden:
                continue
            accepted.append((type(authenticator).__name__, label, principal))
    await validator.aclose()
    assert accepted == [], accepted
    print(f"\n{len(cases)} bad credentials x 3 authenticators = {attempts} attempts, 0 accepted")


@pytest.mark.anyio
async def test_good_tokens_map_to_groups(validator: JwtValidator, keys: Keys) -> None:
    p = await validator.authenticate(bearer(sign(keys, "rsa")), {})
    assert (p.subject, p.kind, p.groups, p.scopes) == (
        "alice",
        "oauth",
        frozenset({"readers"}),
        frozenset({"tools:read"}),
    )
    p = await validator.authenticate(
        bearer(sign(keys, "ec", scope=_DROP, scp=["tools:admin", "x"], groups=["ops", 3])), {}
    )
    assert p.groups == {"admins", "readers", "ops"} and p.scopes == {"tools:admin", "x"}
    p = await validator.authenticate(bearer(sign(keys, aud=["https://other", AUDIENCE])), {})
    assert p.subject == "alice" and p.id == "oauth:alice"
    now = int(time.time())
    await validator.authenticate(bearer(sign(keys, exp=now - LEEWAY + 5)), {})
    await validator.authenticate(bearer(sign(keys, nbf=now + LEEWAY - 5)), {})
    p = await validator.authenticate({"authorization": f"bearer {sign(keys, scope=_DROP)}"}, {"q": "search"})
    assert p.groups == frozenset() and p.scopes == frozenset()


@pytest.mark.anyio
async def test_insufficient_scope_is_403(jwks: JwksServer, keys: Keys) -> None:
    async with JwtValidator(auth_config(jwks.url, required_scopes=["tools:read"])) as v:
        await v.authenticate(bearer(sign(keys)), {})
        with pytest.raises(InsufficientScope) as info:
            await v.authenticate(bearer(sign(keys, scope="other")), {})
    assert info.value.status == 403 and info.value.scope == "tools:read"
    assert 'error="insufficient_scope"' in www_authenticate("u", info.value.error, info.value.scope)


@pytest.mark.anyio
async def test_jwks_down_refuses(jwks: JwksServer, keys: Keys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    async with JwtValidator(auth_config(f"http://127.0.0.1:{closed_port}/jwks"), http_timeout=2) as v:
        with pytest.raises(AuthUnavailable) as info:
            await v.authenticate(bearer(sign(keys)), {})
        assert info.value.status == 503
    for status, body in [(500, None), (200, b"not json"), (200, b'{"keys": 5}'), (200, b"[]"), (404, None)]:
        jwks.status, jwks.body = status, body
        async with JwtValidator(auth_config(jwks.url)) as v:
            with pytest.raises(AuthUnavailable):
                await v.authenticate(bearer(sign(keys)), {})
    jwks.status, jwks.body = 200, None
    async with JwtValidator(auth_config(jwks.url), cache_ttl=0.2) as v:
        await v.authenticate(bearer(sign(keys)), {})
        jwks.status = 503
        await anyio.sleep(0.3)
        with pytest.raises(AuthUnavailable):
            await v.authenticate(bearer(sign(keys)), {})


@pytest.mark.anyio
async def test_jwks_cached_and_refetched_on_unknown_kid_with_rate_limit(jwks: JwksServer, keys: Keys) -> None:
    async with JwtValidator(auth_config(jwks.url), refetch_interval=0.3) as v:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(v.authenticate, bearer(sign(keys)), {})
        assert jwks.hits == 1
        rotated = jwt.encode(claims(), keys.rotated, algorithm="RS256", headers={"kid": "rsa2"})
        with pytest.raises(InvalidToken, match="unknown signing key"):
            await v.authenticate(bearer(rotated), {})
        assert jwks.hits == 1, "no refetch within refetch_interval"
        jwks.keys = [*keys.jwks(), keys.jwk(keys.rotated, "rsa2")]
        await anyio.sleep(0.35)
        for _ in range(10):
            assert (await v.authenticate(bearer(rotated), {})).subject == "alice"
        assert jwks.hits == 2
        for _ in range(10):
            with pytest.raises(InvalidToken):
                await v.authenticate(bearer(sign(keys, headers={"kid": "unknown"})), {})
        assert jwks.hits == 2


@pytest.mark.anyio
async def test_api_keys_add_list_revoke_live(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "keys.json")
    server_side = ApiKeyAuthenticator(ApiKeyStore(tmp_path / "keys.json"))
    key = store.add("ci", ["ci", "readers"])
    assert key.startswith("tcb_") and len(key) == 4 + 43
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    assert key not in (tmp_path / "keys.json").read_text()
    p = await server_side.authenticate(bearer(key), {})
    assert (p.subject, p.kind, p.groups) == ("ci", "key", frozenset({"ci", "readers"}))
    [info] = store.list()
    assert info.name == "ci" and info.groups == ("ci", "readers") and key.startswith(info.prefix)
    with pytest.raises(Exception, match="exists"):
        store.add("ci")
    with pytest.raises(Exception, match="key name"):
        store.add("bad name!")
    store.revoke("ci")
    with pytest.raises(InvalidToken):
        await server_side.authenticate(bearer(key), {})
    with pytest.raises(Exception, match="keys list"):
        store.revoke("ci")


@pytest.mark.anyio
async def test_unreadable_key_store_fails_closed(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "keys.json")
    key = store.add("ci")
    (tmp_path / "keys.json").write_text("{corrupt")
    with pytest.raises(AuthUnavailable):
        await ApiKeyAuthenticator(store).authenticate(bearer(key), {})


@pytest.mark.anyio
async def test_composite_routes_by_prefix(jwks: JwksServer, keys: Keys, key_store: ApiKeyStore) -> None:
    key = key_store.add("ci", ["ci"])
    async with JwtValidator(auth_config(jwks.url)) as v:
        composite = CompositeAuthenticator(ApiKeyAuthenticator(key_store), v)
        assert (await composite.authenticate(bearer(key), {})).kind == "key"
        assert (await composite.authenticate(bearer(sign(keys)), {})).kind == "oauth"


def test_config_refusals(tmp_path: Path) -> None:
    for over in [{"issuer": None}, {"audience": None}, {"jwks_url": None}]:
        with pytest.raises(ConfigError):
            JwtValidator(auth_config("http://x", **over))
    for algs in [["HS256"], ["none"], ["RS256", "HS512"], []]:
        with pytest.raises(ConfigError, match="algorithms"):
            JwtValidator(auth_config("http://x", algorithms=algs))
    with pytest.raises(ConfigError, match="loopback"):
        build_authenticator(Config.model_validate({"gateway": {"host": "0.0.0.0", "auth": "none"}}))
    assert isinstance(build_authenticator(Config()), StaticAuthenticator)
    keys_cfg = Config.model_validate({"gateway": {"auth": "keys"}, "auth": {"keys_path": str(tmp_path / "k.json")}})
    assert isinstance(build_authenticator(keys_cfg), ApiKeyAuthenticator)


def test_www_authenticate_and_metadata() -> None:
    url = resource_metadata_url("http://127.0.0.1:8765/")
    assert url == "http://127.0.0.1:8765/.well-known/oauth-protected-resource/mcp"
    assert www_authenticate(url) == f'Bearer resource_metadata="{url}"'
    value = www_authenticate(url, "invalid_token", description='bad "token"\r\n')
    assert value == f'Bearer resource_metadata="{url}", error="invalid_token", error_description="bad \\"token\\""'
    cfg = AuthConfig(issuer=ISSUER, audience=AUDIENCE, scope_groups={"tools:read": ["r"]}, required_scopes=["mcp"])
    doc = protected_resource_metadata(cfg, "http://127.0.0.1:8765")
    assert doc["resource"] == AUDIENCE and doc["authorization_servers"] == [ISSUER]
    assert doc["scopes_supported"] == ["mcp", "tools:read"] and doc["bearer_methods_supported"] == ["header"]
    assert protected_resource_metadata(AuthConfig(), "http://h:1/")["resource"] == "http://h:1/mcp"


def test_error_statuses() -> None:
    assert InvalidToken("x").status == 401 and InvalidRequest("x").status == 400
    assert AuthUnavailable("x").status == 503
