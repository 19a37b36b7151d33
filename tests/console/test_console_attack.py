"""Attacks on the web console (issue 13) by an outside attacker and by a malicious upstream or agent:
XSS through every value they control, path tricks in links, CSRF variants, login brute force and
redirects, authorization of every route, bad query values. A real gateway with a hostile stdio
upstream written for the test, and a real headless Chromium (tests/console/conftest.py)."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from tests.console.conftest import ConsoleGateway, gateway_with, login
from tests.e2e.conftest import ROOT, key_store, make_config, stdio_server
from toolcrib.app import running_gateway
from toolcrib.console.session import LoginThrottle
from toolcrib.index.embedder import HashingEmbedder

pytestmark = pytest.mark.anyio

ECHO = "tests.servers.echo"
XSS = '"><img src=x onerror="window.__xss=1"><script>window.__xss=2</script><svg onload="window.__xss=3">{{7*7}}'
HOSTILE = textwrap.dedent(
    f'''
    """A hostile upstream: tool names with slashes and markup, descriptions and schemas with XSS."""
    import json, sys
    sys.path.insert(0, {str(ROOT)!r})
    from tests.servers._raw import error, handshake, messages, result

    XSS = {XSS!r}
    TOOLS = [
        {{"name": "x/../../approvals", "description": "slash " + XSS, "inputSchema": {{"type": "object"}}}},
        {{"name": "ok", "description": "</pre>" + XSS,
          "inputSchema": {{"type": "object", "properties": {{XSS: {{"type": "string", "description": XSS}}}}}}}},
        {{"name": "q'\\"<b>" + XSS, "description": "quotes", "inputSchema": {{"type": "object"}}}},
        {{"name": "javascript:window.__xss=4", "description": "a URL scheme", "inputSchema": {{"type": "object"}}}},
    ]
    for _raw, msg in messages():
        if handshake(msg, "hostile" + XSS, {{"tools": {{}}}}) or not isinstance(msg, dict) or "id" not in msg:
            continue
        if msg.get("method") == "tools/list":
            result(msg["id"], {{"tools": TOOLS}})
        elif msg.get("method") == "tools/call":
            result(msg["id"], {{"content": [{{"type": "text", "text": XSS}}]}})
        else:
            error(msg["id"], -32601, XSS)
    '''
)
RULES = [
    {"id": "hold-" + XSS, "tools": ["echo__sleep"], "action": "approve"},
    {"id": "guests-no-add", "tools": ["echo__add"], "groups": ["guests"], "action": "deny"},
]


@pytest.fixture
async def hostile(tmp_path: Path) -> AsyncIterator[ConsoleGateway]:
    script = tmp_path / "hostile.py"
    script.write_text(HOSTILE)
    servers = {"echo": stdio_server(ECHO), "evil": {"command": sys.executable, "args": [str(script)]}}
    async with gateway_with(servers, tmp_path) as gw:
        yield gw


def jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # unsafe: cookies for an IP host


async def cookie_login(s: aiohttp.ClientSession, gw: ConsoleGateway, who: str = "alice") -> str:
    """Log ``s`` in; the page's CSRF token."""
    form = {"credential": gw.tokens[who]}
    async with s.post(f"{gw.base}/console/login", data=form, headers={"Origin": gw.base}) as r:
        assert r.status == 200 and str(r.url).endswith("/console"), await r.text()
        html = await r.text()
    return html.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


