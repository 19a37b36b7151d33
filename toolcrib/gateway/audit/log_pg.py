"""The audit log in PostgreSQL: ONE tamper-evident chain that every replica appends to.

Same rows, same columns and the same row hash as :class:`~toolcrib.gateway.audit.log.SqliteAuditLog`
(:func:`~toolcrib.gateway.audit.schema.row_hash`), in the tables of
:mod:`toolcrib.storage.migrations`: ``audit_events``, ``audit_checkpoints`` and ``audit_head``. So
``export_jsonl`` output verifies the same way whichever backend wrote it.

One chain across replicas: every append is one transaction that locks the single ``audit_head``
row (``SELECT ... FOR UPDATE``; inserted when missing), numbers its rows from it (``seq`` and
``prev_hash``), inserts them and moves the head to the last one with ``mac`` = HMAC-SHA256 of
``"{seq}:{hash}"`` under a key derived from the audit key (:data:`~toolcrib.gateway.audit.keys.HEAD_LABEL`),
then commits. Appends from all replicas are therefore serialised by that row lock: the chain has no
gaps and no forks, and a replica killed mid-append leaves no trace (its transaction is rolled back,
its lock released). An append returns only after its ``COMMIT``: its rows are durable (with the
server's ``synchronous_commit``). Each append is a few network round trips, so it never runs on an
event loop (:attr:`PostgresAuditLog.blocking_io`; the :class:`~toolcrib.gateway.audit.writer.AuditWriter`
offloads it to a worker thread). All replicas must hold the same audit key: it comes only from
``secret:toolcrib/audit-hmac`` (:func:`~toolcrib.gateway.audit.keys.load_shared_hmac_key`).

The anchor is the keyed head row, committed in the same transaction as the rows it names.
:meth:`PostgresAuditLog.verify` reads it and the rows in one ``REPEATABLE READ`` snapshot and checks:

* every row's hash and link, gaps (rows deleted), the checkpoints' HMACs (rows removed outside
  prune), arguments stored in full against ``args_hmac``: the same scan as SQLite
  (:func:`~toolcrib.gateway.audit.verify.check_chain`);
* the head row's HMAC (forged, or written with another key), that the last row is the one it names
  (rows cut from the tail, or rows appended or rewritten without the key);
* a head row deleted or forged and later re-made by a writer: the writer records an ``anchor`` row
  (``rule = "reset"``) in the chain before signing a head again, reported by verify for ever.

Rows inserted by hand past the head (with the next ``seq``) are reported by verify ("come after the
head row"), and they block every append: appends number their rows from the head row only, so the
next one collides with them (a unique violation) and fails, fail-closed, with a one-line
:class:`AuditError` naming the rows and what to do (logged at ERROR each time): the gateway then
refuses every audited call until the database owner removes them. The writer deliberately does not
chain past rows it did not write and cannot vouch for.

What it cannot detect (also in every report's ``limits``, :func:`~toolcrib.gateway.audit.verify.pg_limits`):
the head row lives in the same database as the rows, so a database administrator who cuts rows from
the tail *and* puts back an older head row (its seq, hash and mac copied earlier or from a backup)
rolls the log back unseen, as does restoring the whole database from a backup; whoever holds the
audit key can forge everything; dropping the tables leaves nothing to check. Unlike the SQLite
file anchor there is no window after a commit in which the tail is unanchored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from toolcrib.errors import AuditBusy, AuditError, StorageError
from toolcrib.gateway.audit.events import AuditEvent, AuditRowError, Completion
from toolcrib.gateway.audit.keys import CHECKPOINT_LABEL, HEAD_LABEL, SEAL_LABEL, derive, mac
from toolcrib.gateway.audit.schema import (
    COLUMNS,
    COMPLETION,
    GENESIS,
    VERSION,
    canonical_json,
    checkpoint_message,
    row_hash,
)
from toolcrib.gateway.audit.shared import (
    args_hmac,
    build_completion,
    build_row,
    decode,
    filters,
    glob_to_regex,
    is_literal,
)
from toolcrib.gateway.audit.tally import checkpoint_count, count_tally, tally_seal, tally_sql
from toolcrib.gateway.audit.verify import VerifyReport, check_chain, finish, pg_limits

if TYPE_CHECKING:
    from toolcrib.gateway.trust.secrets import Redactor
    from toolcrib.storage.postgres import Database

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 10
"""How long an append waits for the head row lock (another replica's append, a prune) before failing."""

_SELECT = ", ".join(COLUMNS)
_INSERT = f"INSERT INTO audit_events ({_SELECT}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"  # noqa: S608
_UPDATE = (
    f"UPDATE audit_events SET {', '.join(f'{c} = %s' for c in (*COMPLETION, 'seal'))} "  # noqa: S608
    "WHERE seq = %s AND kind = 'call' AND completed IS NULL"
)
TALLY_SQL = tally_sql("audit_events", "audit_checkpoints", "%s")
PENDING_CACHE = 65536
"""Hashes of this replica's pending ``call`` rows kept in memory (older ones are read back)."""
_LOCK_HEAD = "SELECT seq, hash, mac FROM audit_head WHERE id = 1 FOR UPDATE"
_LAST = """SELECT seq, hash FROM (
    (SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1)
    UNION ALL (SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1)) last
    ORDER BY seq DESC LIMIT 1"""


class PgRows:
    """:class:`~toolcrib.gateway.audit.verify.RowSource` over ``conn``'s open transaction (rows
    streamed through a server-side cursor, 2000 at a time)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def checkpoints(self) -> list[tuple[int, str, str | None, int | None]]:
        rows = self._conn.execute("SELECT seq, hash, mac, completed FROM audit_checkpoints ORDER BY seq").fetchall()
        return [(int(r[0]), str(r[1]), r[2], None if r[3] is None else int(r[3])) for r in rows]

    def events(self) -> Iterator[dict[str, Any]]:
        with self._conn.cursor("toolcrib_audit_scan", row_factory=dict_row) as cursor:
            cursor.itersize = 2000
            cursor.execute(f"SELECT {_SELECT} FROM audit_events ORDER BY seq")  # noqa: S608
            yield from cursor


class PostgresAuditLog:
    """The audit log of a PostgreSQL-backed gateway (``[storage] url``); the public interface of
    :class:`~toolcrib.gateway.audit.log.SqliteAuditLog`.

    ``db`` is the shared :class:`~toolcrib.storage.postgres.Database` (not closed by :meth:`close`:
    its owner closes it). ``hmac_key`` is the shared audit key; without it the log can be read and
    verified (unkeyed) but not appended to or pruned. ``create`` applies pending migrations
    (:func:`toolcrib.storage.migrations.upgrade`); without it the schema must be current. Methods
    are thread-safe (each takes a pooled connection) and block on the network: call them from
    worker threads in async code. Errors are one-line :class:`AuditError` (:class:`AuditBusy` for
    ``append_many(wait=False)`` when another replica holds the head lock) or
    :class:`~toolcrib.errors.StorageError` (the database is unreachable at open).
    """

    blocking_io = True
    """Each append is a network round trip or more: never run it on the event loop."""

    schema = VERSION
    """The PostgreSQL tables have every column of the current SQLite schema."""

    def __init__(
        self,
        db: Database,
        *,
        hmac_key: bytes | None = None,
        redactor: Redactor | None = None,
        create: bool = True,
    ) -> None:
        from toolcrib.storage import migrations

        self._db = db
        self.where = f"{db.where} (audit_events)"
        """Where the log is, for messages (the database URL without credentials)."""
        self._hmac_key = hmac_key
        self._head_key = derive(hmac_key, HEAD_LABEL) if hmac_key is not None else None
        self._checkpoint_key = derive(hmac_key, CHECKPOINT_LABEL) if hmac_key is not None else None
        self._seal_key = derive(hmac_key, SEAL_LABEL) if hmac_key is not None else None
        self._pending: dict[int, str] = {}
        """``seq -> hash`` of the ``call`` rows this replica inserted and has not completed yet."""
        self._redactor = redactor
        if create:
            migrations.upgrade(db)
        else:
            migrations.require_current(db)

    def args_hmac(self, arguments: Mapping[str, Any]) -> str:
        """HMAC-SHA256 (hex) of the canonical JSON of ``arguments`` under this log's key."""
        return args_hmac(self._hmac_key, arguments)

    def append(self, event: AuditEvent) -> int:
        """Record ``event``; return its sequence number once committed. Raises :class:`AuditError`."""
        return self.append_many([event])[0]

    def append_many(
        self, events: Sequence[AuditEvent], *, wait: bool = True, completions: Sequence[Completion] = ()
    ) -> list[int]:
        """Record several events and complete ``call`` rows in one transaction (the inserts, then one
        ``UPDATE`` per :class:`Completion`); return the events' sequence numbers once committed.

        With ``wait`` False, a head lock held by another transaction raises :class:`AuditBusy` at
        once; otherwise the append waits up to :data:`LOCK_TIMEOUT_S` seconds for it, then raises
        :class:`AuditError`."""
        rows = [build_row(event, self._hmac_key, self._redactor) for event in events]
        if not rows and not completions:
            return []
        return self._write(rows, completions, wait)

    def _write(self, rows: list[dict[str, Any]], completions: Sequence[Completion], wait: bool) -> list[int]:
        if self._head_key is None:
            raise AuditError("this audit log was opened without the audit key; it cannot be appended to")
        try:
            with self._db.transaction() as conn:
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")
                note = None
                if rows:
                    start, note = self._lock_head(conn, wait)
                    if note is not None:
                        rows.insert(0, build_row(AuditEvent(kind="anchor", rule="reset", error=note), None, None))
                    seq, prev = start
                    for row in rows:
                        seq += 1
                        row["seq"], row["prev_hash"] = seq, prev
                        row["hash"] = prev = row_hash(row)
                    with conn.cursor() as cursor:
                        cursor.executemany(_INSERT, [[row[c] for c in COLUMNS] for row in rows])
                    conn.execute(
                        "UPDATE audit_head SET seq = %s, hash = %s, mac = %s WHERE id = 1",
                        (seq, prev, self._head_mac(seq, prev)),
                    )
                if completions:
                    self._complete(conn, completions)
        except pg_errors.LockNotAvailable as exc:
            if not wait:
                raise AuditBusy(f"the audit log {self.where} is locked by another writer") from None
            raise AuditError(f"cannot write the audit log {self.where}: {_first_line(exc)}") from None
        except pg_errors.UniqueViolation as exc:
            raise self._past_head(exc) from None
        except psycopg.DataError as exc:  # a value the database refuses: only this batch's content
            raise AuditRowError(f"cannot store a row in the audit log {self.where} ({_first_line(exc)})") from None
        except psycopg.Error as exc:
            raise AuditError(f"cannot write the audit log {self.where} ({_first_line(exc)})") from None
        except StorageError as exc:
            raise AuditError(f"cannot write the audit log: {exc.message}") from None
        for done in completions:
            self._pending.pop(done.seq, None)
        for row in rows:
            if row["kind"] == "call":
                self._pending[int(row["seq"])] = str(row["hash"])
        while len(self._pending) > PENDING_CACHE:
            del self._pending[next(iter(self._pending))]
        seqs = [int(row["seq"]) for row in rows]
        return seqs[1:] if note is not None else seqs

    def _past_head(self, exc: psycopg.Error) -> AuditError:
        """The error for an insert that collided with a row already stored past the keyed head:
        rows written outside the gateway (by hand, or by a replica with another key). Appends
        continue from the head row only, so every append fails until those rows are dealt with;
        this says so, once per failed append, in the log and in the error."""
        try:
            with self._db.connection() as conn:
                found = conn.execute(
                    "SELECT (SELECT seq FROM audit_head WHERE id = 1), (SELECT max(seq) FROM audit_events)"
                ).fetchone()
        except (psycopg.Error, StorageError):
            found = None
        if found is None or found[1] is None or int(found[1]) <= int(found[0]):
            return AuditError(f"cannot write the audit log {self.where} ({_first_line(exc)})")
        head, last = int(found[0]), int(found[1])
        message = (
            f"cannot write the audit log {self.where}: rows {head + 1}..{last} were inserted past its keyed head "
            f"row (seq {head}) outside the gateway, and every append is refused until they are removed; run "
            "`toolcrib audit verify`, keep a copy of those rows, then delete them as the database owner (the "
            "append-only trigger audit_events_append_only must be disabled for that)"
        )
        log.error("audit: %s", message)
        return AuditError(message)

    def _complete(self, conn: psycopg.Connection[Any], completions: Sequence[Completion]) -> None:
        """Inside the write transaction: one ``UPDATE`` per pending ``call`` row completed (the
        hashes of rows another replica or an earlier process inserted are read in one query)."""
        if self._seal_key is None:
            raise AuditError("this audit log was opened without the audit key; it cannot complete calls")
        missing = [d.seq for d in completions if d.seq not in self._pending]
        fetched: dict[int, str] = {}
        if missing:
            found = conn.execute(
                "SELECT seq, hash FROM audit_events WHERE seq = ANY(%s) AND kind = 'call' AND completed IS NULL",
                (missing,),
            ).fetchall()
            fetched = {int(r[0]): str(r[1]) for r in found}
        params = []
        for done in completions:
            digest = self._pending.get(done.seq) or fetched.get(done.seq)
            if digest is None:
                log.error(
                    "audit: row %d is not a pending call row; its completion (%s) was dropped", done.seq, done.outcome
                )
                continue
            fields = build_completion(done, digest, self._seal_key, self._redactor)
            params.append([*(fields[c] for c in (*COMPLETION, "seal")), done.seq])
        if params:
            with conn.cursor() as cursor:
                cursor.executemany(_UPDATE, params)

    def _lock_head(self, conn: psycopg.Connection[Any], wait: bool) -> tuple[tuple[int, str], str | None]:
        """Lock the head row (creating it if missing); return where the chain continues and, when
        the head cannot be authenticated yet rows exist, the note of an ``anchor`` reset row."""
        lock = _LOCK_HEAD if wait else f"{_LOCK_HEAD} NOWAIT"
        head = conn.execute(lock).fetchone()
        if head is None:
            conn.execute(
                "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, %s) ON CONFLICT (id) DO NOTHING", (GENESIS,)
            )
            head = conn.execute(lock).fetchone()
            assert head is not None
        seq, digest, tag = int(head[0]), str(head[1]), head[2]
        if tag is not None and tag == self._head_mac(seq, digest):
            return (seq, digest), None
        found = conn.execute(_LAST).fetchone()
        last = (int(found[0]), str(found[1])) if found else (0, GENESIS)
        if last[0] == 0 and seq == 0:
            return (0, GENESIS), None  # a new log: nothing to vouch for
        what = "missing" if tag is None and seq == 0 else "not signed with this key (forged, or another key)"
        note = (
            f"the audit head row was {what} for a log with rows up to {last[0]}; re-anchored here: "
            "rows cut before this one cannot be ruled out"
        )
        log.error("audit: %s; run `toolcrib audit verify`", note)
        return last, note

    def _head_mac(self, seq: int, digest: str) -> str:
        assert self._head_key is not None
        return mac(self._head_key, f"{seq}:{digest}")

    def checkpoint(self) -> None:
        """Nothing to do (SQLite folds its WAL here; PostgreSQL checkpoints by itself)."""

    def close(self) -> None:
        """Nothing to release: the :class:`~toolcrib.storage.postgres.Database` is closed by its owner."""

    def __enter__(self) -> PostgresAuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(
        self,
        *,
        principal: str | None = None,
        tool: str | None = None,
        since: float | None = None,
        outcome: str | None = None,
        kind: str | None = None,
        request_id: str | None = None,
        method: str | None = None,
        decision: str | None = None,
        until: float | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The most recent ``limit`` rows matching every filter, oldest first. ``tool`` and ``method``
        are SQLite globs (``git__*``, ``resources/*``, ``[abc]?``), matched as regular expressions
        (:func:`~toolcrib.gateway.audit.shared.glob_to_regex`); ``since <= ts < until`` (epoch
        seconds); ``before``: only rows with ``seq < before`` (page back through a newest-first listing)."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, op, value in filters(
            principal=principal,
            tool=tool,
            since=since,
            outcome=outcome,
            kind=kind,
            request_id=request_id,
            method=method,
            decision=decision,
            until=until,
            before=before,
        ):
            if op != "glob" or is_literal(value):
                clauses.append(f"{column} {'=' if op == 'glob' else op} %s")
                params.append(value)
            elif (regex := glob_to_regex(value)) is None:
                clauses.append("FALSE")
            else:
                clauses.append(f"{column} ~ %s")
                params.append(regex)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {_SELECT} FROM audit_events {where} ORDER BY seq DESC LIMIT %s"  # noqa: S608
        rows = self._fetch(sql, [*params, limit])
        return [decode(r) for r in reversed(rows)]

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        """The last ``n`` rows, oldest first."""
        return self.query(limit=n)

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            with self._db.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
                cursor.execute(sql.encode(), params)
                return cursor.fetchall()
        except psycopg.Error as exc:
            raise AuditError(f"cannot read the audit log {self.where} ({_first_line(exc)})") from None

    def export_jsonl(self, fp: IO[str]) -> int:
        """Write every row as stored (so each ``hash`` can be recomputed), one JSON object a line,
        from one consistent snapshot."""
        count = 0
        try:
            with self._db.transaction() as conn:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                for row in PgRows(conn).events():
                    fp.write(canonical_json(row) + "\n")
                    count += 1
        except psycopg.Error as exc:
            raise AuditError(f"cannot read the audit log {self.where} ({_first_line(exc)})") from None
        return count

    def prune_count(self, before_ts: float) -> int:
        """How many rows :meth:`prune` would delete now: every row up to the newest one older than
        ``before_ts`` (seconds since the epoch)."""
        rows = self._fetch(
            "SELECT count(*) AS n FROM audit_events WHERE seq <= (SELECT max(seq) FROM audit_events WHERE ts < %s)",
            (before_ts,),
        )
        return int(rows[0]["n"]) if rows else 0

    def prune(self, before_ts: float) -> int:
        """Delete rows older than ``before_ts`` behind a keyed checkpoint (under the head lock, so no
        replica appends meanwhile); return how many were deleted. Raises :class:`AuditError`
        without the audit key, and when a row it would delete is a call row pending now that a
        tally saw completed (:func:`~toolcrib.gateway.audit.tally.prune_check`)."""
        if self._checkpoint_key is None:
            raise AuditError("prune needs the audit key (secret:toolcrib/audit-hmac)")
        try:
            with self._db.transaction() as conn:
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")
                conn.execute(_LOCK_HEAD)
                last = conn.execute(
                    "SELECT seq, hash FROM audit_events WHERE ts < %s ORDER BY seq DESC LIMIT 1", (before_ts,)
                ).fetchone()
                if last is None:
                    return 0
                seq, digest = int(last[0]), str(last[1])
                assert self._hmac_key is not None  # with the checkpoint key
                completed = checkpoint_count(
                    *_readers(conn),
                    TALLY_SQL,
                    self._hmac_key,
                    seq,
                )
                conn.execute(
                    "INSERT INTO audit_checkpoints (seq, hash, ts, mac, completed) VALUES (%s, %s, %s, %s, %s)",
                    (
                        seq,
                        digest,
                        time.time(),
                        mac(self._checkpoint_key, checkpoint_message(seq, digest, completed)),
                        completed,
                    ),
                )
                return conn.execute("DELETE FROM audit_events WHERE seq <= %s", (seq,)).rowcount
        except psycopg.Error as exc:
            raise AuditError(f"cannot prune the audit log {self.where} ({_first_line(exc)})") from None

    def tally(self, settle: float = 600.0, now: float | None = None) -> int | None:
        """Append a ``tally`` row: how many ``call`` rows up to the newest row (not a tally) older
        than ``settle`` seconds are completed now, cumulative, and which are still pending
        (:mod:`~toolcrib.gateway.audit.tally`, the same counting code as
        :meth:`toolcrib.gateway.audit.log.SqliteAuditLog.tally`), read in
        one ``REPEATABLE READ`` snapshot. Returns its seq, or None when there is nothing new to
        state. Raises :class:`AuditError` (also when the latest checkpoint's HMAC is wrong)."""
        if self._seal_key is None or self._hmac_key is None:
            raise AuditError("a tally needs the audit key (secret:toolcrib/audit-hmac)")
        cutoff = (time.time() if now is None else now) - settle
        try:
            with self._db.transaction() as conn:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                found = count_tally(
                    *_readers(conn),
                    TALLY_SQL,
                    self._hmac_key,
                    cutoff,
                )
        except psycopg.Error as exc:
            raise AuditError(f"cannot read the audit log {self.where} ({_first_line(exc)})") from None
        if found is None:
            return None
        row = build_row(AuditEvent(kind="tally", attempt_seq=found.upto, bytes=found.count), None, None)
        row["results"] = found.pending
        row["seal"] = tally_seal(self._hmac_key, found.upto, found.count, found.pending)
        seqs = self._write([row], (), True)
        return seqs[0]

    def verify(self) -> VerifyReport:
        """Check the chain, the checkpoints, the keyed head row and ``args_hmac`` in one snapshot;
        what is detected and what cannot be: this module's docstring and the report's ``limits``."""
        key = self._hmac_key
        report = VerifyReport(keyed=key is not None)
        problems = report.problems
        try:
            with self._db.transaction() as conn:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                found = conn.execute("SELECT seq, hash, mac FROM audit_head WHERE id = 1").fetchone()
                head = (int(found[0]), str(found[1])) if found else None
                tag = found[2] if found else None
                forged = head is not None and key is not None and tag != self._head_mac(*head)
                check_chain(PgRows(conn), report, None if forged else head, key)
        except psycopg.Error as exc:
            raise AuditError(f"cannot read the audit log {self.where} ({_first_line(exc)})") from None
        last = report.last_seq if report.last_seq is not None else report.checkpoint_seq
        report.anchor_seq = head[0] if head else None
        how = "its HMAC checked" if key is not None else "unauthenticated: no key"
        if head is None:
            if last:
                problems.append(f"the audit_head row is missing, yet the log has rows up to {last}")
        elif forged:
            problems.append(
                f"the audit_head row naming row {head[0]} has a wrong or missing HMAC (forged, or another key)"
            )
        elif head[0] > last:
            problems.append(f"the log ends at row {last} but the head row says {head[0]}: the tail was cut")
        elif head[0] < last:
            problems.append(f"rows {head[0] + 1}..{last} come after the head row (appended outside)")
        else:
            report.checked.append(f"the last row matches the keyed head row at row {head[0]} ({how})")
        finish(report, pg_limits(key is not None))
        return report


def _readers(conn: Any) -> tuple[Any, Any]:
    """``(one, all)``: run a query string on ``conn`` and fetch its first row / every row, as
    :mod:`~toolcrib.gateway.audit.tally`'s counting functions read."""
    return (lambda q, p: conn.execute(q.encode(), p).fetchone(), lambda q, p: conn.execute(q.encode(), p).fetchall())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
