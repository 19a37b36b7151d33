"""Console "Log in with OAuth" (authorization code + PKCE) against a real authorization server
(tests/servers/oauth_as.py) and a real gateway with ``auth = "oauth"``, in a real headless Chromium.

The authorization server's issuer is ``http://localhost:PORT`` while the gateway is
``http://127.0.0.1:PORT``: two sites, so the callback is a real cross-site top-level navigation
(the attempt cookie must be ``SameSite=Lax``; the ``Strict`` console cookie is only sent once the
page moves on by itself)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from pydantic import ValidationError
from yarl import URL

from tests.console.conftest import ECHO, shot_dir
from tests.e2e.conftest import make_config, stdio_server
from tests.replicas import free_port
from tests.servers.oauth_as import OAuthServer, User, oauth_server
from toolcrib.app import Running, running_gateway
from toolcrib.config import Config, ConsoleConfig
from toolcrib.console.oauth import metadata_urls, pkce_pair

pytestmark = pytest.mark.anyio

SECRET_ENV = "TOOLCRIB_SECRET_TEST_CONSOLE_CLIENT"
SECRET = "s3cret: with/odd chars+"


@dataclass
class OAuthGateway:
    rt: Running
    server: OAuthServer
    audience: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.rt.port}"

    @property
    def callback(self) -> str:
        return f"{self.base}/console/oauth/callback"


def oauth_config(tmp: Path, server: OAuthServer, port: int, **console: Any) -> Config:
    cfg = make_config({"echo": stdio_server(ECHO)}, tmp, auth="oauth", port=port)
    data = cfg.model_dump()
    data["auth"] = {
        **data["auth"],
        "issuer": server.issuer,
        "jwks_url": server.jwks_url,
        "audience": f"http://127.0.0.1:{port}/mcp",
        "groups_claim": "groups",
    }
    data["console"] = {"oauth_client_id": server.client_id, **console}
    return Config.model_validate(data)


@pytest.fixture
async def oauth_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OAuthGateway]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    async with oauth_server(host="localhost", client_secret=SECRET) as server:
        port = free_port()
        cfg = oauth_config(tmp_path, server, port, oauth_client_secret="secret:test/console-client")
        server.redirect_uris = [f"http://127.0.0.1:{port}/console/oauth/callback"]
        async with running_gateway(cfg, connect_wait=30) as rt:
            yield OAuthGateway(rt, server, str(cfg.auth.audience))


def jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # unsafe: cookies for an IP host


async def authorize(s: aiohttp.ClientSession, gw: OAuthGateway, next_path: str = "/console") -> str:
    """Start a login and let the authorization server answer: the callback URL it redirects to."""
    async with s.get(f"{gw.base}/console/oauth/start", params={"next": next_path}, allow_redirects=False) as r:
        assert r.status == 303, await r.text()
        location = r.headers["Location"]
    async with s.get(location, allow_redirects=False) as r:
        assert r.status == 302
        return r.headers["Location"]


# ---- in the browser --------------------------------------------------------------------------------


async def test_log_in_with_oauth_in_the_browser(oauth_gateway: OAuthGateway, browser: Any, tmp_path: Path) -> None:
    gw, server = oauth_gateway, oauth_gateway.server
    page = await browser.new_page()
    await page.goto(f"{gw.base}/console/audit")
    assert "/console/login" in page.url
    button = page.locator("a.oauth")
    assert await button.text_content() == f"Log in with localhost:{server.port}"
    await page.screenshot(path=str(shot_dir(tmp_path) / "login-oauth.png"))
    await button.click()
    await page.wait_for_url(f"{gw.base}/console/audit")
    assert await page.text_content(".who span") == "oauth:alice"
    await page.screenshot(path=str(shot_dir(tmp_path) / "oauth-audit.png"), full_page=True)
    await page.goto(f"{gw.base}/console")
    assert await page.text_content(".who span") == "oauth:alice"

    (asked,) = server.authorize_requests
    assert asked["response_type"] == "code" and asked["client_id"] == server.client_id
    assert asked["redirect_uri"] == gw.callback
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert asked["resource"] == gw.audience and asked["scope"] == "openid"
    assert len(asked["state"]) >= 32
    (exchanged,) = server.token_requests
    assert exchanged["auth"] == "Basic " and "client_secret" not in exchanged  # client_secret_basic
    assert len(exchanged["code_verifier"]) >= 43 and exchanged["resource"] == gw.audience
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["toolcrib_console"]["sameSite"] == "Strict" and cookies["toolcrib_console"]["httpOnly"]
    assert "toolcrib_console_oauth" not in cookies  # one attempt, one answer


async def test_a_user_without_the_admins_group_is_refused(
    oauth_gateway: OAuthGateway, browser: Any, tmp_path: Path
) -> None:
    oauth_gateway.server.user = User("bob", ["guests"])
    page = await browser.new_page()
    await page.goto(f"{oauth_gateway.base}/console")
    await page.click("a.oauth")
    await page.wait_for_selector(".error")
    assert "/console/oauth/callback" in page.url
    text = await page.text_content(".error") or ""
    assert "oauth:bob is not an operator" in text and "admins" in text
    await page.screenshot(path=str(shot_dir(tmp_path) / "oauth-refused.png"))
    assert not [c for c in await page.context.cookies() if c["name"] == "toolcrib_console"]
    await page.goto(f"{oauth_gateway.base}/console")
    assert "/console/login" in page.url


async def test_the_authorization_server_denies(oauth_gateway: OAuthGateway, browser: Any) -> None:
    oauth_gateway.server.deny = True
    page = await browser.new_page()
    await page.goto(f"{oauth_gateway.base}/console")
    await page.click("a.oauth")
    await page.wait_for_selector(".error")
    text = await page.text_content(".error") or ""
    assert f"localhost:{oauth_gateway.server.port} refused the login (access_denied)" in text
    assert oauth_gateway.server.token_requests == []
    assert not [c for c in await page.context.cookies() if c["name"] == "toolcrib_console"]


# ---- the callback driven directly ------------------------------------------------------------------


async def test_a_forged_or_missing_state_is_refused(oauth_gateway: OAuthGateway) -> None:
    gw = oauth_gateway
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        async with s.get(f"{gw.base}/console/oauth/start", allow_redirects=False) as r:
            attempt = r.cookies["toolcrib_console_oauth"]
            assert attempt["httponly"] and attempt["samesite"] == "Lax" and attempt["path"] == "/console/oauth"
            assert int(attempt["max-age"]) == 600
        callback = await authorize(s, gw)
        query = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
        forged = {**query, "state": query["state"][:-2] + "xx"}
        async with s.get(gw.callback, params=forged, allow_redirects=False) as r:
            assert r.status == 403
            assert "state mismatch" in await r.text()
            assert "toolcrib_console" not in r.cookies
        without = {k: v for k, v in query.items() if k != "state"}
        async with s.get(gw.callback, params=without, allow_redirects=False) as r:
            assert r.status in (401, 403) and "toolcrib_console" not in r.cookies
    async with (
        aiohttp.ClientSession(cookie_jar=jar()) as other,  # another browser: no attempt cookie
        other.get(gw.callback, params=query, allow_redirects=False) as r,
    ):
        assert r.status == 401
        assert "expired or was started in another browser" in await r.text()
        assert "toolcrib_console" not in r.cookies
    assert gw.server.token_requests == []  # no forged answer ever reached the token endpoint
    await gw.rt.parts.writer.flush()
    refused = gw.rt.parts.audit.query(kind="auth", limit=50)
    assert any("state mismatch" in str(row.get("error")) for row in refused), refused


async def test_the_code_cannot_be_replayed(oauth_gateway: OAuthGateway) -> None:
    gw = oauth_gateway
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        callback = await authorize(s, gw)
        attempt = next(c.value for c in s.cookie_jar if c.key == "toolcrib_console_oauth")
        async with s.get(callback, allow_redirects=False) as r:
            assert r.status == 200 and r.headers["Refresh"] == "0; url=/console"
            assert "toolcrib_console" in r.cookies
        async with s.get(f"{gw.base}/console") as r:
            assert r.status == 200 and "oauth:alice" in await r.text()
        # the same answer again, even with the attempt cookie kept by an attacker: the code is spent
        async with aiohttp.ClientSession(cookie_jar=jar()) as thief:
            thief.cookie_jar.update_cookies({"toolcrib_console_oauth": attempt}, response_url=URL(gw.callback))
            async with thief.get(callback, allow_redirects=False) as r:
                assert r.status == 401
                assert "refused to exchange the authorization code (invalid_grant)" in await r.text()
                assert "toolcrib_console" not in r.cookies
    assert len(gw.server.token_requests) == 2


@pytest.mark.parametrize(
    ("asked", "lands"),
    [
        ("//evil.example/x", "/console"),
        ("https://evil.example/console", "/console"),
        ("/\\evil.example", "/console"),
        ("/console/audit?principal=alice", "/console/audit?principal=alice"),
    ],
)
async def test_next_is_never_an_open_redirect(oauth_gateway: OAuthGateway, asked: str, lands: str) -> None:
    gw = oauth_gateway
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        callback = await authorize(s, gw, asked)
        async with s.get(callback, allow_redirects=False) as r:
            assert r.status == 200
            assert r.headers["Refresh"] == f"0; url={lands}"


# ---- configuration and discovery -------------------------------------------------------------------


def test_a_literal_client_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be a secret reference"):
        ConsoleConfig(oauth_client_id="c", oauth_client_secret="hunter2")
    assert ConsoleConfig(oauth_client_secret="secret:ns/name").oauth_client_secret == "secret:ns/name"


def test_metadata_urls_and_pkce() -> None:
    assert metadata_urls("https://as.example/tenant1/") == [
        "https://as.example/.well-known/oauth-authorization-server/tenant1",
        "https://as.example/tenant1/.well-known/openid-configuration",
    ]
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128 and len(challenge) == 43 and "=" not in challenge


async def test_a_public_client_and_openid_discovery(tmp_path: Path) -> None:
    """No client secret: the code is exchanged with client_id only; metadata only at the OpenID path."""
    async with oauth_server(rfc8414=False) as server:
        port = free_port()
        async with running_gateway(oauth_config(tmp_path, server, port), connect_wait=30) as rt:
            gw = OAuthGateway(rt, server, f"http://127.0.0.1:{port}/mcp")
            async with aiohttp.ClientSession(cookie_jar=jar()) as s:
                callback = await authorize(s, gw)
                async with s.get(callback, allow_redirects=False) as r:
                    assert r.status == 200 and "toolcrib_console" in r.cookies
    (exchanged,) = server.token_requests
    assert exchanged["client_id"] == server.client_id and exchanged["auth"] == ""


async def test_an_unreachable_issuer_is_one_clear_line(tmp_path: Path) -> None:
    async with oauth_server() as server:
        pass  # stopped: its port answers nothing now
    port = free_port()
    async with (
        running_gateway(oauth_config(tmp_path, server, port), connect_wait=30) as rt,
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{rt.port}/console/oauth/start", allow_redirects=False) as r,
    ):
        assert r.status == 503
        html = await r.text()
    assert "cannot read the authorization server&#39;s metadata from" in html
    assert "oauth_authorization_endpoint" in html


async def test_an_answer_naming_another_issuer_is_refused(oauth_gateway: OAuthGateway) -> None:
    """RFC 9207 mix-up protection: ``iss`` in the answer, when sent, must be ``[auth] issuer``."""
    gw = oauth_gateway
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        callback = await authorize(s, gw)
        query = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
        async with s.get(gw.callback, params={**query, "iss": "https://evil.example"}, allow_redirects=False) as r:
            assert r.status == 403
            assert "another authorization server (iss)" in await r.text()
            assert "toolcrib_console" not in r.cookies
    assert gw.server.token_requests == []
