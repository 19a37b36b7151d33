"""Client-side conformance harness: toolcrib is the MCP client under test.

    python -m tests.conformance.client <server-url>

The official suite (``conformance client --command "python -m tests.conformance.client" --scenario S
[--spec-version V]``) starts a test server for scenario S and runs this with the server's URL
appended, ``MCP_CONFORMANCE_SCENARIO=S`` and (when a version was asked) ``MCP_CONFORMANCE_PROTOCOL_VERSION``.

This harness writes a temporary config with that URL as toolcrib's only upstream (passthrough,
``keep_names = true``, a free port), starts ``toolcrib --config X serve`` as a child, waits for
``/healthz``, performs the scenario's action *through the gateway* with the SDK ``Client`` (a
2025-11-25 session for dated versions up to 2025-11-25, 2026-07-28 otherwise), then stops the child
by its PID. Everything the scenario server sees is therefore sent by toolcrib's upstream client.

Exit status 0 when the action completed, 1 otherwise (the suite grades the checks itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client

ROOT = Path(__file__).resolve().parents[2]
TOOLCRIB = ROOT / ".venv" / "bin" / "toolcrib"
STARTUP = 60.0
MODERN = "2026-07-28"

Action = Callable[[Client], Awaitable[None]]

# Values for x-mcp-header parameters by property name (http-custom-headers), chosen to exercise
# the plain, numeric, boolean and base64 encodings (SEP-2243 "Value Encoding").
HEADER_VALUES: dict[str, Any] = {
    "region": "us-west1",
    "priority": 5,
    "verbose": True,
    "debug": False,
    "empty_val": "",
    "method_val": "POST",
    "non_ascii_val": "héllo wörld",
    "whitespace_val": "  padded  ",
    "leading_space_val": " leading",
    "trailing_space_val": "trailing ",
    "internal_space_val": "a b c",
    "control_char_val": "a\x01b",
    "crlf_val": "line1\r\nline2",
    "tab_val": "\tindented",
    "query": "plain query",
    "float_val": 1.5,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(url: str, port: int, state: Path) -> str:
    return f"""
[gateway]
host = "127.0.0.1"
port = {port}
mode = "passthrough"
keep_names = true
auth = "none"

[index]
path = {json.dumps(str(state / "index"))}

[audit]
path = {json.dumps(str(state / "audit.db"))}

[auth]
keys_path = {json.dumps(str(state / "keys.json"))}

[policy]
pins_path = {json.dumps(str(state / "pins.json"))}
approvals_path = {json.dumps(str(state / "approvals.db"))}

[servers.upstream]
url = {json.dumps(url)}
"""


@contextlib.contextmanager
def gateway(url: str) -> Iterator[str]:
    """Start toolcrib in front of ``url``; yield its /mcp URL; stop it (by its PID) on exit."""
    with tempfile.TemporaryDirectory(prefix="toolcrib-conf-") as tmp:
        state = Path(tmp)
        port = _free_port()
        config = state / "toolcrib.toml"
        config.write_text(_config(url, port, state))
        proc = subprocess.Popen(
            [str(TOOLCRIB), "--config", str(config), "serve"], cwd=state, stdin=subprocess.DEVNULL, stdout=sys.stderr
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_healthy(base, proc)
            yield base + "/mcp"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_healthy(base: str, proc: subprocess.Popen[bytes]) -> None:
    """Until /healthz reports the upstream connected ("ok"); a degraded gateway is used anyway after the wait."""
    deadline = time.monotonic() + STARTUP
    answered = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"toolcrib exited with {proc.returncode} before serving; see its output above")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as resp:
                answered = True
                if json.loads(resp.read()).get("status") == "ok":
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    if not answered:
        raise SystemExit(f"toolcrib did not answer {base}/healthz within {STARTUP:g} s")


# ---- the end client's side (what a user's client would answer) -------------------------------


async def _elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    """Accept, filling every property that has a default (SEP-1034)."""
    schema = getattr(params, "requested_schema", None) or {}
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    content = {k: v["default"] for k, v in props.items() if isinstance(v, dict) and "default" in v}
    for key, prop in props.items():
        if key not in content and isinstance(prop, dict) and prop.get("type") == "boolean":
            content[key] = True
    return types.ElicitResult(action="accept", content=content)


async def _sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="ok"), model="conformance-harness"
    )


# ---- scenario actions ----------------------------------------------------------------------


def _args_for(tool: types.Tool) -> dict[str, Any]:
    """Arguments for ``tool`` from its input schema: known header values by name, else a value of the type."""
    props = tool.input_schema.get("properties") or {}
    args: dict[str, Any] = {}
    for name, prop in props.items():
        if name in HEADER_VALUES:
            args[name] = HEADER_VALUES[name]
            continue
        kind = prop.get("type") if isinstance(prop, dict) else None
        args[name] = {"number": 1.5, "integer": 3, "boolean": True, "object": {}, "array": [], "null": None}.get(
            kind if isinstance(kind, str) else "", "abc"
        )
    return args


async def call_every_tool(c: Client) -> None:
    """List the tools and call each with arguments from its schema (one at a time, in listed order)."""
    for tool in (await c.list_tools()).tools:
        args = _args_for(tool)
        if tool.name == "test_custom_headers_null":
            args.pop("verbose", None)
        result = await c.call_tool(tool.name, args)
        print(f"{tool.name}: {'error' if result.is_error else 'ok'}", file=sys.stderr)


async def list_only(c: Client) -> None:
    await c.list_tools()


async def standard_headers(c: Client) -> None:
    await call_every_tool(c)
    for resource in (await c.list_resources()).resources:
        await c.read_resource(str(resource.uri))
    for prompt in (await c.list_prompts()).prompts:
        await c.get_prompt(prompt.name, {})


async def request_state(c: Client) -> None:
    """MRTR: the flows first, the unrelated call between them, then the default-resultType tool."""
    for name in ("test_mrtr_echo_state", "test_mrtr_unrelated", "test_mrtr_no_state", "test_mrtr_no_result_type"):
        result = await c.call_tool(name, {})
        print(f"{name}: {'error' if result.is_error else 'ok'}", file=sys.stderr)


ACTIONS: dict[str, Action] = {
    "initialize": list_only,
    "request-metadata": call_every_tool,
    "http-standard-headers": standard_headers,
    "sep-2322-client-request-state": request_state,
}


async def run(url: str, scenario: str, version: str | None) -> None:
    action = ACTIONS.get(scenario, call_every_tool)
    mode = "auto" if version in (None, "", MODERN) else "legacy"
    with gateway(url) as gw:
        async with Client(gw, mode=mode, elicitation_callback=_elicit, sampling_callback=_sample) as c:
            await action(c)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m tests.conformance.client <server-url>", file=sys.stderr)
        return 2
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    version = os.environ.get("MCP_CONFORMANCE_PROTOCOL_VERSION")
    try:
        anyio.run(run, args[-1], scenario, version)
    except Exception as exc:  # the suite reads the exit status; say why on stderr
        print(f"conformance client: scenario {scenario or '?'} failed: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
