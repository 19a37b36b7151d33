"""A call held for approval appears in the console's queue without a reload, is approved in the
page, and the waiting client receives its result (real gateway, SDK client, headless Chromium)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.console.conftest import ConsoleGateway, login, shot_dir

pytestmark = pytest.mark.anyio


async def test_a_held_call_is_approved_in_the_page_and_the_client_gets_its_result(
    console_gateway: ConsoleGateway, browser: Any, tmp_path: Path
) -> None:
    gw = console_gateway
    page = await browser.new_page()
    await login(page, gw.base, gw.tokens["alice"])
    await page.goto(f"{gw.base}/console/approvals")
    assert await page.locator("#queue .approval").count() == 0
    results: list[types.CallToolResult] = []

    async def agent() -> None:
        headers = {"Authorization": f"Bearer {gw.tokens['bob']}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=120) as http,
            Client(streamable_http_client(gw.rt.url, http_client=http)) as c,
        ):
            results.append(await c.call_tool("invoke", {"tool": "echo__sleep", "arguments": {"seconds": 0}}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(agent)
        card = page.locator("#queue .approval[data-tool='echo__sleep']")
        await card.wait_for(timeout=30_000)  # appears by polling: no reload, no navigation
        assert page.url.endswith("/console/approvals")
        text = await card.text_content() or ""
        assert "key:bob" in text and "sleep-needs-approval" in text and '"seconds": 0' in text
        await page.screenshot(path=str(shot_dir(tmp_path) / "approvals.png"), full_page=True)
        await card.locator("input[name=note]").fill("ok for the demo")
        await card.locator("button[value=approve]").click()
        await page.wait_for_load_state()
        with anyio.fail_after(60):
            while not results:
                await anyio.sleep(0.05)
    assert not results[0].is_error, results[0]
    history = await page.locator("#history tbody").text_content() or ""
    assert "used" in history and "key:alice" in history and "ok for the demo" in history  # approved, then consumed
