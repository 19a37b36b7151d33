"""Attack review of PostgreSQL scale-out (issue 12): two in-process replicas on one real database.

Strict xfails are confirmed problems; plain tests are regressions that hold today.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import psycopg
import pytest

from tests.e2e.conftest import approval_store, key_store, make_config, stdio_server
from toolcrib.app import Running, running_gateway
from toolcrib.index.embedder import HashingEmbedder

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.replicas,  # scale-out suites: `make replicas` (and .ci/run), not `make test`
    pytest.mark.skipif(
        os.environ.get("TOOLCRIB_TEST_STORAGE") == "postgresql",
        reason="PostgreSQL-only already: run once, by make test",
    ),
]

ECHO = "tests.servers.echo"
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "attack", "version": "1"}},
}
RULES = [{"id": "sleep-needs-approval", "tools": ["echo__sleep"], "action": "approve"}]


@pytest.fixture(autouse=True)
def shared_audit_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLCRIB_SECRET_TOOLCRIB_AUDIT_HMAC", "ab" * 32)


@asynccontextmanager
async def pair(
    tmp_path: Path, pg_url: str, *, storage: dict[str, Any] | None = None, **gateway: Any
) -> AsyncIterator[tuple[list[Running], dict[str, str]]]:
    """Two replicas (auth = keys, passthrough) on ``pg_url``; keys alice (admins) and bob (guests)."""
    gateway.setdefault("mode", "passthrough")
    policy = {"rules": RULES, "default": "allow", "approval_mode": "pending"}
    async with AsyncExitStack() as stack:
        out: list[Running] = []
        tokens: dict[str, str] = {}
        for i in range(2):
            cfg = make_config({"echo": stdio_server(ECHO)}, tmp_path / f"r{i}", policy, auth="keys", **gateway)
            cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"url": pg_url, **(storage or {})})})
            if i == 0:
                keys = key_store(cfg)
                tokens = {"alice": keys.add("alice", ["admins"]), "bob": keys.add("bob", ["guests"])}
            rt = await stack.enter_async_context(running_gateway(cfg, connect_wait=20, embedder=HashingEmbedder()))
            if rt.reindexer is not None:
                await rt.reindexer.sync({"echo"})
            out.append(rt)
        yield out, tokens


def _h(token: str, sid: str | None = None) -> dict[str, str]:
    return {**HEADERS, "Authorization": f"Bearer {token}", **({"Mcp-Session-Id": sid} if sid else {})}


async def rpc(s: aiohttp.ClientSession, url: str, body: dict[str, Any], token: str, sid: str | None) -> tuple[int, Any]:
    async with s.post(url, data=json.dumps(body), headers=_h(token, sid)) as r:
        text = await r.text()
        if r.headers.get("Content-Type", "").startswith("text/event-stream"):
            datas = [json.loads(ln[5:]) for ln in text.splitlines() if ln.startswith("data:") and ln[5:].strip()]
            return r.status, next((d for d in datas if "id" in d), datas[-1] if datas else None)
        return r.status, (json.loads(text) if text.strip().startswith("{") else text)


async def open_session(s: aiohttp.ClientSession, url: str, token: str) -> str:
    async with s.post(url, data=json.dumps(INIT), headers=_h(token)) as r:
        assert r.status == 200, await r.text()
        sid = r.headers["Mcp-Session-Id"]
    status, _ = await rpc(s, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, token, sid)
    assert status == 202
    return sid


def tools_list(i: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": i, "method": "tools/list"}


async def test_a_session_of_alice_is_refused_to_bob_on_every_replica_and_dies_with_her_key(
    tmp_path: Path, pg_url: str
) -> None:
    async with pair(tmp_path, pg_url) as ((a, b), tok), aiohttp.ClientSession() as s:
        sid = await open_session(s, a.url, tok["alice"])
        for rt in (b, a):  # B has never seen it (adoption path), A holds it
            status, _ = await rpc(s, rt.url, tools_list(2), tok["bob"], sid)
            assert status == 403
            async with s.get(rt.url, headers={**_h(tok["bob"], sid), "Accept": "text/event-stream"}) as r:
                assert r.status == 403
            async with s.delete(rt.url, headers=_h(tok["bob"], sid)) as r:
                assert r.status == 403
        status, _ = await rpc(s, b.url, tools_list(3), tok["alice"], sid)
        assert status == 200  # bob's attempts did not break it
        await anyio.to_thread.run_sync(lambda: key_store(a.config).revoke("alice"))
        with anyio.fail_after(5):
            for rt in (a, b):
                while (await rpc(s, rt.url, tools_list(4), tok["alice"], sid))[0] != 401:
                    await anyio.sleep(0.05)


async def test_delete_on_one_replica_ends_the_session_on_the_other(tmp_path: Path, pg_url: str) -> None:
    async with pair(tmp_path, pg_url) as ((a, b), tok), aiohttp.ClientSession() as s:
        sid = await open_session(s, a.url, tok["alice"])
        assert (await rpc(s, b.url, tools_list(2), tok["alice"], sid))[0] == 200  # B adopted it
        async with s.delete(b.url, headers=_h(tok["alice"], sid)) as r:
            assert r.status == 204
        for rt in (a, b):
            assert (await rpc(s, rt.url, tools_list(3), tok["alice"], sid))[0] == 404


async def test_post_and_delete_racing_on_two_replicas_never_500(tmp_path: Path, pg_url: str) -> None:
    async with pair(tmp_path, pg_url) as ((a, b), tok), aiohttp.ClientSession() as s:
        statuses: list[int] = []
        for _ in range(20):
            sid = await open_session(s, a.url, tok["alice"])

            async def post(url: str, sid: str = sid) -> None:
                statuses.append((await rpc(s, url, tools_list(9), tok["alice"], sid))[0])

            async def delete(sid: str = sid) -> None:
                async with s.delete(b.url, headers=_h(tok["alice"], sid)) as r:
                    statuses.append(r.status)

            async with anyio.create_task_group() as tg:
                tg.start_soon(post, a.url)
                tg.start_soon(post, b.url)
                tg.start_soon(delete)
        assert all(st in (200, 204, 404) for st in statuses), statuses


async def test_an_active_session_outlives_a_short_session_ttl(tmp_path: Path, pg_url: str) -> None:
    async with pair(tmp_path, pg_url, session_ttl=4.0) as ((a, b), tok), aiohttp.ClientSession() as s:
        sid = await open_session(s, a.url, tok["alice"])
        statuses = []
        for i in range(10):  # one request every second, never idle for 4 s
            statuses.append((await rpc(s, (a, b)[i % 2].url, tools_list(10 + i), tok["alice"], sid))[0])
            await anyio.sleep(1.0)
        assert statuses == [200] * 10, statuses


async def test_an_idle_session_expires_on_every_replica(tmp_path: Path, pg_url: str) -> None:
    async with pair(tmp_path, pg_url, session_ttl=2.0) as ((a, b), tok), aiohttp.ClientSession() as s:
        sid = await open_session(s, a.url, tok["alice"])
        await anyio.sleep(3.0)
        for rt in (b, a):
            assert (await rpc(s, rt.url, tools_list(2), tok["alice"], sid))[0] == 404


def _db_away(pg_url: str, allow: bool) -> None:
    """Make this test's database refuse new connections and drop the open ones (or allow them again)."""
    dbname = pg_url.rsplit("/", 1)[1]
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS {"true" if allow else "false"}')
        if not allow:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )


