"""The audit explorer after known traffic (alice calls, bob calls and is denied once): filters in a
real browser, a row's record, the chain verified, the export is exactly the filtered rows; and the
query interface it uses (``decision``, ``until``, ``before``) on both backends."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.console.conftest import ConsoleGateway, login, shot_dir
from tests.e2e.conftest import embedded_only
from tests.gateway.test_audit_backends import KEY, backend
from toolcrib.console.pages.audit import first_bad_seq, stored
from toolcrib.gateway.audit.backends import AuditLog
from toolcrib.gateway.audit.events import AuditEvent
from toolcrib.gateway.audit.log import SqliteAuditLog
from toolcrib.gateway.audit.schema import row_hash

__all__ = ["backend"]  # the two-backend fixture (SQLite file, real PostgreSQL)


async def call_as(gw: ConsoleGateway, who: str, tool: str, arguments: dict[str, Any]) -> bool:
    """One ``invoke`` through the gateway as ``who``; True when the result is an error."""
    headers = {"Authorization": f"Bearer {gw.tokens[who]}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(gw.rt.url, http_client=http)) as c,
    ):
        result = await c.call_tool("invoke", {"tool": tool, "arguments": arguments})
    return bool(result.is_error)


async def rows_on_page(page: Any) -> list[dict[str, str]]:
    out = []
    for tr in await page.locator("#audit-rows tbody tr[data-seq]").all():
        cells = [(await td.text_content() or "").strip() for td in await tr.locator("td").all()]
        out.append({"seq": cells[0], "kind": cells[2], "principal": cells[3], "tool": cells[5], "outcome": cells[7]})
    return out


@pytest.mark.anyio
async def test_filter_open_verify_and_export_after_known_traffic(
    console_gateway: ConsoleGateway, browser: Any, tmp_path: Path
) -> None:
    gw = console_gateway
    assert not await call_as(gw, "alice", "echo__echo", {"text": "hello from alice"})
    assert not await call_as(gw, "alice", "echo__add", {"a": 1, "b": 2})
    assert not await call_as(gw, "bob", "echo__echo", {"text": "hello from bob"})
    assert await call_as(gw, "bob", "echo__add", {"a": 2, "b": 3})  # rule guests-no-add
    await gw.rt.parts.writer.flush()

    page = await browser.new_page()
    await login(page, gw.base, gw.tokens["alice"])
    await page.goto(f"{gw.base}/console/audit")
    await page.locator("#verify-state").wait_for(timeout=30_000)  # loaded by htmx from /console/audit/verify
    assert await page.locator("#verify-state").get_attribute("data-state") == "ok"
    assert await page.locator("#anchor-seq").text_content() != "none"
    await page.screenshot(path=str(shot_dir(tmp_path) / "audit.png"), full_page=True)

    # bob's denied call, by the form: principal + outcome
    await page.fill("#f-principal", "bob")
    await page.select_option("#f-outcome", "denied")
    await page.click("#audit-filters button[type=submit]")
    await page.wait_for_load_state()
    assert "principal=bob" in page.url and "outcome=denied" in page.url
    rows = await rows_on_page(page)
    assert [(r["kind"], r["principal"], r["tool"], r["outcome"]) for r in rows] == [
        ("outcome", "key:bob", "echo__add", "denied")
    ]

    # alice's calls (one row each, completed in place), newest first
    await page.goto(f"{gw.base}/console/audit?principal=key:alice&kind=call")
    rows = await rows_on_page(page)
    assert [(r["tool"], r["outcome"]) for r in rows] == [("echo__add", "ok"), ("echo__echo", "ok")]
    assert int(rows[0]["seq"]) > int(rows[1]["seq"])

    # decision filter (the policy decision is recorded on the outcome row)
    await page.goto(f"{gw.base}/console/audit?decision=deny&kind=outcome")
    rows = await rows_on_page(page)
    assert [(r["principal"], r["tool"], r["outcome"]) for r in rows] == [("key:bob", "echo__add", "denied")]

    # a row's full record: the refused call (refused before the pipeline: one row with its arguments)
    await page.click(f"#audit-rows a[href='/console/audit/{rows[0]['seq']}']")
    await page.wait_for_load_state()
    record = await page.locator("#record").text_content() or ""
    assert "guests-no-add" in record and '"b": 3' in record and "args_hmac" in record and "key:bob" in record
    await page.screenshot(path=str(shot_dir(tmp_path) / "audit-row.png"), full_page=True)
    # an allowed call is one row: the request and how it ended
    await page.goto(f"{gw.base}/console/audit?principal=alice&tool=echo__ec*&kind=call")
    (call,) = await rows_on_page(page)
    await page.goto(f"{gw.base}/console/audit/{call['seq']}")
    record = await page.locator("#record").text_content() or ""
    assert "hello from alice" in record and "seal" in record and "allow" in record
    assert "completed" in (await page.locator("#call-completed").text_content() or "")
    # an older log's pair: the outcome links to its attempt, and the attempt back to its outcome
    audit = gw.rt.parts.audit
    attempt = audit.append(
        AuditEvent(kind="attempt", request_id="old-1", principal="key:alice", tool="echo__echo", arguments={"t": "old"})
    )
    outcome = audit.append(
        AuditEvent(
            kind="outcome",
            request_id="old-1",
            principal="key:alice",
            tool="echo__echo",
            outcome="ok",
            attempt_seq=attempt,
        )
    )
    await page.goto(f"{gw.base}/console/audit/{outcome}")
    await page.click("#attempt-link")
    await page.wait_for_load_state()
    assert '"t": "old"' in (await page.locator("#record").text_content() or "")
    assert await page.locator("#outcome-link").get_attribute("href") == f"/console/audit/{outcome}"

    # a filter that cannot be read: one line, no traceback
    response = await page.goto(f"{gw.base}/console/audit?since=yesterday-ish")
    assert response is not None and response.status == 400
    assert "cannot read time" in (await page.locator(".error").text_content() or "")

    # export = exactly the filtered rows, as stored (each hash recomputes)
    query = "principal=bob"
    got = await page.request.get(f"{gw.base}/console/audit/export?{query}")
    assert got.status == 200 and "attachment" in got.headers["content-disposition"]
    lines = [json.loads(line) for line in (await got.text()).splitlines()]
    expected = [r for r in gw.rt.parts.audit.query(limit=10_000) if r["principal"] == "key:bob"]
    assert [r["kind"] for r in lines] == ["call", "outcome"]  # bob's echo call; his refused add
    assert [r["seq"] for r in lines] == [r["seq"] for r in expected] and len(lines) == 2
    assert all(row_hash(r) == r["hash"] for r in lines)
    await page.goto(f"{gw.base}/console/audit?{query}")
    assert sorted(int(r["seq"]) for r in await rows_on_page(page)) == [r["seq"] for r in lines]
    await page.close()


@pytest.mark.anyio
async def test_pages_walk_back_with_the_before_cursor(console_gateway: ConsoleGateway, browser: Any) -> None:
    gw = console_gateway
    audit = gw.rt.parts.audit
    audit.append_many([AuditEvent(kind="search", principal="key:carol", query=f"q{i}") for i in range(120)])
    page = await browser.new_page()
    await login(page, gw.base, gw.tokens["alice"])
    await page.goto(f"{gw.base}/console/audit?principal=carol")
    seen: list[int] = []
    for _ in range(5):
        seen += [int(r["seq"]) for r in await rows_on_page(page)]
        older = page.locator("#older")
        if await older.count() == 0:
            break
        await older.click()
        await page.wait_for_load_state()
        assert "before=" in page.url and "principal=carol" in page.url
    expected = sorted((r["seq"] for r in audit.query(principal="key:carol", limit=1000)), reverse=True)
    assert seen == expected and len(seen) == 120
    await page.close()


@embedded_only
@pytest.mark.anyio
async def test_a_tampered_row_shows_the_chain_broken_at_that_row(console_gateway: ConsoleGateway, browser: Any) -> None:
    gw = console_gateway
    for i in range(3):
        assert not await call_as(gw, "alice", "echo__echo", {"text": f"call {i}"})
    await gw.rt.parts.writer.flush()
    victim = gw.rt.parts.audit.query(principal="key:alice", kind="call", limit=3)[1]["seq"]
    db = sqlite3.connect(gw.rt.config.audit.path)  # an attacker with the file: triggers are no defence
    try:
        db.execute("DROP TRIGGER events_complete_only")
        db.execute("UPDATE events SET principal = 'key:mallory' WHERE seq = ?", (victim,))
        db.commit()
    finally:
        db.close()
    page = await browser.new_page()
    await login(page, gw.base, gw.tokens["alice"])
    await page.goto(f"{gw.base}/console/audit")
    state = page.locator("#verify-state")
    await state.wait_for(timeout=30_000)
    assert await state.get_attribute("data-state") == "broken"
    assert await state.get_attribute("data-first-bad") == str(victim)
    assert f"row {victim} does not match its hash" in (await page.locator(".problems").text_content() or "")
    await page.close()


def test_query_decision_until_and_before_on_both_backends(backend: tuple[str, AuditLog]) -> None:
    _, log = backend
    events = [
        AuditEvent(kind="attempt", principal="key:a", tool="t__x", decision=d, ts=1000.0 + i)
        for i, d in enumerate(["allow", "deny", "approve", "allow", "deny"])
    ]
    assert log.append_many(events) == [1, 2, 3, 4, 5]
    assert [r["seq"] for r in log.query(decision="deny")] == [2, 5]
    assert [r["seq"] for r in log.query(decision="allow", before=4)] == [1]
    assert [r["seq"] for r in log.query(before=4, limit=2)] == [2, 3]
    assert [r["seq"] for r in log.query(since=1001.0, until=1003.0)] == [2, 3]
    assert [r["seq"] for r in log.query(until=1000.0)] == []
    assert log.query(before=1) == []


def test_stored_rows_hash_as_written(tmp_path: Path) -> None:
    with SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY) as log:
        log.append(AuditEvent(kind="attempt", principal="key:a", tool="t__x", arguments={"z": [1, 2.5], "é": "x"}))
        log.append(AuditEvent(kind="search", query="q", results=["t__x", "t__y"]))
        rows = log.query()
        assert all(row_hash(stored(r)) == r["hash"] for r in rows)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.integers(1, 10**9), st.text(max_size=20)), max_size=6))
def test_first_bad_seq_is_the_lowest_row_named(parts: list[int | str]) -> None:
    problems = [f"row {p} does not match its hash (edited)" if isinstance(p, int) else p for p in parts]
    named = [p for p in parts if isinstance(p, int)]
    found = first_bad_seq(problems)
    if named:
        assert found is not None and found <= min(named)
    assert first_bad_seq([f"rows {a}..{a + 3} are missing (deleted)" for a in named]) == (min(named) if named else None)
