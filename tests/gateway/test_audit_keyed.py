"""Audit tampering by someone who can write the database and the anchor file but does not hold the key.

Each attack here passed ``verify`` before the anchor and the checkpoints were keyed (issue 8, item 7);
the triggers stay in place unless the attack says otherwise. Also: 0600 files, the anchor's location,
``args_hmac`` checks, the limits ``verify`` states, rows for refused authentication and non-tool
methods, and the upgrade of a version-1 database.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from tests.gateway.conftest import MemoryKeyring
from toolcrib.cli import main
from toolcrib.gateway.audit.anchor import Anchor
from toolcrib.gateway.audit.log import AuditEvent, SqliteAuditLog, row_hash
from toolcrib.gateway.audit.schema import VERSION

KEY = b"k" * 32


def build(tmp_path: Path, rows: int = 20, **kwargs: object) -> SqliteAuditLog:
    log = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY, **kwargs)  # type: ignore[arg-type]
    for i in range(rows):
        seq = log.append(AuditEvent(kind="attempt", principal="key:alice", tool="git__log", arguments={"n": i}))
        log.append(AuditEvent(kind="outcome", principal="key:alice", tool="git__log", outcome="ok", attempt_seq=seq))
    return log


def row_hash_of(db: sqlite3.Connection, seq: int) -> str:
    return str(db.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()[0])


def unkeyed_anchor(path: Path, seq: int, digest: str) -> None:
    """Both slots rewritten with the unkeyed checksum the anchor used to carry."""
    check = hashlib.sha256(f"{seq}:{digest}".encode()).hexdigest()[:16]
    slot = json.dumps({"seq": seq, "hash": digest, "check": check}).encode().ljust(255) + b"\n"
    path.write_bytes(slot + slot)


def rehash_all(db: sqlite3.Connection) -> tuple[int, str]:
    db.row_factory = sqlite3.Row
    prev = "0" * 64
    seq = 0
    for row in list(db.execute("SELECT * FROM events ORDER BY seq")):
        data = dict(row)
        data["prev_hash"] = prev
        prev = data["hash"] = row_hash(data)
        db.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?", (data["prev_hash"], prev, row["seq"]))
        seq = row["seq"]
    db.row_factory = None
    return seq, prev


def test_inserted_checkpoint_and_deleted_prefix_are_detected_with_triggers_in_place(tmp_path: Path) -> None:
    log = build(tmp_path)
    assert log.verify().ok
    db = sqlite3.connect(log.path, isolation_level=None)
    digest = row_hash_of(db, 6)
    db.execute("INSERT INTO checkpoints (seq, hash, ts) VALUES (6, ?, ?)", (digest, time.time()))
    assert db.execute("DELETE FROM events WHERE seq <= 6").rowcount == 6  # the trigger lets it through
    db.close()
    Path(f"{tmp_path / 'audit.db'}.anchor.checkpoint").write_text(json.dumps({"seq": 6, "hash": digest}))
    report = log.verify()
    assert not report.ok
    assert any("checkpoint at row 6" in p and "HMAC" in p for p in report.problems), report.problems
    log.close()


def test_deleted_prefix_without_a_checkpoint_is_detected(tmp_path: Path) -> None:
    log = build(tmp_path)
    db = sqlite3.connect(log.path, isolation_level=None)
    db.execute("DROP TRIGGER events_prune_only")
    db.execute("DELETE FROM events WHERE seq <= 4")
    db.close()
    assert any("rows 1..4 are missing" in p for p in log.verify().problems)
    log.close()


def test_cut_tail_with_a_rewritten_unkeyed_anchor_is_detected(tmp_path: Path) -> None:
    log = build(tmp_path)
    db = sqlite3.connect(log.path, isolation_level=None)
    db.execute("DROP TRIGGER events_prune_only")
    db.execute("DELETE FROM events WHERE seq > 30")
    digest = row_hash_of(db, 30)
    db.close()
    unkeyed_anchor(Path(f"{log.path}.anchor"), 30, digest)
    report = log.verify()
    assert not report.ok
    assert any("wrong or missing HMAC" in p for p in report.problems), report.problems
    log.close()


def test_rewritten_chain_with_an_anchor_under_another_key_is_detected(tmp_path: Path) -> None:
    log = build(tmp_path)
    db = sqlite3.connect(log.path, isolation_level=None)
    db.execute("DROP TRIGGER events_complete_only")
    db.execute("UPDATE events SET principal = 'key:mallory' WHERE seq = 3")
    head = rehash_all(db)
    db.close()
    anchor = Path(f"{log.path}.anchor")
    anchor.unlink()
    Anchor(anchor, b"m" * 32).write(*head)  # MAC'd, but under another key
    assert not log.verify().ok
    log.close()


def test_args_hmac_is_recomputed_even_when_chain_and_anchor_agree(tmp_path: Path) -> None:
    log = build(tmp_path, rows=3)
    assert log.verify().args_checked == 3
    db = sqlite3.connect(log.path, isolation_level=None)
    db.execute("DROP TRIGGER events_complete_only")
    db.execute("""UPDATE events SET arguments = '{"n":99}' WHERE seq = 3""")
    head = rehash_all(db)
    db.close()
    log._anchor.write(*head)  # a holder of the anchor key alone cannot fix args_hmac
    report = log.verify()
    assert report.problems == ["row 3: the stored arguments do not match args_hmac (edited)"]
    log.close()


def test_redacted_arguments_are_reported_as_uncheckable(tmp_path: Path) -> None:
    from toolcrib.gateway.trust.secrets import Redactor

    secret = "CANARY-0b1c2d3e4f5a6b7c"
    log = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY, redactor=Redactor([secret]))
    log.append(AuditEvent(kind="attempt", tool="t__x", arguments={"token": secret}))
    log.append(AuditEvent(kind="attempt", tool="t__x", arguments={"text": "x" * 70000}))
    log.append(AuditEvent(kind="attempt", tool="t__x", arguments={"n": 1}))
    assert [r["args_stored"] for r in log.query()] == ["redacted", "truncated", "full"]
    report = log.verify()
    assert report.ok and report.args_checked == 1 and report.args_unchecked == 2
    assert any(line.startswith("args_hmac of 2 rows cannot be checked") for line in report.limits)
    log.close()


def test_verify_states_what_it_checked_and_what_it_cannot_detect(tmp_path: Path) -> None:
    log = build(tmp_path, rows=2)
    report = log.verify()
    assert report.ok and report.keyed
    assert any("hash chain of 4 rows" in line for line in report.checked)
    assert any("anchor at row 4 (its HMAC checked)" in line for line in report.checked)
    text = " ".join(report.limits)
    for needed in ("Truncation after the last anchor write", "holding the audit key can forge everything", "rollback"):
        assert needed in text
    assert "anchor is in the database's directory" in text
    log.close()
    keyless = SqliteAuditLog(tmp_path / "audit.db", create=False).verify()
    assert keyless.ok and not keyless.keyed
    assert any("audit key was not available" in line for line in keyless.limits)


def test_files_are_created_0600(tmp_path: Path) -> None:
    from toolcrib.gateway.audit.log import load_hmac_key

    db = tmp_path / "state" / "audit.db"
    log = SqliteAuditLog(db, hmac_key=load_hmac_key(db), anchor_path=tmp_path / "anchor")
    log.append(AuditEvent(kind="attempt", tool="t__x", arguments={"a": 1}))
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), tmp_path / "anchor", Path(f"{db}.key")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    log.close()


def test_existing_0644_files_are_tightened_on_open(tmp_path: Path) -> None:
    build(tmp_path, rows=1).close()
    for path in tmp_path.iterdir():
        path.chmod(0o644)
    SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY).close()
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == dict.fromkeys(
        [p.name for p in tmp_path.iterdir()], 0o600
    )


def test_anchor_path_is_configurable(tmp_path: Path) -> None:
    elsewhere = tmp_path / "other" / "head"
    elsewhere.parent.mkdir()
    log = build(tmp_path, rows=2, anchor_path=elsewhere)
    assert elsewhere.exists() and not Path(f"{log.path}.anchor").exists()
    report = log.verify()
    assert report.ok and report.anchor_seq == 4
    assert not any("database's directory" in line for line in report.limits)
    log.close()
    assert not SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY, create=False).verify().ok  # default path: none


def test_refused_authentication_and_non_tool_methods_are_recorded(tmp_path: Path) -> None:
    from toolcrib.gateway.audit.log import auth_refused

    log = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
    log.append(auth_refused("unknown API key", remote="203.0.113.7:50123", method="POST /mcp"))
    for method, target in (
        ("resources/read", "file:///etc/hosts"),
        ("prompts/get", "review"),
        ("completion/complete", "ref/prompt:review"),
        ("resources/subscribe", "file:///var/log/x"),
    ):
        seq = log.append(AuditEvent(kind="attempt", method=method, server="fs", target=target, arguments={}))
        log.append(AuditEvent(kind="outcome", method=method, server="fs", target=target, outcome="ok", attempt_seq=seq))
    [auth] = log.query(kind="auth")
    assert auth["outcome"] == "denied" and auth["principal"] is None
    assert auth["remote"] == "203.0.113.7:50123" and auth["error"] == "unknown API key"
    assert [r["target"] for r in log.query(method="resources/*", kind="attempt")] == [
        "file:///etc/hosts",
        "file:///var/log/x",
    ]
    assert log.verify().ok
    db = sqlite3.connect(log.path, isolation_level=None)
    db.execute("DROP TRIGGER events_complete_only")
    db.execute("UPDATE events SET remote = '198.51.100.1:1' WHERE seq = 1")
    db.close()
    assert any("row 1 does not match its hash" in p for p in log.verify().problems)
    log.close()


V1_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, request_id TEXT,
  principal TEXT, client_name TEXT, session TEXT, transport TEXT, method TEXT, server TEXT, tool TEXT,
  tool_hash TEXT, arguments TEXT, args_hmac TEXT, query TEXT, results TEXT, decision TEXT, rule TEXT,
  approver TEXT, outcome TEXT, error TEXT, latency_ms REAL, bytes INTEGER, attempt_seq INTEGER,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts REAL NOT NULL);
"""


