"""Audit: append/verify, a mutation test of every tampering kind, prune checkpoints, anchors."""

from __future__ import annotations

import io
import json
import random
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from toolcrib.errors import AuditError
from toolcrib.gateway.audit.events import Completion
from toolcrib.gateway.audit.log import (
    COLUMNS,
    AuditEvent,
    SqliteAuditLog,
    load_hmac_key,
    row_hash,
)
from toolcrib.gateway.trust.secrets import Redactor

KEY = b"k" * 32
CANARY = "CANARY-audit-4f9c2e7d1b"


def make_log(path: Path, rows: int = 20, *, calls: bool = False) -> SqliteAuditLog:
    """Searches and attempt/outcome pairs (the rows of logs written before ``call`` rows); with
    ``calls``, ``call`` rows completed in place instead of every other pair."""
    log = SqliteAuditLog(path / "audit.db", hmac_key=KEY, redactor=Redactor([CANARY]))
    for i in range(rows):
        if calls and i % 3 == 1:
            fill_call(log, i)
        else:
            fill(log, i)
    return log


def fill_call(log: SqliteAuditLog, i: int) -> None:
    """One ``call`` row, completed in place (``ok``)."""
    seq = log.append(
        AuditEvent(
            kind="call",
            request_id=str(i),
            principal="alice" if i % 2 else "bob",
            server="git",
            tool="git__git_log",
            tool_hash="ab" * 32,
            arguments={"n": i, "token": CANARY},
            outcome="pending",
        )
    )
    done = Completion(seq=seq, outcome="ok", decision="allow", rule="default", latency_ms=1.5, bytes=12)
    log.append_many([], completions=[done])


def fill(log: SqliteAuditLog, i: int) -> None:
    if i % 3 == 0:
        log.append(AuditEvent(kind="search", principal="alice", query=f"q{i}", results=["git__git_log", "t__now"]))
        return
    attempt = log.append(
        AuditEvent(
            kind="attempt",
            request_id=str(i),
            principal="alice" if i % 2 else "bob",
            server="git",
            tool="git__git_log",
            tool_hash="ab" * 32,
            arguments={"n": i, "token": CANARY},
            decision="allow",
            rule="default",
        )
    )
    log.append(
        AuditEvent(
            kind="outcome",
            request_id=str(i),
            tool="git__git_log",
            outcome="ok",
            latency_ms=1.5,
            attempt_seq=attempt,
        )
    )


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SqliteAuditLog]:
    audit = make_log(tmp_path)
    yield audit
    audit.close()


