"""One audit row per forwarded call, through a real gateway and real upstream processes: the
``call`` row is committed (pending) before the upstream sees the call, then completed in place
with the right outcome for ok, tool error, timeout, cancellation and an upstream crash; the log
verifies. Runs on PostgreSQL too (``make test-postgres``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.e2e.conftest import GatewayFactory, audit_log, stdio_server

ECHO = "tests.servers.echo"
pytestmark = pytest.mark.anyio


def calls(rt: Any) -> dict[str, dict[str, Any]]:
    """The ``call`` rows by tool (one each here), read as another process would (committed rows only)."""
    with audit_log(rt.config) as audit:
        rows = audit.query(kind="call", limit=100)
    return {str(r["tool"]): r for r in rows}


async def test_one_row_per_call_with_its_outcome(gateway: GatewayFactory, tmp_path: Path) -> None:
    markers = {"FIXTURE_MARKER_DIR": str(tmp_path)}
    servers = {
        "echo": stdio_server(ECHO, env=markers),
        "slow": stdio_server(ECHO, timeout=1.0),
        "doomed": stdio_server(ECHO),
    }
    async with gateway(servers) as rt, Client(rt.url) as c:
        async with anyio.create_task_group() as tg:  # the row exists before the upstream sees the call
            tg.start_soon(c.call_tool, "echo__sleep", {"seconds": 30, "tag": "held"})
            with anyio.fail_after(10):
                while not (tmp_path / "sleep-held.started").exists():
                    await anyio.sleep(0.02)
            row = calls(rt)["echo__sleep"]
            assert row["outcome"] == "pending" and row["completed"] is None and row["arguments"]["tag"] == "held"
            tg.cancel_scope.cancel()  # the client gives up: cancelled
        assert (await c.call_tool("echo__echo", {"text": "hi"})).is_error is False
        assert (await c.call_tool("echo__add_tool", {"name": "bad name!"})).is_error  # the upstream's tool error
        assert (await c.call_tool("slow__sleep", {"seconds": 30})).is_error  # the 1 s deadline
        assert (await c.call_tool("doomed__crash", {})).is_error
        await rt.parts.writer.flush()
        with anyio.fail_after(10):  # a cancelled call's completion is queued, not awaited
            while calls(rt)["echo__sleep"]["completed"] is None:
                await rt.parts.writer.flush()
                await anyio.sleep(0.05)
    rows = calls(rt)
    outcomes = {tool: row["outcome"] for tool, row in rows.items()}
    assert outcomes == {
        "echo__sleep": "cancelled",
        "echo__echo": "ok",
        "echo__add_tool": "tool_error",
        "slow__sleep": "timeout",
        "doomed__crash": "upstream_crash",
    }
    assert all(r["completed"] is not None and r["seal"] and r["latency_ms"] is not None for r in rows.values())
    assert rows["echo__echo"]["decision"] == "allow" and rows["echo__echo"]["bytes"] == 2
    with audit_log(rt.config) as audit:
        assert not audit.query(kind="attempt") and not audit.query(kind="outcome")  # one row per call
        report = audit.verify()
    assert report.ok, report.problems