async def test_a_request_while_the_database_is_away_is_a_clear_503_and_recovers(tmp_path: Path, pg_url: str) -> None:
    async with (
        pair(tmp_path, pg_url, storage={"connect_timeout": 2.0}) as ((a, b), tok),
        aiohttp.ClientSession() as s,
    ):
        sid = await open_session(s, a.url, tok["alice"])
        _db_away(pg_url, allow=False)
        try:
            with anyio.fail_after(30):
                async with s.get(f"http://127.0.0.1:{b.port}/readyz") as r:
                    assert r.status == 503
                status, body = await rpc(s, b.url, tools_list(2), tok["alice"], sid)
        finally:
            _db_away(pg_url, allow=True)
        with anyio.fail_after(30):
            while (await rpc(s, b.url, tools_list(3), tok["alice"], sid))[0] != 200:
                await anyio.sleep(0.2)
        assert status == 503, (status, body)


async def test_an_approval_is_used_once_across_replicas_and_never_by_another_principal(
    tmp_path: Path, pg_url: str
) -> None:
    call = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": "echo__sleep", "arguments": {"seconds": 0.01}},
    }
    async with pair(tmp_path, pg_url) as ((a, b), tok), aiohttp.ClientSession() as s:
        alice_a = await open_session(s, a.url, tok["alice"])
        alice_b = await open_session(s, b.url, tok["alice"])
        bob_b = await open_session(s, b.url, tok["bob"])
        _, first = await rpc(s, a.url, call, tok["alice"], alice_a)
        text = first["result"]["content"][0]["text"]
        assert first["result"]["isError"] and "approval" in text, first
        approval_id = text.split("(id ", 1)[1].split(",", 1)[0]
        store = approval_store(a.config)
        try:
            store.approve(approval_id, "key:alice")
        finally:
            store.close()
        _, bobs = await rpc(s, b.url, call, tok["bob"], bob_b)  # same tool and arguments, other principal
        assert bobs["result"]["isError"], bobs
        results: list[Any] = []

        async def go(url: str, sid: str) -> None:
            results.append((await rpc(s, url, call, tok["alice"], sid))[1])

        async with anyio.create_task_group() as tg:
            tg.start_soon(go, a.url, alice_a)
            tg.start_soon(go, b.url, alice_b)
        assert sorted(bool(r["result"].get("isError")) for r in results) == [False, True], results


