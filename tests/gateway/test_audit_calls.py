"""One audit row per forwarded call, completed in place, still tamper-evident (issue 11), on both
backends: the ``call`` row keeps its hash when completed, the database refuses every other update,
verify checks each completion's seal and finds completions removed behind a tally or a prune
checkpoint, reports long-pending rows as unfinished, and an older log (attempt/outcome pairs,
version-2 file, checkpoints without a count) keeps verifying and reading."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import AUDIT_KEY
from toolcrib.gateway.audit.anchor import Anchor
from toolcrib.gateway.audit.backends import AuditLog
from toolcrib.gateway.audit.events import AuditEvent, Completion
from toolcrib.gateway.audit.keys import CHECKPOINT_LABEL, SEAL_LABEL, derive, mac
from toolcrib.gateway.audit.log import SqliteAuditLog
from toolcrib.gateway.audit.schema import ATTEMPT_COLUMNS, COMPLETION, VERSION, canonical_json, row_hash
from toolcrib.gateway.audit.verify import seal_ok
from toolcrib.gateway.audit.writer import AuditWriter
from toolcrib.gateway.pipeline import UpstreamCall, audit_layer
from toolcrib.gateway.trust.identity import LOCAL_OPERATOR

KEY = AUDIT_KEY  # the `backend` fixture (tests/gateway/conftest.py) keys both logs with it
OUTCOMES = ["ok", "tool_error", "protocol_error", "timeout", "cancelled", "upstream_crash", "denied", "pending"]


def zero_checkpoint_counts(backend: AuditLog) -> None:
    """Set every prune checkpoint's completion count to 0 by hand, lifting the guard first, as
    someone with write access to the database (not the key) can."""
    if isinstance(backend, SqliteAuditLog):
        db = sqlite3.connect(backend.path, isolation_level=None)
        db.execute("DROP TRIGGER checkpoints_sign_once")
        db.execute("UPDATE checkpoints SET completed = 0")
        db.close()
    else:
        with backend._db.transaction() as conn:  # type: ignore[attr-defined]
            conn.execute("ALTER TABLE audit_checkpoints DISABLE TRIGGER audit_checkpoints_permanent")
            conn.execute("UPDATE audit_checkpoints SET completed = 0")
            conn.execute("ALTER TABLE audit_checkpoints ENABLE TRIGGER audit_checkpoints_permanent")


def call(i: int, **extra: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "kind": "call", "request_id": i, "principal": "key:alice", "method": "tools/call:direct", "server": "git",
        "tool": "git__log", "arguments": {"n": i}, "outcome": "pending", **extra,
    }  # fmt: skip
    return AuditEvent(**fields)


def done(seq: int, outcome: str = "ok", **extra: Any) -> Completion:
    fields: dict[str, Any] = {"decision": "allow", "rule": "default", "latency_ms": 2.5, "bytes": 7, **extra}
    return Completion(seq=seq, outcome=outcome, **fields)  # type: ignore[arg-type]


def as_stored(row: dict[str, Any]) -> dict[str, Any]:
    """A queried row with its arguments back in their stored form (canonical JSON text)."""
    return {**row, "arguments": canonical_json(row["arguments"])}


def run_sql(log: AuditLog, sql: str, params: tuple[Any, ...] = ()) -> None:
    """One statement on the log's own database, guards in place (SQLite file or PostgreSQL)."""
    if isinstance(log, SqliteAuditLog):
        db = sqlite3.connect(log.path, isolation_level=None)
        try:
            db.execute(sql.replace("audit_events", "events"), params)
        finally:
            db.close()
        return
    with log._db.transaction() as conn:
        conn.execute(sql.replace("?", "%s").encode(), params)


def tamper(log: AuditLog, sql: str, params: tuple[Any, ...] = ()) -> None:
    """``sql`` with the append-only guard lifted, as someone with write access to the database would."""
    if isinstance(log, SqliteAuditLog):
        db = sqlite3.connect(log.path, isolation_level=None)
        try:
            db.execute("DROP TRIGGER IF EXISTS events_complete_only")
            db.execute(sql.replace("audit_events", "events"), params)
        finally:
            db.close()
        return
    with log._db.transaction() as conn:
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        conn.execute(sql.replace("?", "%s").encode(), params)
        conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")