def raw(log: SqliteAuditLog) -> sqlite3.Connection:
    """A direct connection with the append-only triggers dropped, as a deliberate tamperer would."""
    db = sqlite3.connect(log.path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("DROP TRIGGER IF EXISTS events_no_update")
    db.execute("DROP TRIGGER IF EXISTS events_complete_only")
    db.execute("DROP TRIGGER IF EXISTS events_prune_only")
    return db


def seqs(db: sqlite3.Connection) -> list[int]:
    return [r[0] for r in db.execute("SELECT seq FROM events ORDER BY seq")]


def rehash_from(db: sqlite3.Connection, start: int) -> None:
    """Recompute prev_hash/hash from ``start`` on, as an attacker hiding an edit would."""
    db.row_factory = sqlite3.Row
    prev = db.execute("SELECT hash FROM events WHERE seq < ? ORDER BY seq DESC LIMIT 1", (start,)).fetchone()
    prev_hash = prev["hash"] if prev else "0" * 64
    for row in list(db.execute("SELECT * FROM events WHERE seq >= ? ORDER BY seq", (start,))):
        data = dict(row)
        data["prev_hash"] = prev_hash
        data["hash"] = row_hash(data)
        db.execute(
            "UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?",
            (data["prev_hash"], data["hash"], row["seq"]),
        )
        prev_hash = data["hash"]
    db.row_factory = None


def edit(db: sqlite3.Connection, rng: random.Random) -> None:
    seq = rng.choice(seqs(db))
    column = rng.choice(["principal", "tool", "decision", "outcome", "arguments", "ts", "query"])
    db.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", ("tampered", seq))


def edit_and_rehash_row(db: sqlite3.Connection, rng: random.Random) -> None:
    seq = rng.choice(seqs(db))
    db.execute("UPDATE events SET principal = 'mallory' WHERE seq = ?", (seq,))
    db.row_factory = sqlite3.Row
    data = dict(db.execute("SELECT * FROM events WHERE seq = ?", (seq,)).fetchone())
    db.row_factory = None
    db.execute("UPDATE events SET hash = ? WHERE seq = ?", (row_hash(data), seq))


def edit_and_rewrite_chain(db: sqlite3.Connection, rng: random.Random) -> None:
    seq = rng.choice(seqs(db))
    db.execute("UPDATE events SET decision = 'deny' WHERE seq = ?", (seq,))
    rehash_from(db, seq)


def delete(db: sqlite3.Connection, rng: random.Random) -> None:
    db.execute("DELETE FROM events WHERE seq = ?", (rng.choice(seqs(db)),))


def delete_and_rewrite_chain(db: sqlite3.Connection, rng: random.Random) -> None:
    all_seqs = seqs(db)
    victim = rng.choice(all_seqs[:-1])
    db.execute("DELETE FROM events WHERE seq = ?", (victim,))
    for seq in all_seqs:
        if seq > victim:
            db.execute("UPDATE events SET seq = ? WHERE seq = ?", (seq - 1, seq))
    rehash_from(db, victim)


def insert(db: sqlite3.Connection, rng: random.Random) -> None:
    all_seqs = seqs(db)
    at = rng.choice(all_seqs)
    for seq in reversed(all_seqs):
        if seq >= at:
            db.execute("UPDATE events SET seq = ? WHERE seq = ?", (seq + 1, seq))
    values = dict.fromkeys(COLUMNS)
    values.update(seq=at, ts=time.time(), kind="attempt", principal="mallory", prev_hash="0" * 64, hash="0" * 64)
    db.execute(
        f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
        list(values.values()),
    )
    if rng.random() < 0.5:
        rehash_from(db, at)


def append_forged(db: sqlite3.Connection, rng: random.Random) -> None:
    db.row_factory = sqlite3.Row
    last = dict(db.execute("SELECT * FROM events ORDER BY seq DESC LIMIT 1").fetchone())
    db.row_factory = None
    forged = {**last, "seq": last["seq"] + 1, "principal": "mallory", "prev_hash": last["hash"]}
    forged["hash"] = row_hash(forged)
    db.execute(
        f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
        [forged[c] for c in COLUMNS],
    )


def reorder(db: sqlite3.Connection, rng: random.Random) -> None:
    a, b = rng.sample(seqs(db), 2)
    db.execute("UPDATE events SET seq = -1 WHERE seq = ?", (a,))
    db.execute("UPDATE events SET seq = ? WHERE seq = ?", (a, b))
    db.execute("UPDATE events SET seq = ? WHERE seq = -1", (b,))


def truncate(db: sqlite3.Connection, rng: random.Random) -> None:
    all_seqs = seqs(db)
    cut = rng.randint(1, len(all_seqs) - 1)
    db.execute("DELETE FROM events WHERE seq >= ?", (all_seqs[-cut],))


def delete_prefix(db: sqlite3.Connection, rng: random.Random) -> None:
    db.execute("DELETE FROM events WHERE seq <= ?", (rng.randint(1, 10),))


def delete_prefix_forging_checkpoint(db: sqlite3.Connection, rng: random.Random) -> None:
    cut = rng.randint(1, 10)
    last = db.execute("SELECT hash FROM events WHERE seq = ?", (cut,)).fetchone()[0]
    db.execute("INSERT INTO checkpoints (seq, hash, ts) VALUES (?, ?, ?)", (cut, last, time.time()))
    db.execute("DELETE FROM events WHERE seq <= ?", (cut,))


def call_seqs(db: sqlite3.Connection) -> list[int]:
    return [r[0] for r in db.execute("SELECT seq FROM events WHERE kind = 'call' AND completed IS NOT NULL")]


def edit_completion(db: sqlite3.Connection, rng: random.Random) -> None:
    """A completed call row's outcome, error, latency, bytes, decision or completion time changed (seal kept)."""
    seq = rng.choice(call_seqs(db))
    column, value = rng.choice(
        [("outcome", "tool_error"), ("error", "x"), ("latency_ms", 99.0), ("bytes", 1), ("decision", "deny"),
         ("completed", 1.0), ("approver", "mallory")]
    )  # fmt: skip
    db.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", (value, seq))


def edit_seal(db: sqlite3.Connection, rng: random.Random) -> None:
    """A completed call row's seal removed or replaced."""
    seq = rng.choice(call_seqs(db))
    db.execute("UPDATE events SET seal = ? WHERE seq = ?", (rng.choice([None, "0" * 64, "seal"]), seq))


def swap_completions(db: sqlite3.Connection, rng: random.Random) -> None:
    """Two completed call rows' completions (seals included) swapped, one of them made a failure first."""
    a, b = rng.sample(call_seqs(db), 2)
    cols = "outcome, error, latency_ms, bytes, decision, rule, approver, completed, seal"
    ra = db.execute(f"SELECT {cols} FROM events WHERE seq = ?", (a,)).fetchone()
    rb = db.execute(f"SELECT {cols} FROM events WHERE seq = ?", (b,)).fetchone()
    sets = ", ".join(f"{c} = ?" for c in cols.split(", "))
    db.execute(f"UPDATE events SET {sets} WHERE seq = ?", (*rb[:1], "boom", *rb[2:], a))
    db.execute(f"UPDATE events SET {sets} WHERE seq = ?", (*ra, b))


CALL_MUTATIONS = [edit_completion, edit_seal, swap_completions]

MUTATIONS: list[Callable[[sqlite3.Connection, random.Random], None]] = [
    edit,
    edit_and_rehash_row,
    edit_and_rewrite_chain,
    delete,
    delete_and_rewrite_chain,
    insert,
    append_forged,
    reorder,
    truncate,
    delete_prefix,
    delete_prefix_forging_checkpoint,
    *CALL_MUTATIONS,
]


def test_append_and_verify(log: SqliteAuditLog) -> None:
    report = log.verify()
    assert report.ok, report.problems
    assert report.rows == 33 and report.first_seq == 1 and report.last_seq == 33 and report.anchor_seq == 33


@pytest.mark.parametrize("calls", [False, True], ids=["pairs", "calls"])
@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__)
def test_every_mutation_is_detected_every_time(tmp_path: Path, mutation: Callable[..., None], calls: bool) -> None:
    """Old logs (attempt/outcome pairs) and logs with ``call`` rows completed in place alike."""
    if mutation in CALL_MUTATIONS and not calls:
        pytest.skip("a completion exists only on call rows")
    rng = random.Random(mutation.__name__)
    base = tmp_path / "base"
    base.mkdir()
    make_log(base, rows=20, calls=calls).close()
    for trial in range(25):
        directory = tmp_path / str(trial)
        shutil.copytree(base, directory)
        audit = SqliteAuditLog(directory / "audit.db", hmac_key=KEY, create=False)
        assert audit.verify().ok
        db = raw(audit)
        mutation(db, rng)
        db.close()
        report = audit.verify()
        assert not report.ok, f"trial {trial}: {mutation.__name__} went undetected"
        audit.close()


