"""`toolcrib -v serve`: one log line per /mcp request, text or ``--log-json`` (issue 9 item 17).

A real `toolcrib serve` process: each request's line names the HTTP and JSON-RPC method, the tool,
the principal, the status, the outcome and the duration, and never the arguments; nothing but
toolcrib's own loggers speaks at ``-v``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import TOOLCRIB
from tests.e2e.test_http import INIT, JSON_HEADERS

pytestmark = pytest.mark.anyio

SECRET_ARG = "Europe/Zurich-not-a-secret-but-an-argument"


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "toolcrib.toml"
    cfg.write_text(
        f"""
[gateway]
port = 0
mode = "passthrough"
[audit]
path = "{tmp_path / "audit.db"}"
[servers.time]
command = "{sys.executable}"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
"""
    )
    return cfg


@contextmanager
def _serving(tmp_path: Path, *flags: str) -> Iterator[tuple[str, list[str]]]:
    """``(url, stderr lines so far)`` of `toolcrib FLAGS serve`; stopped by its PID (SIGTERM) at the end."""
    argv = [TOOLCRIB, *flags, "--config", str(_config(tmp_path)), "serve"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("connect clients to " in x for x in lines):
            time.sleep(0.05)
        report = "".join(lines)
        assert "connect clients to " in report, report
        yield report.split("connect clients to ", 1)[1].split()[0], lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(10)
        proc.stderr.close()


async def _traffic(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=INIT, headers=JSON_HEADERS) as r:
            sid = r.headers["Mcp-Session-Id"]
        headers = {**JSON_HEADERS, "Mcp-Session-Id": sid}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with s.post(url, json=note, headers=headers) as r:
            assert r.status == 202
        for rid, zone in ((2, "UTC"), (3, SECRET_ARG)):  # the second is a tool error (no such zone)
            params = {"name": "time__get_current_time", "arguments": {"timezone": zone}}
            call = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}
            async with s.post(url, json=call, headers=headers) as r:
                assert r.status == 200
        async with s.post(url, json=INIT, headers={**JSON_HEADERS, "Accept": "text/html"}) as r:
            assert r.status == 406


def _wait_for(lines: list[str], count: int, marker: str) -> list[str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sum(marker in x for x in lines) < count:
        time.sleep(0.05)
    return [x for x in lines if marker in x]


async def test_v_logs_one_text_line_per_request_and_no_library_noise(tmp_path: Path) -> None:
    with _serving(tmp_path, "-v") as (url, lines):
        await _traffic(url)
        requests = _wait_for(lines, 5, "toolcrib.requests")
    assert len(requests) == 5, requests
    ok, failed = [x for x in requests if "tools/call" in x]
    assert "POST /mcp tools/call time__get_current_time principal=anonymous:anonymous status=200 ok " in ok, ok
    assert ok.rstrip().endswith(" ms") and " tool_error " in failed
    assert any("initialize" in x and "status=406" in x for x in requests)
    assert not any(SECRET_ARG in x for x in lines), "an argument reached the log"
    named = [x.split()[1] for x in lines if x.split() and x.split()[0] in ("DEBUG", "INFO")]
    assert all(n.startswith("toolcrib") for n in named), named


async def test_log_json_emits_json_lines_with_the_request_fields(tmp_path: Path) -> None:
    with _serving(tmp_path, "-v", "--log-json") as (url, lines):
        await _traffic(url)
        requests = _wait_for(lines, 5, '"toolcrib.requests"')
    records = [json.loads(x) for x in requests]
    assert len(records) == 5
    call = next(r for r in records if r["method"] == "tools/call")
    assert call["target"] == "time__get_current_time" and call["status"] == 200 and call["outcome"] == "ok"
    assert call["principal"].startswith("anonymous:") and isinstance(call["ms"], float)
    assert {"ts", "level", "logger", "message", "http"} <= set(call)
    for line in lines:  # every log line is JSON; the start-up report is plain text printed for people
        if line.startswith("{"):
            json.loads(line)
    assert not any(SECRET_ARG in x for x in lines)
