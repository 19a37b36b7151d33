"""The PostgreSQL schema, as numbered migrations applied in order on start and by ``toolcrib db upgrade``.

Each migration runs in its own transaction under a transaction-level advisory lock, so replicas
starting at once apply it exactly once; the table ``toolcrib_schema`` records which ran and when.
A database whose newest version is beyond :data:`MIGRATIONS` was upgraded by a newer toolcrib: every
replica refuses to start against it (:class:`StorageError`) rather than write rows it may not read.

Tables (version 1):

- ``audit_events``, ``audit_checkpoints``: the columns of the SQLite log
  (:mod:`toolcrib.gateway.audit.schema`), the same row hash, append-only by trigger (rows leave
  only behind a checkpoint, by prune); ``audit_head``: the chain's head, one row, locked by every
  append (one chain for all replicas) and carrying the keyed anchor (HMAC under the audit key).
- ``approvals``: as the SQLite file (:mod:`toolcrib.gateway.trust.approvals`).
- ``documents``: named JSON documents with a version (API keys ``keys``, pins ``pins``).
- ``sessions``: 2025-11-25 sessions any replica can serve (typed principal, state as JSON).
- ``index_snapshots``: the tool index's vectors and records, so a new replica starts warm.

Version 2:

- ``token_savings``: per UTC day and principal (kind, subject), the tokens of the full tool list,
  the tokens really loaded and the tools/list count; every replica adds into the same rows
  (:mod:`toolcrib.observe.savings`).

Version 3:

- ``index_usage``: the tool index's usage anchors (queries that led to a successful call, their
  vectors and decayed weights, the audit ``seq`` mined up to), one row shared by every replica
  (:mod:`toolcrib.index.usage`).

Version 4:

- one audit row per call: ``audit_events.completed`` and ``seal``, ``audit_checkpoints.completed``
  (:mod:`toolcrib.gateway.audit.schema`, version 3 of the SQLite log), and the append-only trigger
  replaced by one that allows a single ``UPDATE``: a pending ``call`` row completed in place (its
  completion columns set from their pending values, ``completed`` and ``seal`` set, every other
  column unchanged).
"""

from __future__ import annotations

import time

from toolcrib.errors import StorageError
from toolcrib.storage.postgres import Database

LOCK_KEY = 0x746F6F6C63726962  # "toolcrib"
"""The ``pg_advisory_xact_lock`` key that serialises migrations."""

_AUDIT_TEXT = (
    "request_id",
    "principal",
    "client_name",
    "session",
    "transport",
    "method",
    "server",
    "tool",
    "tool_hash",
    "arguments",
    "args_hmac",
    "query",
    "results",
    "decision",
    "rule",
    "approver",
    "outcome",
    "error",
    "target",
    "remote",
    "args_stored",
)
"""The text columns of :data:`toolcrib.gateway.audit.schema.COLUMNS`."""

_V1 = [
    f"""CREATE TABLE audit_events (
        seq bigint PRIMARY KEY, ts double precision NOT NULL, kind text NOT NULL,
        {", ".join(f"{c} text" for c in _AUDIT_TEXT)},
        latency_ms double precision, bytes bigint, attempt_seq bigint,
        prev_hash text NOT NULL, hash text NOT NULL)""",
    "CREATE INDEX audit_events_ts ON audit_events (ts)",
    "CREATE INDEX audit_events_principal ON audit_events (principal, seq)",
    """CREATE TABLE audit_checkpoints (
        seq bigint PRIMARY KEY, hash text NOT NULL, ts double precision NOT NULL, mac text)""",
    """CREATE TABLE audit_head (
        id integer PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL, hash text NOT NULL, mac text)""",
    """CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' THEN
            RAISE EXCEPTION 'the audit log is append-only';
        END IF;
        IF OLD.seq > (SELECT coalesce(max(seq), 0) FROM audit_checkpoints) THEN
            RAISE EXCEPTION 'audit rows are removed only by prune, behind a checkpoint';
        END IF;
        RETURN OLD;
    END $$""",
    """CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
        FOR EACH ROW EXECUTE FUNCTION audit_append_only()""",
    """CREATE FUNCTION audit_checkpoints_permanent() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit checkpoints are permanent';
    END $$""",
    """CREATE TRIGGER audit_checkpoints_permanent BEFORE UPDATE OR DELETE ON audit_checkpoints
        FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_permanent()""",
    """CREATE TABLE approvals (
        id text PRIMARY KEY, principal text NOT NULL, tool text NOT NULL, args_hash text NOT NULL,
        arguments text NOT NULL, status text NOT NULL, created double precision NOT NULL,
        expires double precision NOT NULL, decided double precision, approver text, used double precision,
        rule text, note text)""",
    "CREATE INDEX approvals_binding ON approvals (principal, tool, args_hash, status)",
    "CREATE INDEX approvals_status ON approvals (status, created)",
    """CREATE TABLE documents (
        name text PRIMARY KEY, version bigint NOT NULL, body jsonb NOT NULL, updated double precision NOT NULL)""",
    """CREATE TABLE sessions (
        id text PRIMARY KEY, principal_kind text NOT NULL, principal_subject text NOT NULL,
        principal_groups text[] NOT NULL, state jsonb NOT NULL, created double precision NOT NULL,
        last_seen double precision NOT NULL, holder text)""",
    "CREATE INDEX sessions_principal ON sessions (principal_kind, principal_subject)",
    "CREATE INDEX sessions_last_seen ON sessions (last_seen)",
    """CREATE TABLE index_snapshots (
        name text PRIMARY KEY, model text NOT NULL, meta jsonb NOT NULL, records bytea NOT NULL,
        vectors bytea NOT NULL, updated double precision NOT NULL)""",
]

