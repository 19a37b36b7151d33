"""The audit log on both backends (SQLite file, real PostgreSQL): the same interface, the same row
hash; on PostgreSQL one chain across replicas, tampering detected, a SIGKILLed appender loses no
returned row, the writer never blocks the loop; the GLOB -> regex translation against SQLite."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolcrib.config import Config
from toolcrib.errors import AuditError
from toolcrib.gateway.audit.backends import AuditLog, audit_key, open_audit_log
from toolcrib.gateway.audit.events import AuditEvent
from toolcrib.gateway.audit.keys import load_shared_hmac_key
from toolcrib.gateway.audit.log import SqliteAuditLog
from toolcrib.gateway.audit.log_pg import PostgresAuditLog
from toolcrib.gateway.audit.schema import GENESIS, row_hash
from toolcrib.gateway.audit.shared import glob_to_regex
from toolcrib.gateway.audit.writer import AuditWriter
from toolcrib.gateway.trust.secrets import EnvStore
from toolcrib.storage import migrations
from toolcrib.storage.postgres import Database

KEY = b"k" * 32
ROOT = Path(__file__).resolve().parents[2]


def pg_db(url: str) -> Database:
    db = Database(url).open()
    migrations.upgrade(db)
    return db


@pytest.fixture(params=["sqlite", "pg"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, AuditLog]]:
    if request.param == "sqlite":
        log: AuditLog = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
        yield "sqlite", log
        log.close()
        return
    db = pg_db(request.getfixturevalue("pg_url"))
    yield "pg", PostgresAuditLog(db, hmac_key=KEY)
    db.close()


def call(i: int, tool: str = "git__log", method: str = "tools/call", ts: float | None = None) -> AuditEvent:
    return AuditEvent(
        kind="attempt", request_id=i, principal="key:alice", method=method, tool=tool, arguments={"n": i}, ts=ts
    )


def chain_ok(lines: list[str]) -> None:
    """Recompute every exported row's hash and link, as an auditor holding only the export would."""
    prev = GENESIS
    for line in lines:
        row = json.loads(line)
        assert row["prev_hash"] == prev
        assert row_hash(row) == row["hash"]
        prev = row["hash"]


def test_append_query_tail_export_verify(backend: tuple[str, AuditLog]) -> None:
    _, log = backend
    seqs = [log.append(call(i, tool="git__log" if i % 2 else "fs__read")) for i in range(10)]
    seqs += log.append_many([call(10, method="resources/read", tool="res[1]"), AuditEvent(kind="search", query="q")])
    assert seqs == list(range(1, 13))
    assert [r["seq"] for r in log.query(tool="git__*")] == [2, 4, 6, 8, 10]
    assert [r["seq"] for r in log.query(tool="fs__rea?", limit=2)] == [7, 9]
    assert [r["seq"] for r in log.query(tool="res[1]")] == []  # a set, as SQLite GLOB reads it
    assert [r["seq"] for r in log.query(tool="res[[]1]")] == [11]
    assert [r["seq"] for r in log.query(method="resources/*")] == [11]
    assert [r["seq"] for r in log.query(tool="[unterminated")] == []
    assert log.query(kind="attempt", limit=1)[0]["arguments"] == {"n": 10}
    assert log.query(principal="key:alice", request_id="3")[0]["args_hmac"] == log.args_hmac({"n": 3})
    assert [r["seq"] for r in log.tail(3)] == [10, 11, 12]
    out = io.StringIO()
    assert log.export_jsonl(out) == 12
    chain_ok(out.getvalue().splitlines())
    report = log.verify()
    assert report.ok, report.problems
    assert (report.rows, report.last_seq, report.anchor_seq, report.args_checked) == (12, 12, 12, 11)


def test_export_identical_across_backends(tmp_path: Path, pg_url: str) -> None:
    """The same events give byte-identical exports: the row hash does not depend on the backend."""
    db = pg_db(pg_url)
    logs: list[AuditLog] = [SqliteAuditLog(tmp_path / "a.db", hmac_key=KEY), PostgresAuditLog(db, hmac_key=KEY)]
    exports = []
    for log in logs:
        log.append_many([call(i, ts=1000.5 + i) for i in range(5)])
        log.append(AuditEvent(kind="outcome", outcome="ok", latency_ms=1.25, bytes=10, attempt_seq=1, ts=2000.0))
        out = io.StringIO()
        log.export_jsonl(out)
        exports.append(out.getvalue())
        log.close()
    db.close()
    assert exports[0] == exports[1]


