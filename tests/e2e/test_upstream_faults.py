"""Upstreams that misbehave (issue 9): restarts, stripped environments, failing optional
listings, noisy stdout, remote ``$ref`` schemas, unreachable URLs. Real processes throughout."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import certifi
import mcp_types as types
import pytest
from mcp import Client

from tests.e2e.conftest import GatewayFactory, stdio_server, upstream_pid
from toolcrib.config import ServerConfig

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_http(port: int, *args: str, flag: str = "--http") -> subprocess.Popen[bytes]:
    """``python -m tests.servers.echo --http PORT`` (or ``flag="--sse"``), once it announced it listens;
    stop it with :func:`_stop`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.echo", *args, flag, str(port)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60  # importing the SDK takes seconds on a loaded 2-core machine
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
        if not ready or not (chunk := os.read(proc.stdout.fileno(), 4096)):
            _stop(proc)
            why = "no answer within 60 s" if not ready else f"it exited with {proc.returncode}"
            raise AssertionError(f"the fixture did not announce its port {port}: {why}")
        line += chunk
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill one process we started, by its PID (idempotent)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


async def _call_until_ok(c: Client, tool: str, args: dict[str, object], expect: str, within: float) -> int:
    """Call ``tool`` until its text is ``expect``; return how many calls failed before that."""
    failures = 0
    with anyio.fail_after(within):
        while True:
            result = await c.call_tool(tool, args)
            if not result.is_error and _text(result) == expect:
                return failures
            failures += 1
            await anyio.sleep(0.5)


# ---- 1: a session-based HTTP upstream that restarts -------------------------------------------


async def test_restarted_session_http_upstream_is_reinitialized(gateway: GatewayFactory) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    first = _start_http(port, "--legacy")
    try:
        async with gateway({"echo": {"url": url}}) as rt, Client(rt.url) as c:
            up = rt.pool.upstreams["echo"]
            assert up.state.protocol_version == "2025-11-25"
            assert _text(await c.call_tool("echo__echo", {"text": "before"})) == "before"
            first_connects = up.state.connects
            # killed and restarted on the same port while idle: the reopened GET stream's 404 is noticed
            _stop(first)
            second = _start_http(port, "--legacy")
            try:
                with anyio.fail_after(30):
                    while up.state.connects == first_connects or up.state.status != "connected":
                        await anyio.sleep(0.2)
                assert _text(await c.call_tool("echo__echo", {"text": "idle"})) == "idle"
            finally:
                _stop(second)
            # restarted and called at once: the refused call is re-sent after re-initializing
            third = _start_http(port, "--legacy")
            try:
                failures = await _call_until_ok(c, "echo__echo", {"text": "after"}, "after", within=30)
                assert failures <= 1  # the bound: at most the call in flight fails
                assert up.state.connects > first_connects + 1
            finally:
                _stop(third)
    finally:
        _stop(first)


@pytest.mark.parametrize(("flag", "path", "version"), [("--http", "/mcp", "2026-07-28"), ("--sse", "/sse", None)])
async def test_restarted_http_and_sse_upstreams_recover(
    gateway: GatewayFactory, flag: str, path: str, version: str | None
) -> None:
    """The rest of the family: a stateless 2026-07-28 server and a legacy SSE server (its stream drops)."""
    port = _free_port()
    server = {"url": f"http://127.0.0.1:{port}{path}"} | ({"transport": "sse"} if flag == "--sse" else {})
    first = _start_http(port, flag=flag)
    try:
        async with gateway({"echo": server}) as rt, Client(rt.url) as c:
            up = rt.pool.upstreams["echo"]
            assert version is None or up.state.protocol_version == version
            assert _text(await c.call_tool("echo__echo", {"text": "before"})) == "before"
            _stop(first)
            second = _start_http(port, flag=flag)
            try:
                await _call_until_ok(c, "echo__echo", {"text": "after"}, "after", within=45)
            finally:
                _stop(second)
    finally:
        _stop(first)


async def test_killed_stdio_child_recovers(gateway: GatewayFactory) -> None:
    async with gateway({"echo": stdio_server("tests.servers.echo")}) as rt, Client(rt.url) as c:
        assert _text(await c.call_tool("echo__echo", {"text": "before"})) == "before"
        os.kill(await upstream_pid(c, "echo+echo://info"), signal.SIGKILL)
        await _call_until_ok(c, "echo__echo", {"text": "after"}, "after", within=45)
        assert rt.pool.upstreams["echo"].state.connects >= 2