_V2 = [
    """CREATE TABLE token_savings (
        day date NOT NULL, principal_kind text NOT NULL, principal_subject text NOT NULL,
        full_tokens bigint NOT NULL DEFAULT 0, loaded_tokens bigint NOT NULL DEFAULT 0,
        lists bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (day, principal_kind, principal_subject))""",
]

_V3 = [
    """CREATE TABLE index_usage (
        name text PRIMARY KEY, meta jsonb NOT NULL, vectors bytea NOT NULL, updated double precision NOT NULL)""",
]

_CALL_FIXED = (
    "seq", "ts", "kind", "request_id", "principal", "client_name", "session", "transport", "method", "server",
    "tool", "tool_hash", "arguments", "args_hmac", "query", "results", "attempt_seq", "prev_hash", "hash",
    "target", "remote", "args_stored",
)  # fmt: skip
"""The columns no completion may change (``schema.ATTEMPT_COLUMNS`` when version 4 was written)."""
_COMPLETION = ("outcome", "error", "latency_ms", "bytes", "decision", "rule", "approver", "completed")


def _v4() -> list[str]:
    same = " AND ".join(f"NEW.{c} IS NOT DISTINCT FROM OLD.{c}" for c in _CALL_FIXED)
    blank = " AND ".join(f"OLD.{c} IS NULL" for c in _COMPLETION if c not in ("outcome", "completed"))
    function = f"""CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' THEN
            IF OLD.kind = 'call' AND OLD.completed IS NULL AND OLD.seal IS NULL
                AND OLD.outcome IS NOT DISTINCT FROM 'pending' AND {blank}
                AND NEW.completed IS NOT NULL AND NEW.seal IS NOT NULL AND NEW.outcome IS NOT NULL
                AND {same} THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'the audit log is append-only (a pending call row may only be completed once)';
        END IF;
        IF OLD.seq > (SELECT coalesce(max(seq), 0) FROM audit_checkpoints) THEN
            RAISE EXCEPTION 'audit rows are removed only by prune, behind a checkpoint';
        END IF;
        RETURN OLD;
    END $$"""  # noqa: S608 (column names from the constants above)
    return [
        "ALTER TABLE audit_events ADD COLUMN completed double precision, ADD COLUMN seal text",
        "ALTER TABLE audit_checkpoints ADD COLUMN completed bigint",
        function,
    ]


_V4 = _v4()

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "audit chain, approvals, documents, sessions, index snapshots", _V1),
    (2, "token savings per day and principal", _V2),
    (3, "usage anchors of the tool index", _V3),
    (4, "one audit row per call, completed in place", _V4),
]
"""``(version, description, statements)``, oldest first. Never edit a released entry: add one."""

LATEST = MIGRATIONS[-1][0]


def current(db: Database) -> int:
    """The newest applied version (0 for an empty database)."""
    with db.connection() as conn:
        exists = conn.execute("SELECT to_regclass('toolcrib_schema') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return 0
        row = conn.execute("SELECT coalesce(max(version), 0) FROM toolcrib_schema").fetchone()
        return int(row[0]) if row else 0


def upgrade(db: Database) -> tuple[int, int]:
    """Apply every migration not yet applied; return ``(version before, version after)``.

    Raises :class:`StorageError` when the database is newer than this toolcrib, or a migration fails
    (its transaction is rolled back; nothing half-applied remains)."""
    before = current(db)
    if before > LATEST:
        raise StorageError(
            f"the database at {db.where} has schema version {before}, newer than this toolcrib's {LATEST}; "
            "upgrade toolcrib on every replica"
        )
    for version, description, statements in MIGRATIONS:
        if version <= before:
            continue
        with db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS toolcrib_schema ("
                "version integer PRIMARY KEY, description text NOT NULL, applied double precision NOT NULL)"
            )
            done = conn.execute("SELECT 1 FROM toolcrib_schema WHERE version = %s", (version,)).fetchone()
            if done:
                continue  # another replica applied it while we waited for the lock
            for statement in statements:
                try:
                    conn.execute(statement.encode())
                except Exception as exc:
                    raise StorageError(
                        f"migration {version} ({description}) failed at {db.where}: {str(exc).splitlines()[0]}; "
                        "nothing of it was applied"
                    ) from None
            conn.execute(
                "INSERT INTO toolcrib_schema (version, description, applied) VALUES (%s, %s, %s)",
                (version, description, time.time()),
            )
    return before, current(db)


def require_current(db: Database) -> None:
    """Raise :class:`StorageError` unless the schema is exactly :data:`LATEST` (for read-only CLI use)."""
    have = current(db)
    if have < LATEST:
        raise StorageError(
            f"the database at {db.where} has schema version {have}, this toolcrib needs {LATEST}; "
            "run `toolcrib db upgrade` (or start `toolcrib serve`, which upgrades it)"
        )
    if have > LATEST:
        raise StorageError(
            f"the database at {db.where} has schema version {have}, newer than this toolcrib's {LATEST}; "
            "upgrade toolcrib"
        )