async def test_no_script_runs_from_anything_an_upstream_or_agent_controls(
    hostile: ConsoleGateway, browser: Any
) -> None:
    """Tool names, descriptions, schemas, server info, rule ids, held-call arguments, search
    queries and audit rows full of markup: every page renders them as text; no script runs, no
    dialog opens, no element is injected."""
    gw = hostile
    store = gw.rt.parts.approvals
    await store.request("key:bob" + XSS, "echo__sleep", {XSS: XSS, "seconds": 0}, ttl=300, rule="hold-" + XSS)
    page = await browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    await login(page, gw.base, gw.tokens["alice"])
    urls = [
        "/console",
        "/console/approvals",
        "/console/catalog",
        "/console/catalog?server=" + quote(XSS),
        "/console/catalog/evil__ok",
        f"/console/catalog/{quote('evil__x/../../approvals', safe='')}",
        "/console/search?q=" + quote(XSS) + "&as=" + quote(XSS),
        "/console/search?q=approvals",
        "/console/audit?principal=" + quote(XSS) + "&tool=" + quote(XSS),
        "/console/audit?since=" + quote(XSS),
        "/console/savings?days=" + quote(XSS),
        "/console/login?next=" + quote("javascript:window.__xss=5"),
    ]
    for url in urls:
        await page.goto(gw.base + url)
        await page.wait_for_load_state("networkidle")
        assert await page.evaluate("window.__xss") is None, url
        assert await page.locator("img[src=x], svg[onload], main script").count() == 0, url
    assert dialogs == []