def test_updates_and_deletes_are_refused_by_triggers(log: SqliteAuditLog) -> None:
    db = sqlite3.connect(log.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE events SET principal = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="prune"):
        db.execute("DELETE FROM events WHERE seq = 1")
    db.close()


def test_prune_keeps_verify_working(log: SqliteAuditLog) -> None:
    cutoff = log.query(limit=1000)[10]["ts"]
    deleted = log.prune(cutoff)
    assert deleted == 10
    report = log.verify()
    assert report.ok, report.problems
    assert report.checkpoint_seq == 10 and report.first_seq == 11
    fill(log, 1)
    assert log.verify().ok
    assert log.prune(time.time() + 1) == 25
    assert log.verify().ok
    fill(log, 2)
    report = log.verify()
    assert report.ok and report.first_seq == 36, report.problems


def test_checkpoint_signed_with_another_key_detected(log: SqliteAuditLog, tmp_path: Path) -> None:
    other = SqliteAuditLog(tmp_path / "audit.db", hmac_key=b"o" * 32, create=False)
    cut = log.query(limit=1000)[5]
    other.prune(cut["ts"])  # the first checkpoint (the row before `cut`), signed with another key
    other.close()
    assert any(f"checkpoint at row {cut['seq'] - 1}" in p and "HMAC" in p for p in log.verify().problems)
    with pytest.raises(AuditError, match=f"checkpoint \\(row {cut['seq'] - 1}\\) has a wrong or missing HMAC"):
        log.prune(log.query(limit=1000)[5]["ts"])  # nothing is pruned (or tallied) on top of it


