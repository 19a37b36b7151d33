"""The fixture servers in tests/servers, checked with the SDK client, so a fixture regression
shows up here and not as a puzzling gateway failure."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

ROOT = Path(__file__).resolve().parents[1]
SECRET = "fixture-secret-value"


def stdio(module: str, *args: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", f"tests.servers.{module}", *args],
        cwd=str(ROOT),
        env={**os.environ, **(env or {})},
    )


@contextmanager
def http_server(module: str, *args: str, env: dict[str, str] | None = None, flag: str = "--http") -> Iterator[str]:
    """Start `python -m tests.servers.MODULE --http 0` (or ``flag="--sse"``), yield its URL, stop it on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", f"tests.servers.{module}", *args, flag, "0"],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
            assert ready, f"{module} did not announce its port in time"
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"{module} exited with {proc.wait()} before announcing its port"
            line += chunk
        first = line.decode().splitlines()[0]
        assert first.startswith("LISTENING http://127.0.0.1:"), first
        yield first.split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def marker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="module")
def echo_url(marker_dir: Path) -> Iterator[str]:
    """One echo server over HTTP for the module (each test uses its own tags and names)."""
    with http_server("echo", env={"FIXTURE_SECRET": SECRET, "FIXTURE_MARKER_DIR": str(marker_dir)}) as url:
        yield url


@pytest.fixture(scope="module")
def everything_url() -> Iterator[str]:
    with http_server("everything") as url:
        yield url


def _target(kind: str, echo_url: str) -> StdioServerParameters | str:
    return stdio("echo", env={"FIXTURE_SECRET": SECRET}) if kind == "stdio" else echo_url


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("kind", ["stdio", "http"])
async def test_echo_tools_resources_prompt(kind: str, mode: str, echo_url: str) -> None:
    async with Client(_target(kind, echo_url), mode=mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "add", "sleep", "crash", "big", "env", "add_tool"} <= names

        echoed = await client.call_tool("echo", {"text": "héllo"})
        assert isinstance(echoed.content[0], types.TextContent)
        assert echoed.content[0].text == "héllo"
        added = await client.call_tool("add", {"a": 2, "b": 40})
        assert added.structured_content == {"result": 42}
        # Over HTTP the SDK client caps one SSE event at 1 MiB; stdio has no such cap.
        size = 3_000_000 if kind == "stdio" else 100_000
        big = await client.call_tool("big", {"n_bytes": size})
        assert isinstance(big.content[0], types.TextContent)
        assert len(big.content[0].text.encode()) == size
        env = await client.call_tool("env", {"name": "FIXTURE_SECRET"})
        assert isinstance(env.content[0], types.TextContent)
        assert env.content[0].text == SECRET
        unset = await client.call_tool("env", {"name": "FIXTURE_SURELY_UNSET_VARIABLE"})
        assert isinstance(unset.content[0], types.TextContent)
        assert unset.content[0].text == "<unset>"

        info = await client.read_resource("echo://info")
        assert isinstance(info.contents[0], types.TextResourceContents)
        assert '"toolcrib-echo"' in info.contents[0].text
        item = await client.read_resource("echo://items/42")
        assert isinstance(item.contents[0], types.TextResourceContents)
        assert item.contents[0].text == "item 42"
        templates = await client.list_resource_templates()
        assert [t.uri_template for t in templates.resource_templates] == ["echo://items/{id}"]
        prompt = await client.get_prompt("greet", {"name": "Ada"})
        assert isinstance(prompt.messages[0].content, types.TextContent)
        assert prompt.messages[0].content.text == "Hello, Ada!"


@pytest.mark.anyio
async def test_echo_tools_prefix() -> None:
    async with Client(stdio("echo", env={"FIXTURE_TOOLS_PREFIX": "p_"}), mode="legacy") as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert "p_echo" in names
        assert "echo" not in names
        result = await client.call_tool("p_echo", {"text": "x"})
        assert isinstance(result.content[0], types.TextContent)
        assert result.content[0].text == "x"


@pytest.mark.anyio
async def test_add_tool_announces_list_changed_on_handshake_sessions(echo_url: str) -> None:
    seen: list[Any] = []

    async def on_message(message: Any) -> None:
        seen.append(message)

    async with Client(echo_url, mode="legacy", message_handler=on_message) as client:
        assert client.server_capabilities.tools is not None
        assert client.server_capabilities.tools.list_changed
        await client.call_tool("add_tool", {"name": "runtime_tool"})
        with anyio.fail_after(5):
            while not any(isinstance(m, types.ToolListChangedNotification) for m in seen):
                await anyio.sleep(0.02)
        assert "runtime_tool" in {t.name for t in (await client.list_tools()).tools}
        result = await client.call_tool("runtime_tool", {"text": "hi"})
        assert isinstance(result.content[0], types.TextContent)
        assert result.content[0].text == "runtime_tool: hi"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sleep_records_cancellation(mode: str, echo_url: str, marker_dir: Path) -> None:
    # legacy: the client sends notifications/cancelled; 2026-07-28: it closes the stream.
    async with Client(echo_url, mode=mode) as client:
        with anyio.move_on_after(0.3) as scope:
            await client.call_tool("sleep", {"seconds": 30, "tag": f"{mode}-1"})
        assert scope.cancelled_caught
        with anyio.fail_after(5):
            while not (marker_dir / f"sleep-{mode}-1.cancelled").exists():
                await anyio.sleep(0.02)
        assert (marker_dir / f"sleep-{mode}-1.started").exists()
        assert not (marker_dir / f"sleep-{mode}-1.done").exists()
        done = await client.call_tool("sleep", {"seconds": 0.01, "tag": f"{mode}-2"})
        assert isinstance(done.content[0], types.TextContent)
        assert done.content[0].text == "slept 0.01"
        assert (marker_dir / f"sleep-{mode}-2.done").exists()