async def test_catalog_links_of_a_tool_named_with_slashes_lead_to_that_tool(
    hostile: ConsoleGateway, browser: Any
) -> None:
    """A hostile upstream names a tool ``x/../../approvals``: its catalog link (and the approve form
    of its page) must name that tool, not a path the browser resolves to another console page or
    another tool's approve action."""
    gw = hostile
    page = await browser.new_page()
    await login(page, gw.base, gw.tokens["alice"])
    await page.goto(f"{gw.base}/console/catalog")
    await page.click('tr[data-key="evil__x/../../approvals"] a')
    await page.wait_for_load_state()
    assert "/console/catalog/" in page.url
    assert await page.text_content("h1 code") == "evil__x/../../approvals"
    assert await page.locator("form.approve-tool").count() == 0  # pinned at first sight: nothing to approve
    # the approve route takes such a key as one segment and answers on that tool's own page
    token = await page.get_attribute('input[name="csrf_token"]', "value")
    answer = await page.request.post(
        f"{gw.base}/console/catalog/evil__x%2F..%2F..%2Fapprovals/approve",
        form={"csrf_token": token or ""},
        headers={"Origin": gw.base},
        max_redirects=0,
    )
    assert answer.status == 303
    assert answer.headers["location"].startswith("/console/catalog/evil__x%2F..%2F..%2Fapprovals?done=")
    await page.goto(f"{gw.base}/console/search?q=approvals+slash&as=operator:local")
    links = await page.locator("#hidden a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert all("/../" not in (h or "") for h in links)


async def test_login_is_throttled_per_remote_address(console_gateway: ConsoleGateway) -> None:
    """Guessing keys: after :data:`LoginThrottle.limit` failures from one address, every login from
    it is refused (429, Retry-After, a one-line reason) until the window passes, even a right key."""
    gw = console_gateway
    limit = LoginThrottle().limit
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        same = {"Origin": gw.base}
        for i in range(limit):
            form = {"credential": f"tcb_guess-{i}"}
            async with s.post(f"{gw.base}/console/login", data=form, headers=same) as r:
                assert r.status == 401
        async with s.post(f"{gw.base}/console/login", data={"credential": "tcb_one-more"}, headers=same) as r:
            assert r.status == 429
            assert int(r.headers["Retry-After"]) > 0
            assert "Too many failed logins" in await r.text()
        form = {"credential": gw.tokens["alice"]}
        async with s.post(f"{gw.base}/console/login", data=form, headers=same, allow_redirects=False) as r:
            assert r.status == 429 and "toolcrib_console" not in r.cookies


def test_login_throttle_window_and_bounds() -> None:
    now = [1000.0]
    t = LoginThrottle(limit=3, window=60.0, clock=lambda: now[0])
    assert t.retry_after("a") is None
    for _ in range(3):
        t.failed("a")
    assert (wait := t.retry_after("a")) is not None and 0 < wait <= 60
    assert t.retry_after("b") is None  # per address
    now[0] += 61
    assert t.retry_after("a") is None  # the window passed
    t.failed("a")
    t.succeeded("a")
    assert t.retry_after("a") is None
    for i in range(t.max_addresses + 500):
        t.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(t) <= t.max_addresses


async def test_post_login_redirects_stay_on_console_pages(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        await cookie_login(s, gw)
        for target in (
            "/console/../admin/approvals",
            "/console/%2e%2e/metrics",
            "/console/.%2E/healthz",
            "/console/./../x",
            "//evil.example/console",
            "/console\\..\\x",
            "https://evil.example/console",
            "/console/\r\nSet-Cookie: x=1",
        ):
            async with s.get(f"{gw.base}/console/login", params={"next": target}, allow_redirects=False) as r:
                assert r.status == 303
                assert r.headers["Location"] == "/console", (target, r.headers["Location"])
        async with s.get(f"{gw.base}/console/login?next=/console/audit%3Fkind%3Dattempt", allow_redirects=False) as r:
            assert r.headers["Location"] == "/console/audit?kind=attempt"


async def test_non_ascii_digits_are_one_line_errors_not_crashes(console_gateway: ConsoleGateway) -> None:
    """``"²".isdigit()`` is True but ``int("²")`` raises: each numeric field gets a 400 with its
    message, never a 500."""
    gw = console_gateway
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        await cookie_login(s, gw)
        for url, words in (
            ("/console/savings?days=²", "days must be a whole number"),
            ("/console/savings?days=١٢", "days must be a whole number"),
            ("/console/savings?days=" + "9" * 5000, "days must be a whole number"),
            ("/console/search?q=time&limit=" + "9" * 5000, "Results"),
            ("/console/search?q=time&limit=²", "Results"),
            ("/console/audit?before=²", "before must be a row number"),
        ):
            async with s.get(gw.base + url) as r:
                assert r.status == 400, (url, r.status)
                assert words in await r.text(), url


async def test_cross_site_and_smuggled_requests_change_nothing(console_gateway: ConsoleGateway) -> None:
    """Every state-changing console route, logged in, with a right CSRF token but a wrong origin;
    and with a same origin but the token smuggled in ways the guard must not accept."""
    gw = console_gateway
    store = gw.rt.parts.approvals
    approval = await store.request("key:bob", "echo__sleep", {"seconds": 0}, ttl=300, rule="sleep-needs-approval")
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        token = await cookie_login(s, gw)
        other_port = gw.base.rsplit(":", 1)[0] + ":1"
        routes = [f"/console/approvals/{approval.id}", "/console/catalog/echo__echo/approve", "/console/logout"]
        bad_senders: list[dict[str, str]] = [
            {"Origin": other_port},  # a loopback page on another port
            {"Origin": "null"},  # a sandboxed frame, a file: page
            {"Origin": "http://evil.example"},
            {"Sec-Fetch-Site": "same-site", "Origin": gw.base},
            {"Sec-Fetch-Site": "cross-site"},
            {"Referer": other_port + "/x"},
            {"Sec-Fetch-Site": "none"},
            {},
        ]
        form = {"decision": "approve", "csrf_token": token}
        for route in routes:
            for headers in bad_senders:
                async with s.post(gw.base + route, data=form, headers=headers, allow_redirects=False) as r:
                    assert r.status == 403, (route, headers, r.status)
        same = {"Origin": gw.base}
        url = f"{gw.base}/console/approvals/{approval.id}"
        smuggled: list[tuple[Any, dict[str, str]]] = [
            (aiohttp.FormData({"decision": "approve", "csrf_token": token}, default_to_multipart=True), same),
            (json.dumps({"decision": "approve", "csrf_token": token}), {**same, "Content-Type": "application/json"}),
            (f"decision=approve&csrf_token={token}", {**same, "Content-Type": "text/plain"}),
            ("decision=approve", {**same, "Content-Type": "application/x-www-form-urlencoded"}),
            (
                f"decision=approve&csrf_token={token[:-1]}",
                {**same, "Content-Type": "application/x-www-form-urlencoded"},
            ),
        ]
        for body, headers in smuggled:
            async with s.post(url, data=body, headers=headers, allow_redirects=False) as r:
                assert r.status == 403, (headers, r.status)
        async with s.post(f"{url}?csrf_token={token}", data={"decision": "approve"}, headers=same) as r:
            assert r.status == 403  # a token in the URL is not a form field
        for method in ("PUT", "PATCH", "DELETE"):
            async with s.request(method, url, data=form, headers=same, allow_redirects=False) as r:
                assert r.status in (401, 403, 405), (method, r.status)  # no such route: the guard's default
        async with s.get(url, params={"decision": "approve", "csrf_token": token}, allow_redirects=False) as r:
            assert r.status in (401, 405)  # no GET route: nothing decided
        async with s.post(
            url, data=form, headers={**same, "X-HTTP-Method-Override": "GET"}, allow_redirects=False
        ) as r:
            assert r.status == 303  # the real thing, for contrast: then decided once
    assert (await store.get(approval.id)).status == "approved"


async def test_login_csrf_and_forged_or_replayed_cookies(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        form = {"credential": gw.tokens["alice"]}
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {}):
            async with s.post(f"{gw.base}/console/login", data=form, headers=headers, allow_redirects=False) as r:
                assert r.status == 403 and "toolcrib_console" not in r.cookies  # login CSRF
        token = await cookie_login(s, gw)
        cookie = next(c.value for c in s.cookie_jar if c.key == "toolcrib_console")
        async with s.post(f"{gw.base}/console/logout", data={"csrf_token": token}, headers={"Origin": gw.base}) as r:
            assert r.status == 200
    forged = [cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"), cookie + "x", "tc1.", "x" * 5000, ""]
    async with aiohttp.ClientSession() as s:
        for value in [cookie, *forged]:  # the logged-out cookie replayed, then forgeries
            headers = {"Cookie": f"toolcrib_console={value}"}
            async with s.get(f"{gw.base}/console/approvals", headers=headers, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"].startswith("/console/login"), value[:20]


async def test_no_route_answers_a_non_operator(console_gateway: ConsoleGateway) -> None:
    """bob (a guest) by every means: his key as a Bearer header, a cookie-less request, a login
    (refused): every console page, fragment and export and /metrics stay closed; static files
    cannot leave their folder."""
    gw = console_gateway
    paths = [
        "/console",
        "/console/overview/live",
        "/console/approvals",
        "/console/approvals/queue",
        "/console/catalog",
        "/console/catalog/echo__echo",
        "/console/audit",
        "/console/audit/1",
        "/console/audit/verify",
        "/console/audit/export",
        "/console/search?q=time",
        "/console/savings",
    ]
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        async with s.post(
            f"{gw.base}/console/login", data={"credential": gw.tokens["bob"]}, headers={"Origin": gw.base}
        ) as r:
            assert r.status == 403
        bearer = {"Authorization": f"Bearer {gw.tokens['bob']}"}
        for path in paths:
            for headers in ({}, bearer):
                async with s.get(gw.base + path, headers=headers, allow_redirects=False) as r:
                    assert r.status == 303 and r.headers["Location"].startswith("/console/login"), path
        async with s.get(f"{gw.base}/metrics", headers=bearer) as r:
            assert r.status == 403
        for name in ("..%2Fapp.py", "..%2F..%2Fconfig.py", "%2E%2E", ".hidden.css", "app.py", "console.css%00.js"):
            async with s.get(URL(f"{gw.base}/console/static/{name}", encoded=True), allow_redirects=False) as r:
                assert r.status in (400, 401, 404), name  # 401: a path outside every route (operator by default)
        async with s.get(f"{gw.base}/console/static/console.css") as r:
            assert r.status == 200


async def test_huge_and_deep_query_values_are_answered_quickly(console_gateway: ConsoleGateway) -> None:
    gw = console_gateway
    async with aiohttp.ClientSession(cookie_jar=jar()) as s:
        await cookie_login(s, gw)
        for url in (
            "/console/search?q=" + "time " * 1200,
            "/console/audit?tool=" + "*a" * 2000,
            "/console/audit?principal=" + ",".join(["x"] * 1000),
            "/console/audit/export?tool=" + "[" * 3000,
            "/console/savings?days=" + "9" * 3000,
            "/console/catalog?state=" + "x" * 5000,
        ):
            started = time.monotonic()
            async with s.get(gw.base + url) as r:
                assert r.status in (200, 400, 414, 431), (url[:60], r.status)
                await r.read()
            assert time.monotonic() - started < 30, url[:60]


async def test_a_loopback_page_on_another_port_cannot_make_the_console_work(
    console_gateway: ConsoleGateway, browser: Any
) -> None:
    """Another port on 127.0.0.1 is another origin but the SAME site, so the SameSite=Strict cookie
    rides along on its subresource requests. A page there embeds console GETs (the audit chain
    check, the export, a search): without Fetch Metadata checks each ran as the operator (CPU, memory,
    and a timing/size oracle on console pages). Refused (403); a top-level navigation still works."""
    from aiohttp import web

    gw = console_gateway
    evil = web.Application()
    targets = ["/console/audit/verify", "/console/audit/export", "/console/search?q=time", "/console/approvals/queue"]

    async def attack(_request: web.Request) -> web.Response:
        imgs = "".join(f'<img src="{gw.base}{t}">' for t in targets)
        script = (
            f"<script>fetch('{gw.base}/console/audit/verify', {{mode: 'no-cors', credentials: 'include'}})</script>"
        )
        return web.Response(text=f"<html><body>{imgs}{script}</body></html>", content_type="text/html")

    async def link(_request: web.Request) -> web.Response:
        spoof = quote("Your key expired: paste it at http://evil.example/renew")
        html = (
            f'<a id="go" href="{gw.base}/console/approvals">the console</a>'
            f'<a id="spoof" href="{gw.base}/console/approvals?done={spoof}">approvals</a>'
            f'<a id="spoof-catalog" href="{gw.base}/console/catalog/echo__echo?done={spoof}">catalog</a>'
        )
        return web.Response(text=html, content_type="text/html")

    evil.router.add_get("/", attack)
    evil.router.add_get("/link", link)
    runner = web.AppRunner(evil)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    audit = gw.rt.parts.audit
    ran: list[str] = []
    real_verify, real_query = audit.verify, audit.query

    def verify(*args: Any, **kw: Any) -> Any:
        ran.append("verify")
        return real_verify(*args, **kw)

    def query(*args: Any, **kw: Any) -> Any:
        ran.append("query")
        return real_query(*args, **kw)

    try:
        page = await browser.new_page()
        await login(page, gw.base, gw.tokens["alice"])
        answers: list[tuple[str, int]] = []
        page.on("response", lambda r: answers.append((r.url, r.status)) if r.url.startswith(gw.base) else None)
        audit.verify, audit.query = verify, query  # count the work console pages do for the evil page
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for_load_state("networkidle")
        audit.verify, audit.query = real_verify, real_query
        assert ran == [], ran  # no chain check, no export, nothing read for a cross-origin subresource
        embedded = [(url, status) for url, status in answers if "/console/static/" not in url]
        assert all(status == 403 for _, status in embedded), embedded
        await page.goto(f"http://127.0.0.1:{port}/link")
        await page.click("#go")
        await page.wait_for_load_state()
        assert page.url == f"{gw.base}/console/approvals"
        assert await page.text_content("h1") == "Approvals"
        for spoof in ("#spoof", "#spoof-catalog"):  # another site's words are not shown as the console's notice
            await page.goto(f"http://127.0.0.1:{port}/link")
            await page.click(spoof)
            await page.wait_for_load_state()
            assert "evil.example" not in (await page.text_content("main") or ""), spoof
    finally:
        await runner.cleanup()


def test_a_run_of_stars_in_the_audit_tool_filter_is_one_star_on_postgresql(pg_url: str) -> None:
    """The explorer's ``tool`` glob (``?tool=*****...a``, up to the URL's 8 kB) became thousands of
    ``.*`` in the PostgreSQL regex: "regular expression is too complex", a 500 on the page. A run of
    stars is one star (SQLite GLOB semantics, unchanged; the hypothesis test in
    tests/gateway/test_audit_backends.py compares with SQLite)."""
    from toolcrib.gateway.audit.log_pg import PostgresAuditLog
    from toolcrib.storage import migrations
    from toolcrib.storage.postgres import Database

    db = Database(pg_url).open()
    try:
        migrations.upgrade(db)
        log = PostgresAuditLog(db, hmac_key=b"k" * 32)
        for pattern in ("*" * 5000 + "a", "*a" * 3000, "?*" * 3000, "[ab]*" * 1200):
            assert log.query(tool=pattern, limit=5) == []
    finally:
        db.close()


async def test_an_injected_secret_never_shows_on_a_console_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """echo gets ECHO_TOKEN from a secret reference. An agent reads it back (tool output), puts it
    in the arguments of a call held for approval, in a search query and in a resource URI that
    fails with it: no console page, fragment or export shows it (nor its base64 or hex forms)."""
    import base64

    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    canary = "c4nary-" + "5e" * 12
    forms = [canary, base64.b64encode(canary.encode()).decode(), canary.encode().hex()]
    monkeypatch.setenv("TOOLCRIB_SECRET_ECHO_TOKEN", canary)
    policy = {"rules": RULES, "default": "allow", "approval_mode": "hold", "approval_timeout": 120}
    servers = {"echo": stdio_server(ECHO, env={"ECHO_TOKEN": "secret:echo/token"})}
    cfg = make_config(servers, tmp_path, policy, mode="dispatcher", auth="keys")
    keys = key_store(cfg)
    tokens = {"alice": keys.add("alice", ["admins"]), "bob": keys.add("bob", ["guests"])}
    async with running_gateway(cfg, connect_wait=30, embedder=HashingEmbedder()) as rt:
        assert rt.reindexer is not None
        await rt.reindexer.sync(set(cfg.enabled_servers))
        gw = ConsoleGateway(rt, tokens)
        headers = {"Authorization": f"Bearer {tokens['bob']}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60) as http,
            Client(streamable_http_client(rt.url, http_client=http)) as c,
            anyio.create_task_group() as tg,
        ):
            await c.call_tool("invoke", {"tool": "echo__env", "arguments": {"name": "ECHO_TOKEN"}})
            await c.call_tool("search_tools", {"query": f"find {canary} {forms[1]}"})
            await c.call_tool("invoke", {"tool": "echo__echo", "arguments": {"text": " ".join(forms)}})
            with pytest.raises(Exception):  # noqa: B017 - the SDK's error type for a JSON-RPC error
                await c.read_resource("echo+echo://fail/ECHO_TOKEN")

            async def held() -> None:
                await c.call_tool("invoke", {"tool": "echo__sleep", "arguments": {"seconds": 0, "tag": canary}})

            tg.start_soon(held)
            with anyio.fail_after(30):
                while not await rt.parts.approvals.list("pending"):
                    await anyio.sleep(0.05)
            async with aiohttp.ClientSession(cookie_jar=jar()) as s:
                await cookie_login(s, gw)
                async with s.get(f"{gw.base}/console/audit") as r:
                    listing = await r.text()
                seqs = sorted({int(x.split('"', 1)[0]) for x in listing.split('data-seq="')[1:]})
                assert len(seqs) >= 5  # one row per call (four), the search
                pages = [
                    "/console",
                    "/console/overview/live",
                    "/console/approvals",
                    "/console/approvals/queue",
                    "/console/audit",
                    "/console/audit/export",
                    "/console/audit/verify",
                    "/console/search?q=find+token",
                    "/console/savings",
                    *(f"/console/audit/{seq}" for seq in seqs),
                ]
                for url in pages:
                    async with s.get(gw.base + url) as r:
                        body = await r.text()
                        assert r.status in (200, 204), (url, r.status)
                        assert not [f for f in forms if f in body], url
                async with s.get(f"{gw.base}/console/approvals") as r:
                    assert "[REDACTED]" in await r.text()  # the held call's argument, shown redacted
            tg.cancel_scope.cancel()
