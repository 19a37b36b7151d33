"""`toolcrib serve` as a real process: startup report, stdio mode, graceful SIGTERM, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.e2e.conftest import TOOLCRIB, alive, descendants, serve_process
from tests.e2e.test_http import INIT, JSON_HEADERS

pytestmark = pytest.mark.anyio


def _config(tmp_path: Path, mode: str = "passthrough") -> Path:
    cfg = tmp_path / "toolcrib.toml"
    cfg.write_text(
        f"""
[gateway]
port = 0
mode = "{mode}"
[audit]
path = "{tmp_path / "audit.db"}"
[servers.time]
command = "{sys.executable}"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
[servers.broken]
command = "/nonexistent/server-binary"
"""
    )
    return cfg


async def test_serve_reports_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with serve_process(_config(tmp_path), tmp_path) as proc:
        assert proc.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            any(x.startswith("  time:") for x in lines) and any(x.startswith("  broken:") for x in lines)
        ):
            lines.append(proc.stderr.readline())
        report = "".join(lines)
        assert "connect clients to http://127.0.0.1:" in report
        url = report.split("connect clients to ", 1)[1].split()[0]
        assert "broken:" in report and "command not found" in report
        assert "time: connected, 2 tools" in report
        async with Client(url) as c:
            result = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not result.is_error
        children = descendants(proc.pid)  # the time server (the broken one never started)
        assert children
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not [pid for pid in children if alive(pid)]  # no orphan left behind


def test_serve_warns_when_a_sibling_config_shares_its_state(tmp_path: Path) -> None:
    (tmp_path / "staging.toml").write_text('[gateway]\nauth = "none"\n')  # the same default .toolcrib/ paths
    with serve_process(_config(tmp_path), tmp_path) as proc:
        assert proc.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("warning:" in x for x in lines):
            lines.append(proc.stderr.readline())
        (warning,) = [x for x in lines if "warning:" in x]
        assert "staging.toml in the same folder uses the same state ([index] path," in warning
        assert "[audit] path" not in warning  # this config's audit log is elsewhere
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


async def test_stdio_mode(tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=TOOLCRIB, args=["--config", str(_config(tmp_path)), "serve", "--stdio"], cwd=str(tmp_path)
    )
    with anyio.fail_after(60):
        async with Client(params) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert "time__convert_time" in names
            result = await c.call_tool("time__get_current_time", {"timezone": "Europe/Paris"})
            assert "Europe/Paris" in result.content[0].text  # type: ignore[union-attr]


def test_no_traceback_for_bad_bind(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text('[gateway]\nhost = "0.0.0.0"\n')
    out = subprocess.run([TOOLCRIB, "--config", str(cfg), "serve"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "loopback" in out.stderr
    assert os.path.exists(cfg)


async def test_sigterm_drains_the_call_in_flight(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = tmp_path / "toolcrib.toml"
    cfg.write_text(
        f"""
[gateway]
port = 0
mode = "passthrough"
drain_timeout = 10
[servers.echo]
command = "{sys.executable}"
args = ["-m", "tests.servers.echo"]
cwd = "{root}"
"""
    )
    with serve_process(cfg, tmp_path) as proc:
        assert proc.stderr is not None
        line = ""
        while "connect clients to" not in line:
            line = proc.stderr.readline()
            assert line, "serve exited before announcing its endpoint"
        url = line.split("connect clients to ", 1)[1].split()[0]
        headers = dict(JSON_HEADERS)
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "echo__sleep", "arguments": {"seconds": 1.5}},
        }
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json=INIT, headers=headers) as r:
                headers["Mcp-Session-Id"] = r.headers["Mcp-Session-Id"]
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            async with s.post(url, json=note, headers=headers) as r:
                assert r.status == 202
            answer: dict[str, Any] = {}

            async def slow() -> None:
                async with s.post(url, json=call, headers=headers) as r:
                    answer.update(await r.json())

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                await anyio.sleep(0.5)
                proc.send_signal(signal.SIGTERM)
        assert "slept" in answer["result"]["content"][0]["text"]
        assert proc.wait(timeout=20) == 0
