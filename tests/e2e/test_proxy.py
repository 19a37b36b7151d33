"""The proxy core against real servers: parity, both eras, faults (crash, kill -9, hang, garbage, 20 MB)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from tests.e2e.conftest import ROOT, GatewayFactory, stdio_server, upstream_pid

pytestmark = pytest.mark.anyio

ECHO = "tests.servers.echo"


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_parity_direct_and_through_gateway(gateway: GatewayFactory, mode: str) -> None:
    """The same calls give the same results directly and through toolcrib, in both protocol eras."""
    direct_params = StdioServerParameters(command=sys.executable, args=["-m", ECHO], cwd=str(ROOT))
    calls: list[tuple[str, dict[str, Any]]] = [("echo", {"text": "héllo"}), ("add", {"a": 2, "b": 40})]
    async with Client(direct_params) as direct:
        direct_tools = {t.name for t in (await direct.list_tools()).tools}
        direct_results = [await direct.call_tool(n, a) for n, a in calls]
    async with gateway({"echo": stdio_server(ECHO)}) as rt, Client(rt.url, mode=mode) as c:
        tools = {t.name for t in (await c.list_tools()).tools}
        assert tools == {f"echo__{n}" for n in direct_tools}
        for (name, args), want in zip(calls, direct_results, strict=True):
            got = await c.call_tool(f"echo__{name}", args)
            assert got.is_error == want.is_error
            assert _text(got) == _text(want)


async def test_time_server_from_pypi(gateway: GatewayFactory) -> None:
    server = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}
    async with gateway({"time": server}) as rt, Client(rt.url) as c:
        result = await c.call_tool("time__get_current_time", {"timezone": "Asia/Tokyo"})
        assert not result.is_error
        assert "Asia/Tokyo" in _text(result)


async def test_crash_mid_call_fails_fast_and_restarts(gateway: GatewayFactory) -> None:
    async with gateway({"echo": stdio_server(ECHO)}) as rt, Client(rt.url) as c:
        started = time.monotonic()
        result = await c.call_tool("echo__crash", {})
        assert result.is_error
        assert "restarting" in _text(result)
        assert time.monotonic() - started < 5
        with anyio.fail_after(15):
            while rt.pool.upstreams["echo"].state.status != "connected":
                await anyio.sleep(0.1)
        assert _text(await c.call_tool("echo__echo", {"text": "back"})) == "back"


async def test_kill_9_mid_call(gateway: GatewayFactory) -> None:
    async with gateway({"echo": stdio_server(ECHO)}) as rt, Client(rt.url) as c:
        result: types.CallToolResult | None = None
        pid = await upstream_pid(c, "echo+echo://info")

        async def call() -> None:
            nonlocal result
            result = await c.call_tool("echo__sleep", {"seconds": 30})

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.sleep(0.5)
            started = time.monotonic()
            os.kill(pid, signal.SIGKILL)
        assert result is not None and result.is_error
        assert time.monotonic() - started < 5


async def test_deadline_cancels_upstream(gateway: GatewayFactory, tmp_path: Path) -> None:
    """A hung call gets an error at the deadline and the upstream sees the cancellation."""
    server = stdio_server(ECHO, timeout=1.0, env={"FIXTURE_MARKER_DIR": str(tmp_path)})
    async with gateway({"echo": server}) as rt, Client(rt.url) as c:
        started = time.monotonic()
        result = await c.call_tool("echo__sleep", {"seconds": 30})
        elapsed = time.monotonic() - started
        assert result.is_error and "deadline" in _text(result)
        assert elapsed < 5
        with anyio.fail_after(5):
            while not any(tmp_path.iterdir()):
                await anyio.sleep(0.05)


async def test_hung_upstream_does_not_delay_others(gateway: GatewayFactory) -> None:
    servers = {"slow": stdio_server(ECHO, timeout=20.0), "fast": stdio_server(ECHO)}
    async with gateway(servers) as rt, Client(rt.url) as c, anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(c.call_tool, "slow__sleep", {"seconds": 3})
        await anyio.sleep(0.2)
        started = time.monotonic()
        assert _text(await c.call_tool("fast__echo", {"text": "quick"})) == "quick"
        assert time.monotonic() - started < 1.0
        tg.cancel_scope.cancel()


async def test_garbage_server_is_reported_and_others_work(gateway: GatewayFactory) -> None:
    servers = {"junk": stdio_server("tests.servers.garbage", connect_timeout=3.0), "echo": stdio_server(ECHO)}
    async with gateway(servers) as rt, Client(rt.url) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "echo__echo" in names
        assert not any(n.startswith("junk__") for n in names)
        assert rt.pool.upstreams["junk"].state.status != "connected"
        assert _text(await c.call_tool("echo__echo", {"text": "ok"})) == "ok"


async def test_twenty_megabyte_result(gateway: GatewayFactory) -> None:
    async with gateway({"echo": stdio_server(ECHO)}) as rt, Client(rt.url) as c:
        result = await c.call_tool("echo__big", {"n_bytes": 20_000_000})
        assert not result.is_error
        assert len(_text(result)) == 20_000_000
        assert _text(await c.call_tool("echo__echo", {"text": "still fine"})) == "still fine"


async def test_tools_list_changed_is_forwarded(gateway: GatewayFactory) -> None:
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        if isinstance(root, types.ToolListChangedNotification):
            changed.set()

    async with (
        gateway({"echo": stdio_server(ECHO)}) as rt,
        Client(rt.url, mode="legacy", message_handler=on_message) as c,
    ):
        await c.list_tools()
        await c.call_tool("echo__add_tool", {"name": "fresh"})
        with anyio.fail_after(10):
            await changed.wait()
        names = {t.name for t in (await c.list_tools()).tools}
        assert "echo__fresh" in names


async def test_resources_and_prompts_are_namespaced(gateway: GatewayFactory) -> None:
    async with gateway({"echo": stdio_server(ECHO)}) as rt, Client(rt.url) as c:
        resources = (await c.list_resources()).resources
        assert any(str(r.uri).startswith("echo+") for r in resources)
        uri = str(resources[0].uri)
        read = await c.read_resource(uri)
        assert read.contents and str(read.contents[0].uri) == uri
        prompts = (await c.list_prompts()).prompts
        assert any(p.name == "echo__greet" for p in prompts)
        got = await c.get_prompt("echo__greet", {"name": "Ada"})
        assert "Ada" in str(got.messages[0].content)


async def test_keep_names_with_one_upstream(gateway: GatewayFactory) -> None:
    async with gateway({"echo": stdio_server(ECHO)}, keep_names=True) as rt, Client(rt.url) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "echo" in names
        assert _text(await c.call_tool("echo", {"text": "plain"})) == "plain"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_client_cancellation_reaches_the_upstream(gateway: GatewayFactory, tmp_path: Path, mode: str) -> None:
    server = stdio_server(ECHO, env={"FIXTURE_MARKER_DIR": str(tmp_path)})
    async with gateway({"echo": server}) as rt, Client(rt.url, mode=mode) as c:
        with anyio.move_on_after(1.0):
            await c.call_tool("echo__sleep", {"seconds": 30, "tag": "cc"})
        with anyio.fail_after(5):
            while not (tmp_path / "sleep-cc.cancelled").exists():
                await anyio.sleep(0.05)
        assert _text(await c.call_tool("echo__echo", {"text": "after"})) == "after"


async def test_servers_that_hang(gateway: GatewayFactory) -> None:
    """One never answers tools/call (and ignores cancellation); one never finishes its handshake."""
    servers = {
        "stuck": stdio_server("tests.servers.hang", timeout=1.0),
        "mute": stdio_server("tests.servers.hang", "--hang-at", "initialize", connect_timeout=1.0),
        "echo": stdio_server(ECHO),
    }
    async with gateway(servers) as rt, Client(rt.url) as c:
        assert rt.pool.upstreams["mute"].state.status != "connected"
        names = {t.name for t in (await c.list_tools()).tools}
        stuck = sorted(n for n in names if n.startswith("stuck__"))
        assert stuck and not any(n.startswith("mute__") for n in names)
        started = time.monotonic()
        result = await c.call_tool(stuck[0], {})
        assert result.is_error and "deadline" in _text(result)
        assert time.monotonic() - started < 5
        assert _text(await c.call_tool("echo__echo", {"text": "fine"})) == "fine"


async def test_git_server_from_pypi(gateway: GatewayFactory, tmp_path: Path) -> None:
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.txt").write_text("hello\n")
    server = {"command": sys.executable, "args": ["-m", "mcp_server_git", "--repository", str(repo)]}
    async with gateway({"git": server}) as rt, Client(rt.url) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"git__git_status", "git__git_log"} <= names
        status = await c.call_tool("git__git_status", {"repo_path": str(repo)})
        assert not status.is_error and "a.txt" in _text(status)