def uncomplete(log: AuditLog, seq: int) -> None:
    """Set a completed call row back to exactly how it was inserted (its hash still matches)."""
    blank = ", ".join(f"{c} = NULL" for c in COMPLETION if c != "outcome")
    tamper(log, f"UPDATE audit_events SET outcome = 'pending', seal = NULL, {blank} WHERE seq = ?", (seq,))


def test_a_call_row_is_completed_in_place_and_keeps_its_hash(backend: AuditLog) -> None:
    seq = backend.append(call(1))
    [before] = backend.query(kind="call")
    assert before["outcome"] == "pending" and before["completed"] is None and before["seal"] is None
    backend.append_many([AuditEvent(kind="search", query="q")], completions=[done(seq, error="x" * 3)])
    [after] = backend.query(kind="call")
    assert after["hash"] == before["hash"] == row_hash(as_stored(after)) and after["prev_hash"] == before["prev_hash"]
    assert after["outcome"] == "ok" and after["completed"] >= after["ts"] and after["latency_ms"] == 2.5
    assert after["decision"] == "allow" and after["bytes"] == 7 and after["error"] == "xxx"
    assert seal_ok(after, derive(KEY, SEAL_LABEL))
    assert len(backend.query(limit=100)) == 2  # one row for the call, one for the search
    report = backend.verify()
    assert report.ok, report.problems
    assert report.seals_checked == 1 and report.completed == 1
    backend.append_many([], completions=[done(seq, "tool_error")])  # a second completion is dropped
    assert backend.query(kind="call")[0]["outcome"] == "ok"
    buf = io.StringIO()
    backend.export_jsonl(buf)
    assert all(row_hash(r) == r["hash"] for r in map(json.loads, buf.getvalue().splitlines()))


