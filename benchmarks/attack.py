# ruff: noqa: E501  (tables of attack inputs read best one per line)
"""Attack toolcrib's trust layer (issue 8) and count, per surface, the bad inputs that got through.

    .venv/bin/python -m benchmarks.attack

Starts real gateways in this process on 127.0.0.1 (ephemeral ports) with fixture servers over stdio:
``main`` (passthrough, auth = "keys"; ``echo`` holds two injected secret canaries, ``time`` is a
second echo instance, ``bc`` is the back-channel fixture), ``disp`` (dispatcher mode, for
``invoke``), ``none`` (auth = "none", where Host/Origin is the only wall) and ``oauth``
(keys+oauth against a local JWKS). Key ``alice`` is an operator allowed everything; key ``bob``
may reach only ``time__*`` tools and prompts and ``time+*`` resources (default deny).

An input is ACCEPTED when something that should have been refused got through: a 2xx for a bad
credential, a wrong Host/Origin answered with anything but 403, an admin state change without an
operator and JSON, a target outside the policy reached or listed, a canary (in an encoding the
Redactor claims) in anything a client receives, a 5xx or a hang for a malformed request, a
non-finite number accepted. Prints ``surface: N tried, M accepted`` per surface and a total; exit
status 1 when anything was accepted (each one listed with input, expected and got).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import sys
import tempfile
import time
import unicodedata
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from toolcrib.app import Running, running_gateway
from toolcrib.config import Config
from toolcrib.gateway.trust.apikeys import ApiKeyStore

ROOT = Path(__file__).resolve().parents[1]
CANARY = "Canary-7f3a9c2e5b1d4086"
CANARY2 = 'p@ss/W0rd+"Q"~9z'  # its JSON, URL and base64 forms differ from the raw text
SECRET_ENV = {"TOOLCRIB_SECRET_ECHO_TOKEN": CANARY, "TOOLCRIB_SECRET_ECHO_PASS": CANARY2}
MODERN = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
JSON_H = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
CAPS = {"sampling": {}, "elicitation": {}, "roots": {}}
INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": CAPS, "clientInfo": {"name": "attack", "version": "1"}},
}  # fmt: skip
DEFAULT_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164"
    "\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
"""Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): renders as nothing."""
REQUEST_TIMEOUT = 10.0


# ---- the tally ------------------------------------------------------------------------------------


@dataclass
class Surface:
    tried: int = 0
    accepted: int = 0
    holes: list[tuple[str, str]] = field(default_factory=list)


class Tally:
    def __init__(self) -> None:
        self.surfaces: dict[str, Surface] = {}
        self.info: list[str] = []

    def check(self, surface: str, accepted: bool, what: str, kind: str | None = None) -> None:
        """Count one bad input; ``kind`` groups accepted ones in the report (default: ``what``)."""
        s = self.surfaces.setdefault(surface, Surface())
        s.tried += 1
        if accepted:
            s.accepted += 1
            s.holes.append((kind or what, what))

    def report(self) -> int:
        total = Surface()
        for name, s in self.surfaces.items():
            print(f"{name}: {s.tried} tried, {s.accepted} accepted")
            total.tried, total.accepted = total.tried + s.tried, total.accepted + s.accepted
        print(f"total: {total.tried} tried, {total.accepted} accepted")
        for name, s in self.surfaces.items():
            kinds: dict[str, list[str]] = {}
            for kind, what in s.holes:
                kinds.setdefault(kind, []).append(what)
            for kind, whats in kinds.items():
                example = f"; e.g. {whats[0][:200]}" if whats[0] != kind else ""
                print(f"  ACCEPTED [{name}] x{len(whats)} {kind}{example}")
        for line in self.info:
            print(f"  info: {line}")
        return total.accepted


T = Tally()


def sanity(ok: bool, what: str) -> None:
    """A control that must work, or the counts mean nothing."""
    if not ok:
        raise SystemExit(f"attack harness broken: {what}")


# ---- HTTP plumbing --------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int  # -1: no answer in time; -2: connection dropped
    text: str
    headers: dict[str, str] = field(default_factory=dict)

    def messages(self) -> list[Any]:
        try:
            return [json.loads(self.text)]
        except ValueError:
            pass
        out = []
        for line in self.text.splitlines():
            if line.startswith("data:"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line[5:]))
        return out

    def strings(self) -> str:
        """Every string the client received (JSON-decoded, keys included), one per line."""
        found: list[str] = []

        def walk(obj: Any) -> None:
            if isinstance(obj, str):
                found.append(obj)
            elif isinstance(obj, dict):
                for k, v in obj.items():
                    found.append(str(k))
                    walk(v)
            elif isinstance(obj, list):
                for v in obj:
                    walk(v)

        msgs = self.messages()
        walk(msgs)
        return "\n".join(found) if msgs else self.text

    def final(self) -> dict[str, Any]:
        for msg in reversed(self.messages()):
            if isinstance(msg, dict) and ("result" in msg or "error" in msg):
                return msg
        return {}

    @property
    def succeeded(self) -> bool:
        """A JSON-RPC result that is not a tool error."""
        res = self.final().get("result")
        return isinstance(res, dict) and not res.get("isError")


class Http:
    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.s, self.port, self.base = session, port, f"http://127.0.0.1:{port}"

    async def req(
        self, method: str, path: str, headers: Any = None, data: Any = None, t: float = REQUEST_TIMEOUT
    ) -> Reply:
        try:
            async with self.s.request(
                method, self.base + path, headers=headers, data=data, timeout=aiohttp.ClientTimeout(total=t)
            ) as r:
                return Reply(r.status, await r.text(errors="replace"), dict(r.headers))
        except TimeoutError:
            return Reply(-1, "no answer")
        except aiohttp.ClientError as exc:
            return Reply(-2, repr(exc))

    async def raw(self, data: bytes, t: float = 5.0) -> Reply:
        """Send raw bytes; the status of the first response line (-1: none in ``t`` s, -2: closed silently)."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as exc:
            return Reply(-2, repr(exc))
        try:
            writer.write(data)
            await writer.drain()
            head = await asyncio.wait_for(reader.readline(), t)
        except TimeoutError:
            return Reply(-1, "no answer")
        except OSError:
            return Reply(-2, "reset")
        finally:
            writer.close()
        parts = head.split(b" ", 2)
        return Reply(int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -2, head.decode(errors="replace"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Mcp:
    """A raw JSON-RPC client of ``/mcp`` (no SDK validation of what it sends)."""

    def __init__(self, http: Http, token: str | None) -> None:
        self.http, self.auth = http, (bearer(token) if token else {})
        self.ids = iter(range(100, 10**9))

    async def open(self) -> str:
        r = await self.http.req("POST", "/mcp", {**JSON_H, **self.auth}, json.dumps(INIT))
        sanity(r.status == 200 and "Mcp-Session-Id" in r.headers, f"initialize answered {r.status} {r.text[:200]}")
        sid = r.headers["Mcp-Session-Id"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await self.http.req("POST", "/mcp", {**JSON_H, **self.auth, "Mcp-Session-Id": sid}, json.dumps(note))
        return sid

    async def call(self, method: str, params: dict[str, Any], sid: str | None = None, name: str | None = None) -> Reply:
        headers = {**JSON_H, **self.auth}
        params = dict(params)
        if sid is not None:
            headers["Mcp-Session-Id"] = sid
        else:
            params["_meta"] = {**META, **params.get("_meta", {})}
            headers.update({"MCP-Protocol-Version": MODERN, "Mcp-Method": method})
            if name is not None:
                headers["Mcp-Name"] = name
        body = {"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params}
        return await self.http.req("POST", "/mcp", headers, json.dumps(body))

    async def both(self, method: str, params: dict[str, Any], sid: str, name: str | None) -> list[Reply]:
        """The same request in a 2025-11-25 session and statelessly (2026-07-28; ASCII names only)."""
        out = [await self.call(method, params, sid)]
        if name is None or (name.isascii() and name.isprintable() and name == name.strip()):
            out.append(await self.call(method, params, None, name))
        return out


# ---- gateways -------------------------------------------------------------------------------------


def stdio(module: str, *args: str, **extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": ["-m", module, *args], "cwd": str(ROOT), **extra}


ECHO_SECRETS = stdio("tests.servers.echo", env={"ECHO_TOKEN": "secret:echo/token", "ECHO_PASS": "secret:echo/pass"})
TIME = stdio("tests.servers.echo", env={"FIXTURE_TOOLS_PREFIX": "t_"})
BOB_RULE = {"id": "bob-time-only", "principals": ["key:bob"], "tools": ["time__*"], "prompts": ["time__*"],
            "resources": ["time+*"], "action": "allow"}  # fmt: skip
ALICE_RULES = [
    {"id": "alice-no-etc", "principals": ["key:alice"], "tools": ["echo__echo"],
     "when": {"/text": {"regex": "/etc/.*"}}, "action": "deny"},
    {"id": "alice-no-big-sums", "principals": ["key:alice"], "tools": ["echo__add"],
     "when": {"/a": {"min": 1000}}, "action": "deny"},
    {"id": "alice-held", "principals": ["key:alice"], "tools": ["echo__echo"],
     "when": {"/text": {"equals": "needs-approval"}}, "action": "approve"},
    {"id": "alice-all", "principals": ["key:alice"], "action": "allow"},
]  # fmt: skip


@asynccontextmanager
async def gateway(
    tmp: Path, name: str, servers: dict[str, Any], rules: list[Any], **gw: Any
) -> AsyncIterator[tuple[Running, dict[str, str]]]:
    d = tmp / name
    d.mkdir()
    embedder = gw.pop("embedder", None)
    auth = gw.pop("auth_table", {})
    policy = {"rules": rules, "default": "deny", "pins_path": str(d / "pins.json"),
              "approvals_path": str(d / "approvals.db"), "approval_mode": "pending"}  # fmt: skip
    cfg = Config.model_validate(
        {
            "gateway": {"port": 0, "mode": "passthrough", **gw},
            "servers": servers,
            "policy": policy,
            "index": {"path": str(d / "index")},
            "audit": {"path": str(d / "audit.db")},
            "auth": {"keys_path": str(d / "keys.json"), **auth},
        }
    )
    keys = ApiKeyStore(cfg.auth.keys_path)
    tokens = {"alice": keys.add("alice", ["admins"]), "bob": keys.add("bob", ["guests"])}
    tokens["revoked"] = keys.add("carol")
    keys.revoke("carol")
    async with running_gateway(cfg, connect_wait=20, embedder=embedder) as rt:
        for up in rt.pool.upstreams.values():
            sanity(up.state.status == "connected", f"{name}: upstream not connected: {up.state.error}")
        yield rt, tokens


def norm(text: str) -> str:
    return DEFAULT_IGNORABLE.sub("", text).casefold()


def canary_in(text: str) -> bool:
    low = norm(text)
    return norm(CANARY) in low or norm(CANARY2) in low


# ---- surfaces: appended below ----


# ---- 1. credentials ------------------------------------------------------------------------------

CRED_ROUTES = [
    ("POST", "/mcp", json.dumps(INIT), JSON_H),
    ("GET", "/mcp", None, {"Accept": "text/event-stream"}),
    ("DELETE", "/mcp", None, {}),
    ("GET", "/admin/audit", None, {}),
    ("GET", "/admin/approvals", None, {}),
    ("POST", "/admin/reindex", "{}", {"Content-Type": "application/json"}),
]


def passed_auth(r: Reply, tmp: Path | None = None) -> bool:
    """The request got past authentication (or a refusal said too much)."""
    leaky = tmp is not None and (str(tmp) in r.text or "keys.json" in r.text or "Expecting" in r.text)
    return leaky or r.status not in (400, 401, 403, 503) or "needs Mcp-Session-Id" in r.text


def bad_keys(tokens: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    a, rnd = tokens["alice"], random.Random(8)
    out: list[tuple[str, dict[str, str]]] = [("no Authorization", {})]
    for value in ["", "Bearer", "Bearer ", "bearer", "Bearer null", "Bearer undefined", "Bearer tcb_", "Bearer alice",
                  "Bearer key:alice", "Bearer " + "x" * 20000, "Bearer tcb_" + "A" * 43, f"Bearer {tokens['revoked']}",
                  f"Bearer {a} {a}", f"Bearer {a},{a}", f'Bearer "{a}"', f"{a} Bearer", a, f"Bearer\t{a}"]:  # fmt: skip
        out.append((f"Authorization: {value[:40]!r}", {"Authorization": value}))
    for scheme in ("Basic", "Token", "Digest", "Bearer:", "Bearerx", "MAC", "ApiKey", "Negotiate", "B", "OAuth", "JWT"):
        out.append((f"{scheme} <alice key>", {"Authorization": f"{scheme} {a}"}))
    basic = base64.b64encode(f"alice:{a}".encode()).decode()
    out.append(("Basic alice:<key>", {"Authorization": f"Basic {basic}"}))
    flip = a[:10] + ("A" if a[10] != "A" else "B") + a[11:]
    mutated = {
        "truncated": a[:-1], "extended": a + "x", "upper": a.upper(), "reversed": a[::-1], "prefix only": a[:8],
        "TCB_": "TCB_" + a[4:], "no prefix": a[4:], "sha256 of key": hashlib.sha256(a.encode()).hexdigest(),
        "padded": a + "=", "percent-encoded": urllib.parse.quote(a, safe="").replace("_", "%5F"),
        "base64 of key": base64.b64encode(a.encode()).decode(), "one char flipped": flip,
        "jwt alg none sub alice": jwt.encode({"sub": "alice"}, None, algorithm="none"),
        "jwt HS256 sub alice": jwt.encode({"sub": "alice", "exp": time.time() + 600}, "secret" * 6, algorithm="HS256"),
    }  # fmt: skip
    if a.lower() != a:
        mutated["lower"] = a.lower()
    out += [(f"key {k}", bearer(v)) for k, v in mutated.items()]
    out += [("random tcb_ key", bearer("tcb_" + secrets.token_urlsafe(32))) for _ in range(100)]
    alphabet = "".join(chr(c) for c in range(33, 127))
    out += [
        ("random printable", bearer("".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 80)))))
        for _ in range(40)
    ]
    return out


async def credentials(http: Http, rt: Running, tokens: dict[str, str], tmp: Path) -> None:
    for method, path, body, headers in CRED_ROUTES:  # controls: alice passes every route
        r = await http.req(method, path, {**headers, **bearer(tokens["alice"])}, body)
        sanity(passed_auth(r), f"alice refused on {method} {path}: {r.status}")
    for label, auth in bad_keys(tokens):
        for method, path, body, headers in CRED_ROUTES:
            r = await http.req(method, path, {**headers, **auth}, body)
            T.check("credentials", passed_auth(r, tmp), f"{label} on {method} {path}: expected 401, got {r.status}")
        r = await http.req("GET", "/healthz", auth)
        T.check("credentials", "upstreams" in r.text, f"{label} on GET /healthz: expected the bare status, got detail")
    a, b = tokens["alice"], tokens["bob"]
    for first, second in [(a, a), (a, "x"), ("x", a), (b, a), (a, b)]:
        for name in ("Authorization", "authorization", "AUTHORIZATION"):
            two = f"Authorization: Bearer {first}\r\n{name}: Bearer {second}\r\n"
            for path in ("/mcp", "/admin/audit"):
                verb, body = ("POST", json.dumps(INIT)) if path == "/mcp" else ("GET", "")
                head = f"{verb} {path} HTTP/1.1\r\nHost: 127.0.0.1:{http.port}\r\n{two}Connection: close\r\n"
                ctype = "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
                r = await http.raw(f"{head}{ctype}Content-Length: {len(body)}\r\n\r\n{body}".encode())
                T.check(
                    "credentials", r.status != 400, f"two Authorization headers on {path}: expected 400, got {r.status}"
                )
    for param in ("access_token", "ACCESS_TOKEN", "Access_Token", "api_key", "apikey", "token", "key", "auth",
                  "authorization", "bearer", "jwt", "id_token"):  # fmt: skip
        for path in ("/mcp", "/admin/audit"):
            url = f"{path}?{param}={a}"
            body = json.dumps(INIT) if path == "/mcp" else None
            method = "POST" if path == "/mcp" else "GET"
            r = await http.req(method, url, JSON_H, body)
            T.check("credentials", passed_auth(r), f"token in URL ?{param}= on {path}: expected 400, got {r.status}")
            r = await http.req(method, url, {**JSON_H, **bearer(a)}, body)
            T.check(
                "credentials",
                r.status != 400,
                f"?{param}=KEY beside a valid header on {path}: expected 400, got {r.status}",
            )
    sid = await Mcp(http, a).open()  # a session of key:alice, used by others
    ping = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
    for who, auth in (("bob", bearer(b)), ("nobody", {}), ("revoked", bearer(tokens["revoked"]))):
        for method, body, extra in (
            ("POST", ping, JSON_H),
            ("GET", None, {"Accept": "text/event-stream"}),
            ("DELETE", None, {}),
        ):
            r = await http.req(method, "/mcp", {**extra, **auth, "Mcp-Session-Id": sid}, body, t=3)
            T.check(
                "credentials",
                r.status not in (401, 403),
                f"{who} on alice's session ({method}): expected 403, got {r.status}",
            )
    r = await http.req("POST", "/mcp", {**JSON_H, **bearer(a), "Mcp-Session-Id": sid}, ping)
    sanity(r.status == 200, f"alice lost her session to a hijack attempt: {r.status}")


# ---- 1b. OAuth: forged, expired and wrong-kind JWTs ------------------------------------------------

ISS, AUD = "https://issuer.attack.test", "http://127.0.0.1/mcp"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _manual(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    return head + "." + (_b64(sign(head.encode())) if sign else "")


def forged_jwts(key: Any, other: Any, other_jwk: dict[str, Any]) -> dict[str, str]:
    import hmac

    from cryptography.hazmat.primitives import serialization

    now = int(time.time())
    good = {"iss": ISS, "aud": AUD, "sub": "mallory", "exp": now + 600, "iat": now}

    def sign(claims: dict[str, Any], k: Any = key, alg: str = "ES256", **hdr: Any) -> str:
        return jwt.encode(claims, k, algorithm=alg, headers={"kid": "k1", **hdr})

    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    valid = sign(good)
    h, p, sig = valid.split(".")
    alice_payload = _b64(json.dumps({**good, "sub": "alice"}).encode())
    drop = {k: v for k, v in good.items()}
    out = {
        "expired": sign({**good, "exp": now - 3600}), "expired past leeway": sign({**good, "exp": now - 90}),
        "nbf in the future": sign({**good, "nbf": now + 3600}), "wrong aud": sign({**good, "aud": "http://evil/mcp"}),
        "wrong iss": sign({**good, "iss": "https://evil.test"}), "empty sub": sign({**good, "sub": ""}),
        "sub not a string": sign({**good, "sub": 123}),
        "alg none": _manual({"alg": "none", "kid": "k1"}, good), "alg None": _manual({"alg": "None", "kid": "k1"}, good),
        "alg NONE sig": _manual({"alg": "NONE", "kid": "k1"}, good, lambda m: b"x"),
        "HS256 keyed with the public key": _manual(
            {"alg": "HS256", "kid": "k1"}, good, lambda m: hmac.new(pem, m, hashlib.sha256).digest()
        ),
        "another key, same kid": sign(good, other), "unknown kid": sign(good, kid="k2"),
        "kid traversal": sign(good, kid="../../../../dev/null"), "no kid": jwt.encode(good, key, algorithm="ES256"),
        "jku to attacker": sign(good, other, jku="http://127.0.0.1:9/jwks"),
        "embedded attacker jwk": sign(good, other, jwk=other_jwk),
        "payload swapped to alice": f"{h}.{alice_payload}.{sig}", "signature stripped": f"{h}.{p}.",
        "signature flipped": f"{h}.{p}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BA'}",
        "RS256 header on an EC signature": _manual({"alg": "RS256", "kid": "k1"}, good, lambda m: b"\0" * 64),
        "ES384 header": _manual({"alg": "ES384", "kid": "k1"}, good, lambda m: b"\0" * 96),
        "unknown crit header": sign(good, crit=["x-unknown"], **{"x-unknown": 1}),
        "five parts (JWE shape)": f"{h}.{p}.{sig}.x.y", "two parts": f"{h}.{p}", "dots": "...",
    }  # fmt: skip
    for claim in ("exp", "iss", "aud", "sub"):
        out[f"no {claim}"] = sign({k: v for k, v in drop.items() if k != claim})
    return out


@asynccontextmanager
async def jwks_server(jwk: dict[str, Any]) -> AsyncIterator[str]:
    app = web.Application()

    async def keys(_: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app.router.add_get("/jwks", keys)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/jwks"
    finally:
        await runner.cleanup()


async def oauth(tmp: Path, s: aiohttp.ClientSession) -> None:
    from jwt.algorithms import ECAlgorithm

    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": "k1", "alg": "ES256", "use": "sig"}
    other_jwk = {**json.loads(ECAlgorithm.to_jwk(other.public_key())), "kid": "k1"}
    async with jwks_server(jwk) as url:
        auth = {"issuer": ISS, "jwks_url": url, "audience": AUD, "algorithms": ["ES256", "RS256"]}
        rules = [{"id": "alice-all", "principals": ["key:alice"], "action": "allow"}]
        async with gateway(tmp, "oauth", {"echo": ECHO_SECRETS}, rules, auth="keys+oauth", auth_table=auth) as (
            rt,
            tok,
        ):
            http = Http(s, rt.port)
            now = int(time.time())
            claims = {"iss": ISS, "aud": AUD, "exp": now + 600, "iat": now}
            mallory = jwt.encode({**claims, "sub": "mallory"}, key, algorithm="ES256", headers={"kid": "k1"})
            r = await http.req("POST", "/mcp", {**JSON_H, **bearer(mallory)}, json.dumps(INIT))
            sanity(r.status == 200, f"a valid JWT was refused: {r.status} {r.text[:200]}")
            for label, token in forged_jwts(key, other, other_jwk).items():
                for method, path, body, headers in CRED_ROUTES[::3]:
                    r = await http.req(method, path, {**headers, **bearer(token)}, body)
                    T.check(
                        "credentials",
                        passed_auth(r, tmp),
                        f"JWT {label} on {method} {path}: expected 401, got {r.status}",
                    )
            # wrong kind: a JWT whose sub is "alice" (with admin-looking claims) is oauth:alice, not key:alice
            fake = {**claims, "sub": "alice", "groups": ["admins"], "scope": "admins"}
            token = jwt.encode(fake, key, algorithm="ES256", headers={"kid": "k1"})
            r = await http.req("GET", "/admin/audit", bearer(token))
            T.check("credentials", r.status == 200, f"JWT sub=alice on /admin/audit: expected 403, got {r.status}")
            sid = await Mcp(http, tok["alice"]).open()
            r = await http.req("POST", "/mcp", {**JSON_H, **bearer(token), "Mcp-Session-Id": sid},
                               json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))  # fmt: skip
            T.check(
                "credentials", r.status != 403, f"JWT sub=alice on key:alice's session: expected 403, got {r.status}"
            )
            r = await Mcp(http, token).call(
                "tools/call", {"name": "echo__env", "arguments": {"name": "ECHO_TOKEN"}}, None, "echo__env"
            )
            T.check(
                "policy", r.succeeded, f"JWT sub=alice calling echo__env (rule names key:alice): got {r.text[:120]}"
            )


# ---- 2. Host / Origin on every route -------------------------------------------------------------

ROUTES = [("POST", "/mcp"), ("GET", "/mcp"), ("DELETE", "/mcp"), ("GET", "/admin/audit"), ("GET", "/admin/approvals"),
          ("POST", "/admin/reindex"), ("POST", "/admin/approvals/x"), ("GET", "/healthz"), ("GET", "/nope"),
          ("GET", "/.well-known/oauth-protected-resource"), ("OPTIONS", "/mcp"), ("HEAD", "/healthz"), ("PUT", "/admin/audit")]  # fmt: skip
BAD_HOSTS = ["attacker.example", "attacker.example:{p}", "localhost.attacker.example:{p}", "127.0.0.1.nip.io:{p}",
             "127.0.0.1.attacker.example", "localhost.:{p}", "127.0.0.1.:{p}", "LOCALHOST.:{p}", "[::1].:{p}", " ",
             "127.0.0.1@attacker.example", "attacker.example#127.0.0.1", "attacker.example/127.0.0.1",
             "127.0.0.1 attacker.example", "127.0.0.1,attacker.example", "attacker.example:{p}@127.0.0.1",
             "0.0.0.0:{p}", "[::ffff:7f00:1].attacker.example", "[::1]attacker.example", "::1.attacker.example",
             "localhost:{p}:attacker.example", "xn--localhost-.example", "localhost%2eattacker.example"]  # fmt: skip
GOOD_HOSTS = ["127.0.0.1:{p}", "localhost:{p}", "LocalHost:{p}", "[::1]:{p}"]
BAD_ORIGINS = ["http://attacker.example", "https://attacker.example:{p}", "null", "http://localhost.attacker.example",
               "http://127.0.0.1.nip.io", "http://attacker.example:{p}", "file://", "chrome-extension://abcdef",
               "http://localhost@attacker.example", "http://127.0.0.1:{p}@attacker.example", "HTTP://ATTACKER.EXAMPLE",
               "http://attacker.example/http://127.0.0.1", "http://0.0.0.0", "", " ", "http://localhost.",
               "http://[evil", "http://[zz]", "http://evil]", "http://[::1"]  # fmt: skip
GOOD_ORIGINS = ["http://localhost:3000", "http://127.0.0.1:{p}", "http://[::1]:{p}"]


async def host_origin(http: Http, auth: dict[str, str], label: str) -> None:
    p = http.port

    async def send(method: str, path: str, extra: dict[str, str]) -> Reply:
        headers = {**JSON_H, **auth, **extra}
        return await http.req(method, path, headers, json.dumps(INIT) if method == "POST" else None, t=5)

    for method, path in ROUTES:
        for host in GOOD_HOSTS:
            r = await send(method, path, {"Host": host.format(p=p)})
            sanity(r.status != 403 or path == "/admin/approvals/x", f"{label}: good Host {host} refused on {path}")
        for origin in GOOD_ORIGINS:
            r = await send(method, path, {"Origin": origin.format(p=p)})
            sanity(r.status != 403 or path == "/admin/approvals/x", f"{label}: good Origin {origin} refused on {path}")
        for host in BAD_HOSTS:
            r = await send(method, path, {"Host": host.format(p=p)})
            what = f"{label} {method} {path} Host {host!r}: expected 403, got {r.status}"
            T.check("host-origin", r.status != 403, what, f"{label} Host {host!r} (got {r.status}; any route)")
        for origin in BAD_ORIGINS:
            r = await send(method, path, {"Origin": origin.format(p=p)})
            what = f"{label} {method} {path} Origin {origin!r}: expected 403, got {r.status}"
            T.check("host-origin", r.status != 403, what, f"{label} Origin {origin!r} (got {r.status}; any route)")
    creds = "".join(f"{k}: {v}\r\n" for k, v in auth.items())
    for hosts in ([f"127.0.0.1:{p}", "attacker.example"], ["attacker.example", f"127.0.0.1:{p}"]):
        head = "".join(f"Host: {h}\r\n" for h in hosts)
        r = await http.raw(f"GET /admin/audit HTTP/1.1\r\n{head}{creds}Connection: close\r\n\r\n".encode())
        T.check(
            "host-origin", 200 <= r.status < 300 or r.status >= 500, f"{label} two Host headers {hosts}: got {r.status}"
        )
    r = await http.raw(f"GET /admin/audit HTTP/1.0\r\n{creds}\r\n".encode())
    T.check("host-origin", r.status != 403, f"{label} HTTP/1.0 without Host: expected 403, got {r.status}")
    origins = f"Host: 127.0.0.1:{p}\r\nOrigin: http://attacker.example\r\nOrigin: http://127.0.0.1:{p}\r\n"
    r = await http.raw(f"GET /admin/audit HTTP/1.1\r\n{origins}{creds}Connection: close\r\n\r\n".encode())
    T.check(
        "host-origin",
        200 <= r.status < 300 or r.status >= 500,
        f"{label} two Origin headers (evil first): got {r.status}",
    )


# ---- 3. admin API ---------------------------------------------------------------------------------

HELD = re.compile(r"approval \(id ([^,\s]+)")


async def held_call(mcp: Mcp, i: int) -> str:
    r = await mcp.call(
        "tools/call", {"name": "echo__echo", "arguments": {"text": f"needs-approval-{i}"}}, None, "echo__echo"
    )
    m = HELD.search(r.strings())
    sanity(m is not None, f"no held call: {r.text[:300]}")
    return m.group(1) if m else ""


async def admin(
    http: Http, rt: Running, operator: dict[str, str], others: dict[str, dict[str, str]], label: str
) -> None:
    approve = json.dumps({"decision": "approve"})
    form = aiohttp.FormData({"decision": "approve"})
    attempts: list[tuple[str, str, dict[str, str], Any]] = []
    for ctype in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json",
                  "application/jsonx", "application/json-patch+json", "application/ld+json", "text/plain; a=application/json",
                  "application/x-json", "*/*", "", "text/html", "application/xml"):  # fmt: skip
        headers = {**operator} if ctype is None else {**operator, "Content-Type": ctype}
        attempts.append((f"operator, Content-Type {ctype!r}", "POST", headers, approve))
    attempts.append(("operator, urlencoded form", "POST", operator, form))
    attempts.append(
        ("operator, form body as text/plain", "POST", {**operator, "Content-Type": "text/plain"}, "decision=approve")
    )
    for who, auth in others.items():
        attempts.append((f"{who}, JSON", "POST", {**auth, "Content-Type": "application/json"}, approve))
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        attempts.append(
            (f"operator, {method} with JSON", method, {**operator, "Content-Type": "application/json"}, approve)
        )
    evil = {**operator, "Content-Type": "application/json"}
    attempts.append(("operator JSON, evil Origin", "POST", {**evil, "Origin": "http://attacker.example"}, approve))
    attempts.append(("operator JSON, evil Host", "POST", {**evil, "Host": "attacker.example"}, approve))
    attempts.append(("operator, ?decision=approve GET", "GET", operator, None))
    mcp = Mcp(http, operator.get("Authorization", " ").split(" ", 1)[1] or None)
    for i, (what, method, headers, body) in enumerate(attempts):
        aid = await held_call(mcp, i)
        r = await http.req(
            method, f"/admin/approvals/{aid}" + ("?decision=approve" if "GET" in what else ""), headers, body
        )
        state = {a.id: a.status for a in await rt.parts.approvals.list(None)}.get(aid)
        T.check("admin", 200 <= r.status < 300 or state != "pending",
                f"{label} {what}: expected 4xx and still pending, got {r.status} and {state}")  # fmt: skip
    aid = await held_call(mcp, 999)
    r = await http.req("POST", f"/admin/approvals/{aid}", {**operator, "Content-Type": "application/json"}, approve)
    sanity(r.status == 200, f"{label}: the operator could not approve with JSON: {r.status} {r.text[:200]}")
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        r = await http.req("POST", "/admin/reindex", {**operator, "Content-Type": ctype}, "{}")
        T.check("admin", r.status != 415, f"{label} POST /admin/reindex as {ctype!r}: expected 415, got {r.status}")
    for who, auth in others.items():
        for method, path in (("GET", "/admin/audit"), ("GET", "/admin/approvals"), ("POST", "/admin/reindex")):
            r = await http.req(
                method, path, {**auth, "Content-Type": "application/json"}, "{}" if method == "POST" else None
            )
            T.check(
                "admin", r.status not in (401, 403), f"{label} {who} {method} {path}: expected 401/403, got {r.status}"
            )
    tricks = ["/admin/audit/", "//admin/audit", "/admin//audit", "/ADMIN/audit", "/admin/./audit", "/admin/%61udit",
              "/mcp/../admin/audit", "/healthz/../admin/audit", "/admin/audit%00", "/admin/audit;x", "/%2e/admin/audit"]  # fmt: skip
    for who, auth in others.items():
        creds = "".join(f"{k}: {v}\r\n" for k, v in auth.items())
        for path in tricks:
            r = await http.raw(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{http.port}\r\n{creds}Connection: close\r\n\r\n".encode()
            )
            T.check("admin", 200 <= r.status < 300 or r.status >= 500, f"{label} {who} GET {path}: got {r.status}")


# ---- 4. policy bypass via names, URIs, prompts, completion refs -----------------------------------

ZW = "\u200b"


def name_variants(n: str) -> list[str]:
    server, tool = n.split("__")
    full = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in n)
    return [n, n.upper(), n.capitalize(), n.title(), n.swapcase(), f"{n} ", f" {n}", f"{n}\n", f"{n}\t", f"{n}\x00",
            f"{n}{ZW}", n.replace("__", "_"), n.replace("__", "___"), n.replace("__", "\uff3f\uff3f"),
            n.replace("__", f"__{ZW}"), n.replace("e", "\u0435", 1), n.replace("o", "\u043e"), full, f"\u202e{n}",
            n.replace("__", "."), n.replace("__", "/"), n.replace("__", ":"), n.replace("__", "%5F%5F"), f"{n}%00",
            f"time__{tool}", f"time__t_{tool}/../../{n}", f"time__t_{tool}\x00{n}", f"{n}#", f"{n}?", f"./{n}",
            unicodedata.normalize("NFKD", n) + "\u0301", f"{server}__{server}__{tool}", tool, f"t_{tool}"]  # fmt: skip


def uri_variants(inner: str) -> list[str]:
    u = f"echo+{inner}"
    return [u, f"ECHO+{inner}", f"Echo+{inner}", f"echo+{inner.upper()}", f"echo%2B{inner}", f"echo%2b{inner}",
            f"time+echo://env/../../../{u}", f" {u}", f"echo +{inner}", f"echo{ZW}+{inner}", f"ech\u043e+{inner}",
            f"echo++{inner}", f"echo+:{inner}", f"{u}#time+", f"{u}?time+x", f"time+x+{u}", f"time+../{u}",
            f"time+{u}", f"{u}\x00", f"{u} ", "*", "time+*", "echo+*", "", "echo", "echo+", f"ECHO%2B{inner}",
            f"echo+{urllib.parse.quote(inner, safe='')}", f"echo\uff0b{inner}", f"\u202eecho+{inner}"]  # fmt: skip


def reached_echo(r: Reply) -> bool:
    text = r.strings()
    return canary_in(text) or "[REDACTED]" in text or '"prefix": ""' in text or "item 1" in text


async def policy(http: Http, disp: Http, tokens: dict[str, str], dtokens: dict[str, str]) -> None:
    bob, alice = Mcp(http, tokens["bob"]), Mcp(http, tokens["alice"])
    sid, asid = await bob.open(), await alice.open()
    r = await bob.call("tools/call", {"name": "time__t_env", "arguments": {"name": "FIXTURE_TOOLS_PREFIX"}}, sid)
    sanity(r.succeeded and "t_" in r.strings(), f"bob cannot call time__t_env: {r.text[:200]}")
    r = await alice.call("tools/call", {"name": "echo__env", "arguments": {"name": "ECHO_TOKEN"}}, asid)
    sanity(r.succeeded and "[REDACTED]" in r.strings(), f"alice cannot call echo__env: {r.text[:200]}")
    args = {"name": "ECHO_TOKEN", "text": "probe", "a": 1, "b": 2}
    for name in {*name_variants("echo__env"), *name_variants("echo__echo"), "time__*", "*", "echo__*", "env", "echo"}:
        for r in await bob.both("tools/call", {"name": name, "arguments": args}, sid, name):
            T.check(
                "policy",
                r.succeeded or reached_echo(r),
                f"bob tools/call {name!r}: expected unknown tool, got {r.text[:120]}",
            )
    for name in {*name_variants("echo__greet"), "echo__*", "*"} - {"time__greet"}:
        for r in await bob.both("prompts/get", {"name": name, "arguments": {"name": "x"}}, sid, name):
            T.check("policy", r.succeeded, f"bob prompts/get {name!r}: expected unknown prompt, got {r.text[:120]}")
        ref = {"ref": {"type": "ref/prompt", "name": name}, "argument": {"name": "name", "value": "a"}}
        for r in await bob.both("completion/complete", ref, sid, None):
            err = (r.final().get("error") or {}).get("message", "")
            T.check(
                "policy",
                r.succeeded or not err.startswith("Unknown"),
                f"bob completion on prompt {name!r}: got {r.text[:120]}",
            )
    uris = {*uri_variants("echo://env/ECHO_TOKEN"), *uri_variants("echo://info"), *uri_variants("echo://items/1")}
    for uri in uris:
        for r in await bob.both("resources/read", {"uri": uri}, sid, uri):
            T.check(
                "policy", reached_echo(r), f"bob resources/read {uri!r}: expected unknown resource, got {r.text[:120]}"
            )
        if uri.startswith("time+"):
            continue  # bob may reach time's resources: a success there is no bypass
        r = await bob.call("resources/subscribe", {"uri": uri}, sid)
        T.check(
            "policy", r.succeeded, f"bob resources/subscribe {uri!r}: expected unknown resource, got {r.text[:120]}"
        )
        ref = {"ref": {"type": "ref/resource", "uri": uri}, "argument": {"name": "id", "value": "1"}}
        for r in await bob.both("completion/complete", ref, sid, None):
            err = (r.final().get("error") or {}).get("message", "")
            T.check(
                "policy",
                r.succeeded or not err.startswith("Unknown"),
                f"bob completion on resource {uri!r}: got {r.text[:120]}",
            )
    r = await alice.call("resources/subscribe", {"uri": "echo+echo://info"}, asid)
    sanity(r.succeeded, f"alice cannot subscribe: {r.text[:200]}")
    for uri in ("echo+echo://info", "echo+echo://items/1"):
        r = await bob.call("resources/unsubscribe", {"uri": uri}, sid)
        T.check("policy", r.succeeded, f"bob resources/unsubscribe {uri!r} (alice subscribed to echo+echo://info): "
                f"expected unknown resource, got {r.text[:120]}")  # fmt: skip
    for method in ("tools/list", "resources/list", "resources/templates/list", "prompts/list"):
        for r in await bob.both(method, {}, sid, None):
            listed = [
                v
                for k in ("tools", "resources", "resourceTemplates", "prompts")
                for v in (r.final().get("result") or {}).get(k, [])
            ]
            names = [str(v.get("name", "")) + " " + str(v.get("uri", v.get("uriTemplate", ""))) for v in listed]
            T.check(
                "policy",
                any(not n.startswith("time") and "time+" not in n for n in names),
                f"bob {method}: listed {names}",
            )
    # argument values against alice's deny rules (regex whole-value DOTALL, min on numbers)
    for text in ("/etc/passwd\n", "/etc/\npasswd", "/etc/passwd\r\n", "/etc/", "/etc/\u2028x"):
        r = await alice.call("tools/call", {"name": "echo__echo", "arguments": {"text": text}}, asid)
        T.check(
            "policy",
            r.succeeded,
            f"alice echo__echo text={text!r}: expected denied by alice-no-etc, got {r.text[:120]}",
        )
    for a in (1000, 1000.0, 10**30, "1000", 1e300, True, [1000], {"x": 1000}):
        r = await alice.call("tools/call", {"name": "echo__add", "arguments": {"a": a, "b": 1}}, asid)
        T.check("policy", r.succeeded, f"alice echo__add a={a!r}: expected denied or invalid, got {r.text[:120]}")
    # dispatcher mode: invoke and search_tools
    dbob, dalice = Mcp(disp, dtokens["bob"]), Mcp(disp, dtokens["alice"])
    dsid = await dbob.open()
    r = await dalice.call(
        "tools/call",
        {"name": "invoke", "arguments": {"tool": "echo__env", "arguments": {"name": "ECHO_TOKEN"}}},
        None,
        "invoke",
    )
    sanity(r.succeeded, f"alice cannot invoke echo__env: {r.text[:200]}")
    for name in {*name_variants("echo__env"), *name_variants("echo__echo"), "invoke", "search_tools", "*", "echo__*"}:
        for tool in (name, [name], {"name": name}):
            call = {"name": "invoke", "arguments": {"tool": tool, "arguments": args}}
            for r in await dbob.both("tools/call", call, dsid, "invoke"):
                T.check(
                    "policy",
                    r.succeeded or reached_echo(r),
                    f"bob invoke {tool!r}: expected unknown tool, got {r.text[:120]}",
                )
    for query in ("environment variable", "echo text back", "echo__env", "add two integers", "*"):
        for server in (None, "echo", "ECHO"):
            sargs: dict[str, Any] = {"query": query} if server is None else {"query": query, "server": server}
            for r in await dbob.both("tools/call", {"name": "search_tools", "arguments": sargs}, dsid, "search_tools"):
                T.check("policy", "echo__" in r.strings(), f"bob search_tools {sargs}: listed echo tools")


# ---- 5. redaction ---------------------------------------------------------------------------------


def _b64_forms(secret: str) -> dict[str, str]:
    raw, out = secret.encode(), {}
    for pad in ("", "x", "xy"):
        enc = base64.b64encode(pad.encode() + raw).decode()
        out[f"base64 after {len(pad)} bytes"] = enc
        out[f"base64url after {len(pad)} bytes"] = base64.urlsafe_b64encode(pad.encode() + raw).decode()
        out[f"base64 unpadded after {len(pad)} bytes"] = enc.rstrip("=")
    out["Basic user:secret"] = "Basic " + base64.b64encode(b"user:" + raw).decode()
    return out


SPLITTERS = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u180e", "\u034f", "\u061c", "\u115f",
             "\u17b4", "\u202a", "\u2063", "\u3164", "\ufe0f", "\ufe00", "\uffa0", "\U0001bca0", "\U0001d173",
             "\U000e0001", "\U000e0041", "\U000e0100"]  # fmt: skip


def claimed_probes() -> list[tuple[str, str]]:
    """Encodings the Redactor claims: raw, any case, JSON-escaped, URL-encoded, hex, base64, invisible splits."""
    out: list[tuple[str, str]] = []
    for tag, sec in (("canary", CANARY), ("canary2", CANARY2)):
        forms = {
            "raw": sec, "upper": sec.upper(), "lower": sec.lower(), "swapcase": sec.swapcase(),
            "json-escaped": json.dumps(sec)[1:-1],
            "url-encoded": urllib.parse.quote(sec, safe=""), "url-encoded (safe=/)": urllib.parse.quote(sec),
            "url-encoded lower": urllib.parse.quote(sec, safe="").lower(), "form-encoded": urllib.parse.quote_plus(sec),
            "url-encoded upper input": urllib.parse.quote(sec.upper(), safe=""),
            "hex": sec.encode().hex(), "HEX": sec.encode().hex().upper(), **_b64_forms(sec),
            "upper + zero-width": "\u200b".join(sec.upper()),
        }  # fmt: skip
        for ch in SPLITTERS:
            forms[f"split by U+{ord(ch):04X}"] = ch.join(sec)
            forms[f"one U+{ord(ch):04X} inside"] = sec[:5] + ch + sec[5:]
        out += [(f"{tag} {k}", v) for k, v in forms.items()]
    return out


def unclaimed_probes() -> list[tuple[str, str]]:
    """Encodings the Redactor does not claim (reported as information, never counted)."""
    sec = CANARY
    return [
        ("json in json (double escape)", json.dumps(json.dumps(CANARY2))[1:-1]),
        ("fullwidth", "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in sec)),
        ("all \\u-escaped", "".join(f"\\u{ord(c):04x}" for c in sec)), ("reversed", sec[::-1]),
        ("html entities", "".join(f"&#{ord(c)};" for c in sec)), ("\\x hex", "".join(f"\\x{ord(c):02x}" for c in sec)),
        ("all percent-encoded", "".join(f"%{ord(c):02X}" for c in sec)), ("base32", base64.b32encode(sec.encode()).decode()),
        ("spaced", " ".join(sec)), ("cyrillic a", sec.replace("a", "\u0430")), ("rot13", sec.translate(str.maketrans(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", "NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm"))),
    ]  # fmt: skip


def leaked(probe: str, text: str) -> bool:
    return probe in text or canary_in(text)


def strings_of(obj: Any) -> str:
    return Reply(200, json.dumps(obj, ensure_ascii=False)).strings()


async def backchannel(rt: Running, token: str, probes: list[tuple[str, str]]) -> None:
    import httpx2
    import mcp_types as types
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    seen: list[str] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        seen.append(strings_of(params.model_dump(mode="json")))
        reply = types.TextContent(type="text", text="ok")
        return types.CreateMessageResult(role="assistant", content=reply, model="m", stop_reason="endTurn")

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        seen.append(strings_of(params.model_dump(mode="json")))
        return types.ElicitResult(action="accept", content={"answer": "ok"})

    async def logging(params: types.LoggingMessageNotificationParams) -> None:
        seen.append(strings_of(params.model_dump(mode="json")))

    async with (
        httpx2.AsyncClient(headers=bearer(token), timeout=30) as http,
        Client(streamable_http_client(rt.url, http_client=http), mode="legacy", sampling_callback=sampling,
               elicitation_callback=elicitation, logging_callback=logging) as client,
    ):  # fmt: skip
        results: dict[int, str] = {}
        for i, (_, probe) in enumerate(probes):
            with anyio.fail_after(20):
                res = await client.call_tool("bc__converse", {"marker": f"m{i}:{probe}"})
            results[i] = strings_of(res.model_dump(mode="json"))
        with anyio.move_on_after(3):
            while sum(1 for x in seen if "log m" in x) < len(probes):  # noqa: ASYNC110  (bounded by move_on_after)
                await anyio.sleep(0.05)
    sanity(len(seen) >= 3 * len(probes), f"the back channel delivered {len(seen)} of {3 * len(probes)} messages")
    for i, (label, probe) in enumerate(probes):
        mine = [x for x in seen if f"m{i}:" in x] + [results[i]]
        hit = [x for x in mine if leaked(probe, x)]
        T.check(
            "redaction", bool(hit), f"{label} via log/elicitation/sampling/result: leaked in {hit[:1]!r}"[:300], label
        )


async def redaction(http: Http, rt: Running, tokens: dict[str, str]) -> None:
    alice = Mcp(http, tokens["alice"])
    sid = await alice.open()
    fixed = [
        ("tools/call", {"name": "echo__env", "arguments": {"name": n}}, "echo__env")
        for n in ("ECHO_TOKEN", "ECHO_PASS")
    ]
    fixed += [("resources/read", {"uri": f"echo+echo://{k}/{n}"}, f"echo+echo://{k}/{n}")
              for k in ("env", "fail") for n in ("ECHO_TOKEN", "ECHO_PASS")]  # fmt: skip
    for method, params, name in fixed:
        for r in await alice.both(method, params, sid, name):
            T.check(
                "redaction", canary_in(r.strings()) or canary_in(r.text), f"{method} {params}: canary in {r.text[:200]}"
            )
    for var in ("TOOLCRIB_SECRET_ECHO_TOKEN", "TOOLCRIB_SECRET_ECHO_PASS", "ECHO_TOKEN", "ECHO_PASS"):
        r = await alice.call("tools/call", {"name": "time__t_env", "arguments": {"name": var}}, sid)
        sanity(r.succeeded, f"time__t_env failed: {r.text[:200]}")
        T.check(
            "redaction",
            "<unset>" not in r.strings(),
            f"another upstream (time) holds echo's secret in ${var}: {r.text[:120]}",
        )
    probes = claimed_probes()
    for label, probe in probes:
        calls = [("tools/call", {"name": "echo__echo", "arguments": {"text": f"<{probe}>"}}, "echo__echo"),
                 ("prompts/get", {"name": "echo__greet", "arguments": {"name": probe}}, "echo__greet")]  # fmt: skip
        if re.fullmatch(r"[A-Za-z0-9._~-]+", probe):
            calls += [("resources/read", {"uri": f"echo+echo://items/{probe}"}, f"echo+echo://items/{probe}"),
                      ("resources/read", {"uri": f"echo+echo://nothing/{probe}"}, f"echo+echo://nothing/{probe}")]  # fmt: skip
        for method, params, name in calls:
            for r in await alice.both(method, params, sid, name):
                T.check("redaction", leaked(probe, r.strings()), f"{label} via {method}: {r.strings()[-160:]!r}", label)
    await backchannel(rt, tokens["alice"], probes)
    r = await http.req("GET", "/admin/audit?limit=10000", bearer(tokens["alice"]))
    sanity(r.status == 200, f"audit read failed: {r.status}")
    audit = r.strings()
    for label, probe in probes:
        T.check("redaction", probe in audit, f"{label} in /admin/audit rows", label)
    T.check("redaction", canary_in(audit), "a canary (any case, invisible split) in /admin/audit rows")
    for label, probe in unclaimed_probes():
        r = await alice.call("tools/call", {"name": "echo__echo", "arguments": {"text": f"<{probe}>"}}, sid)
        if probe in r.strings():
            T.info.append(f"unclaimed encoding passes redaction (not counted): {label}")


# ---- 6. malformed JSON-RPC / HTTP -----------------------------------------------------------------


def malformed_bodies() -> list[tuple[str, bytes]]:
    rnd = random.Random(6)
    out = [(f"random bytes #{i}", rnd.randbytes(rnd.randint(0, 2000))) for i in range(80)]
    call = '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"x":%s}}'
    out += [
        (f"literal {v!r}", (call % v).encode())
        for v in ("[" * 100000 + "]" * 100000, '{"a":' * 50000 + "1" + "}" * 50000)
    ]
    out += [(repr(b[:40]), b) for b in (b"", b"null", b"0", b'"x"', b"[]", b"[1]", b"{}", b"[{}]", json.dumps([INIT]).encode(),
            b"{" * 100000, b"[" * 100000, b'\xff\xfe{"jsonrpc":"2.0"}', b"\xef\xbb\xbf" + (call % "1").encode(),
            (call % "1").encode("utf-16"), (call % '"\xff"').encode("latin-1"), (call % '"\\ud800"').encode(),
            b'{"jsonrpc":"2.0","id":1,"id":{},"method":"tools/list"}', b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}x')]  # fmt: skip
    envs: list[dict[str, Any]] = [{"jsonrpc": "2.0", "id": rid, "method": "tools/list"}
                                  for rid in (2**63, 2**64, 10**30, -(10**30), "x" * 100000, {}, [], True, None, 1.5, -0.0, "")]  # fmt: skip
    envs += [
        {"jsonrpc": "2.0", "id": 9, "method": m} for m in (5, None, "", "x" * 100000, "rpc.x", "initialize", "ping")
    ]
    tools = [[], "x", None, {"name": 5}, {"name": "echo__echo", "arguments": "x"}, {"name": "echo__echo", "arguments": [1]},
             {"name": "echo__echo", "arguments": {"text": "x"}, "_meta": "abc"},
             {"name": "echo__echo", "arguments": {"text": "x"}, "_meta": [1]},
             {"name": "echo__echo", "arguments": {"text": "x"}, "_meta": 5},
             {"name": "echo__echo", "arguments": {"text": "x"}, "_meta": {"progressToken": {}}},
             {"name": "echo__echo", "arguments": {"text": "x"}, "_meta": {"progressToken": [1]}},
             {"name": "echo__echo", "arguments": {"text": "x"}, "_meta": {"progressToken": 1e300}}]  # fmt: skip
    envs += [{"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": p} for p in tools]
    others = [("resources/read", {"uri": 5}), ("resources/read", {"uri": None}), ("prompts/get", {"name": None}),
              ("completion/complete", {"ref": {"type": "ref/prompt"}}), ("completion/complete", {"ref": {"type": "ref/x", "name": "x"}}),
              ("completion/complete", {"ref": {"type": "ref/prompt", "name": "echo__greet"}, "argument": {}}),
              ("logging/setLevel", {"level": "nope"}), ("tools/list", {"cursor": 5}), ("resources/subscribe", {"uri": []})]  # fmt: skip
    envs += [{"jsonrpc": "2.0", "id": 12, "method": m, "params": p} for m, p in others]
    envs += [{"jsonrpc": v, "id": 13, "method": "tools/list"} for v in ("1.0", 2.0, None)]
    envs += [{"jsonrpc": "2.0", "id": 14, "result": {}}, {"jsonrpc": "2.0", "id": 15, "error": {"code": "x"}},
             {"jsonrpc": "2.0", "id": {}, "result": 5}, {"jsonrpc": "2.0", "id": 16, "error": {"code": 1, "message": "x"}}]  # fmt: skip
    return out + [(f"envelope {json.dumps(e)[:80]}", json.dumps(e).encode()) for e in envs]


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E+999"]


async def malformed(http: Http, tokens: dict[str, str]) -> None:
    alice = Mcp(http, tokens["alice"])
    auth = bearer(tokens["alice"])
    sid = await alice.open()
    modern = {"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/list"}
    for label, body in malformed_bodies():
        for extra in ({"Mcp-Session-Id": sid}, {}, modern):
            r = await http.req("POST", "/mcp", {**JSON_H, **auth, **extra}, body)
            T.check(
                "malformed",
                r.status >= 500 or r.status == -1,
                f"{label[:80]} ({list(extra)}): got {r.status} {r.text[:80]}",
            )
    for v in NON_FINITE:
        for place in (
            '"arguments":{"a":%s,"b":1}',
            '"arguments":{"a":1,"b":2,"x":[%s]}',
            '"_meta":{"progressToken":%s}',
        ):
            body = (
                '{"jsonrpc":"2.0","id":21,"method":"tools/call","params":{"name":"echo__add",' + place % v + "}}"
            ).encode()
            for extra in ({"Mcp-Session-Id": sid}, {}):
                r = await http.req("POST", "/mcp", {**JSON_H, **auth, **extra}, body)
                T.check(
                    "malformed",
                    r.status != 400 or "-32700" not in r.text,
                    f"non-finite {v} in {place[:12]}: got {r.status} {r.text[:80]}",
                )
    for rid in ({}, [], None, True, 1.5, "x" * 10000, 10**30, {"a": {"b": []}}, -1, "", "NaN"):
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid, "reason": rid}}
        for extra in ({"Mcp-Session-Id": sid}, {}):
            r = await http.req("POST", "/mcp", {**JSON_H, **auth, **extra}, json.dumps(note))
            T.check(
                "malformed", r.status >= 500 or r.status == -1, f"cancelled requestId={str(rid)[:20]!r}: got {r.status}"
            )
    for params in (None, [], "x", 5):
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}
        r = await http.req("POST", "/mcp", {**JSON_H, **auth, "Mcp-Session-Id": sid}, json.dumps(note))
        T.check("malformed", r.status >= 500 or r.status == -1, f"cancelled params={params!r}: got {r.status}")
    ping = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
    for bad_sid in (
        "deadbeef" * 4,
        "",
        " ",
        "../..",
        "x" * 10000,
        "\u00e9",
        "0",
        sid.upper() if sid.upper() != sid else sid + "0",
    ):
        for method, body, extra in (
            ("POST", ping, JSON_H),
            ("GET", None, {"Accept": "text/event-stream"}),
            ("DELETE", None, {}),
        ):
            r = await http.req(method, "/mcp", {**extra, **auth, "Mcp-Session-Id": bad_sid}, body, t=3)
            T.check(
                "malformed",
                r.status == -1 or r.status >= 500 or 200 <= r.status < 300,
                f"unknown session {bad_sid[:12]!r} {method}: got {r.status}",
            )
    for ctype in ("text/plain", "", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = await http.req(
            "POST", "/mcp", {**auth, "Accept": JSON_H["Accept"], "Content-Type": ctype}, json.dumps(INIT)
        )
        T.check(
            "malformed", r.status not in (400, 415), f"POST /mcp Content-Type {ctype!r}: expected 415, got {r.status}"
        )
    for version in ("1999-01-01", "", "x" * 1000, "2025-11-25, 2026-07-28"):
        r = await http.req("POST", "/mcp", {**JSON_H, **auth, "MCP-Protocol-Version": version}, ping)
        T.check(
            "malformed", r.status >= 500 or r.status == -1, f"MCP-Protocol-Version {version[:20]!r}: got {r.status}"
        )
    r = await http.req("POST", "/mcp", {**JSON_H, **auth}, b"{" + b" " * (5 * 1024 * 1024) + b"}")
    T.check("malformed", r.status != 413, f"5 MB body: expected 413, got {r.status}")
    await races(http, alice, auth)
    await raw_http(http, auth)


async def races(http: Http, alice: Mcp, auth: dict[str, str]) -> None:
    """Requests racing a DELETE of their session, and two requests with one id in flight."""
    for round_no in range(8):
        sid = await alice.open()
        sleep = {"name": "echo__sleep", "arguments": {"seconds": 0.3}}

        async def later(delay: float, coro: Any) -> Reply:
            await asyncio.sleep(delay)
            return await coro  # type: ignore[no-any-return]

        get = {**auth, "Accept": "text/event-stream", "Mcp-Session-Id": sid}
        jobs = {"tools/call (direct)": alice.call("tools/call", sleep, sid), "tools/list": alice.call("tools/list", {}, sid),
                "resources/read": alice.call("resources/read", {"uri": "echo+echo://info"}, sid),
                "DELETE": later(0.1, http.req("DELETE", "/mcp", {**auth, "Mcp-Session-Id": sid})),
                "tools/call at DELETE": later(0.1, alice.call("tools/call", sleep, sid)),
                "prompts/list at DELETE": later(0.1, alice.call("prompts/list", {}, sid)),
                "tools/list after DELETE": later(0.2, alice.call("tools/list", {}, sid)),
                "GET stream at DELETE": later(0.1, http.req("GET", "/mcp", get, t=5))}  # fmt: skip
        for what, r in zip(jobs, await asyncio.gather(*jobs.values()), strict=True):
            T.check(
                "malformed",
                r.status >= 500 or r.status == -1,
                f"{what} racing DELETE (round {round_no}): got {r.status} {r.text[:80]}",
            )
    sid = await alice.open()
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "echo__sleep", "arguments": {"seconds": 0.3}},
        }
    )
    same = await asyncio.gather(
        *[http.req("POST", "/mcp", {**JSON_H, **auth, "Mcp-Session-Id": sid}, body) for _ in range(4)]
    )
    for r in same:
        T.check("malformed", r.status >= 500 or r.status == -1, f"one id four times in flight: got {r.status}")


async def raw_http(http: Http, auth: dict[str, str]) -> None:
    host = f"Host: 127.0.0.1:{http.port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in auth.items())
    ok = '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    post = f"POST /mcp HTTP/1.1\r\n{host}Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\n"
    cases = [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\x00\x01\x02\r\n\r\n", b"GET /healthz HTTP/1.1\r\n\r\n",
             f"{post}Content-Length: -1\r\n\r\n{ok}".encode(), f"{post}Content-Length: abc\r\n\r\n{ok}".encode(),
             f"{post}Content-Length: 99999999999999999999\r\n\r\n{ok}".encode(),
             f"{post}Content-Length: {len(ok)}\r\nTransfer-Encoding: chunked\r\n\r\n{ok}".encode(),
             f"{post}Transfer-Encoding: chunked\r\n\r\nzz\r\n{ok}\r\n0\r\n\r\n".encode(),
             f"{post}Transfer-Encoding: gzip\r\n\r\n{ok}".encode(),
             f"{post}Transfer-Encoding: chunked, identity\r\n\r\n{len(ok):x}\r\n{ok}\r\n0\r\n\r\n".encode(),
             f"{post}X-Bad: a\x00b\r\nContent-Length: {len(ok)}\r\n\r\n{ok}".encode(),
             f"{post}NoColonHeader\r\nContent-Length: {len(ok)}\r\n\r\n{ok}".encode(),
             f"{post}X-Big: {'a' * 100000}\r\nContent-Length: {len(ok)}\r\n\r\n{ok}".encode(),
             (post + "".join(f"X-{i}: {i}\r\n" for i in range(2000)) + f"Content-Length: {len(ok)}\r\n\r\n{ok}").encode(),
             f"GET /mcp?{'a=1&' * 20000} HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode(),
             f"GET /%00 HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode(),
             f"GET /..%2F..%2Fetc/passwd HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode(),
             f"{post}X-Latin: \xe9\xff\r\nContent-Length: {len(ok)}\r\n\r\n{ok}".encode("latin-1"),
             f"{post}Content-Length: {len(ok)}\r\nContent-Length: 5\r\n\r\n{ok}".encode(),
             f"{post}Transfer-Encoding: chunked\r\n\r\n{'1' * 40}\r\nx\r\n0\r\n\r\n".encode(),
             f"{post}Transfer-Encoding: chunked\r\n\r\n5;ext=\x00\r\n{ok[:5]}\r\n0\r\n\r\n".encode()]  # fmt: skip
    for data in cases:
        r = await http.raw(data)
        T.check("malformed", r.status >= 500, f"raw HTTP {data[:60]!r}: got {r.status} {r.text[:60]}")


# ---- the run --------------------------------------------------------------------------------------


async def run_all(tmp: Path) -> None:
    from toolcrib.index.embedder import HashingEmbedder

    servers = {"echo": ECHO_SECRETS, "time": TIME, "bc": stdio("tests.servers.backchannel", "--legacy")}
    none_rules = [
        {"id": "held", "tools": ["echo__echo"], "when": {"/text": {"regex": "needs-approval.*"}}, "action": "approve"}
    ]
    alice_rules = [
        {**r, "when": {"/text": {"regex": "needs-approval.*"}}} if r["id"] == "alice-held" else r for r in ALICE_RULES
    ]
    async with AsyncExitStack() as stack:
        s = await stack.enter_async_context(aiohttp.ClientSession())
        main_rt, tokens = await stack.enter_async_context(
            gateway(tmp, "main", servers, [BOB_RULE, *alice_rules], auth="keys")
        )
        disp_rt, dtokens = await stack.enter_async_context(
            gateway(tmp, "disp", {"echo": ECHO_SECRETS, "time": TIME}, [BOB_RULE, *alice_rules], auth="keys",
                    mode="dispatcher", embedder=HashingEmbedder())
        )  # fmt: skip
        none_rt, _ = await stack.enter_async_context(
            gateway(tmp, "none", {"echo": stdio("tests.servers.echo")}, none_rules, auth="none")
        )
        http, disp, nohttp = Http(s, main_rt.port), Http(s, disp_rt.port), Http(s, none_rt.port)
        alice, bob = bearer(tokens["alice"]), bearer(tokens["bob"])
        steps = [
            ("credentials", credentials(http, main_rt, tokens, tmp)),
            ("oauth", oauth(tmp, s)),
            ("host-origin keys", host_origin(http, alice, "keys")),
            ("host-origin none", host_origin(nohttp, {}, "auth=none")),
            (
                "admin keys",
                admin(http, main_rt, alice, {"bob": bob, "nobody": {}, "revoked": bearer(tokens["revoked"])}, "keys"),
            ),
            ("admin none", admin(nohttp, none_rt, {}, {}, "auth=none")),
            ("policy", policy(http, disp, tokens, dtokens)),
            ("redaction", redaction(http, main_rt, tokens)),
            ("malformed", malformed(http, tokens)),
        ]
        for label, step in steps:
            t0 = time.monotonic()
            await step
            print(f"  [{label}: {time.monotonic() - t0:.1f} s]", file=sys.stderr)


async def main() -> int:
    os.environ.update(SECRET_ENV)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="toolcrib-attack-") as tmp:
        await run_all(Path(tmp))
    failures = T.report()
    print(f"elapsed: {time.monotonic() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
