"""Whatever text a client, an upstream or a principal brings (lone surrogates, NUL, any Unicode)
is recorded, hashed and verified the same way on both backends, and a row or completion that
cannot be recorded fails only its own call (toolcrib.gateway.audit.text, shared.build_row,
writer._write)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.test_audit_calls import (
    KEY,
    call,
    done,
)
from toolcrib.gateway.audit.backends import AuditLog
from toolcrib.gateway.audit.events import AuditEvent, AuditRowError, Completion
from toolcrib.gateway.audit.keys import mac
from toolcrib.gateway.audit.log import SqliteAuditLog
from toolcrib.gateway.audit.log_pg import PostgresAuditLog
from toolcrib.gateway.audit.schema import canonical_json
from toolcrib.gateway.audit.text import escape_surrogates, storable, utf8
from toolcrib.gateway.audit.writer import AuditWriter
from toolcrib.gateway.trust.redaction import Redactor
from toolcrib.storage import migrations
from toolcrib.storage.postgres import Database

SECRET = "s3cr3t-canary-Value"
ANY_CHAR = st.characters(exclude_categories=())  # every code point, lone surrogates included
TEXT = st.text(ANY_CHAR, max_size=12) | st.sampled_from(["\ud800", "\udfff", "\x00", "a\ud83d\ude00b", "\\ud800", ""])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT | st.just(SECRET),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
ARGS = st.dictionaries(TEXT, JSON, max_size=4)


def has_surrogate(value: Any) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(value, ensure_ascii=False))


# ---- the encoding itself ------------------------------------------------------------------------


@settings(max_examples=3000, deadline=None)
@given(st.text(ANY_CHAR))
def test_text_escapes_are_total_and_change_only_what_cannot_be_stored(text: str) -> None:
    escaped, kept = escape_surrogates(text), storable(text)
    escaped.encode()
    kept.encode()
    assert "\x00" not in kept
    assert utf8(text) == escaped.encode()
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert escaped == text
        if "\x00" not in text:
            assert kept == text
    as_json = canonical_json(text)  # a JSON string: parses back to the same code points, escapes or not
    assert json.loads(as_json) == json.loads(json.dumps(text))
    if not has_surrogate(text):  # unchanged from earlier releases: old hashes and HMACs still verify
        assert as_json == json.dumps(text, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---- round trip through write + verify ----------------------------------------------------------


def round_trip(
    log: AuditLog, arguments: dict[str, Any], tool: str, principal: str, error: str, client: str, query: str
) -> None:
    seq = log.append(
        AuditEvent(kind="call", principal=principal, client_name=client, request_id=tool, method="tools/call",
                   server="s", tool=tool, target=error, arguments=arguments, outcome="pending")
    )  # fmt: skip
    log.append_many(
        [AuditEvent(kind="search", principal=principal, query=query, results=[tool, query])],
        completions=[Completion(seq=seq, outcome="tool_error", error=error, rule=tool, approver=principal)],
    )
    row = next(r for r in log.query(limit=10) if r["seq"] == seq)
    search = next(r for r in log.query(kind="search", limit=1))
    assert row["args_hmac"] == mac(KEY, canonical_json(arguments)) == log.args_hmac(arguments)
    if row["args_stored"] == "full":
        assert row["arguments"] == json.loads(canonical_json(arguments))  # JSON's meaning of the text
        if not has_surrogate(arguments):
            assert row["arguments"] == arguments
    assert (row["tool"], row["principal"], row["client_name"], row["request_id"]) == (
        storable(tool), storable(principal), storable(client), storable(tool)
    )  # fmt: skip
    assert (row["error"], row["target"], row["rule"], row["approver"]) == (
        storable(error), storable(error), storable(tool), storable(principal)
    )  # fmt: skip
    assert search["query"] == storable(query) and search["results"] == json.loads(canonical_json([tool, query]))
    assert log.query(principal=principal, kind="call")[-1]["seq"] == seq  # a filter on such text works too
    assert log.tally(settle=0) is not None
    report = log.verify()
    assert report.ok, report.problems
    assert report.seals_checked >= 1 and report.tallies_checked >= 1


@pytest.fixture
def sqlite_log(tmp_path: Path) -> Iterator[SqliteAuditLog]:
    log = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY, redactor=Redactor([SECRET]))
    yield log
    log.close()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ARGS, TEXT, TEXT, TEXT, TEXT, TEXT)
def test_any_text_round_trips_through_write_and_verify_on_sqlite(
    sqlite_log: SqliteAuditLog,
    arguments: dict[str, Any],
    tool: str,
    principal: str,
    error: str,
    client: str,
    query: str,
) -> None:
    """One log for every example: each ends by pruning what it wrote behind a checkpoint (so each
    verify scans only its own rows) and verifying again."""
    round_trip(sqlite_log, arguments, tool, principal, error, client, query)
    assert sqlite_log.prune(time.time() + 1) > 0
    report = sqlite_log.verify()
    assert report.ok and report.rows == 0, report.problems


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ARGS, TEXT, TEXT, TEXT, TEXT, TEXT)
def test_any_text_round_trips_through_write_and_verify_on_postgres(
    pg_url: str, arguments: dict[str, Any], tool: str, principal: str, error: str, client: str, query: str
) -> None:
    db = Database(pg_url).open()
    try:
        migrations.upgrade(db)
        round_trip(PostgresAuditLog(db, hmac_key=KEY, redactor=Redactor([SECRET])), arguments, tool, principal,
                   error, client, query)  # fmt: skip
    finally:
        db.close()


def test_the_same_surrogate_row_hashes_alike_on_both_backends(tmp_path: Path, pg_url: str) -> None:
    event = AuditEvent(kind="search", ts=1000.0, principal="p\ud800", query="q\x00\udfff", results=["\ud83d"])
    lite = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
    db = Database(pg_url).open()
    migrations.upgrade(db)
    try:
        pg = PostgresAuditLog(db, hmac_key=KEY)
        lite.append(event)
        pg.append(event)
        assert lite.query()[0]["hash"] == pg.query()[0]["hash"]
        assert lite.query()[0]["principal"] == "p\\ud800" and pg.query()[0]["query"] == "q\\u0000\\udfff"
    finally:
        lite.close()
        db.close()


# ---- one bad entry fails only its own call ------------------------------------------------------


@pytest.mark.anyio
async def test_a_completion_the_database_refuses_fails_alone(backend: AuditLog) -> None:
    """A value no backend can store (a byte count beyond 64-bit) in one completion: the other
    call's row and completion in the same batch are written, and the bad one fails loudly."""
    writer = AuditWriter(backend)
    first = await writer.append(call(1))
    results = await asyncio_gather(
        writer.append(Completion(seq=first, outcome="ok", bytes=2**70)),
        writer.append(call(2)),
        writer.append(done(first)),  # the same call's completion again, storable this time
    )
    await writer.flush()
    writer.close()
    assert isinstance(results[0], AuditRowError), results
    second = results[1]
    assert isinstance(second, int) and second > first and results[2] == first
    rows = {r["seq"]: r for r in backend.query(kind="call")}
    assert rows[first]["outcome"] == "ok" and rows[first]["bytes"] == 7 and rows[second]["outcome"] == "pending"
    assert backend.verify().ok


@pytest.mark.anyio
async def test_a_row_the_database_refuses_fails_alone(backend: AuditLog) -> None:
    writer = AuditWriter(backend)
    first = await writer.append(call(1))
    results = await asyncio_gather(
        writer.append(done(first)),
        writer.append(AuditEvent(kind="search", query="q", bytes=-(2**70))),
        writer.append(AuditEvent(kind="search", query="fine")),
    )
    writer.submit(AuditEvent(kind="search", query="queued", bytes=2**70))  # queued only: logged and dropped
    await writer.flush()
    writer.close()
    assert results[0] == first and isinstance(results[1], AuditRowError) and isinstance(results[2], int)
    assert [r["query"] for r in backend.query(kind="search")] == ["fine"]
    assert backend.query(kind="call")[0]["outcome"] == "ok" and backend.verify().ok


async def asyncio_gather(*aws: Any) -> list[Any]:
    import asyncio

    return list(await asyncio.gather(*aws, return_exceptions=True))