@pytest.mark.parametrize("column", [c for c in ATTEMPT_COLUMNS if c != "seq"])
def test_the_database_refuses_an_update_of_any_attempt_column(tmp_path: Path, column: str) -> None:
    log = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
    seq = log.append(call(1))
    value = 12345 if column in ("ts", "attempt_seq") else "tampered"
    completion = "outcome = 'ok', completed = 1.0, seal = 'x'"
    for sql in (
        f"UPDATE events SET {column} = ? WHERE seq = ?",
        f"UPDATE events SET {column} = ?, {completion} WHERE seq = ?",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            run_sql(log, sql, (value, seq))
    log.close()


def test_the_database_allows_only_one_completion_of_a_call_row(backend: AuditLog) -> None:
    seq = backend.append(call(1))
    other = backend.append(AuditEvent(kind="search", query="q"))
    error = sqlite3.IntegrityError if isinstance(backend, SqliteAuditLog) else psycopg.errors.RaiseException
    refused = [
        ("UPDATE audit_events SET outcome = 'ok', completed = 1.0, seal = 'x' WHERE seq = ?", (other,)),  # not a call
        ("UPDATE audit_events SET outcome = 'ok', completed = 1.0 WHERE seq = ?", (seq,)),  # no seal
        ("UPDATE audit_events SET outcome = 'ok', seal = 'x' WHERE seq = ?", (seq,)),  # no completion time
        ("UPDATE audit_events SET tool = 'x', outcome = 'ok', completed = 1.0, seal = 'x' WHERE seq = ?", (seq,)),
        ("UPDATE audit_events SET hash = 'x', outcome = 'ok', completed = 1.0, seal = 'x' WHERE seq = ?", (seq,)),
        ("UPDATE audit_events SET arguments = '{}' WHERE seq = ?", (seq,)),
    ]  # fmt: skip
    for sql, params in refused:
        with pytest.raises(error, match="append-only"):
            run_sql(backend, sql, params)
    run_sql(backend, "UPDATE audit_events SET outcome = 'ok', completed = 1.0, seal = 'x' WHERE seq = ?", (seq,))
    with pytest.raises(error, match="append-only"):  # completed once: never again, not even back to pending
        run_sql(
            backend, "UPDATE audit_events SET outcome = 'pending', completed = NULL, seal = NULL WHERE seq = ?", (seq,)
        )
    assert not backend.verify().ok  # that hand-made seal is not under the key


@pytest.mark.parametrize(
    ("column", "value"),
    [("outcome", "tool_error"), ("error", "edited"), ("latency_ms", 0.5), ("bytes", 1), ("seal", None),
     ("seal", "0" * 64), ("completed", 5.0), ("decision", "deny"), ("approver", "eve")],
)  # fmt: skip
def test_tampering_with_a_completed_row_is_detected(backend: AuditLog, column: str, value: Any) -> None:
    seqs = [backend.append(call(i)) for i in range(3)]
    backend.append_many([], completions=[done(s, error="boom" if s == seqs[1] else None) for s in seqs])
    assert backend.verify().ok
    tamper(backend, f"UPDATE audit_events SET {column} = ? WHERE seq = ?", (value, seqs[1]))
    problems = backend.verify().problems
    assert problems == [
        f"row {seqs[1]}: the seal of its completion is wrong or missing (outcome, error, latency or bytes edited)"
    ]


def test_completion_fields_on_a_pending_row_are_detected(backend: AuditLog) -> None:
    seq = backend.append(call(1))
    tamper(backend, "UPDATE audit_events SET outcome = 'ok' WHERE seq = ?", (seq,))
    assert backend.verify().problems == [f"row {seq}: a pending call row carries completion fields (edited)"]


def test_a_completion_removed_behind_a_tally_is_detected(backend: AuditLog) -> None:
    seqs = [backend.append(call(i)) for i in range(6)]
    backend.append_many([], completions=[done(s) for s in seqs[:5]])  # the last call is still in flight
    tally = backend.tally(settle=0)
    assert tally == seqs[-1] + 1
    [row] = backend.query(kind="tally")
    assert (row["attempt_seq"], row["bytes"]) == (seqs[-1], 5)
    assert backend.tally(settle=0) is None  # nothing new to count
    report = backend.verify()
    assert report.ok and report.tallies_checked == 1, report.problems
    later = backend.append(call(7))
    backend.append_many([], completions=[done(later)])  # completions only grow: still fine
    assert backend.verify().ok
    uncomplete(backend, seqs[2])
    assert backend.verify().problems == [
        f"row {tally}: call rows {seqs[2]} (up to row {seqs[-1]}) were completed when it was written and are "
        "pending now: a completion was removed (a row set back to pending)"
    ]


def test_a_completion_removed_after_a_prune_is_detected_by_the_checkpoint_count(backend: AuditLog) -> None:
    old = [backend.append(call(i, ts=1000.0 + i)) for i in range(4)]
    backend.append_many([], completions=[done(s) for s in old])
    new = [backend.append(call(i)) for i in range(4, 8)]
    backend.append_many([], completions=[done(s) for s in new])
    backend.tally(settle=0)  # 8 completed up to the last call row
    assert backend.prune(2000.0) == 4  # the checkpoint carries the 4 completions it cut
    report = backend.verify()
    assert report.ok, report.problems
    assert report.completed == 4 and report.tallies_checked == 1
    uncomplete(backend, new[1])
    assert any("a completion was removed" in p for p in backend.verify().problems)


def test_a_prune_checkpoint_count_is_under_its_hmac(backend: AuditLog) -> None:
    seqs = [backend.append(call(i, ts=1000.0 + i)) for i in range(3)]
    backend.append_many([], completions=[done(s) for s in seqs])
    backend.append(call(9))
    backend.prune(2000.0)
    assert backend.verify().ok
    zero_checkpoint_counts(backend)
    assert any("checkpoint at row 3 has a wrong or missing HMAC" in p for p in backend.verify().problems)


def test_old_pending_rows_are_unfinished_not_tampering(backend: AuditLog) -> None:
    stale = backend.append(call(1, ts=time.time() - 7200))
    backend.append(call(2))  # in flight
    report = backend.verify()
    assert report.ok, report.problems
    assert report.unfinished == [stale]
    assert any(line.startswith("1 call rows are still pending more than 1 h") for line in report.limits)


@pytest.mark.anyio
async def test_the_writer_completes_in_its_next_batch(backend: AuditLog) -> None:
    """The call row is committed before ``append`` returns; its completion rides in the next batch
    (with other rows, one transaction), awaited or queued."""
    writer = AuditWriter(backend)
    seq = await writer.append(call(1))
    assert backend.query(kind="call")[0]["outcome"] == "pending"  # durable before the call goes on
    second = await writer.append(call(2))
    writer.submit(done(second, "cancelled"))
    writer.submit(AuditEvent(kind="search", query="q"))
    assert await writer.append(done(seq)) == seq
    await writer.flush()
    writer.close()
    rows = {r["seq"]: r for r in backend.query(kind="call")}
    assert (rows[seq]["outcome"], rows[second]["outcome"]) == ("ok", "cancelled")
    assert backend.verify().ok


@pytest.mark.anyio
async def test_the_answer_does_not_wait_for_the_completion(backend: AuditLog) -> None:
    """The audit layer commits the row before forwarding, then queues the completion and answers at
    once: when the answer is back the row is still pending in the log (a gateway killed now leaves
    it pending: verify's "unfinished"), the completion is committed by the next batch (here the
    next call's row: one commit for both) or a flush, and the log verifies."""
    writer = AuditWriter(backend)
    layer = audit_layer(writer)
    seen: list[str] = []

    async def upstream(c: UpstreamCall) -> types.CallToolResult:
        seen.append(backend.query(kind="call", limit=10)[-1]["outcome"])  # committed before forwarding
        return types.CallToolResult(content=[types.TextContent(type="text", text="hi")])

    def make(i: int) -> UpstreamCall:
        return UpstreamCall(
            principal=LOCAL_OPERATOR, method="tools/call", kind="tool", target="git__log", server="git",
            name="log", arguments={"n": i}, request_id=i,
        )  # fmt: skip

    try:
        result = await layer(make(1), upstream)
        assert not result.is_error and seen == ["pending"]
        assert writer.queued == 1  # the completion, not yet written
        assert [r["outcome"] for r in backend.query(kind="call")] == ["pending"]
        await layer(make(2), upstream)  # its row's batch carries the first call's completion
        first, second = sorted(backend.query(kind="call"), key=lambda r: r["seq"])
        assert (first["outcome"], first["bytes"], second["outcome"]) == ("ok", 2, "pending")
        await writer.flush()
        assert [r["outcome"] for r in backend.query(kind="call")] == ["ok", "ok"]
    finally:
        await writer.flush()
        writer.close()
    assert backend.verify().ok


# ---- an older log -------------------------------------------------------------------------------

V2_DDL = """
CREATE TABLE events (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, request_id TEXT,
  principal TEXT, client_name TEXT, session TEXT, transport TEXT, method TEXT, server TEXT, tool TEXT,
  tool_hash TEXT, arguments TEXT, args_hmac TEXT, query TEXT, results TEXT, decision TEXT, rule TEXT,
  approver TEXT, outcome TEXT, error TEXT, latency_ms REAL, bytes INTEGER, attempt_seq INTEGER,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL, target TEXT, remote TEXT, args_stored TEXT);
CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts REAL NOT NULL, mac TEXT);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
PRAGMA user_version = 2;
"""
V1 = ("seq", "ts", "kind", "request_id", "principal", "client_name", "session", "transport", "method", "server",
      "tool", "tool_hash", "arguments", "args_hmac", "query", "results", "decision", "rule", "approver", "outcome",
      "error", "latency_ms", "bytes", "attempt_seq", "prev_hash", "hash")  # fmt: skip


def v2_hash(row: dict[str, Any]) -> str:
    """The row hash as version 2 computed it (written out here, independent of the code under test)."""
    payload = {k: row.get(k) for k in V1 if k != "hash"}
    payload.update({k: row[k] for k in ("target", "remote", "args_stored") if row.get(k) is not None})
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def write_v2_log(path: Path) -> None:
    """A version-2 log as the previous release left it: attempt/outcome pairs, a keyed anchor and a
    prune checkpoint whose HMAC covers ``seq:hash`` only."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(V2_DDL)
    names = [r[1] for r in db.execute("PRAGMA table_info(events)")]
    prev, seq = "0" * 64, 0
    for i in range(6):
        arguments = canonical_json({"n": i})
        for kind in ("attempt", "outcome"):
            seq += 1
            row = dict.fromkeys(names)
            row.update(seq=seq, ts=1000.0 + seq, kind=kind, principal="key:alice", tool="git__log", prev_hash=prev)
            if kind == "attempt":
                row.update(arguments=arguments, args_hmac=mac(KEY, arguments), args_stored="full", decision="allow")
            else:
                row.update(outcome="ok", attempt_seq=seq - 1, latency_ms=1.0, decision="allow", rule="default")
            row["hash"] = prev = v2_hash(row)
            db.execute(f"INSERT INTO events VALUES ({', '.join('?' * len(names))})", list(row.values()))
    cut = db.execute("SELECT hash FROM events WHERE seq = 2").fetchone()[0]
    tag = mac(derive(KEY, CHECKPOINT_LABEL), f"2:{cut}")
    db.execute("INSERT INTO checkpoints VALUES (2, ?, 5000.0, ?)", (cut, tag))
    db.execute("DELETE FROM events WHERE seq <= 2")
    db.close()
    Anchor(Path(f"{path}.anchor"), KEY).write(seq, prev)


def test_a_version_2_log_of_pairs_verifies_reads_prunes_and_upgrades(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_v2_log(path)
    reader = SqliteAuditLog(path, hmac_key=KEY, create=False)  # `toolcrib audit verify` before any upgrade
    report = reader.verify()
    assert report.ok, report.problems
    assert (report.first_seq, report.last_seq, report.checkpoint_seq) == (3, 12, 2)
    assert [r["kind"] for r in reader.query(limit=4)] == ["attempt", "outcome", "attempt", "outcome"]
    assert reader.prune(1004.5) == 2  # an old-form checkpoint, as that schema can hold
    assert reader.verify().ok
    reader.close()
    log = SqliteAuditLog(path, hmac_key=KEY)  # the server's open upgrades it to version 3
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert log.verify().ok
    seq = log.append(call(1))
    log.append_many([], completions=[done(seq)])
    log.tally(settle=0)
    assert log.prune(1008.5) == 4  # a new-form checkpoint among old ones
    report = log.verify()
    assert report.ok, report.problems
    assert report.completed == 1 and report.seals_checked == 1 and report.tallies_checked == 1
    assert [r["kind"] for r in log.query(limit=10)] == ["attempt", "outcome", "attempt", "outcome", "call", "tally"]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):  # the old trigger's place is taken
        run_sql(log, "UPDATE events SET outcome = 'denied' WHERE kind = 'outcome'")
    log.close()


# ---- the seal, property-tested --------------------------------------------------------------------

SEAL_KEY = derive(KEY, SEAL_LABEL)
text = st.one_of(st.none(), st.text(max_size=40))
completions = st.builds(
    dict,
    outcome=st.sampled_from(OUTCOMES),
    error=text,
    latency_ms=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    bytes=st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    decision=text,
    rule=text,
    approver=text,
    completed=st.floats(min_value=0, max_value=4e9, allow_nan=False),
)


@pytest.fixture(scope="module")
def seal_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteAuditLog]:
    log = SqliteAuditLog(tmp_path_factory.mktemp("seal") / "audit.db", hmac_key=KEY)
    yield log
    log.close()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=completions, which=st.sampled_from(COMPLETION), data=st.data())
def test_the_seal_holds_for_any_completion_and_breaks_on_any_change(
    seal_log: SqliteAuditLog, fields: dict[str, Any], which: str, data: st.DataObject
) -> None:
    """Any completion survives the round trip through the database with its seal intact; changing
    any one of its columns to any other value breaks the seal."""
    seq = seal_log.append(call(1))
    seal_log.append_many([], completions=[Completion(seq=seq, **fields)])
    [row] = seal_log.query(before=seq + 1, limit=1)
    assert row["seq"] == seq and row["hash"] == row_hash(as_stored(row)) and row["completed"] == fields["completed"]
    assert seal_ok(row, SEAL_KEY)
    strategy = {"outcome": st.sampled_from(OUTCOMES), "latency_ms": st.floats(allow_nan=False), "bytes": st.integers(),
                "completed": st.floats(allow_nan=False)}.get(which, st.text(max_size=40))  # fmt: skip
    other = data.draw(strategy.filter(lambda v: v != row[which]))
    assert not seal_ok({**row, which: other}, SEAL_KEY)
    assert not seal_ok({**row, which: None}, SEAL_KEY) or row[which] is None
    assert not seal_ok({**row, "seal": None}, SEAL_KEY)