def test_prune_with_checkpoint_then_verify(backend: tuple[str, AuditLog]) -> None:
    _, log = backend
    log.append_many([call(i, ts=1000.0 + i) for i in range(20)])
    log.append_many([call(i, ts=time.time()) for i in range(20, 25)])
    assert log.prune_count(1010.0) == 10
    assert log.prune(1010.0) == 10
    log.append(call(99))
    report = log.verify()
    assert report.ok, report.problems
    assert (report.checkpoint_seq, report.first_seq, report.last_seq) == (10, 11, 26)


def superuser(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def test_pg_tampering_detected(pg_url: str) -> None:
    db = pg_db(pg_url)
    log = PostgresAuditLog(db, hmac_key=KEY)
    log.append_many([call(i) for i in range(10)])
    assert log.verify().ok
    with superuser(pg_url) as conn:
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER USER")
        conn.execute("UPDATE audit_events SET tool = 'evil__tool' WHERE seq = 3")
        assert any("row 3 does not match its hash" in p for p in log.verify().problems)
        conn.execute("DELETE FROM audit_events WHERE seq = 5")
        assert any("rows 5..5 are missing" in p for p in log.verify().problems)
        conn.execute("DELETE FROM audit_events WHERE seq >= 9")
        assert any("tail was cut" in p for p in log.verify().problems)
        conn.execute("ALTER TABLE audit_events ENABLE TRIGGER USER")
        conn.execute("UPDATE audit_head SET mac = repeat('0', 64)")
        problems = log.verify().problems
        assert any("audit_head row naming row 10 has a wrong or missing HMAC" in p for p in problems)
    # A writer finding a head it cannot authenticate re-anchors and says so in the chain, for ever.
    log.append(call(50))
    problems = log.verify().problems
    assert any("re-anchored here" in p for p in problems), problems
    db.close()


def test_pg_deleted_head_row_is_recorded(pg_url: str) -> None:
    db = pg_db(pg_url)
    log = PostgresAuditLog(db, hmac_key=KEY)
    log.append_many([call(i) for i in range(3)])
    with superuser(pg_url) as conn:
        conn.execute("DELETE FROM audit_head")
    assert any("audit_head row is missing" in p for p in log.verify().problems)
    assert log.append(call(3)) == 5  # row 4 is the writer's "anchor" note
    report = log.verify()
    assert [r["kind"] for r in log.tail(2)] == ["anchor", "attempt"]
    assert any("row 4: the audit head row was missing" in p for p in report.problems), report.problems
    db.close()


def test_pg_other_key_is_refused_by_verify(pg_url: str) -> None:
    db = pg_db(pg_url)
    PostgresAuditLog(db, hmac_key=KEY).append(call(1))
    report = PostgresAuditLog(db, hmac_key=b"o" * 32, create=False).verify()
    assert any("wrong or missing HMAC" in p for p in report.problems)
    unkeyed = PostgresAuditLog(db, create=False).verify()
    assert unkeyed.ok and any("audit key was not available" in line for line in unkeyed.limits)
    with pytest.raises(AuditError, match="without the audit key"):
        PostgresAuditLog(db, create=False).append(AuditEvent(kind="search"))
    db.close()


def test_one_chain_across_replicas(pg_url: str) -> None:
    """4 replicas (own Database, own log instance) append 200 rows each at once: one gapless chain."""
    errors: list[BaseException] = []
    got: list[list[int]] = []
    start = threading.Barrier(4)

    def replica(n: int) -> None:
        db = Database(pg_url, pool_size=2).open()
        try:
            log = PostgresAuditLog(db, hmac_key=KEY)
            start.wait()
            got.append([log.append(AuditEvent(kind="search", query=f"r{n}-{i}")) for i in range(200)])
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    migrations.upgrade(Database(pg_url).open())
    threads = [threading.Thread(target=replica, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(s for seqs in got for s in seqs) == list(range(1, 801))
    assert all(seqs == sorted(seqs) for seqs in got)
    db = Database(pg_url).open()
    report = PostgresAuditLog(db, hmac_key=KEY, create=False).verify()
    db.close()
    assert report.ok, report.problems
    assert (report.rows, report.anchor_seq) == (800, 800)


APPENDER = """
import sys
from toolcrib.gateway.audit.events import AuditEvent
from toolcrib.gateway.audit.log_pg import PostgresAuditLog
from toolcrib.storage.postgres import Database

log = PostgresAuditLog(Database(sys.argv[1]).open(), hmac_key=b"k" * 32)
i = 0
while True:
    seqs = log.append_many([AuditEvent(kind="attempt", request_id=i, arguments={"i": i}) for _ in range(1 + i % 3)])
    print(seqs[-1], flush=True)
    i += 1
"""


def test_sigkill_mid_append_loses_no_returned_row(pg_url: str) -> None:
    pg_db(pg_url).close()
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, pg_url], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    printed: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            printed.append(int(line))
            if len(printed) >= 300:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.stdout is not None
    printed += [int(line) for line in proc.stdout.read().split()]  # returned before the kill, read late
    proc.stdout.close()
    db = Database(pg_url).open()
    log = PostgresAuditLog(db, hmac_key=KEY, create=False)
    report = log.verify()
    present = {r["seq"] for r in log.query(limit=100000)}
    db.close()
    assert report.ok, report.problems
    assert set(printed) <= present
    assert report.last_seq is not None and report.last_seq >= max(printed)


class ThreadRecordingLog(PostgresAuditLog):
    """The real PostgreSQL log, noting which thread ran each append."""

    threads: set[int]

    def append_many(self, events: Any, *, wait: bool = True) -> list[int]:
        self.threads.add(threading.get_ident())
        return super().append_many(events, wait=wait)


@pytest.mark.anyio
async def test_writer_with_pg_offloads_and_keeps_order(pg_url: str) -> None:
    db = pg_db(pg_url)
    log = ThreadRecordingLog(db, hmac_key=KEY)
    log.threads = set()
    writer = AuditWriter(log)
    for i in range(500):
        writer.submit(AuditEvent(kind="search", query=str(i)))
        if i % 100 == 0:
            seq = await writer.append(call(i))  # durable before it returns
            assert log.query(request_id=str(i), kind="attempt")[0]["seq"] == seq
    await writer.flush()
    rows = log.query(kind="search", limit=1000)
    assert [r["query"] for r in rows] == [str(i) for i in range(500)]
    assert threading.get_ident() not in log.threads  # never on the event loop
    assert log.verify().rows == 505  # 500 queued, 5 awaited
    writer.close()
    assert log.verify().ok
    db.close()


def test_shared_key_and_factory(tmp_path: Path, pg_url: str) -> None:
    with pytest.raises(AuditError) as err:
        load_shared_hmac_key(EnvStore({}))
    assert "\n" not in str(err.value) and "toolcrib creds set toolcrib audit-hmac" in str(err.value)
    store = EnvStore({"TOOLCRIB_SECRET_TOOLCRIB_AUDIT_HMAC": "s" * 64})
    assert load_shared_hmac_key(store) == b"s" * 64
    config = Config.model_validate({"audit": {"path": str(tmp_path / "audit.db")}})
    db = Database(pg_url).open()
    assert audit_key(config, db, EnvStore({}), create=False) is None
    pg = open_audit_log(config, db, hmac_key=audit_key(config, db, store), create=True)
    assert isinstance(pg, PostgresAuditLog) and pg.blocking_io
    local = open_audit_log(config, None, hmac_key=audit_key(config, None, None))
    assert isinstance(local, SqliteAuditLog) and not local.blocking_io
    local.close()
    db.close()


# --- the GLOB translation, against SQLite's own GLOB -------------------------------------------------

ALPHABET = "ab-^]*?[\\.|(){}$+é𝄞"
patterns = st.text(alphabet=ALPHABET, max_size=8)
subjects = st.lists(st.text(alphabet="ab-^]*?[\\.|é𝄞", max_size=6), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def regex_conn(postgres_cluster: Any) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_cluster.url, autocommit=True) as conn:
        yield conn


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=patterns, strings=subjects)
def test_glob_to_regex_matches_sqlite_glob(
    regex_conn: psycopg.Connection[Any], pattern: str, strings: list[str]
) -> None:
    lite = sqlite3.connect(":memory:")
    expected = [bool(lite.execute("SELECT ? GLOB ?", (s, pattern)).fetchone()[0]) for s in strings]
    regex = glob_to_regex(pattern)
    if regex is None:
        assert not any(expected)
        return
    got = [bool(r[0]) for r in regex_conn.execute("SELECT s ~ %s FROM unnest(%s::text[]) s", (regex, strings))]
    assert got == expected, (pattern, regex)
    if "[" not in pattern:  # no sets: SQLite GLOB is fnmatch's case-sensitive match
        assert expected == [fnmatch.fnmatchcase(s, pattern) for s in strings]
