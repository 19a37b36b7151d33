"""An imported config runs: the `secret:` references `toolcrib import` puts into `args` and into a URL
are resolved at the upstream edge like those in `env` and `headers` (issue 9 item 13)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from tests.e2e.conftest import ROOT, GatewayFactory
from tests.test_fixtures import http_server
from toolcrib.client_import import import_client_config

pytestmark = pytest.mark.anyio

# `python -c` runs the echo fixture with the argument it was given in $ARG_SEEN (read back with echo__env)
RUN_ECHO = (
    "import os, runpy, sys; os.environ['ARG_SEEN'] = sys.argv[1]; del sys.argv[1:]; "
    "runpy.run_module('tests.servers.echo', run_name='__main__')"
)


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _imported(tmp_path: Path, client: dict[str, Any]) -> dict[str, Any]:
    src, out = tmp_path / "mcp.json", tmp_path / "toolcrib.toml"
    src.write_text(json.dumps({"mcpServers": client}))
    with contextlib.redirect_stderr(io.StringIO()):
        import_client_config(src, out)
    servers: dict[str, Any] = tomllib.loads(out.read_text())["servers"]
    return servers


async def test_secret_in_args_reaches_the_child(
    tmp_path: Path, gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "tok0123456789abcdefXYZ"
    servers = _imported(tmp_path, {"srv": {"command": sys.executable, "args": ["-c", RUN_ECHO, f"--token={token}"]}})
    assert servers["srv"]["args"][-1] == "--token=secret:srv/token"
    servers["srv"]["cwd"] = str(ROOT)
    monkeypatch.setenv("TOOLCRIB_SECRET_SRV_TOKEN", token)
    async with gateway(servers) as rt, Client(rt.url) as c:
        seen = _text(await c.call_tool("srv__env", {"name": "ARG_SEEN"}))
    assert seen.startswith("--token=") and "secret:" not in seen  # resolved (and redacted on the way back)


async def test_secret_in_url_reaches_the_upstream(
    tmp_path: Path, gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with http_server("echo") as url:
        authed = url.replace("http://", "http://alice:Pa55word-xyz@", 1)
        servers = _imported(tmp_path, {"web": {"type": "http", "url": authed}})
        assert "Pa55word" not in servers["web"]["url"] and "secret:web/127.0.0.1-password@" in servers["web"]["url"]
        monkeypatch.setenv("TOOLCRIB_SECRET_WEB_127_0_0_1_PASSWORD", "Pa55word-xyz")
        async with gateway(servers) as rt, Client(rt.url) as c:
            headers = json.loads(_text(await c.call_tool("web__headers", {})))
    auth = {k.lower(): v for k, v in headers.items()}["authorization"]
    # aiohttp sent Basic base64("alice:" + the resolved password); the gateway's redactor, which learns a
    # secret only when it is resolved, masks the password's part of it on the way back to the client
    assert auth.startswith("Basic " + base64.b64encode(b"alice:").decode()[:8]) and "[REDACTED]" in auth
