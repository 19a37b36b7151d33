"""The tamper-evident audit log of every request: append-only SQLite (WAL) behind a sink.

Rows (``kind``):

* ``call``: a forwarded request, ONE row: inserted *before* forwarding (awaited, so a crash cannot
  lose a call that was made) with principal, ``method`` (any MCP method string: ``tools/call``,
  ``resources/read``, ``prompts/get``, ``completion/complete``, ``resources/subscribe``, ...),
  ``server``, ``tool`` (namespaced tool) or ``target`` (resource URI, prompt name, completion
  reference), redacted arguments plus an HMAC of the originals and ``outcome = "pending"``; then
  *completed in place* when the call ends (:class:`~toolcrib.gateway.audit.events.Completion`, an
  ``UPDATE`` in the next group-commit batch): ``outcome`` (``ok``, ``tool_error``,
  ``protocol_error``, ``timeout``, ``cancelled``, ``upstream_crash``, ``denied``, or ``pending``
  for a call held for approval), policy ``decision`` and ``rule``, ``approver``, ``error``,
  latency, response bytes, ``completed`` (epoch seconds) and ``seal``, the HMAC of the row's
  ``hash`` and those columns. The row's ``hash`` covers it as inserted, so completing it never
  changes the chain; triggers refuse every other ``UPDATE`` and every ``INSERT`` over a stored row
  (``REPLACE``, UPSERT: schema version 4, :mod:`~toolcrib.gateway.audit.schema`). A row still
  pending (``completed`` NULL) long after its ``ts`` is a call whose end was never recorded (the
  gateway stopped);
* ``attempt`` / ``outcome`` (logs written before ``call`` rows): the same call as two rows, the
  outcome's ``attempt_seq`` pointing at its attempt. ``outcome`` rows are still written for calls
  refused before forwarding (``denied``: unknown or hidden targets);
* ``tally``: how many ``call`` rows up to row ``attempt_seq`` were completed (``bytes``) when it was
  written, cumulative from the first row (pruned rows by their checkpoint's count), and which of
  them after the latest checkpoint were still pending (``results``: a JSON list of seqs, or
  ``{"more_than":10000}`` past the cap), with ``seal`` = HMAC of
  ``"tally:{attempt_seq}:{bytes}:{results}"``; written by :meth:`SqliteAuditLog.tally` (every minute
  by the server) so verify can tell a completion removed (a row set back to pending) behind it
  (:mod:`~toolcrib.gateway.audit.tally`);
* ``search``: a ``search_tools`` query (``query``) and the tool keys it returned (``results``);
* ``auth``: a refused authentication (:func:`auth_refused`): ``outcome = "denied"``, the client's
  ``remote`` address, the reason in ``error``, ``principal`` when one was claimed;
* ``anchor``: written by the log itself when a writer found no keyed anchor for a log that has rows
  (``rule = "reset"``: deleted, rewritten or forged; :meth:`verify` reports it for ever) or adopted
  the unkeyed anchor and checkpoints of a version-1 log on upgrade (``rule = "adopt-unkeyed"``).

Each row stores ``prev_hash`` (the previous row's ``hash``) and ``hash``, the SHA-256 of the
canonical JSON of its other columns (:func:`~toolcrib.gateway.audit.schema.row_hash`). The head is
anchored outside the database in a keyed file (:mod:`~toolcrib.gateway.audit.anchor`, default
``<db>.anchor``, ``[audit] anchor_path``); :meth:`SqliteAuditLog.prune` deletes old rows behind a
checkpoint row that carries an HMAC. Keys: :mod:`~toolcrib.gateway.audit.keys`. What
:meth:`SqliteAuditLog.verify` detects and what it cannot: :mod:`~toolcrib.gateway.audit.verify`.
The database, its ``-wal`` and ``-shm`` files, the anchor and the key file are 0600.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from toolcrib.errors import AuditBusy, AuditError
from toolcrib.gateway.audit.anchor import Anchor
from toolcrib.gateway.audit.events import (
    AuditEvent,
    AuditRowError,
    AuditSink,
    Completion,
    Kind,
    Outcome,
    auth_refused,
)
from toolcrib.gateway.audit.keys import (
    CHECKPOINT_LABEL,
    HMAC_KEY_REF,
    SEAL_LABEL,
    create_private,
    derive,
    load_hmac_key,
    mac,
    make_private,
)
from toolcrib.gateway.audit.schema import (
    CALLS,
    CHECKPOINT,
    COLUMNS,
    COMPLETION,
    GENESIS,
    HEAD,
    INSERT,
    KEYED,
    canonical_json,
    checkpoint_message,
    migrate,
    row_hash,
    version,
)
from toolcrib.gateway.audit.shared import (
    MAX_ARGUMENT_CHARS,
    args_hmac,
    build_completion,
    build_row,
    decode,
    filters,
)
from toolcrib.gateway.audit.tally import checkpoint_count, count_tally, tally_seal, tally_sql
from toolcrib.gateway.audit.verify import VerifyReport, verify

if TYPE_CHECKING:
    from toolcrib.gateway.trust.secrets import Redactor

SETTLE = 600.0
"""Seconds after which a ``call`` row is counted by a ``tally`` (calls normally end well before)."""
UPDATE = (
    f"UPDATE events SET {', '.join(f'{c} = ?' for c in (*COMPLETION, 'seal'))} "  # noqa: S608
    "WHERE seq = ? AND kind = 'call' AND completed IS NULL"
)
PENDING_CACHE = 65536
"""Hashes of this process's pending ``call`` rows kept in memory (older ones are read back)."""
BUSY_TIMEOUT_MS = 5000
"""How long a write waits for another writer's lock (SQLite ``busy_timeout``) before failing."""

