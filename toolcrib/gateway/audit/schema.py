"""The audit database's tables, their versioned migrations and the row hash.

Version 1 (``PRAGMA user_version`` 0 or 1): ``events`` with the columns of :data:`V1_COLUMNS` and
``checkpoints (seq, hash, ts)``. Version 2 adds ``events.target`` (what a non-tool request names: a
resource URI, a prompt name, a completion reference), ``events.remote`` (the client's address, for
refused authentications), ``events.args_stored`` (``full`` when the stored arguments are exactly the
originals, so ``args_hmac`` can be recomputed; ``redacted`` or ``truncated`` otherwise) and
``checkpoints.mac`` (HMAC of the checkpoint under the audit key). Migration only adds nullable
columns, so version-1 rows keep their hashes: :func:`row_hash` leaves a version-2 column out of the
hashed payload while it is NULL.

Version 3 adds ``events.completed`` (when a ``call`` row was completed, epoch seconds) and
``events.seal`` (HMAC of the completion, :func:`seal_message`), ``checkpoints.completed`` (how many
``call`` rows up to the checkpoint were completed when it was written, counted since the first
``call`` row; covered by the checkpoint's HMAC), and replaces the trigger that refused every
``UPDATE`` by one that allows exactly one: a pending ``call`` row completed in place
(:data:`COMPLETION` columns from their pending values to the outcome, ``completed`` and ``seal``
set), every other column unchanged. A ``call`` row's ``hash`` is computed over the row as inserted,
so the chain never changes when a row is completed (:func:`row_hash`).

Version 4 adds no column: ``BEFORE INSERT`` triggers on ``events`` and ``checkpoints`` refuse a row
whose ``seq`` is already stored. SQLite's ``REPLACE`` conflict resolution (``INSERT OR REPLACE``,
``REPLACE INTO``) deletes the stored row without firing ``DELETE`` triggers (unless the writing
connection sets ``recursive_triggers``, which an attacker's does not) and is no ``UPDATE``, so it
could set a completed ``call`` row back to pending, or swap a checkpoint, past every other trigger;
an UPSERT (``ON CONFLICT DO UPDATE``) is refused by the same trigger before it becomes an ``UPDATE``.
(``UPDATE OR REPLACE`` cannot collide: no ``UPDATE`` may change ``seq``.)
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from toolcrib.gateway.audit.text import escape_surrogates

GENESIS = "0" * 64
VERSION = 4
KEYED = 2
"""The first version with keyed checkpoints and anchor (prune and verify need at least this)."""
CALLS = 3
"""The first version with ``call`` rows, seals, tallies and completion counts in checkpoints."""
V1_COLUMNS = (
    "seq", "ts", "kind", "request_id", "principal", "client_name", "session", "transport", "method",
    "server", "tool", "tool_hash", "arguments", "args_hmac", "query", "results", "decision", "rule",
    "approver", "outcome", "error", "latency_ms", "bytes", "attempt_seq", "prev_hash", "hash",
)  # fmt: skip
V2_COLUMNS = ("target", "remote", "args_stored")
V3_COLUMNS = ("completed", "seal")
COLUMNS = V1_COLUMNS + V2_COLUMNS + V3_COLUMNS
"""Every column of ``events``, in table order (later versions' columns come last, as ALTER TABLE adds them)."""
COMPLETION = ("outcome", "error", "latency_ms", "bytes", "decision", "rule", "approver", "completed")
"""The columns a ``call`` row's completion sets (besides ``seal``); the seal covers them."""
PENDING: dict[str, Any] = {c: None for c in COMPLETION} | {"outcome": "pending", "seal": None}
"""A ``call`` row's completion columns as inserted (and as hashed)."""
ATTEMPT_COLUMNS = tuple(c for c in COLUMNS if c not in PENDING)
"""The columns of a ``call`` row no update may change."""

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
_V3_TRIGGERS = [
    "DROP TRIGGER IF EXISTS events_no_update",
    f"""CREATE TRIGGER IF NOT EXISTS events_complete_only BEFORE UPDATE ON events
    WHEN NOT (OLD.kind IS 'call' AND OLD.completed IS NULL AND OLD.seal IS NULL AND OLD.outcome IS 'pending'
        AND {" AND ".join(f"OLD.{c} IS NULL" for c in COMPLETION if c not in ("outcome", "completed"))}
        AND NEW.completed IS NOT NULL AND NEW.seal IS NOT NULL AND NEW.outcome IS NOT NULL
        AND {" AND ".join(f"NEW.{c} IS OLD.{c}" for c in ATTEMPT_COLUMNS)})
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only (a pending call row may only be completed once)'); END""",
]
_REFUSED = "INSERT OR REPLACE, REPLACE and UPSERT are refused"
_V4_TRIGGERS = [
    f"""CREATE TRIGGER IF NOT EXISTS {table}_insert_only BEFORE INSERT ON {table}
    WHEN EXISTS (SELECT 1 FROM {table} WHERE seq = NEW.seq)
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only ({table} holds a row with this seq: {_REFUSED})'); END"""  # noqa: S608 (table names are constants)
    for table in ("events", "checkpoints")
]
INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"  # noqa: S608
HEAD = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
CHECKPOINT = "SELECT seq, hash, ts, mac FROM checkpoints ORDER BY seq DESC LIMIT 1"


def pending_form(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with a ``call`` row's completion columns at their pending values (any other kind unchanged)."""
    return {**row, **PENDING} if row.get("kind") == "call" else dict(row)


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
            for column, sql_type in (("completed", "REAL"), ("seal", "TEXT")):
                if column not in have:
                    db.execute(f"ALTER TABLE events ADD COLUMN {column} {sql_type}")
            if "completed" not in {r[1] for r in db.execute("PRAGMA table_info(checkpoints)")}:
                db.execute("ALTER TABLE checkpoints ADD COLUMN completed INTEGER")
            for statement in _V3_TRIGGERS + _V4_TRIGGERS:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return genuine_v1


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the form every hash in the log is computed over.

    Lone surrogates (which UTF-8 cannot encode) are written as their JSON escape ``\\udxxx``
    (:func:`~toolcrib.gateway.audit.text.escape_surrogates`), so the result always encodes and parses
    back to the same value; text without them is unchanged from earlier releases."""
    return escape_surrogates(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str))


def row_hash(row: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of every column except ``hash``; a version-2 or -3 column is
    left out while it is NULL, so rows written before a migration keep their hashes. A ``call`` row
    is hashed as inserted: its :data:`COMPLETION` columns at their pending values (:data:`PENDING`),
    so completing it in place leaves its hash, and the chain, unchanged."""
    if row.get("kind") == "call":
        row = {**row, **PENDING}
    payload = {k: row.get(k) for k in V1_COLUMNS if k != "hash"}
    payload.update({k: row[k] for k in V2_COLUMNS + V3_COLUMNS if row.get(k) is not None})
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def completion_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`COMPLETION` columns of ``row`` (what a seal covers)."""
    return {c: row.get(c) for c in COMPLETION}


def seal_message(digest: str, fields: Mapping[str, Any]) -> str:
    """What a ``call`` row's ``seal`` is the HMAC of: the canonical JSON of ``[hash, fields]``, with
    ``fields`` the :data:`COMPLETION` columns (floats as stored)."""
    return canonical_json([digest, {c: fields.get(c) for c in COMPLETION}])


def checkpoint_message(seq: int, digest: str, completed: int | None) -> str:
    """What a checkpoint's ``mac`` is the HMAC of: ``"{seq}:{hash}"`` (written before version 3,
    ``completed`` None) or ``"{seq}:{hash}:{completed}"``."""
    return f"{seq}:{digest}" if completed is None else f"{seq}:{digest}:{completed}"


def tally_message(upto: int, completed: int, pending: str | None = None) -> str:
    """What a ``tally`` row's ``seal`` is the HMAC of: ``"tally:{upto}:{completed}:{pending}"``,
    ``pending`` the row's ``results`` text (its pending set,
    :mod:`~toolcrib.gateway.audit.tally`), or ``"tally:{upto}:{completed}"`` for a tally written
    before the set existed (``results`` NULL)."""
    return f"tally:{upto}:{completed}" if pending is None else f"tally:{upto}:{completed}:{pending}"
