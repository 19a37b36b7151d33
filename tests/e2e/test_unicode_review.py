"""Review of the lone-surrogate / NUL handling: client text that reaches a PostgreSQL text or jsonb
column without passing through the audit log's escaping (:mod:`toolcrib.gateway.audit.text`).

The HTTP edge refuses lone surrogates (-32700) but accepts U+0000 (``"\\u0000"`` is valid JSON,
RFC 8259 section 7), and PostgreSQL stores neither U+0000 in ``text`` nor ``\\u0000`` in ``jsonb``.
Each was a confirmed problem (a 503 or 500), fixed in storage/postgres.py (U+0000 stored as U+FFFD
by every pooled connection); kept as regression tests. Two in-process
replicas on one real PostgreSQL database (the same set-up as ``test_replicas_attack.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_replicas_attack import INIT, open_session, pair, rpc, shared_audit_key

__all__ = ["shared_audit_key"]  # the autouse fixture (shared audit key) applies here too

pytestmark = [pytest.mark.anyio]  # in-process replicas on PostgreSQL: no nginx, so in make test

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
HELD = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {"name": "echo__sleep", "arguments": {"seconds": 0.01}},
}


async def _held_approval(s: aiohttp.ClientSession, url: str, token: str) -> str:
    sid = await open_session(s, url, token)
    _, first = await rpc(s, url, HELD, token, sid)
    text = first["result"]["content"][0]["text"]
    assert first["result"]["isError"] and "approval" in text, first
    return str(text.split("(id ", 1)[1].split(",", 1)[0])


async def test_a_lone_surrogate_in_initialize_is_a_parse_error_not_a_500(tmp_path: Path, pg_url: str) -> None:
    """Regression: the edge's loads_json refuses it before any session is stored."""
    body = json.dumps(INIT).replace('"attack"', '"a\\ud800b"').encode()
    async with pair(tmp_path, pg_url) as ((a, _b), tok), aiohttp.ClientSession() as s:
        headers = {**HEADERS, "Authorization": f"Bearer {tok['alice']}"}
        async with s.post(a.url, data=body, headers=headers) as r:
            reply: Any = await r.json(content_type=None)
        assert r.status in (200, 400), r.status
        assert reply["error"]["code"] == -32700 and "surrogate" in reply["error"]["message"], reply


async def test_a_nul_in_client_info_on_shared_sessions_gives_a_working_session(tmp_path: Path, pg_url: str) -> None:
    body = json.dumps(INIT).replace('"attack"', '"a\\u0000b"').encode()
    async with pair(tmp_path, pg_url) as ((a, _b), tok), aiohttp.ClientSession() as s:
        headers = {**HEADERS, "Authorization": f"Bearer {tok['alice']}"}
        async with s.post(a.url, data=body, headers=headers) as r:
            text = await r.text()
            status, sid = r.status, r.headers.get("Mcp-Session-Id")
        assert status == 200 and sid, (status, text)
        status, listed = await rpc(s, a.url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, tok["alice"], sid)
        assert status == 200 and "result" in listed, (status, listed)


async def test_an_approval_note_holding_nul_is_not_a_500(tmp_path: Path, pg_url: str) -> None:
    async with pair(tmp_path, pg_url) as ((a, _b), tok), aiohttp.ClientSession() as s:
        approval_id = await _held_approval(s, a.url, tok["alice"])
        url = a.url.replace("/mcp", f"/admin/approvals/{approval_id}")
        payload = b'{"decision": "approve", "note": "ok\\u0000"}'
        headers = {"Authorization": f"Bearer {tok['alice']}", "Content-Type": "application/json"}
        async with s.post(url, data=payload, headers=headers) as r:
            text = await r.text()
        assert r.status == 200, (r.status, text)  # stored, U+0000 as U+FFFD (storage/postgres.py)


async def test_an_approval_id_holding_nul_is_not_a_500(tmp_path: Path, pg_url: str) -> None:
    async with pair(tmp_path, pg_url) as ((a, _b), tok), aiohttp.ClientSession() as s:
        url = a.url.replace("/mcp", "/admin/approvals/x%00y")
        headers = {"Authorization": f"Bearer {tok['alice']}", "Content-Type": "application/json"}
        async with s.post(url, data=b'{"decision": "deny"}', headers=headers) as r:
            text = await r.text()
        assert r.status in (404, 409), (r.status, text)


async def test_a_nul_in_call_arguments_is_held_recorded_and_verifiable(tmp_path: Path, pg_url: str) -> None:
    """Regression: arguments holding U+0000 reach the approval store (JSON text) and the audit log
    (escaped) on PostgreSQL without an error."""
    call = {**HELD, "params": {"name": "echo__sleep", "arguments": {"seconds": 0.01, "tag": "x\u0000y"}}}
    async with pair(tmp_path, pg_url) as ((a, _b), tok), aiohttp.ClientSession() as s:
        sid = await open_session(s, a.url, tok["alice"])
        status, reply = await rpc(s, a.url, call, tok["alice"], sid)
        assert status == 200 and reply["result"]["isError"] and "approval" in reply["result"]["content"][0]["text"]
        async with s.get(
            a.url.replace("/mcp", "/admin/audit"), headers={"Authorization": f"Bearer {tok['alice']}"}
        ) as r:
            assert r.status == 200, await r.text()
            rows = (await r.json())["events"]
        assert any(row.get("tool") == "echo__sleep" and row.get("kind") == "call" for row in rows), rows
