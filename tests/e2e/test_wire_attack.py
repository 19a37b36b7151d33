"""Hostile upstream answers on toolcrib's own ``tools/call`` framing (toolcrib/router/wire.py).

A real gateway in front of a real raw stdio upstream (this module, run as ``python -m
tests.e2e.test_wire_attack``: newline-delimited JSON-RPC, 2025-11-25 handshake, so ``tools/call``
goes by the wire). Each tool misbehaves in one way; every test then checks that the hostile call
ends as a result or a tool error (never the gateway's own -32603) and that the *next* call on the
same upstream still works (the connection was not torn down by the gateway's read path).

Tools of the fixture (``atk__NAME``):
  ok                  -> text "ok"
  progress_overflow   -> notifications/progress with progress = 10**400 (an exact JSON integer), then "done"
  total_overflow      -> notifications/progress with progress 1 and total = 10**400, then "done"
  die                 -> the child exits mid-call (no answer)
  progress_race       -> a progress note immediately followed by the answer ("raced")
  twice               -> the same answer sent twice
  hold / steal        -> hold is left unanswered; steal answers hold's id ("stolen"), then its own
                         ("thief"), then hold's id again ("late") and an integer id 1 ("int-id")
  bad_shape           -> result {"content": 5} (not a CallToolResult)
  not_dict            -> result [1]
  deep                -> structuredContent nested 5,000 levels deep
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.e2e.conftest import GatewayFactory, stdio_server
from toolcrib.app import Running

pytestmark = pytest.mark.anyio

MODULE = "tests.e2e.test_wire_attack"
HUGE = "1" + "0" * 400
TOOLS = [
    "ok",
    "die",
    "progress_race",
    "progress_overflow",
    "total_overflow",
    "twice",
    "hold",
    "steal",
    "bad_shape",
    "not_dict",
    "deep",
]


# ---- the fixture (runs in the child) ---------------------------------------------------------


def _text(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def _serve() -> None:  # pragma: no cover - runs as the upstream child
    from tests.servers import _raw

    held: list[Any] = []
    tools = [{"name": n, "description": f"attack {n}", "inputSchema": {"type": "object"}} for n in TOOLS]
    for rid, params in _raw.tool_calls("toolcrib-wire-attack", tools, {"tools": {}}):
        name = params.get("name")
        token = json.dumps((params.get("_meta") or {}).get("progressToken"))
        if name == "progress_overflow" or name == "total_overflow":
            progress, total = (HUGE, "2") if name == "progress_overflow" else ("1", HUGE)
            note = (
                '{"jsonrpc":"2.0","method":"notifications/progress","params":'
                f'{{"progressToken":{token},"progress":{progress},"total":{total}}}}}\n'
            )
            _raw.write_bytes(note.encode())
            _raw.result(rid, _text("done"))
        elif name == "die":
            os._exit(3)
        elif name == "progress_race":
            note = {"progressToken": json.loads(token), "progress": 1, "total": 1}
            _raw.write({"jsonrpc": "2.0", "method": "notifications/progress", "params": note})
            _raw.result(rid, _text("raced"))
        elif name == "twice":
            _raw.result(rid, _text("first"))
            _raw.result(rid, _text("second"))
        elif name == "hold":
            held.append(rid)
        elif name == "steal":
            victim = held.pop() if held else "tc-0"
            _raw.result(victim, _text("stolen"))
            _raw.result(rid, _text("thief"))
            _raw.result(victim, _text("late"))
            _raw.result(1, _text("int-id"))
        elif name == "bad_shape":
            _raw.result(rid, {"content": 5})
        elif name == "not_dict":
            _raw.write({"jsonrpc": "2.0", "id": rid, "result": [1]})
        elif name == "deep":
            body = '{"content":[],"structuredContent":{"v":' + "[" * 5000 + "]" * 5000 + "}}"
            _raw.write_bytes(('{"jsonrpc":"2.0","id":' + json.dumps(rid) + ',"result":' + body + "}\n").encode())
        else:
            _raw.result(rid, _text("ok"))


# ---- the tests -------------------------------------------------------------------------------


@asynccontextmanager
async def attack_gateway(gateway: GatewayFactory, **extra: Any) -> AsyncIterator[Running]:
    async with gateway({"atk": stdio_server(MODULE, "--serve", **extra)}) as rt:
        assert rt.pool.upstream("atk").state.protocol_version == "2025-11-25"
        yield rt


def _body(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def _outcome(c: Client, tool: str, **kw: Any) -> str:
    """``result:TEXT``, ``tool-error:TEXT`` or ``rpc-error:CODE`` (with a 20 s deadline)."""
    try:
        with anyio.fail_after(20):
            result = await c.call_tool(f"atk__{tool}", {}, **kw)
    except MCPError as exc:
        return f"rpc-error:{exc.error.code}:{exc.error.message[:120]}"
    return ("tool-error:" if result.is_error else "result:") + _body(result)[:200]


async def _still_works(c: Client) -> None:
    assert await _outcome(c, "ok") == "result:ok"


async def _progress(progress: float, total: float | None, message: str | None) -> None:
    return None


@pytest.mark.parametrize("tool", ["progress_overflow", "total_overflow"])
async def test_progress_with_an_integer_beyond_float_range_is_dropped(gateway: GatewayFactory, tool: str) -> None:
    async with attack_gateway(gateway) as rt, Client(rt.url, mode="legacy") as c:
        await _still_works(c)
        assert await _outcome(c, tool, progress_callback=_progress) == "result:done"
        await _still_works(c)


async def test_the_child_dying_mid_call_is_a_tool_error_and_the_next_call_works(gateway: GatewayFactory) -> None:
    async with attack_gateway(gateway) as rt, Client(rt.url, mode="legacy") as c:
        assert (await _outcome(c, "die")).startswith("tool-error:")
        with anyio.fail_after(30):
            while await _outcome(c, "ok") != "result:ok":
                await anyio.sleep(0.5)


async def test_progress_racing_the_answer_keeps_the_connection(gateway: GatewayFactory) -> None:
    """Progress is relayed from a task of the back channel's: one that runs after the call has
    answered must not take the upstream connection (every principal's calls) down."""
    async with attack_gateway(gateway) as rt, Client(rt.url, mode="legacy") as c:
        for _ in range(30):
            assert await _outcome(c, "progress_race", progress_callback=_progress) == "result:raced"
        await _still_works(c)
        assert rt.pool.upstream("atk").state.connects == 1


async def test_an_answer_sent_twice_is_taken_once(gateway: GatewayFactory) -> None:
    async with attack_gateway(gateway) as rt, Client(rt.url, mode="legacy") as c:
        assert await _outcome(c, "twice") == "result:first"
        await _still_works(c)


async def test_answers_with_a_concurrent_calls_id_and_an_integer_id(gateway: GatewayFactory) -> None:
    """An upstream decides every answer it sends: answering another in-flight call's id settles that
    call (as on the SDK path). What must hold: the late second answer and the integer id are dropped,
    nothing hangs, and the upstream keeps working."""
    async with attack_gateway(gateway) as rt, Client(rt.url, mode="legacy") as c:
        outcomes: dict[str, str] = {}

        async def run(tool: str) -> None:
            outcomes[tool] = await _outcome(c, tool)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "hold")
            await anyio.sleep(0.5)
            tg.start_soon(run, "steal")
        assert outcomes == {"hold": "result:stolen", "steal": "result:thief"}, outcomes
        await _still_works(c)


