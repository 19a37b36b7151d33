"""Console fixtures: a real gateway (API keys, a policy that holds calls for approval) with the echo
fixture and the published time server, and a real headless Chromium driven by Playwright.

Chromium is Debian's (``/usr/bin/chromium``; Playwright's own download cannot work offline), found
with ``shutil.which``. Without it the browser tests skip, unless ``TOOLCRIB_REQUIRE_BROWSER=1``
(``.ci/run`` and ``make test`` as root install it and set that), where they fail.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import key_store, make_config, stdio_server
from toolcrib.app import Running, running_gateway
from toolcrib.index.embedder import HashingEmbedder

ECHO = "tests.servers.echo"
RULES = [
    {"id": "sleep-needs-approval", "tools": ["echo__sleep"], "action": "approve"},
    {"id": "guests-no-add", "tools": ["echo__add"], "groups": ["guests"], "action": "deny"},
]
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # the machine's network is closed: no update/metrics pings
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class ConsoleGateway:
    rt: Running
    tokens: dict[str, str]
    """``alice``: an operator (group admins); ``bob``: a guest."""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.rt.port}"


def time_server() -> dict[str, Any]:
    """The published ``mcp-server-time`` (a demo dependency), over stdio, in UTC."""
    exe = Path(sys.executable).with_name("mcp-server-time")
    return {"command": str(exe), "args": ["--local-timezone", "UTC"]}


@pytest.fixture
async def console_gateway(tmp_path: Path) -> AsyncIterator[ConsoleGateway]:
    async with gateway_with({"echo": stdio_server(ECHO), "time": time_server()}, tmp_path) as gw:
        yield gw


@asynccontextmanager
async def gateway_with(servers: dict[str, Any], tmp_path: Path) -> AsyncIterator[ConsoleGateway]:
    """A dispatcher gateway with API keys alice (admins) and bob (guests) and :data:`RULES`, in front of ``servers``."""
    policy = {"rules": RULES, "default": "allow", "approval_mode": "hold", "approval_timeout": 120}
    cfg = make_config(servers, tmp_path, policy, mode="dispatcher", auth="keys")
    keys = key_store(cfg)
    tokens = {"alice": keys.add("alice", ["admins"]), "bob": keys.add("bob", ["guests"])}
    async with running_gateway(cfg, connect_wait=30, embedder=HashingEmbedder()) as rt:
        if rt.reindexer is not None:
            await rt.reindexer.sync(set(cfg.enabled_servers))
        yield ConsoleGateway(rt, tokens)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium (Playwright async API); closed, with its process, at the end."""
    exe = chromium_path()
    if exe is None:
        if os.environ.get("TOOLCRIB_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed: `apt-get install chromium` (TOOLCRIB_REQUIRE_BROWSER=1)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            await b.close()


async def login(page: Any, base: str, token: str) -> None:
    """Log in through the login form, as a person would."""
    await page.goto(f"{base}/console")
    await page.fill("#credential", token)
    await page.click("button[type=submit]")
    await page.wait_for_load_state()


def shot_dir(tmp_path: Path) -> Path:
    """Where a test's screenshots go (``TOOLCRIB_SCREENSHOTS`` to keep them elsewhere, e.g. docs/)."""
    out = Path(os.environ.get("TOOLCRIB_SCREENSHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out
