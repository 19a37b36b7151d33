"""toolcrib behind a TLS-terminating nginx with ``auth = "oauth"``: the set-up ChatGPT and other remote
clients need (README, "Behind TLS"). Real nginx (Debian's package; CI installs it), a self-signed
certificate made here, the local JWKS fixture of the authenticator tests, SDK clients over https.

The public name ``mcp.toolcrib.test`` is sent as the ``Host`` header to 127.0.0.1 (the certificate
covers both), so the guard's Host check is exercised as it is in production: nginx passes the public
name, ``[gateway] allowed_hosts`` admits it, and any other name is refused.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import mcp_types as types
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import ValidationError

from tests.e2e.conftest import make_config, stdio_server
from tests.gateway import test_auth
from tests.gateway.test_auth import ISSUER, JwksServer, Keys, sign
from toolcrib.app import Running, running_gateway
from toolcrib.config import GatewayConfig

pytestmark = pytest.mark.anyio

keys = test_auth.keys
jwks = test_auth.jwks

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
PUBLIC_HOST = "mcp.toolcrib.test"
SERVERS = {"echo": stdio_server("tests.servers.echo"), "ev": stdio_server("tests.servers.everything")}
BOTH = "application/json, text/event-stream"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` for 127.0.0.1, localhost and the public test name, valid one day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PUBLIC_HOST)])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName(PUBLIC_HOST), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


NGINX_CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {host};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 5m;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


@dataclass
class Proxy:
    port: int
    ctx: ssl.SSLContext
    pid: int

    @property
    def url(self) -> str:
        """Where the test connects (127.0.0.1); requests carry the public name in ``Host``."""
        return f"https://127.0.0.1:{self.port}/mcp"

    @property
    def public(self) -> str:
        return f"https://{PUBLIC_HOST}:{self.port}"

    def client(
        self, token: str | None = None, host: str = PUBLIC_HOST, sessions: list[str] | None = None
    ) -> httpx2.AsyncClient:
        """An https client trusting only the test certificate; ``sessions`` collects every ``Mcp-Session-Id``
        the gateway hands out."""
        headers = {"Host": f"{host}:{self.port}"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"

        async def record(response: httpx2.Response) -> None:
            if sessions is not None and "Mcp-Session-Id" in response.headers:
                sessions.append(response.headers["Mcp-Session-Id"])

        return httpx2.AsyncClient(verify=self.ctx, headers=headers, timeout=30, event_hooks={"response": [record]})


@contextmanager
def nginx(directory: Path, port: int, upstream: int) -> Iterator[Proxy]:
    """nginx in the foreground with its own config in ``directory``, terminating TLS on ``port`` and
    proxying to 127.0.0.1:``upstream``; stopped (SIGTERM to its master, which stops its workers) on exit."""
    assert NGINX is not None
    cert, key = _self_signed(directory)
    conf = directory / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""  # root: workers keep root, no www-data needed
    conf.write_text(
        NGINX_CONF.format(user=user, dir=directory, port=port, host=PUBLIC_HOST, cert=cert, key=key, upstream=upstream)
    )
    cmd = [NGINX, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log"), "-g", "daemon off;"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"nginx exited with {proc.returncode}: {err.strip()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("nginx did not listen within 15 s")
                time.sleep(0.05)
        yield Proxy(port=port, ctx=ssl.create_default_context(cafile=str(cert)), pid=proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
async def behind_tls(tmp_path: Path, jwks: JwksServer) -> AsyncIterator[tuple[Running, Proxy]]:
    """toolcrib with ``auth = "oauth"`` on an ephemeral loopback port, and nginx in front of it."""
    if NGINX is None:
        pytest.skip("nginx is not installed: `apt-get install -y nginx` (CI's .ci/run installs it)")
    port = _free_port()
    public = f"https://{PUBLIC_HOST}:{port}"
    cfg = make_config(
        SERVERS,
        tmp_path,
        {"default": "allow"},
        mode="passthrough",
        auth="oauth",
        public_url=public,
        allowed_hosts=[PUBLIC_HOST],
    )
    auth = {"issuer": ISSUER, "jwks_url": jwks.url, "audience": f"{public}/mcp", "required_scopes": ["tools:read"]}
    cfg = cfg.model_copy(update={"auth": cfg.auth.model_copy(update=auth)})
    (tmp_path / "nginx").mkdir()
    async with running_gateway(cfg, connect_wait=20) as rt:
        with nginx(tmp_path / "nginx", port, rt.port) as proxy:
            yield rt, proxy


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _token(keys: Keys, proxy: Proxy) -> str:
    return sign(keys, aud=f"{proxy.public}/mcp")


async def test_challenge_and_metadata_name_the_public_https_url(behind_tls: tuple[Running, Proxy]) -> None:
    rt, proxy = behind_tls
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with proxy.client() as http:
        r = await http.post(proxy.url, json=body, headers={"Accept": BOTH})
        assert r.status_code == 401
        challenge = r.headers["WWW-Authenticate"]
        metadata_url = challenge.split('resource_metadata="', 1)[1].split('"', 1)[0]
        assert metadata_url == f"{proxy.public}/.well-known/oauth-protected-resource/mcp"
        assert "127.0.0.1" not in challenge and "http://" not in challenge
        for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
            r = await http.get(f"https://127.0.0.1:{proxy.port}{path}")
            assert r.status_code == 200, r.text
            meta = r.json()
            assert meta["resource"] == f"{proxy.public}/mcp"
            assert meta["authorization_servers"] == [ISSUER]
        assert rt.url.startswith("http://127.0.0.1:")  # toolcrib itself still listens on loopback only


async def test_a_host_the_gateway_does_not_know_is_refused_through_the_proxy(
    behind_tls: tuple[Running, Proxy], keys: Keys
) -> None:
    _rt, proxy = behind_tls
    async with proxy.client(_token(keys, proxy), host="evil.example") as http:
        r = await http.post(
            proxy.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={"Accept": BOTH}
        )
        assert r.status_code == 403 and "Host" in r.text


async def test_signed_token_reaches_a_tool_in_a_session_and_stateless(
    behind_tls: tuple[Running, Proxy], keys: Keys
) -> None:
    _rt, proxy = behind_tls
    token = _token(keys, proxy)
    session: list[str] = []
    async with (
        proxy.client(token, sessions=session) as http,
        Client(streamable_http_client(proxy.url, http_client=http), mode="legacy") as c,
    ):
        assert _text(await c.call_tool("echo__echo", {"text": "via nginx, session"})) == "via nginx, session"
    assert session  # 2025-11-25: the gateway issued an Mcp-Session-Id, and it came back through nginx
    stateless: list[str] = []
    async with (
        proxy.client(token, sessions=stateless) as http,
        Client(streamable_http_client(proxy.url, http_client=http)) as c,
    ):
        assert _text(await c.call_tool("echo__echo", {"text": "via nginx, stateless"})) == "via nginx, stateless"
    assert stateless == []  # 2026-07-28: no session at all
    # the audience is the public URL: a token minted for the loopback address is refused
    async with proxy.client(sign(keys)) as http:
        r = await http.post(
            proxy.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={"Accept": BOTH}
        )
        assert r.status_code == 401


async def test_sse_streams_through_the_proxy(behind_tls: tuple[Running, Proxy], keys: Keys) -> None:
    _rt, proxy = behind_tls
    token = _token(keys, proxy)
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with (
        proxy.client(token) as http,
        Client(streamable_http_client(proxy.url, http_client=http), mode="legacy") as c,
    ):
        result = await c.call_tool("ev__test_tool_with_progress", {}, progress_callback=on_progress)
        assert not result.is_error
    assert len(seen) >= 2 and seen == sorted(seen)
    # raw: the answer is an event stream whose progress events come before the result
    meta = {
        "progressToken": "p7",
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    params = {"name": "ev__test_tool_with_progress", "arguments": {}, "_meta": meta}
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    headers = {"Accept": BOTH, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call"}
    headers["Mcp-Name"] = "ev__test_tool_with_progress"
    async with proxy.client(token) as http, http.stream("POST", proxy.url, json=call, headers=headers) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events: list[dict[str, Any]] = []
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    assert [e.get("method") for e in events][:1] == ["notifications/progress"]
    assert events[-1]["id"] == 7 and "result" in events[-1]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("https://mcp.example.com", "https://mcp.example.com"),
        ("https://mcp.example.com:8443/", "https://mcp.example.com:8443"),
    ],
)
async def test_public_url_is_an_origin(given: str, stored: str) -> None:
    assert make_config({}, public_url=given, auth="oauth").gateway.public_url == stored


@pytest.mark.parametrize(
    "bad",
    [
        "mcp.example.com",
        "ftp://mcp.example.com",
        "https://mcp.example.com/mcp",
        "https://u:p@h",
        "https://h?x=1",
        "https://h:70000",
        "https://:",
    ],
)
async def test_public_url_refuses_anything_but_an_origin(bad: str) -> None:
    with pytest.raises(Exception, match="public_url must be an origin"):
        make_config({}, public_url=bad, auth="oauth")


async def test_public_url_without_auth_is_refused() -> None:
    # behind a proxy every peer is 127.0.0.1: with auth = "none" the whole internet would be the local operator
    with pytest.raises(Exception, match='set auth = "oauth"'):
        make_config({}, public_url="https://mcp.example.com")


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda scheme, host, tail: f"{scheme}://{host}{tail}",
            st.sampled_from(["http", "https", "ftp", "HTTPS", ""]),
            st.text(alphabet="abc.-:@[]19/?# ", max_size=20),
            st.sampled_from(["", "/", "/mcp", "?q", "#f", "//"]),
        ),
    )
)
def test_public_url_property(value: str) -> None:
    """Any string is either refused with the one-line message, or stored as an origin that validates to itself."""
    try:
        stored = GatewayConfig(public_url=value, auth="oauth").public_url
    except ValidationError as exc:
        assert "public_url must be an origin" in str(exc)
        return
    assert stored is not None and stored.startswith(("http://", "https://"))
    parts = urlsplit(stored)
    assert parts.hostname and parts.path == "" and not parts.query and not parts.fragment and not parts.username
    assert parts.port is None or 0 <= parts.port <= 65535
    assert GatewayConfig(public_url=stored, auth="oauth").public_url == stored