async def test_an_unparsable_answer_ends_at_the_deadline_as_a_tool_error(gateway: GatewayFactory) -> None:
    """An answer the stdio transport cannot parse at all (5,000-deep nesting) is dropped as a
    non-JSON line: the call ends at its deadline (``timeout``) as a tool error, and the upstream
    keeps working."""
    async with attack_gateway(gateway, timeout=3) as rt, Client(rt.url, mode="legacy") as c:
        outcome = await _outcome(c, "deep")
        assert outcome.startswith("tool-error:"), outcome
        await _still_works(c)


async def test_an_answer_whose_result_is_not_an_object_fails_the_call_at_once(gateway: GatewayFactory) -> None:
    """A well-formed line answering the call with ``result`` not an object fails it at once with
    -32603 naming the upstream (as over Streamable HTTP), instead of waiting for the deadline;
    the upstream keeps working."""
    async with attack_gateway(gateway, timeout=30) as rt, Client(rt.url, mode="legacy") as c:
        with anyio.fail_after(10):  # well inside the 30 s deadline: answered, not timed out
            outcome = await _outcome(c, "not_dict")
        assert outcome == "rpc-error:-32603:upstream atk sent a malformed answer", outcome
        await _still_works(c)


async def test_a_result_that_is_not_a_call_tool_result_is_a_tool_error(gateway: GatewayFactory) -> None:
    async with attack_gateway(gateway) as rt, Client(rt.url, mode="legacy") as c:
        outcome = await _outcome(c, "bad_shape")
        assert outcome.startswith("tool-error:"), outcome
        await _still_works(c)


async def test_a_locked_audit_log_does_not_freeze_the_event_loop(gateway: GatewayFactory, tmp_path: Path) -> None:
    hold = 3.0
    async with attack_gateway(gateway) as rt, Client(rt.url, mode="legacy") as c:
        await _still_works(c)
        other = sqlite3.connect(tmp_path / "audit.db", isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")  # another writer (a prune) holds the write lock for `hold` seconds
            released: list[str] = []

            def unlock() -> None:
                try:
                    other.rollback()
                    released.append(f"ok in_tx={other.in_transaction}")
                except Exception as exc:
                    released.append(repr(exc))

            release = threading.Timer(hold, unlock)
            gaps: list[float] = []

            async def ticker() -> None:
                last = time.monotonic()
                for _ in range(int(hold / 0.1) + 20):
                    await anyio.sleep(0.1)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                await anyio.sleep(0.3)
                release.start()
                await _still_works(c)  # waits for its attempt row: fine; the loop must keep turning meanwhile
            release.join()
        finally:
            other.close()
        # the loop stalled for about `hold` seconds when the commit ran on it
        assert max(gaps) < hold / 2, f"event loop blocked for {max(gaps):.1f} s {released}"


if __name__ == "__main__" and "--serve" in sys.argv:
    _serve()
