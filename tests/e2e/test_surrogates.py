"""A lone surrogate in what a client sends: ``"\\ud800"`` is JSON syntax, and :func:`json.loads`
accepts it, but it is not Unicode text and has no UTF-8 form (RFC 8259 section 8.2; I-JSON, RFC 7493
section 2.1, forbids it). orjson and pydantic (the SDK's parser, so every stdio path) refuse it; the
HTTP edge's parser refuses it too, so no layer behind the chokepoint (policy, redaction, approvals,
the upstream edge, audit) ever meets one. A real gateway, both modes, a secret registered with the
redactor: every such request gets a one-line -32700, never a 500; a surrogate *pair* sent as escapes
is ordinary text end to end; and the audit chain verifies afterwards."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import stdio_server
from tests.e2e.test_stateless_rules import rpc
from tests.e2e.test_trust import CANARY, ECHO, keyed_audit_log, trusted_gateway

pytestmark = pytest.mark.anyio

LONE = ["\ud800", "\udfff", "x\udc80y", "\ud83d"]  # high, low, inside text, half a pair


@pytest.mark.parametrize("mode", ["passthrough", "dispatcher"])
async def test_lone_surrogates_are_refused_at_the_edge_and_pairs_pass(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLCRIB_SECRET_ECHO_TOKEN", CANARY)  # the redactor has a secret to look for
    servers = {"echo": stdio_server(ECHO, env={"ECHO_TOKEN": "secret:echo/token"})}
    async with trusted_gateway(tmp_path, mode, servers) as (rt, tokens), aiohttp.ClientSession() as s:
        auth = {"Authorization": f"Bearer {tokens['alice']}"}

        def call(tool: str, arguments: dict[str, object]) -> dict[str, object]:
            if mode == "dispatcher":
                return {"name": "invoke", "arguments": {"tool": tool, "arguments": arguments}}
            return {"name": tool, "arguments": arguments}

        for rid, text in enumerate(LONE, start=1):
            for params in (
                call("echo__echo", {"text": text}),
                call("echo__sleep", {"seconds": 0.01, text: 1}),  # a rule holds this tool for approval
                {"name": text, "arguments": {}},
                {"name": "search_tools", "arguments": {"query": f"{text} echo"}},
            ):
                status, out = await rpc(s, rt.url, "tools/call", params, headers=auth, rid=rid)
                assert status == 400 and out, (params, status, out)
                error = out[-1]["error"]
                assert error["code"] == -32700 and "lone surrogate" in error["message"], error
                assert "\n" not in error["message"]
        status, out = await rpc(s, rt.url, "tools/call", call("echo__echo", {"text": "\ud83d\ude00 ok"}), headers=auth)
        assert status == 200 and "\U0001f600 ok" in str(out[-1]["result"]), out  # json.dumps sent the pair escaped
    log = keyed_audit_log(rt.config)
    calls = [r for r in log.query(limit=1000) if r["kind"] == "call"]
    assert len(calls) == 1 and calls[0]["completed"] is not None and calls[0]["outcome"] == "ok"
    report = log.verify()
    assert report.ok, report.problems