@pytest.mark.anyio
async def test_crash_fails_the_pending_call_at_once() -> None:
    async with Client(stdio("echo"), mode="legacy") as client:
        with anyio.fail_after(5), pytest.raises(MCPError):
            await client.call_tool("crash", {})


async def _sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="sampled"), model="m", stop_reason="endTurn"
    )


async def _elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"username": "u", "email": "u@example.com"})


async def _check_relays(client: Client, logs: list[Any]) -> None:
    sampled = await client.call_tool("test_sampling", {"prompt": "hi"})
    assert isinstance(sampled.content[0], types.TextContent)
    assert sampled.content[0].text == "LLM response: sampled"
    elicited = await client.call_tool("test_elicitation", {"message": "who?"})
    assert isinstance(elicited.content[0], types.TextContent)
    assert elicited.content[0].text.startswith("Elicitation completed: action=accept")
    reported: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
    assert reported == [0, 50, 100]
    await client.call_tool("test_tool_with_logging", {})
    with anyio.fail_after(5):
        while len(logs) < 3:
            await anyio.sleep(0.02)
    assert logs == ["Tool execution started", "Tool processing data", "Tool execution completed"]


def _relaying_client(target: StdioServerParameters | str, logs: list[Any], **kwargs: Any) -> Client:
    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    return Client(
        target,
        sampling_callback=_sampling,
        elicitation_callback=_elicitation,
        logging_callback=on_log,
        log_level="debug",
        **kwargs,
    )


@pytest.mark.anyio
@pytest.mark.parametrize(("mode", "version"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_everything_relays_input_and_notifications(mode: str, version: str, everything_url: str) -> None:
    """Sampling/elicitation mid-call (2025-11-25) or via InputRequiredResult (2026-07-28)."""
    logs: list[Any] = []
    async with _relaying_client(everything_url, logs, mode=mode) as client:
        assert client.protocol_version == version
        await _check_relays(client, logs)


@pytest.mark.anyio
async def test_everything_legacy_flag_refuses_discover_over_stdio() -> None:
    logs: list[Any] = []
    async with _relaying_client(stdio("everything", "--legacy"), logs) as client:
        assert client.protocol_version == "2025-11-25"
        await _check_relays(client, logs)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_everything_refuses_sampling_without_the_capability(mode: str, everything_url: str) -> None:
    async with Client(everything_url, mode=mode) as client:
        result = await client.call_tool("test_sampling", {"prompt": "hi"})
        assert result.is_error


@pytest.mark.anyio
async def test_fast_http_in_both_modes() -> None:
    with http_server("fast_http") as url:
        for mode, version in (("auto", "2026-07-28"), ("legacy", "2025-11-25")):
            async with Client(url, mode=mode) as client:
                assert client.protocol_version == version
                assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
                result = await client.call_tool("echo", {"text": "fast"})
                assert isinstance(result.content[0], types.TextContent)
                assert result.content[0].text == "fast"
                with pytest.raises(MCPError):
                    await client.call_tool("nope", {})


@asynccontextmanager
async def _connected(module: str, *args: str, timeout: float | None = 0.3) -> AsyncIterator[Client]:
    async with Client(stdio(module, *args), read_timeout_seconds=timeout) as client:
        yield client


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["after-init", "not-jsonrpc", "wrong-id"])
async def test_garbage_after_a_good_handshake_fails_calls(mode: str) -> None:
    with anyio.fail_after(10), pytest.raises(Exception):  # noqa: B017 - any failure, never a hang
        async with _connected("garbage", "--mode", mode) as client:
            assert client.protocol_version == "2025-11-25"
            await client.list_tools()


@pytest.mark.anyio
async def test_garbage_bytes_never_connect() -> None:
    # The SDK stdio client's reader dies on the invalid UTF-8 while initialize keeps waiting:
    # whoever connects to such a server needs its own connect deadline, as here.
    with pytest.raises(Exception), anyio.fail_after(0.5):  # noqa: B017 - TimeoutError or the reader's crash
        async with _connected("garbage"):
            pass


@pytest.mark.anyio
async def test_hang_lists_but_never_answers_calls() -> None:
    async with _connected("hang", timeout=None) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["hang"]
        with anyio.move_on_after(0.3) as scope:
            await client.call_tool("hang", {})
        assert scope.cancelled_caught