def test_a_version_1_log_is_migrated_and_keeps_verifying(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(V1_SCHEMA)
    prev = "0" * 64
    names = [r[1] for r in db.execute("PRAGMA table_info(events)")]
    for seq in range(1, 6):
        row = dict.fromkeys(names)
        row.update(seq=seq, ts=1.0 * seq, kind="search", query=f"q{seq}", prev_hash=prev)
        row["hash"] = prev = row_hash(row)
        db.execute(f"INSERT INTO events VALUES ({', '.join('?' * len(names))})", list(row.values()))
    digest2 = row_hash_of(db, 2)
    db.execute("INSERT INTO checkpoints VALUES (2, ?, 3.0)", (digest2,))
    db.execute("DELETE FROM events WHERE seq <= 2")
    db.close()
    Path(f"{path}.anchor.checkpoint").write_text(json.dumps({"seq": 2, "hash": digest2}))
    unkeyed_anchor(Path(f"{path}.anchor"), 5, prev)
    log = SqliteAuditLog(path, hmac_key=KEY)  # the server's open adopts the unkeyed anchor and checkpoint
    report = log.verify()
    assert report.ok, report.problems
    assert report.first_seq == 3 and report.checkpoint_seq == 2 and report.anchor_seq == 6
    [note] = log.query(kind="anchor")
    assert note["seq"] == 6 and note["rule"] == "adopt-unkeyed" and "rows up to 5" in note["error"]
    assert any(line.startswith("Rows before row 6 were written before the log was keyed") for line in report.limits)
    log.append(AuditEvent(kind="auth", outcome="denied", remote="127.0.0.1:1", error="bad key"))
    assert log.verify().ok
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == VERSION
    log.close()
    SqliteAuditLog(path, hmac_key=KEY).close()  # a later start adopts nothing
    assert len(SqliteAuditLog(path, create=False).query(kind="anchor")) == 1


def test_wiped_anchor_and_cut_tail_are_detected_after_a_restart(tmp_path: Path) -> None:
    build(tmp_path).close()
    db = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    db.execute("DROP TRIGGER events_prune_only")
    db.execute("DELETE FROM events WHERE seq > 30")
    digest = row_hash_of(db, 30)
    db.close()
    unkeyed_anchor(tmp_path / "audit.db.anchor", 30, digest)
    log = build(tmp_path, rows=1)  # the server starts again and keeps appending
    assert any("row 31: no keyed anchor for a log with rows up to 30" in p for p in log.verify().problems)
    log.close()


def test_wiped_anchor_and_cut_tail_while_the_writer_runs_are_detected(tmp_path: Path) -> None:
    log = build(tmp_path)
    db = sqlite3.connect(log.path, isolation_level=None)
    db.execute("DROP TRIGGER events_prune_only")
    db.execute("DELETE FROM events WHERE seq > 30")
    db.close()
    Path(f"{log.path}.anchor").unlink()
    log.append(AuditEvent(kind="search", query="after"))
    assert any("row 32: no keyed anchor for a log with rows up to 30" in p for p in log.verify().problems)
    log.close()


def test_a_faked_version_1_log_is_not_adopted(tmp_path: Path) -> None:
    build(tmp_path).close()
    db = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    db.execute("DROP TRIGGER events_prune_only")
    db.execute("DELETE FROM events WHERE seq > 30")
    digest = row_hash_of(db, 30)
    db.execute("PRAGMA user_version = 1")
    db.close()
    unkeyed_anchor(tmp_path / "audit.db.anchor", 30, digest)
    log = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
    assert [r["rule"] for r in log.query(kind="anchor")] == ["reset"]
    assert not log.verify().ok
    log.close()


def test_checkpoints_cannot_be_deleted_or_resigned(tmp_path: Path) -> None:
    log = build(tmp_path, rows=3)
    assert log.prune(time.time() + 1) == 6
    db = sqlite3.connect(log.path, isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match="permanent"):
        db.execute("DELETE FROM checkpoints")
    with pytest.raises(sqlite3.DatabaseError, match="permanent"):
        db.execute("UPDATE checkpoints SET mac = 'x'")
    db.close()
    assert log.verify().ok
    log.close()


def test_prune_needs_the_key(tmp_path: Path) -> None:
    from toolcrib.errors import AuditError

    build(tmp_path, rows=1).close()
    with pytest.raises(AuditError, match="prune needs the audit key"):
        SqliteAuditLog(tmp_path / "audit.db", create=False).prune(time.time() + 1)


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "toolcrib.toml"
    path.write_text(f'[audit]\npath = "{tmp_path}/audit.db"\n{extra}')
    return path


def test_cli_verify_prints_checked_problems_and_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], memory_keyring: MemoryKeyring
) -> None:
    memory_keyring.set_password("toolcrib", "toolcrib/audit-hmac", KEY.decode())
    anchor = tmp_path / "elsewhere.anchor"
    config = _config(tmp_path, f'anchor_path = "{anchor}"\n')
    build(tmp_path, rows=3, anchor_path=anchor).close()
    assert main(["--config", str(config), "audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "checked:" in out and "cannot detect:" in out and "PROBLEMS" not in out
    assert "its HMAC checked" in out and "forge everything" in out
    db = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    db.execute("INSERT INTO checkpoints (seq, hash, ts) VALUES (2, ?, 0)", (row_hash_of(db, 2),))
    db.execute("DELETE FROM events WHERE seq <= 2")
    db.close()
    assert main(["--config", str(config), "audit", "verify"]) == 1
    captured = capsys.readouterr()
    assert "PROBLEMS:" in captured.out and "checkpoint at row 2" in captured.out
    assert "failed verification" in captured.err
    assert main(["--config", str(config), "audit", "verify", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["limits"] and report["checked"] and report["keyed"]