# ---- 2: what a stdio child inherits -------------------------------------------------------------

INHERITED = {
    "LANG": "de_DE.UTF-8",
    "LC_ALL": "de_DE.UTF-8",
    "TZ": "Europe/Berlin",
    "TMPDIR": tempfile.gettempdir(),
    "HTTPS_PROXY": "http://proxy.example:3128",
    "no_proxy": "localhost,127.0.0.1",
    "SSL_CERT_FILE": certifi.where(),  # a real bundle: the test's own client reads it too
    "NODE_EXTRA_CA_CERTS": "/etc/ssl/corp.pem",
    "XDG_CONFIG_HOME": "/tmp/xdg-config",
    "ACME_REGION": "eu-1",  # via inherit_env = ["ACME_*"]
    "EXTRA_ONE": "1",  # via inherit_env = ["EXTRA_ONE"]
}
NOT_INHERITED = {"ACMEX": "no", "EXTRA_ONE_MORE": "no", "UNRELATED_VAR": "no", "TOOLCRIB_SECRET_DEMO_TOKEN": "s3cr3t"}


async def test_stdio_child_environment(gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**INHERITED, **NOT_INHERITED}.items():
        monkeypatch.setenv(name, value)
    server = stdio_server("tests.servers.echo", inherit_env=["ACME_*", "EXTRA_ONE"], env={"SET_BY_CONFIG": "yes"})
    async with gateway({"echo": server}) as rt, Client(rt.url) as c:
        assert rt.pool.upstreams["echo"].state.status == "connected"
        for name, value in {**INHERITED, "SET_BY_CONFIG": "yes"}.items():
            assert _text(await c.call_tool("echo__env", {"name": name})) == value, name
        for name in NOT_INHERITED:
            assert _text(await c.call_tool("echo__env", {"name": name})) == "<unset>", name
        assert _text(await c.call_tool("echo__env", {"name": "PATH"})) == os.environ["PATH"]


@pytest.mark.parametrize(
    "pattern", ["TOOLCRIB_SECRET_DEMO_TOKEN", "TOOLCRIB_*", "TOOL*", "toolcrib_secret_x", "*", "A B"]
)
def test_inherit_env_refuses_toolcrib_secrets_and_bad_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"inherit_env entry") as err:
        ServerConfig.model_validate({"command": "x", "inherit_env": [pattern]})
    line = str(err.value).splitlines()[2]
    assert "\n" not in line and ("TOOLCRIB_" in line or "prefix ending in *" in line)


# ---- 3: optional listings that fail, and listings that page badly -------------------------------


def _warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and needle in r.getMessage()]