async def test_two_replicas_under_load_keep_one_verifiable_audit_chain_and_a_forged_row_is_caught(
    tmp_path: Path, pg_url: str
) -> None:
    echo = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "echo__echo", "arguments": {"text": "x"}},
    }
    async with pair(tmp_path, pg_url) as ((a, b), tok), aiohttp.ClientSession() as s:
        sids = [await open_session(s, rt.url, tok["alice"]) for rt in (a, b, a, b)]

        async def load(i: int) -> None:
            for _ in range(10):
                status, _ = await rpc(s, (a, b)[i % 2].url, echo, tok["alice"], sids[i])
                assert status == 200

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(load, i)
        cfg_path = tmp_path / "toolcrib.toml"
        cfg_path.write_text(f'[storage]\nurl = "{pg_url}"\n[audit]\npath = "{tmp_path / "unused.db"}"\n')
    import subprocess
    import sys

    def verify() -> subprocess.CompletedProcess[str]:
        exe = str(Path(sys.executable).with_name("toolcrib"))
        return subprocess.run(
            [exe, "--config", str(cfg_path), "audit", "verify"], capture_output=True, text=True, timeout=120
        )

    ok = await anyio.to_thread.run_sync(verify)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    mid = "(SELECT max(seq) / 2 FROM audit_events)"
    with psycopg.connect(pg_url, autocommit=True) as conn:  # an attacker with the database's superuser
        conn.execute("SET session_replication_role = replica")  # the append-only trigger is off
        row = conn.execute(f"SELECT principal FROM audit_events WHERE seq = {mid}").fetchone()
        assert row is not None
        conn.execute(f"UPDATE audit_events SET principal = 'key:mallory' WHERE seq = {mid}")
    bad = await anyio.to_thread.run_sync(verify)
    assert bad.returncode != 0, bad.stdout + bad.stderr
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(f"UPDATE audit_events SET principal = %s WHERE seq = {mid}", (row[0],))
    assert (await anyio.to_thread.run_sync(verify)).returncode == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a forged row appended after the head
        conn.execute(
            "INSERT INTO audit_events (seq, ts, kind, principal, prev_hash, hash)"
            " SELECT max(seq) + 1, 0, 'call', 'key:mallory', 'x', 'y' FROM audit_events"
        )
    bad = await anyio.to_thread.run_sync(verify)
    assert bad.returncode != 0, bad.stdout + bad.stderr


async def test_a_relayed_notification_reaches_only_its_own_sessions_get_stream(tmp_path: Path, pg_url: str) -> None:
    """alice's list_changed produced on A is relayed: alice's GET stream on B gets it, bob's on B never."""
    async with pair(tmp_path, pg_url, mode="dispatcher") as ((a, b), tok), aiohttp.ClientSession() as s:
        alice = await open_session(s, a.url, tok["alice"])
        bob = await open_session(s, b.url, tok["bob"])
        got: dict[str, list[Any]] = {"alice": [], "bob": []}
        opened = {"alice": anyio.Event(), "bob": anyio.Event()}

        async def hold(who: str, sid: str) -> None:
            async with s.get(b.url, headers={**_h(tok[who], sid), "Accept": "text/event-stream"}) as r:
                assert r.status == 200
                opened[who].set()
                async for line in r.content:
                    text = line.decode().strip()
                    if text.startswith("data:") and text[5:].strip():
                        got[who].append(json.loads(text[5:]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold, "alice", alice)
            tg.start_soon(hold, "bob", bob)
            with anyio.fail_after(10):
                await opened["alice"].wait()
                await opened["bob"].wait()
            call = {"name": "search_tools", "arguments": {"query": "echo text back", "limit": 2}}
            body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": call}
            status, answer = await rpc(s, a.url, body, tok["alice"], alice)
            assert status == 200, answer
            with anyio.fail_after(10):
                while not got["alice"]:
                    await anyio.sleep(0.05)
            await anyio.sleep(2.0)
            tg.cancel_scope.cancel()
        assert got["alice"][0]["method"] == "notifications/tools/list_changed"
        assert got["bob"] == []