def test_anchor_problems(log: SqliteAuditLog) -> None:
    anchor = Path(f"{log.path}.anchor")
    data = bytearray(anchor.read_bytes())
    slot = (33 % 2) * 256
    data[slot + 10] ^= 0x01
    anchor.write_bytes(bytes(data))
    report = log.verify()
    assert report.anchor_seq == 32
    assert any("after the anchored head" in p for p in report.problems)
    anchor.unlink()
    assert any("anchor file" in p for p in log.verify().problems)
    fill(log, 1)  # the writer notices the lost anchor and says so in the chain, for ever
    report = log.verify()
    assert report.anchor_seq == 36
    assert [p for p in report.problems if "no keyed anchor" in p] == [
        "row 35: no keyed anchor for a log with rows up to 33 (deleted, rewritten or forged); "
        "re-anchored here: rows cut before this one cannot be ruled out"
    ]


def test_two_writers_on_one_file_keep_one_chain(tmp_path: Path) -> None:
    a = make_log(tmp_path, rows=0)
    b = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
    for i in range(30):
        fill(a if i % 2 else b, i)
    report = a.verify()
    assert report.ok, report.problems
    a.close()
    b.close()


def test_arguments_redacted_and_hmac_of_originals(log: SqliteAuditLog, tmp_path: Path) -> None:
    rows = log.query(kind="attempt", limit=1)
    assert rows[0]["arguments"]["token"] == "[REDACTED]"
    assert rows[0]["args_hmac"] == log.args_hmac({"n": rows[0]["arguments"]["n"], "token": CANARY})
    log.close()
    for path in tmp_path.iterdir():
        assert CANARY.encode() not in path.read_bytes(), path


def test_query_tail_export(log: SqliteAuditLog) -> None:
    assert {r["principal"] for r in log.query(principal="bob", limit=100)} == {"bob"}
    assert len(log.query(kind="outcome", outcome="ok", limit=100)) == 13
    assert log.query(tool="git__*", limit=3)[-1]["seq"] == 33
    assert log.query(tool="fs__*") == []
    assert log.query(since=time.time() + 10) == []
    tail = log.tail(5)
    assert [r["seq"] for r in tail] == [29, 30, 31, 32, 33]
    search = log.query(kind="search", limit=1)[0]
    assert search["results"] == ["git__git_log", "t__now"] and search["query"] == "q18"
    outcome = log.query(kind="outcome", limit=1)[0]
    attempt = log.query(request_id=outcome["request_id"], kind="attempt")[0]
    assert outcome["attempt_seq"] == attempt["seq"]
    buf = io.StringIO()
    assert log.export_jsonl(buf) == 33
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert all(row_hash(r) == r["hash"] for r in lines)


def test_read_only_open_of_missing_log(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="toolcrib serve"):
        SqliteAuditLog(tmp_path / "nope.db", create=False)


def test_hmac_key_file_created_0600_and_reused(tmp_path: Path) -> None:
    key = load_hmac_key(tmp_path / "a.db")
    assert len(key) == 32
    assert (tmp_path / "a.db.key").stat().st_mode & 0o777 == 0o600
    assert load_hmac_key(tmp_path / "a.db") == key
    (tmp_path / "a.db.key").chmod(0o644)
    with pytest.raises(AuditError, match="chmod 600"):
        load_hmac_key(tmp_path / "a.db")


def test_append_cost(tmp_path: Path) -> None:
    audit = make_log(tmp_path, rows=0)
    event = AuditEvent(kind="attempt", principal="a", tool="t__x", arguments={"a": 1}, decision="allow", rule="r")
    start = time.perf_counter()
    for _ in range(500):
        audit.append(event)
    per_append_us = (time.perf_counter() - start) / 500 * 1e6
    assert per_append_us < 2000, per_append_us
    audit.close()


def test_verify_while_another_process_appends(tmp_path: Path) -> None:
    import threading

    reader = make_log(tmp_path, rows=5)
    writer = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
    stop = threading.Event()

    def append_forever() -> None:
        i = 0
        while not stop.is_set():
            fill(writer, i)
            i += 1

    thread = threading.Thread(target=append_forever)
    thread.start()
    try:
        reports = [reader.verify() for _ in range(30)]
    finally:
        stop.set()
        thread.join()
    assert all(r.ok for r in reports), [r.problems for r in reports if not r.ok]
    assert reports[-1].rows > reports[0].rows
    writer.close()
    reader.close()
