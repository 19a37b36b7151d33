"""Attacks on the one-row-per-call audit log (``call`` rows completed in place, ``tally`` rows).

Each test plays one tampering (or one failure) against both backends where it applies. The first
section held strict xfails (confirmed problems) until their causes were fixed; the tests after
each of them check the same kind of problem more widely; the last section held from the start."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.gateway.test_audit_calls import (
    KEY,
    as_stored,
    call,
    done,
    run_sql,
    tamper,
    uncomplete,
    zero_checkpoint_counts,
)
from toolcrib.errors import AuditError
from toolcrib.gateway.audit.backends import AuditLog
from toolcrib.gateway.audit.events import AuditEvent, Completion
from toolcrib.gateway.audit.log import SqliteAuditLog
from toolcrib.gateway.audit.log_pg import PostgresAuditLog
from toolcrib.gateway.audit.schema import COLUMNS, VERSION, row_hash
from toolcrib.gateway.audit.writer import AuditWriter
from toolcrib.storage import migrations
from toolcrib.storage.postgres import Database


def refused(log: AuditLog) -> type[Exception]:
    return sqlite3.IntegrityError if isinstance(log, SqliteAuditLog) else psycopg.errors.RaiseException


def rows(log: AuditLog) -> list[dict[str, Any]]:
    return sorted((as_stored(r) if r.get("arguments") is not None else r for r in log.query(limit=1000)),
                  key=lambda r: r["seq"])  # fmt: skip


def append_at_tail(log: AuditLog, **fields: Any) -> int:
    """Append a row by hand, chained to the current head with a correct (unkeyed) hash, as anyone
    with write access to the database can."""
    head = rows(log)[-1]
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(ts=time.time(), prev_hash=head["hash"], seq=head["seq"] + 1, **fields)
    row["hash"] = row_hash(row)
    names = ", ".join(COLUMNS)
    run_sql(log, f"INSERT INTO audit_events ({names}) VALUES ({', '.join('?' * len(COLUMNS))})",
            tuple(row[c] for c in COLUMNS))  # fmt: skip
    return int(row["seq"])


# ---- fixed problems (formerly strict xfails) ---------------------------------------------------------------------


def test_a_completion_that_lands_after_a_tally_is_protected_by_the_next_tally(backend: AuditLog) -> None:
    """A call held for approval (or any call longer than the 10-minute settle) is completed after
    the tally that covered its row; the next tally must count it, or removing that completion
    later goes unnoticed although the row is behind two tallies."""
    slow = backend.append(call(1))
    quick = backend.append(call(2))
    backend.append_many([], completions=[done(quick)])
    backend.tally(settle=0)  # covers both rows; only `quick` is completed so far
    backend.append_many([], completions=[done(slow, decision="approve", approver="human:bob")])
    backend.append(AuditEvent(kind="search", query="later"))
    backend.tally(settle=0)  # `slow` is completed now, behind this tally too
    assert backend.verify().ok
    uncomplete(backend, slow)
    assert not backend.verify().ok


def test_sqlite_refuses_insert_or_replace_of_a_completed_row(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
    seq = log.append(call(1))
    log.append_many([], completions=[done(seq)])
    pending = {**rows(log)[0], "outcome": "pending", "decision": None, "rule": None, "latency_ms": None,
               "bytes": None, "completed": None, "seal": None}  # fmt: skip
    try:
        with pytest.raises(sqlite3.IntegrityError):  # the triggers are in place: this must be refused
            marks = ", ".join("?" * len(COLUMNS))
            run_sql(log, f"INSERT OR REPLACE INTO events ({', '.join(COLUMNS)}) VALUES ({marks})",
                    tuple(pending[c] for c in COLUMNS))  # fmt: skip
    finally:
        log.close()


REPLACING = [
    "INSERT OR REPLACE INTO {t} ({cols}) VALUES ({marks})",
    "REPLACE INTO {t} ({cols}) VALUES ({marks})",
    "INSERT INTO {t} ({cols}) VALUES ({marks}) ON CONFLICT(seq) DO UPDATE SET {first} = excluded.{first}",
    "INSERT INTO {t} ({cols}) VALUES ({marks}) ON CONFLICT DO UPDATE SET {first} = excluded.{first}",
    "INSERT OR REPLACE INTO {t} ({cols}) SELECT {marks}",
]


@pytest.mark.parametrize("sql", REPLACING)
def test_sqlite_refuses_every_statement_that_replaces_a_stored_row(tmp_path: Path, sql: str) -> None:
    """Each SQL path that changes a stored row without an UPDATE the trigger allows: the REPLACE
    conflict resolution in all its spellings, an UPSERT, and UPDATE OR REPLACE, on the rows and on
    the checkpoints."""
    log = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
    old = [log.append(call(i, ts=1000.0 + i)) for i in range(2)]
    seq = log.append(call(3))
    log.append_many([], completions=[done(s) for s in (*old, seq)])
    log.prune(1000.5)
    stored = rows(log)
    pending = {**next(r for r in stored if r["seq"] == seq), "outcome": "pending", "decision": None, "rule": None,
               "latency_ms": None, "bytes": None, "completed": None, "seal": None}  # fmt: skip
    db = sqlite3.connect(log.path, isolation_level=None)
    [checkpoint] = db.execute("SELECT seq, hash, ts, mac, completed FROM checkpoints").fetchall()
    try:
        for table, names, values in (
            ("events", COLUMNS, tuple(pending[c] for c in COLUMNS)),
            ("checkpoints", ("seq", "hash", "ts", "mac", "completed"), (*checkpoint[:4], 0)),
        ):
            statement = sql.format(t=table, cols=", ".join(names), marks=", ".join("?" * len(names)), first=names[-1])
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement, values)
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE OR REPLACE events SET seq = ? WHERE seq = ?", (seq, old[1]))
        with pytest.raises(sqlite3.IntegrityError, match="permanent"):
            db.execute("UPDATE OR REPLACE checkpoints SET seq = ?, completed = 0", (seq,))
    finally:
        db.close()
    assert rows(log) == stored and log.verify().ok
    log.close()


def test_a_version_3_log_gets_the_replace_guards_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log = SqliteAuditLog(path, hmac_key=KEY)
    seq = log.append(call(1))
    log.append_many([], completions=[done(seq)])
    log.close()
    db = sqlite3.connect(path, isolation_level=None)  # as version 3 left it
    db.execute("DROP TRIGGER events_insert_only")
    db.execute("DROP TRIGGER checkpoints_insert_only")
    db.execute("PRAGMA user_version = 3")
    db.close()
    reader = SqliteAuditLog(path, hmac_key=KEY, create=False)  # a reader does not migrate
    assert reader.schema == 3 and reader.verify().ok
    reader.close()
    log = SqliteAuditLog(path, hmac_key=KEY)
    assert log.schema == VERSION == 4
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        pending = {**rows(log)[0], "outcome": "pending", "completed": None, "seal": None}
        marks = ", ".join("?" * len(COLUMNS))
        run_sql(log, f"REPLACE INTO events ({', '.join(COLUMNS)}) VALUES ({marks})", tuple(pending[c] for c in COLUMNS))
    assert log.verify().ok
    log.close()


def test_tallies_written_by_the_incremental_count_still_verify(backend: AuditLog) -> None:
    """Tallies written before the cumulative count undercounted (never overcounted): they keep
    verifying, and the next tally states the true count."""
    slow, quick = backend.append(call(1)), backend.append(call(2))
    backend.append_many([], completions=[done(quick)])
    backend.tally(settle=0)
    backend.append_many([], completions=[done(slow)])
    late = backend.append(call(3))
    backend.append_many([], completions=[done(late)])
    write_tally(backend, late, 2)  # the old code: 1 (the last tally) + 1 (row `late`), `slow` missed
    assert backend.verify().ok
    backend.tally(settle=0)
    assert [(r["attempt_seq"], r["bytes"]) for r in backend.query(kind="tally")][-1] == (late, 3)
    assert backend.tally(settle=0) is None  # nothing new to state
    report = backend.verify()
    assert report.ok and report.tallies_checked == 3, report.problems


def test_a_tally_covered_by_a_later_prune_reports_nothing_false(backend: AuditLog) -> None:
    old = [backend.append(call(i, ts=1000.0 + i)) for i in range(3)]
    backend.append_many([], completions=[done(old[0])])
    backend.tally(now=1003.5, settle=0)  # 1 completed up to old[-1]; the tally row itself is new
    backend.append_many([], completions=[done(s) for s in old[1:]])
    assert backend.prune(1003.0) == 3  # its upto is behind the checkpoint now (3 completed)
    report = backend.verify()
    assert report.ok and report.tallies_checked == 1, report.problems
    backend.append(call(9))
    assert backend.tally(settle=0) is not None  # counts on top of the checkpoint: 3 + 0
    assert backend.query(kind="tally")[-1]["bytes"] == 3 and backend.verify().ok


def test_no_tally_or_prune_builds_on_a_checkpoint_that_fails_its_hmac(backend: AuditLog) -> None:
    old = [backend.append(call(i, ts=1000.0 + i)) for i in range(3)]
    backend.append_many([], completions=[done(s) for s in old])
    backend.prune(1001.5)
    backend.append(call(9))
    zero_checkpoint_counts(backend)
    with pytest.raises(AuditError, match=r"checkpoint \(row 2\) has a wrong or missing HMAC"):
        backend.tally(settle=0)
    with pytest.raises(AuditError, match=r"checkpoint \(row 2\) has a wrong or missing HMAC"):
        backend.prune(time.time() + 1)
    assert any("checkpoint at row 2 has a wrong or missing HMAC" in p for p in backend.verify().problems)


def write_tally(log: AuditLog, upto: int, count: int) -> None:
    """A genuinely sealed tally row stating ``count`` (as an earlier release could have written it)."""
    from toolcrib.gateway.audit.shared import build_row
    from toolcrib.gateway.audit.tally import tally_seal

    row = build_row(AuditEvent(kind="tally", attempt_seq=upto, bytes=count), None, None)
    row["seal"] = tally_seal(KEY, upto, count)
    if isinstance(log, SqliteAuditLog):
        with log._lock:
            log._append_locked([], [row])
    else:
        log._write([row], (), True)


def test_postgres_rows_inserted_past_the_head_block_appends_with_a_clear_error(pg_url: str) -> None:
    db = Database(pg_url).open()
    migrations.upgrade(db)
    try:
        log = PostgresAuditLog(db, hmac_key=KEY)
        log.append(call(1))
        fake = append_at_tail(log, kind="search", query="written by hand")
        with pytest.raises(AuditError, match=rf"rows {fake}\.\.{fake} were inserted past its keyed head row") as caught:
            log.append(call(2))
        assert "\n" not in str(caught.value) and "toolcrib audit verify" in str(caught.value)
        assert any(f"rows {fake}..{fake} come after the head row" in p for p in log.verify().problems)
    finally:
        db.close()


@pytest.mark.anyio
async def test_one_unencodable_error_does_not_sink_the_other_calls_in_its_batch(backend: AuditLog) -> None:
    writer = AuditWriter(backend)
    first = await writer.append(call(1))
    writer.submit(Completion(seq=first, outcome="protocol_error", error="upstream said \ud800"))
    try:
        other = await writer.append(call(2))  # another client's call, same batch
        assert other > first
    finally:
        await writer.flush()
        writer.close()
    by_seq = {r["seq"]: r for r in backend.query(kind="call")}
    assert by_seq[first]["outcome"] == "protocol_error" and backend.verify().ok


# ---- regression: these hold today -----------------------------------------------------------------


def test_a_seal_copied_from_a_row_with_identical_fields_is_detected(backend: AuditLog) -> None:
    a, b = backend.append(call(1)), backend.append(call(1))
    same = {"completed": 1_700_000_000.0, "latency_ms": 3.0}
    backend.append_many([], completions=[done(a, **same), done(b, **same)])
    seal_a = next(r["seal"] for r in rows(backend) if r["seq"] == a)
    tamper(backend, "UPDATE audit_events SET seal = ? WHERE seq = ?", (seal_a, b))
    assert any(p.startswith(f"row {b}: the seal") for p in backend.verify().problems)


def test_the_database_refuses_what_is_not_a_single_completion(backend: AuditLog) -> None:
    seq = backend.append(call(1))
    tally_src = backend.append(call(2))
    backend.append_many([], completions=[done(tally_src)])
    tally = backend.tally(settle=0)
    assert tally is not None
    error = refused(backend)
    attempts = [
        ("UPDATE audit_events SET bytes = 0 WHERE seq = ?", (tally,)),  # a tally's count
        ("UPDATE audit_events SET outcome = 'ok' WHERE seq = ?", (tally_src,)),  # completed once already
        ("UPDATE audit_events SET seal = 'x', completed = 2.0 WHERE seq = ?", (tally_src,)),
        ("UPDATE audit_events SET prev_hash = 'x', outcome = 'ok', completed = 1.0, seal = 'x' WHERE seq = ?", (seq,)),
        ("UPDATE audit_events SET seq = 999, outcome = 'ok', completed = 1.0, seal = 'x' WHERE seq = ?", (seq,)),
        ("UPDATE audit_events SET kind = 'call', outcome = 'ok', completed = 1.0, seal = 'x' WHERE seq = ?", (tally,)),
        ("UPDATE audit_events SET principal = NULL, outcome = 'ok', completed = 1.0, seal = 'x' WHERE seq = ?", (seq,)),
        ("UPDATE audit_events SET args_stored = 'redacted', outcome = 'ok', completed = 1.0, seal = 'x' "
         "WHERE seq = ?", (seq,)),
        ("UPDATE audit_events SET outcome = NULL, completed = 1.0, seal = 'x' WHERE seq = ?", (seq,)),
        ("UPDATE audit_events SET outcome = 'ok', completed = NULL, seal = NULL WHERE seq = ?", (seq,)),
        ("DELETE FROM audit_events WHERE seq = ?", (seq,)),
        ("DELETE FROM audit_events WHERE seq = ?", (tally,)),
    ]  # fmt: skip
    for sql, params in attempts:
        with pytest.raises(error, match=r"append-only|removed only by prune"):
            run_sql(backend, sql, params)
    if isinstance(backend, SqliteAuditLog):  # an UPSERT is an UPDATE too
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            upsert = "ON CONFLICT(seq) DO UPDATE SET outcome = 'pending', completed = NULL, seal = NULL"
            run_sql(backend, "INSERT INTO events (seq, ts, kind, prev_hash, hash) VALUES (?, 0, 'x', 'x', 'x') "
                    + upsert, (tally_src,))  # fmt: skip
    # a completion with outcome 'pending' (a call held for approval) is allowed once, then never again
    run_sql(backend, "UPDATE audit_events SET outcome = 'pending', completed = 1.0, seal = 'x' WHERE seq = ?", (seq,))
    with pytest.raises(error, match="append-only"):
        run_sql(backend, "UPDATE audit_events SET outcome = 'ok', completed = 2.0, seal = 'y' WHERE seq = ?", (seq,))
    assert any(p.startswith(f"row {seq}: the seal") for p in backend.verify().problems)


@pytest.mark.parametrize("how", ["lowered", "deleted", "forged", "reseq"])
def test_tampering_with_a_tally_is_detected(backend: AuditLog, how: str) -> None:
    seqs = [backend.append(call(i)) for i in range(3)]
    backend.append_many([], completions=[done(s) for s in seqs])
    tally = backend.tally(settle=0)
    assert tally is not None
    backend.append(AuditEvent(kind="search", query="after"))
    assert backend.verify().ok
    if how == "lowered":
        tamper(backend, "UPDATE audit_events SET bytes = 1 WHERE seq = ?", (tally,))
    elif how == "deleted":
        if isinstance(backend, SqliteAuditLog):
            db = sqlite3.connect(backend.path, isolation_level=None)
            db.execute("DROP TRIGGER events_prune_only")
            db.execute("DELETE FROM events WHERE seq = ?", (tally,))
            db.close()
        else:
            tamper(backend, "DELETE FROM audit_events WHERE seq = ?", (tally,))
    elif how == "forged":
        append_at_tail(backend, kind="tally", attempt_seq=seqs[-1], bytes=9, seal="0" * 64)
    else:  # the tally's count claimed for fewer rows: its seal no longer matches
        tamper(backend, "UPDATE audit_events SET attempt_seq = ? WHERE seq = ?", (seqs[0], tally))
    assert not backend.verify().ok


def test_a_fake_completed_row_appended_at_the_tail_is_detected_even_once_adopted(backend: AuditLog) -> None:
    seq = backend.append(call(1))
    backend.append_many([], completions=[done(seq)])
    fake = append_at_tail(backend, kind="call", principal="key:alice", method="tools/call:direct",
                          tool="git__push", outcome="ok", completed=time.time(), seal="0" * 64)  # fmt: skip
    assert row_hash(next(r for r in rows(backend) if r["seq"] == fake)) == next(
        r["hash"] for r in rows(backend) if r["seq"] == fake
    )
    if isinstance(backend, SqliteAuditLog):
        backend.append(AuditEvent(kind="search", query="q"))  # the writer chains on and anchors past it
    # (PostgreSQL: the next append collides with the hand-made seq: it continues from audit_head)
    assert any(p.startswith(f"row {fake}: the seal") for p in backend.verify().problems)


def test_reordering_two_completed_rows_is_detected(backend: AuditLog) -> None:
    a, b = backend.append(call(1)), backend.append(call(2))
    backend.append_many([], completions=[done(a), done(b)])
    tamper(backend, "UPDATE audit_events SET seq = seq + 1000 WHERE seq = ?", (a,))
    tamper(backend, "UPDATE audit_events SET seq = ? WHERE seq = ?", (a, b))
    tamper(backend, "UPDATE audit_events SET seq = ? WHERE seq = ?", (b, a + 1000))
    assert not backend.verify().ok


def test_a_log_of_pairs_then_call_rows_pruned_across_the_switch_verifies(backend: AuditLog) -> None:
    """Mid-life upgrade on either backend: attempt/outcome pairs, then call rows and a tally, then a
    prune behind a checkpoint that cuts pairs and call rows alike."""
    for i in range(3):
        attempt = backend.append(AuditEvent(kind="attempt", principal="key:a", tool="git__log", arguments={"n": i},
                                            ts=1000.0 + i))  # fmt: skip
        backend.append(AuditEvent(kind="outcome", attempt_seq=attempt, outcome="ok", ts=1000.5 + i))
    old = [backend.append(call(i, ts=1100.0 + i)) for i in range(3)]
    backend.append_many([], completions=[done(s) for s in old[:2]])
    new = [backend.append(call(i)) for i in range(3)]
    backend.append_many([], completions=[done(s) for s in new])
    assert backend.tally(settle=0) is not None
    assert backend.verify().ok
    assert backend.prune(1101.5) == 8
    report = backend.verify()
    assert report.ok, report.problems
    uncomplete(backend, new[0])
    assert any("a completion was removed" in p for p in backend.verify().problems)


@pytest.mark.anyio
async def test_a_client_argument_with_a_lone_surrogate_does_not_lose_another_calls_completion(
    backend: AuditLog,
) -> None:
    writer = AuditWriter(backend)
    answered = await writer.append(call(1))
    results = await asyncio.gather(
        writer.append(done(answered)),  # the first client's call ended: its completion is awaited
        writer.append(call(2, arguments={"n": "\ud800"})),  # another client's call, same turn, same batch
        return_exceptions=True,
    )
    await writer.flush()
    writer.close()
    assert results[0] == answered, results
    assert {r["seq"]: r for r in backend.query(kind="call")}[answered]["outcome"] == "ok"