async def test_failing_optional_listings_degrade_only_themselves(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = stdio_server("tests.servers.flaky_lists", "--mode", "no-templates")
    async with gateway({"flaky": server}) as rt, Client(rt.url) as c:
        up = rt.pool.upstreams["flaky"]
        assert up.state.status == "connected"
        assert {"flaky__echo", "flaky__other"} <= {t.name for t in (await c.list_tools()).tools}
        assert _text(await c.call_tool("flaky__echo", {"text": "still works"})) == "still works"
        assert [str(r.uri) for r in up.listing.resources] == ["flaky://one"]
        assert up.listing.templates == () and up.listing.prompts == ()
        assert len(_warnings(caplog, "upstream flaky: listing resource templates failed (error -32601")) == 1
        assert len(_warnings(caplog, "upstream flaky: listing prompts failed (error -32603")) == 1
        assert up.state.connects == 1


async def test_unanswered_optional_listing_times_out_and_degrades(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = stdio_server("tests.servers.flaky_lists", "--mode", "hang-prompts", connect_timeout=6.0)
    async with gateway({"flaky": server}) as rt, Client(rt.url) as c:
        assert rt.pool.upstreams["flaky"].state.status == "connected"
        assert _text(await c.call_tool("flaky__echo", {"text": "ok"})) == "ok"
        assert len(_warnings(caplog, "upstream flaky: listing prompts failed (no answer within 2 s)")) == 1
        assert len(_warnings(caplog, "listing resource templates failed (no answer")) == 1


@pytest.mark.parametrize("mode", ["loop-cursor", "duplicates"])
async def test_bad_paging_never_hangs_loops_or_multiplies_tools(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    server = stdio_server("tests.servers.flaky_lists", "--mode", mode)
    async with gateway({"flaky": server}) as rt, Client(rt.url) as c:
        up = rt.pool.upstreams["flaky"]
        assert up.state.status == "connected"
        names = [t.name for t in (await c.list_tools()).tools if t.name.startswith("flaky__")]
        assert sorted(names) == ["flaky__echo", "flaky__other"]
        assert [t.name for t in up.listing.tools] == ["echo", "other"]
        if mode == "loop-cursor":
            assert _warnings(caplog, "tools listing repeated the cursor 'again'")
            assert len(up.listing.resources) == 100  # MAX_PAGES fresh cursors, then it stops
            assert _warnings(caplog, "resources listing had more than 100 pages")
        else:
            assert _warnings(caplog, "tools listing repeated 2 name(s)")


# ---- 4: non-JSON lines on a stdio server's stdout ----------------------------------------------


async def test_non_json_stdout_lines_give_one_warning_naming_the_server(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with gateway({"noisy": stdio_server("tests.servers.noisy")}) as rt, Client(rt.url) as c:
        assert rt.pool.upstreams["noisy"].state.status == "connected"
        for i in range(5):
            assert _text(await c.call_tool("noisy__echo", {"text": f"n{i}"})) == f"n{i}"
    noise = [r for r in caplog.records if "non-JSON line" in r.getMessage()]
    assert len(noise) == 1 and noise[0].levelno == logging.WARNING
    assert noise[0].getMessage().startswith("upstream noisy wrote ")
    assert "Starting noisy server" in noise[0].getMessage()
    assert not [r for r in caplog.records if r.name == "mcp.client.stdio" and r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info and "JSONRPC" in r.getMessage()]


# ---- 5: a tool whose input schema has a remote $ref ---------------------------------------------


async def test_tool_with_remote_ref_schema_is_called_and_nothing_is_fetched(gateway: GatewayFactory) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = str(listener.getsockname()[1])
        server = stdio_server("tests.servers.remote_ref", "--ref-port", port)
        async with gateway({"refs": server}) as rt, Client(rt.url) as c:
            assert rt.pool.upstreams["refs"].state.status == "connected"
            ok = await c.call_tool("refs__lookup", {"item": {"sku": "A-1"}, "count": 2})
            assert not ok.is_error, _text(ok)
            assert '"sku": "A-1"' in _text(ok)
            bad = await c.call_tool("refs__lookup", {"item": "x", "count": 0})
            assert bad.is_error and "count" in _text(bad)
        with pytest.raises(BlockingIOError):
            listener.accept()


# ---- 8: an unreachable URL upstream --------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "host", "reason"),
    [
        ("http", "127.0.0.1:{port}", "connection refused"),
        ("sse", "127.0.0.1:{port}", "connection refused"),
        ("http", "no-such-host.invalid", "host name not found"),
    ],
)
async def test_unreachable_url_says_cannot_connect(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture, transport: str, host: str, reason: str
) -> None:
    url = f"http://{host.format(port=_free_port())}/mcp"
    expected = f"cannot connect to {url} ({reason})"
    async with gateway({"dead": {"url": url, "transport": transport, "connect_timeout": 5.0}}) as rt:
        up = rt.pool.upstreams["dead"]
        assert up.state.status != "connected"
        assert up.state.error == expected
        assert any(r.getMessage() == f"upstream dead: {expected}" for r in caplog.records)


def test_cannot_connect_hides_credentials_in_the_url() -> None:
    from toolcrib.router.http_transport import cannot_connect

    line = cannot_connect("https://user:pw@example.com:8443/mcp?token=abc", "timed out")
    assert line == "cannot connect to https://example.com:8443/mcp (timed out)"


def test_serve_reports_an_unreachable_url_in_one_line(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{_free_port()}/mcp"
    cfg = tmp_path / "toolcrib.toml"
    cfg.write_text(
        f'[gateway]\nport = 0\n[audit]\npath = "{tmp_path / "audit.db"}"\n[index]\npath = "{tmp_path / "index"}"\n'
        f'[servers.dead]\nurl = "{url}"\nconnect_timeout = 5\n'
    )
    toolcrib = str(Path(sys.executable).with_name("toolcrib"))
    proc = subprocess.Popen(
        [toolcrib, "--config", str(cfg), "serve"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path
    )
    try:
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 60
        while b"dead: reconnecting" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready and not (chunk := os.read(proc.stdout.fileno(), 4096)):
                break
            seen += chunk if ready else b""
        text = seen.decode()
        assert f"dead: reconnecting (cannot connect to {url} (connection refused))" in text, text
        assert "protocol error" not in text and "ssl:default" not in text and "Traceback" not in text
    finally:
        _stop(proc)
