"""The search playground in a real browser: a query as a chosen principal sees it, with the parts of
each score, and the tools policy hides from that principal (real gateway, headless Chromium)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.console.conftest import ConsoleGateway, login, shot_dir

pytestmark = pytest.mark.anyio


async def rows(page: Any, table: str) -> list[dict[str, str]]:
    """The rows of ``#table`` as {key, score, dense, lexical, how, why}."""
    out = []
    for row in await page.locator(f"#{table} tbody tr[data-key]").all():
        cells: dict[str, str] = {"key": await row.get_attribute("data-key") or ""}
        for name in ("score", "part-dense", "part-lexical", "how", "why"):
            cell = row.locator(f"td.{name}")
            cells[name] = (await cell.text_content() or "").strip() if await cell.count() else ""
        out.append(cells)
    return out


async def test_the_playground_finds_the_time_tool_with_parts_and_shows_what_policy_hides(
    console_gateway: ConsoleGateway, browser: Any, tmp_path: Path
) -> None:
    gw = console_gateway
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await login(page, gw.base, gw.tokens["alice"])
    await page.click("nav a:has-text('Search')")
    assert page.url.endswith("/console/search")
    options = await page.locator("#s-as option").evaluate_all("els => els.map(e => e.value)")
    assert options == ["operator:local", "anonymous:anonymous", "key:alice", "key:bob"]
    assert await page.locator("#s-as").input_value() == "key:alice"  # the operator looking, by default

    await page.fill("#s-q", "what time is it in Tokyo")
    await page.click("#search-form button[type=submit]")
    await page.wait_for_load_state()
    found = await rows(page, "results")
    keys = [r["key"] for r in found]
    assert "time__get_current_time" in keys[:3], keys
    for r in found:  # every score shown with its parts
        assert r["part-dense"] not in ("", "-") and r["part-lexical"] not in ("", "-")
        assert "x dense" in r["how"] and "=" in r["how"]
    time_row = found[keys.index("time__get_current_time")]
    assert "x lexical" in time_row["how"]  # "time" matched lexically too
    assert await page.locator("#results svg.terms").count() == len(found)
    assert await page.locator("#hidden tbody tr[data-key]").count() == 0  # alice (admins) may use all
    await page.screenshot(path=str(shot_dir(tmp_path) / "search.png"), full_page=True)

    await page.select_option("#s-as", "key:bob")
    await page.fill("#s-q", "add two integers")
    await page.click("#search-form button[type=submit]")
    await page.wait_for_load_state()
    assert "as=key%3Abob" in page.url
    visible = [r["key"] for r in await rows(page, "results")]
    hidden = await rows(page, "hidden")
    assert "echo__add" not in visible
    add = next(r for r in hidden if r["key"] == "echo__add")
    assert add["why"] == "rule guests-no-add"
    assert "x dense" in add["how"]
    await page.screenshot(path=str(shot_dir(tmp_path) / "search-hidden.png"), full_page=True)


async def test_the_ranking_is_what_search_tools_returns_to_that_principal(
    console_gateway: ConsoleGateway, browser: Any
) -> None:
    """Bob's real ``search_tools`` answer (SDK client, his key) and the page's list as bob agree:
    same tools, same order, same scores."""
    gw = console_gateway
    page = await browser.new_page()
    await login(page, gw.base, gw.tokens["alice"])
    for query in ("add two integers", "what time is it in Tokyo", "echo some text back"):
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {gw.tokens['bob']}"}, timeout=60) as http,
            Client(streamable_http_client(gw.rt.url, http_client=http)) as c,
        ):
            result = await c.call_tool("search_tools", {"query": query, "limit": 6})
        assert result.structured_content is not None
        answer = [(t["name"], t["score"]) for t in result.structured_content["tools"]]
        await page.goto(f"{gw.base}/console/search?" + urlencode({"q": query, "as": "key:bob", "limit": 6}))
        shown = [(r["key"], round(float(r["score"]), 3)) for r in await rows(page, "results")]
        assert shown == answer and answer


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"q": "time", "as": "key:mallory"}, 400, "Unknown principal 'key:mallory': choose one of operator:local"),
        ({"q": "time", "limit": "0"}, 400, "must be an integer from 1 to 20"),
        ({"q": "time", "limit": "lots"}, 400, "must be an integer from 1 to 20"),
    ],
)
async def test_bad_input_gets_a_one_line_error(
    console_gateway: ConsoleGateway, browser: Any, params: dict[str, str], status: int, message: str
) -> None:
    gw = console_gateway
    page = await browser.new_page()
    await login(page, gw.base, gw.tokens["alice"])
    response = await page.goto(f"{gw.base}/console/search?" + urlencode(params))
    assert response.status == status
    assert message in (await page.text_content(".error") or "")
    assert await page.locator("#search-form").count() == 1  # the form is still there to fix it
