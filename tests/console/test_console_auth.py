"""The console behind the guard: login with an operator key, refusals, CSRF and cross-site forms,
security headers. A real gateway and a real headless Chromium (tests/console/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.console.conftest import ConsoleGateway, login, shot_dir

pytestmark = pytest.mark.anyio


async def test_operator_logs_in_and_sees_the_overview(
    console_gateway: ConsoleGateway, browser: Any, tmp_path: Path
) -> None:
    page = await browser.new_page()
    await login(page, console_gateway.base, console_gateway.tokens["alice"])
    assert page.url.endswith("/console")
    assert await page.text_content(".who span") == "key:alice"
    rows = await page.locator("#upstreams tbody tr").all_text_contents()
    assert any("echo" in r and "connected" in r for r in rows) and any("time" in r for r in rows)
    assert await page.text_content("#index-size") == "10"  # echo's 8 tools + time's 2
    await page.screenshot(path=str(shot_dir(tmp_path) / "overview.png"), full_page=True)
    await page.click("button:has-text('Log out')")
    assert "/console/login" in page.url
    await page.goto(f"{console_gateway.base}/console/approvals")
    assert "/console/login" in page.url  # the cookie is gone


async def test_a_non_operator_key_is_refused(console_gateway: ConsoleGateway, browser: Any, tmp_path: Path) -> None:
    page = await browser.new_page()
    await login(page, console_gateway.base, console_gateway.tokens["bob"])
    assert "/console/login" in page.url
    assert "not an operator" in (await page.text_content(".error") or "")
    await page.screenshot(path=str(shot_dir(tmp_path) / "login-refused.png"))
    await login(page, console_gateway.base, "tcb_not-a-key")
    assert "not valid" in (await page.text_content(".error") or "")
    context = page.context
    assert not [c for c in await context.cookies() if c["name"] == "toolcrib_console"]


async def test_a_cross_site_form_post_is_refused(console_gateway: ConsoleGateway, browser: Any) -> None:
    """A page on another origin (another loopback port: same site, different origin) auto-submits a
    form to approve a held call while the operator is logged in: refused, nothing decided."""
    gw = console_gateway
    store = gw.rt.parts.approvals
    approval = await store.request("key:bob", "echo__sleep", {"seconds": 0}, ttl=300, rule="sleep-needs-approval")
    evil = web.Application()

    async def attack(_request: web.Request) -> web.Response:
        html = (
            f'<form id="f" method="post" action="{gw.base}/console/approvals/{approval.id}">'
            '<input name="decision" value="approve"><input name="csrf_token" value="guess"></form>'
            "<script>document.getElementById('f').submit()</script>"
        )
        return web.Response(text=html, content_type="text/html")

    evil.router.add_get("/", attack)
    runner = web.AppRunner(evil)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        page = await browser.new_page()
        await login(page, gw.base, gw.tokens["alice"])
        response_status: list[int] = []
        page.on("response", lambda r: response_status.append(r.status) if "/console/approvals/" in r.url else None)
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for_load_state("networkidle")
        assert response_status == [403]
        assert "console form must be sent from this console" in (await page.text_content("body") or "")
    finally:
        await runner.cleanup()
    assert (await store.get(approval.id)).status == "pending"


async def test_forms_need_the_csrf_token_and_responses_carry_a_strict_csp(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    store = gw.rt.parts.approvals
    approval = await store.request("key:bob", "echo__sleep", {"seconds": 0}, ttl=300, rule="sleep-needs-approval")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # unsafe: cookies for an IP host
        async with s.get(f"{gw.base}/console", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].startswith("/console/login")
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY"
        login_form = {"credential": gw.tokens["alice"], "next": "//evil.example/x"}
        same = {"Origin": gw.base}
        async with s.post(f"{gw.base}/console/login", data=login_form, headers=same, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/console"  # never an open redirect
            cookie = r.cookies["toolcrib_console"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
        url = f"{gw.base}/console/approvals/{approval.id}"
        async with s.post(url, data={"decision": "approve"}, headers=same, allow_redirects=False) as r:
            assert r.status == 403  # same origin, logged in, but no CSRF token
        async with s.post(url, data={"decision": "approve"}, allow_redirects=False) as r:
            assert r.status == 403  # no Origin, no Sec-Fetch-Site, no Referer
        async with s.get(f"{gw.base}/console/approvals") as r:
            html = await r.text()
        token = html.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        async with s.post(url, data={"decision": "approve", "csrf_token": token}, headers=same) as r:
            assert r.status == 200
    assert (await store.get(approval.id)).status == "approved"


async def test_a_revoked_key_loses_the_console_at_once(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # unsafe: cookies for an IP host
        form = {"credential": gw.tokens["alice"]}
        async with s.post(f"{gw.base}/console/login", data=form, headers={"Origin": gw.base}) as r:
            assert r.status == 200 and str(r.url).endswith("/console")
        from tests.e2e.conftest import key_store

        key_store(gw.rt.config).revoke("alice")
        async with s.get(f"{gw.base}/console", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].startswith("/console/login")
