"""The audit database's tables, their versioned migrations and the row hash.

Version 1 (``PRAGMA user_version`` 0 or 1): ``events`` with the columns of :data:`V1_COLUMNS` and
``checkpoints (seq, hash, ts)``. Version 2 adds ``events.target`` (what a non-tool request names: a
resource URI, a prompt name, a completion reference), ``events.remote`` (the client's address, for
refused authentications), ``events.args_stored`` (``full`` when the stored arguments are exactly the
originals, so ``args_hmac`` can be recomputed; ``redacted`` or ``truncated`` otherwise) and
``checkpoints.mac`` (HMAC of the checkpoint under the audit key). Migration only adds nullable
columns, so version-1 rows keep their hashes: :func:`row_hash` leaves a version-2 column out of the
hashed payload while it is NULL.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

GENESIS = "0" * 64
VERSION = 2
V1_COLUMNS = (
    "seq", "ts", "kind", "request_id", "principal", "client_name", "session", "transport", "method",
    "server", "tool", "tool_hash", "arguments", "args_hmac", "query", "results", "decision", "rule",
    "approver", "outcome", "error", "latency_ms", "bytes", "attempt_seq", "prev_hash", "hash",
)  # fmt: skip
V2_COLUMNS = ("target", "remote", "args_stored")
COLUMNS = V1_COLUMNS + V2_COLUMNS
"""Every column of ``events``, in table order (version-2 columns come last, as ALTER TABLE adds them)."""

_FLOAT_COLUMNS = frozenset({"ts", "latency_ms"})
_INT_COLUMNS = frozenset({"seq", "bytes", "attempt_seq"})
_COLUMN_DEFS = ", ".join(
    f"{c} {'REAL' if c in _FLOAT_COLUMNS else 'INTEGER' if c in _INT_COLUMNS else 'TEXT'}" for c in V1_COLUMNS[3:-2]
)
_V1_SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL,
        {_COLUMN_DEFS},
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS checkpoints (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
    """CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS events_prune_only BEFORE DELETE ON events
    WHEN OLD.seq > (SELECT coalesce(max(seq), 0) FROM checkpoints)
    BEGIN SELECT RAISE(ABORT, 'audit rows are removed only by prune, behind a checkpoint'); END""",
]
_V2_TRIGGERS = [
    """CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are permanent'); END""",
    """CREATE TRIGGER IF NOT EXISTS checkpoints_sign_once BEFORE UPDATE ON checkpoints
    WHEN OLD.mac IS NOT NULL OR NEW.seq IS NOT OLD.seq OR NEW.hash IS NOT OLD.hash OR NEW.ts IS NOT OLD.ts
    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are permanent'); END""",
]
INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"  # noqa: S608
HEAD = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
CHECKPOINT = "SELECT seq, hash, ts, mac FROM checkpoints ORDER BY seq DESC LIMIT 1"


def version(db: sqlite3.Connection) -> int:
    """The schema version of an open database (0 for a new file)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection) -> bool:
    """Create the tables or bring them to :data:`VERSION`, in one write transaction (safe when
    several processes open the file at once). Returns True when a genuine version-1 log was
    upgraded (its tables existed without any version-2 column): only then may its unkeyed anchor
    and checkpoints be adopted. Raises :class:`sqlite3.Error`."""
    if version(db) >= VERSION:
        return False
    db.execute("BEGIN IMMEDIATE")
    try:
        genuine_v1 = False
        if version(db) < VERSION:
            have = {r[1] for r in db.execute("PRAGMA table_info(events)")}
            signed = "mac" in {r[1] for r in db.execute("PRAGMA table_info(checkpoints)")}
            genuine_v1 = bool(have) and not signed and not have.intersection(V2_COLUMNS)
            for statement in _V1_SCHEMA:
                db.execute(statement)
            for column in V2_COLUMNS:
                if column not in have:
                    db.execute(f"ALTER TABLE events ADD COLUMN {column} TEXT")
            if not signed:
                db.execute("ALTER TABLE checkpoints ADD COLUMN mac TEXT")
            for statement in _V2_TRIGGERS:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return genuine_v1


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the form every hash in the log is computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def row_hash(row: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of every column except ``hash``; a version-2 column is left out
    while it is NULL, so rows written before the migration keep their hashes."""
    payload = {k: row.get(k) for k in V1_COLUMNS if k != "hash"}
    payload.update({k: row[k] for k in V2_COLUMNS if row.get(k) is not None})
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