__all__ = [
    "COLUMNS",
    "GENESIS",
    "HMAC_KEY_REF",
    "MAX_ARGUMENT_CHARS",
    "AuditEvent",
    "AuditSink",
    "Kind",
    "Outcome",
    "SqliteAuditLog",
    "VerifyReport",
    "auth_refused",
    "canonical_json",
    "load_hmac_key",
    "row_hash",
]

log = logging.getLogger(__name__)

TALLY_SQL = tally_sql("events", "checkpoints", "?")


class SqliteAuditLog:
    """The default :class:`AuditSink`: one SQLite file in WAL mode plus a keyed anchor file.

    ``hmac_key`` is the audit key (:func:`load_hmac_key`); without it nothing with arguments can be
    recorded, prune is refused and :meth:`verify` can check only unkeyed checksums. ``anchor_path``
    defaults to ``<path>.anchor``. Appends run on the calling thread: one ``BEGIN IMMEDIATE`` /
    head read / ``INSERT`` / ``COMMIT`` with ``synchronous=NORMAL``, then a ``pwrite`` of the
    anchor: about 0.1 ms. Only ``ts`` is indexed. Several processes may append to the same file:
    the head is re-read under SQLite's write lock. Raises :class:`AuditError` when unusable.
    """

    blocking_io = False
    """An append is a local commit (tens of microseconds): :class:`~toolcrib.gateway.audit.writer.AuditWriter`
    may run it on the event loop."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        hmac_key: bytes | None = None,
        anchor_path: str | os.PathLike[str] | None = None,
        redactor: Redactor | None = None,
        create: bool = True,
    ) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        """Where the log is, for messages (the file's path)."""
        if not create and not self.path.exists():
            raise AuditError(f"no audit log at {self.path}; it is created when `toolcrib serve` first runs")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._anchor = Anchor(Path(anchor_path) if anchor_path else Path(f"{self.path}.anchor"), hmac_key)
        self.anchor_path = self._anchor.path
        self._hmac_key = hmac_key
        self._checkpoint_key = derive(hmac_key, CHECKPOINT_LABEL) if hmac_key is not None else None
        self._seal_key = derive(hmac_key, SEAL_LABEL) if hmac_key is not None else None
        self._pending: dict[int, str] = {}
        """``seq -> hash`` of the ``call`` rows this process inserted and has not completed yet."""
        self._redactor = redactor
        self._lock = threading.Lock()
        try:
            create_private(self.path)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            upgraded = migrate(self._db) if create else False
            self.schema = version(self._db)
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the WAL and SHM
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open the audit log {self.path} ({exc}); check the path and disk") from None
        make_private(self.path, f"{self.path}-wal", f"{self.path}-shm", self._anchor.path)
        if create and hmac_key is not None:
            with self._lock:
                self._check_anchor(upgraded)

    def _check_anchor(self, upgraded: bool) -> None:
        """A writer never blesses a head it cannot authenticate: with no keyed anchor for a log that
        has rows, it records an ``anchor`` row (in the chain, so it cannot be removed unseen) before
        anchoring again. On the upgrade of a genuine version-1 log it signs the existing checkpoints
        and adopts the unkeyed anchor (trust on first use), and says so in that row."""
        head = self._head()
        if self._anchor.read() is not None or head[0] == 0:
            return
        if upgraded:
            unsigned = self._db.execute("SELECT seq, hash FROM checkpoints WHERE mac IS NULL").fetchall()
            for seq, digest in unsigned:
                self._db.execute(
                    "UPDATE checkpoints SET mac = ? WHERE seq = ?", (self._checkpoint_mac(seq, digest), seq)
                )
            old = self._anchor.read(authenticated=False)
            note = (
                f"upgrade to a keyed audit log: adopted the unkeyed anchor (row {old[0] if old else 'none'}) "
                f"and {len(unsigned)} unsigned checkpoints as found, with rows up to {head[0]}"
            )
            self._append_locked([AuditEvent(kind="anchor", rule="adopt-unkeyed", error=note)], anchor_note=True)
        else:
            self._record_lost_anchor(head[0])

    def _record_lost_anchor(self, last: int) -> None:
        note = (
            f"no keyed anchor for a log with rows up to {last} (deleted, rewritten or forged); re-anchored here: "
            "rows cut before this one cannot be ruled out"
        )
        log.error("audit: %s; run `toolcrib audit verify`", note)
        self._append_locked([AuditEvent(kind="anchor", rule="reset", error=note)], anchor_note=True)

    def args_hmac(self, arguments: Mapping[str, Any]) -> str:
        """HMAC-SHA256 (hex) of the canonical JSON of ``arguments`` under this log's key."""
        return args_hmac(self._hmac_key, arguments)

    def _checkpoint_mac(self, seq: int, digest: str, completed: int | None = None) -> str:
        if self._checkpoint_key is None:
            raise AuditError("prune needs the audit key (secret:toolcrib/audit-hmac or the .key file beside the log)")
        return mac(self._checkpoint_key, checkpoint_message(seq, digest, completed))

    def append(self, event: AuditEvent) -> int:
        """Record ``event``; return its sequence number. Raises :class:`AuditError` when unwritable."""
        return self.append_many([event])[0]

    def append_many(
        self, events: Sequence[AuditEvent], *, wait: bool = True, completions: Sequence[Completion] = ()
    ) -> list[int]:
        """Record several events and complete ``call`` rows in one transaction (group commit: the
        inserts first, then one ``UPDATE`` per :class:`Completion`); return the events' sequence
        numbers. A completion of a row that is not a pending ``call`` row is logged and skipped.

        With ``wait`` False, a write lock held by another connection (another process appending,
        ``toolcrib audit prune``) raises :class:`AuditBusy` at once instead of waiting up to
        ``busy_timeout`` (5 s): the caller can then wait somewhere that blocks nobody. Raises
        :class:`AuditError` when the log is unwritable or, for completions, opened without the key."""
        rows = [self._row(event) for event in events]
        if not rows and not completions:
            return []
        if completions and self._seal_key is None:
            raise AuditError("this audit log was opened without the audit key; it cannot complete calls")
        with self._lock:
            if wait:
                return self._append_locked(events, rows, completions)
            self._db.execute("PRAGMA busy_timeout=0")
            try:
                return self._append_locked(events, rows, completions)
            finally:
                self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def _append_locked(
        self,
        events: Sequence[AuditEvent],
        rows: list[dict[str, Any]] | None = None,
        completions: Sequence[Completion] = (),
        *,
        anchor_note: bool = False,
    ) -> list[int]:
        rows = rows if rows is not None else [self._row(event) for event in events]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                start = self._head()
                seq, prev = start
                for row in rows:
                    seq += 1
                    row["seq"], row["prev_hash"] = seq, prev
                    row["hash"] = prev = row_hash(row)
                if rows:
                    self._db.executemany(INSERT, [[row[c] for c in COLUMNS] for row in rows])
                for done in completions:
                    self._complete(done)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except (sqlite3.DataError, sqlite3.InterfaceError, OverflowError, UnicodeError) as exc:
            raise AuditRowError(f"cannot store a row in the audit log {self.path} ({exc})") from None
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise AuditBusy(f"the audit log {self.path} is locked by another writer ({exc})") from None
            raise AuditError(f"cannot write the audit log {self.path} ({exc}); check the disk") from None
        for done in completions:
            self._pending.pop(done.seq, None)
        if not rows:
            return []
        for row in rows:
            if row["kind"] == "call":
                self._pending[int(row["seq"])] = str(row["hash"])
        while len(self._pending) > PENDING_CACHE:
            del self._pending[next(iter(self._pending))]
        lost = self._anchor.write(rows[-1]["seq"], rows[-1]["hash"])
        if lost and start[0] and self._hmac_key is not None and not anchor_note:
            self._record_lost_anchor(start[0])
        return [int(row["seq"]) for row in rows]

    def _complete(self, done: Completion) -> None:
        """Inside the write transaction: the ``UPDATE`` of one pending ``call`` row."""
        digest = self._pending.get(done.seq)
        if digest is None:
            found = self._db.execute(
                "SELECT hash FROM events WHERE seq = ? AND kind = 'call' AND completed IS NULL", (done.seq,)
            ).fetchone()
            if found is None:
                log.error(
                    "audit: row %d is not a pending call row; its completion (%s) was dropped", done.seq, done.outcome
                )
                return
            digest = str(found[0])
        fields = build_completion(done, digest, self._seal_key, self._redactor)
        self._db.execute(UPDATE, [*(fields[c] for c in (*COMPLETION, "seal")), done.seq])

    def _row(self, event: AuditEvent) -> dict[str, Any]:
        return build_row(event, self._hmac_key, self._redactor)

    def _head(self) -> tuple[int, str]:
        head = self._db.execute(HEAD).fetchone() or self._db.execute(CHECKPOINT).fetchone()
        return (int(head[0]), str(head[1])) if head else (0, GENESIS)

    def checkpoint(self) -> None:
        """Fold the WAL into the database without blocking appenders (run it in a worker thread
        every minute or so, e.g. ``await anyio.to_thread.run_sync(log.checkpoint)``); otherwise
        SQLite does it inline every 10000 pages, a pause of a few ms on one append."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._anchor.close()

    def __enter__(self) -> SqliteAuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        cursor = self._db.execute(sql, params)
        names = [d[0] for d in cursor.description]
        for values in cursor:
            yield dict(zip(names, values, strict=True))

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
        are globs (``git__*``, ``resources/*``); ``since <= ts < until`` (epoch seconds); ``before``:
        only rows with ``seq < before`` (page back through a newest-first listing)."""
        clauses, params = [], []
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
            clauses.append(f"{column} {'GLOB' if op == 'glob' else op} ?")
            params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM events {where} ORDER BY seq DESC LIMIT ?"  # noqa: S608
        with self._lock:
            rows = list(self._rows(sql, [*params, limit]))
        return [decode(r) for r in reversed(rows)]

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        """The last ``n`` rows, oldest first."""
        return self.query(limit=n)

    def export_jsonl(self, fp: IO[str]) -> int:
        """Write every row as stored (so each ``hash`` can be recomputed), one JSON object a line."""
        count = 0
        with self._lock:
            for row in self._rows("SELECT * FROM events ORDER BY seq"):
                fp.write(canonical_json(row) + "\n")
                count += 1
        return count

    def prune_count(self, before_ts: float) -> int:
        """How many rows :meth:`prune` would delete now: every row up to the newest one older than
        ``before_ts`` (seconds since the epoch)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM events WHERE seq <= (SELECT MAX(seq) FROM events WHERE ts < ?)", (before_ts,)
            ).fetchone()
        return int(row[0]) if row else 0

    def prune(self, before_ts: float) -> int:
        """Delete rows older than ``before_ts`` behind a keyed checkpoint; return how many were
        deleted. Raises :class:`AuditError` without the audit key, and when a row it would delete
        is a call row pending now that a tally saw completed
        (:func:`~toolcrib.gateway.audit.tally.prune_check`)."""
        if self.schema < KEYED:
            raise AuditError("this audit log predates keyed checkpoints; start `toolcrib serve` once to upgrade it")
        if self._hmac_key is None:
            raise AuditError("prune needs the audit key (secret:toolcrib/audit-hmac or the .key file beside the log)")
        key = self._hmac_key
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute(
                    "SELECT seq, hash FROM events WHERE ts < ? ORDER BY seq DESC LIMIT 1", (before_ts,)
                ).fetchone()
                if last is None:
                    self._db.execute("ROLLBACK")
                    return 0
                seq, digest = int(last[0]), str(last[1])
                if version(self._db) < CALLS:  # a version-2 log (read under the lock): no call rows, no count
                    self._db.execute(
                        "INSERT INTO checkpoints (seq, hash, ts, mac) VALUES (?, ?, ?, ?)",
                        (seq, digest, time.time(), self._checkpoint_mac(seq, digest)),
                    )
                else:
                    completed = checkpoint_count(
                        lambda q, p: self._db.execute(q, p).fetchone(),
                        lambda q, p: self._db.execute(q, p).fetchall(),
                        TALLY_SQL,
                        key,
                        seq,
                    )
                    self._db.execute(
                        "INSERT INTO checkpoints (seq, hash, ts, mac, completed) VALUES (?, ?, ?, ?, ?)",
                        (seq, digest, time.time(), self._checkpoint_mac(seq, digest, completed), completed),
                    )
                deleted = self._db.execute("DELETE FROM events WHERE seq <= ?", (last[0],)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(deleted)

    def tally(self, settle: float = SETTLE, now: float | None = None) -> int | None:
        """Append a ``tally`` row: how many ``call`` rows up to the newest row (not a tally) older
        than ``settle`` seconds are completed now, cumulative from the first row (pruned rows by
        the latest checkpoint's count), and which are still pending: what it states and how verify checks it,
        :mod:`~toolcrib.gateway.audit.tally`. Returns its seq, or None when there is nothing new to
        state (no settled row past the latest checkpoint, or the latest tally says the same). Reads
        on its own connection in one snapshot, so appends are not held up meanwhile. Raises
        :class:`AuditError` without the audit key or when the latest checkpoint's HMAC is wrong."""
        if self._seal_key is None or self._hmac_key is None:
            raise AuditError("a tally needs the audit key (secret:toolcrib/audit-hmac or the .key file beside the log)")
        if self.schema < CALLS:
            return None
        cutoff = (time.time() if now is None else now) - settle
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("BEGIN")
            found = count_tally(
                lambda q, p: db.execute(q, p).fetchone(),
                lambda q, p: db.execute(q, p).fetchall(),
                TALLY_SQL,
                self._hmac_key,
                cutoff,
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit log {self.path} ({exc})") from None
        finally:
            db.close()
        if found is None:
            return None
        row = self._row(AuditEvent(kind="tally", attempt_seq=found.upto, bytes=found.count))
        row["results"] = found.pending
        row["seal"] = tally_seal(self._hmac_key, found.upto, found.count, found.pending)
        with self._lock:
            return self._append_locked([], [row])[0]

    def verify(self) -> VerifyReport:
        """Check the chain, the checkpoints, the anchor and ``args_hmac``; see
        :func:`toolcrib.gateway.audit.verify.verify` for what is detected and what cannot be."""
        return verify(self._db, self._lock, self._anchor, self._hmac_key, self.path, self.schema)
