"""Second attack review of the audit log: cumulative tallies, the per-row retry of the writer, the
escaping of text without a UTF-8 form (:mod:`toolcrib.gateway.audit.text`).

Strict xfails are confirmed problems; plain tests are regressions that hold today. Each runs on a
SQLite file and on a fresh PostgreSQL database where it applies."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.test_audit_calls import KEY, call, done, uncomplete
from toolcrib.gateway.audit.backends import AuditLog
from toolcrib.gateway.audit.events import AuditEvent, AuditRowError
from toolcrib.gateway.audit.log import SqliteAuditLog
from toolcrib.gateway.audit.shared import build_row
from toolcrib.gateway.audit.writer import AuditWriter
from toolcrib.gateway.trust.identity import LOCAL_OPERATOR

# ---- fixed problems (formerly strict xfails) ------------------------------------------------------------------------


def test_a_completion_removed_behind_a_tally_is_detected_even_when_a_held_call_completed_since(
    backend: AuditLog,
) -> None:
    """README: verify detects "a completion removed (a call row set back to pending) behind a tally
    row". Here row ``quick`` was completed when the tally was written; its completion is removed
    afterwards; the tally's count is still reached because row ``held`` (pending when the tally
    counted, completed by its approval later) makes up for it."""
    held = backend.append(call(1))  # held for approval: pending when the tally counts
    quick = backend.append(call(2))
    backend.append_many([], completions=[done(quick)])
    first = backend.tally(settle=0)  # states: 1 completed call row up to `quick`, row `held` pending
    assert first is not None
    assert [r["results"] for r in backend.query(kind="tally")] == [[held]]
    backend.append_many([], completions=[done(held, decision="approve", approver="human:bob")])
    uncomplete(backend, quick)  # someone with write access to the database, no key, before the next tally
    assert backend.tally(settle=0) is not None  # same count, another pending set: a new tally all the same
    assert [(r["bytes"], r["results"]) for r in backend.query(kind="tally")] == [(1, [held]), (1, [quick])]
    report = backend.verify()
    assert report.problems == [
        f"row {first}: call rows {quick} (up to row {quick}) were completed when it was written and are pending "
        "now: a completion was removed (a row set back to pending)"
    ], report.problems


# ---- regressions (hold today) ---------------------------------------------------------------------------------------


def test_a_lone_surrogate_and_its_six_character_escape_keep_different_args_hmacs(tmp_path: Path) -> None:
    """``storable`` maps U+D800 and the text ``\\ud800`` to the same stored column text, but the
    arguments' HMAC is computed over canonical JSON, where the backslash is escaped: no collision."""
    lone = build_row(call(1, arguments={"p": "\ud800"}), KEY, None)
    text = build_row(call(1, arguments={"p": "\\ud800"}), KEY, None)
    assert lone["args_hmac"] != text["args_hmac"]
    assert lone["arguments"] != text["arguments"]
    log = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
    try:
        log.append(call(1, arguments={"p": "\ud800"}))
        log.append(call(2, arguments={"p": "\\ud800"}))
        stored = sorted(log.query(kind="call"), key=lambda r: r["seq"])
        assert [r["arguments"] for r in stored] == [{"p": "\ud800"}, {"p": "\\ud800"}]
        assert stored[0]["args_hmac"] != stored[1]["args_hmac"] and log.verify().ok
    finally:
        log.close()


def test_text_columns_with_nul_and_surrogates_hash_alike_on_both_backends(tmp_path: Path, pg_url: str) -> None:
    """The same event holding U+0000 and lone surrogates in every text column gets the same row
    hash (and verifies) on SQLite and on PostgreSQL."""
    from toolcrib.gateway.audit.log_pg import PostgresAuditLog
    from toolcrib.storage import migrations
    from toolcrib.storage.postgres import Database

    odd = "a\x00b\ud800c\udfff"
    event = AuditEvent(
        kind="call", ts=1000.0, request_id=odd, principal=odd, client_name=odd, session=odd, transport=odd,
        method=odd, server=odd, tool=odd, tool_hash=odd, arguments={odd: odd}, outcome="pending", remote=odd,
    )  # fmt: skip
    sqlite_log = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
    db = Database(pg_url).open()
    try:
        migrations.upgrade(db)
        pg_log = PostgresAuditLog(db, hmac_key=KEY)
        hashes = []
        for log in (sqlite_log, pg_log):
            seq = log.append(event)
            log.append_many([], completions=[done(seq, error=odd, approver=odd, rule=odd, completed=2000.0)])
            [row] = log.query(kind="call")
            hashes.append((row["hash"], row["seal"], row["args_hmac"], row["tool"], row["error"]))
            assert log.verify().ok, log.verify().problems
        assert hashes[0] == hashes[1]
    finally:
        sqlite_log.close()
        db.close()


@pytest.mark.anyio
async def test_one_refused_row_fails_alone_and_the_others_are_written_once_in_order(backend: AuditLog) -> None:
    """A row that cannot be built (arguments with a non-string key: TypeError in canonical JSON)
    between two good ones in one batch: its waiter gets AuditRowError, the others are written once
    each, in submission order, and the chain verifies."""
    writer = AuditWriter(backend)
    try:
        results = await asyncio.gather(
            writer.append(call(1)),
            writer.append(call(2, arguments={(1, 2): "tuple key"})),  # type: ignore[dict-item]
            writer.append(call(3)),
            writer.append(AuditEvent(kind="search", query="after")),
            return_exceptions=True,
        )
    finally:
        await writer.flush()
        writer.close()
    first, bad, third, search = results
    assert isinstance(bad, AuditRowError), results
    assert isinstance(first, int) and isinstance(third, int) and isinstance(search, int)
    assert first < third < search
    stored = sorted(backend.query(limit=100), key=lambda r: r["seq"])
    assert [(r["kind"], r.get("request_id")) for r in stored] == [("call", "1"), ("call", "3"), ("search", None)]
    assert backend.verify().ok


@pytest.mark.anyio
async def test_a_call_whose_row_is_refused_is_not_forwarded(backend: AuditLog) -> None:
    """The audit layer awaits the row before calling the next layer: a refused row stops the call."""
    from toolcrib.gateway.pipeline import audit_layer

    forwarded: list[Any] = []

    class Call:  # the few fields audit_layer and call_fields read
        arguments = {(1, 2): "x"}
        kind, via, target, method, server, tool_hash = "tool", "direct", "git__log", "tools/call", "git", None
        request_id, principal, client_name, session_id, transport = 1, LOCAL_OPERATOR, None, None, "http"

    async def nxt(c: Any) -> Any:
        forwarded.append(c)
        return None

    writer = AuditWriter(backend)
    try:
        with pytest.raises(AuditRowError):
            await audit_layer(writer)(Call(), nxt)  # type: ignore[arg-type]
    finally:
        await writer.flush()
        writer.close()
    assert forwarded == []


def test_sqlite_replace_into_a_tally_row_is_refused(tmp_path: Path) -> None:
    """Schema v4: a tally row cannot be swapped for another (e.g. one carrying an older, genuine
    seal) by REPLACE either."""
    log = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
    try:
        seq = log.append(call(1))
        log.append_many([], completions=[done(seq)])
        tally = log.tally(settle=0)
        assert tally is not None
        db = sqlite3.connect(log.path, isolation_level=None)
        try:
            with pytest.raises(sqlite3.IntegrityError):
                db.execute("REPLACE INTO events SELECT * FROM events WHERE seq = ?", (tally,))
        finally:
            db.close()
        assert log.verify().ok
    finally:
        log.close()
