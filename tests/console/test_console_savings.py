"""The savings page in a real browser: after alice lists tools and searches through an MCP client,
her row shows the ledger's numbers and the chart has today's bars (real gateway, headless Chromium)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.console.conftest import ConsoleGateway, login, shot_dir
from toolcrib.console.plot import Group, Series, grouped_bars, nice_ticks

pytestmark = pytest.mark.anyio


async def test_alice_traffic_shows_in_her_row_and_in_todays_bars(
    console_gateway: ConsoleGateway, browser: Any, tmp_path: Path
) -> None:
    gw = console_gateway
    ledger = gw.rt.parts.savings
    assert ledger is not None
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {gw.tokens['alice']}"}, timeout=60) as http,
        Client(streamable_http_client(gw.rt.url, http_client=http)) as c,
    ):
        listed = await c.list_tools()
        assert [t.name for t in listed.tools] == ["search_tools", "invoke"]
        found = await c.call_tool("search_tools", {"query": "what time is it", "limit": 3})
        assert not found.is_error
    today = ledger.today()
    [alice] = [r for r in ledger.by_principal(today, today) if r.id == "key:alice"]
    [day] = ledger.days(today, today)
    assert alice.lists == 1 and alice.full > alice.loaded > 0  # the full list of 11 tools vs 2 + a result

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await login(page, gw.base, gw.tokens["alice"])
    await page.click("nav a:has-text('Savings')")
    assert page.url.endswith("/console/savings")
    row = page.locator("#principals tr[data-principal='key:alice']")
    assert await row.locator("td.full").text_content() == f"{alice.full:,}"
    assert await row.locator("td.loaded").text_content() == f"{alice.loaded:,}"
    assert await row.locator("td.saved").text_content() == f"{alice.saved:,}"
    assert await row.locator("td.lists").text_content() == "1"
    assert await page.text_content("#total-full") == f"{day.full:,}"

    chart = page.locator("svg#savings-chart")
    assert await chart.get_attribute("role") == "img"
    assert "full tool list vs loaded" in (await chart.locator("title").first.text_content() or "")
    assert await chart.locator("rect.bar").count() == 2 * 14  # 14 days by default, full + loaded each
    bars = chart.locator(f"rect.bar[data-key='{today.isoformat()}']")
    assert await bars.count() == 2
    full_bar = chart.locator(f"rect.bar.full[data-key='{today.isoformat()}']")
    loaded_bar = chart.locator(f"rect.bar.loaded[data-key='{today.isoformat()}']")
    assert float(await full_bar.get_attribute("data-value") or "nan") == day.full
    assert float(await loaded_bar.get_attribute("data-value") or "nan") == day.loaded
    assert float(await full_bar.get_attribute("height") or 0) > float(await loaded_bar.get_attribute("height") or 0) > 0
    assert f"full list {day.full:,} tokens" in (await full_bar.locator("title").text_content() or "")
    assert await chart.locator("text.tick").count() >= 2  # a labelled y axis
    assert today.strftime("%m-%d") in await chart.locator("text.label").all_text_contents()
    await page.screenshot(path=str(shot_dir(tmp_path) / "savings.png"), full_page=True)

    await page.click("a.button:has-text('7 d')")
    assert await chart.locator("rect.bar").count() == 2 * 7
    response = await page.goto(f"{gw.base}/console/savings?days=0")
    assert response.status == 400
    assert "days must be a whole number from 1 to 366" in (await page.text_content(".error") or "")


def test_chart_markup_is_escaped_and_scaled() -> None:
    groups = [Group("a<b", "k&1", 't"1', (10.0, 4.0)), Group("c", "k2", "t2", (0.0, 0.0))]
    svg = str(
        grouped_bars(groups, [Series("full", "full"), Series("loaded", "loaded")], title="<x>", desc="d", unit="tokens")
    )
    assert "<x>" not in svg and "&lt;x&gt;" in svg and "a&lt;b" in svg and 'data-key="k&amp;1"' in svg
    assert svg.count("<rect ") == 4 and 'data-value="10"' in svg
    assert nice_ticks(0) == [0.0, 1.0]
    assert nice_ticks(10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(1234)[-1] >= 1234 and len(nice_ticks(1234)) <= 7
