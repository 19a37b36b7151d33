"""The tamper-evident audit log of every search and call: append-only SQLite (WAL) behind a sink.

Rows (``kind``):

* ``search``: a ``search_tools`` query (``query``) and the tool keys it returned (``results``);
* ``attempt``: a call about to be decided and forwarded: principal, tool, definition hash,
  redacted arguments plus an HMAC of the originals, policy ``decision`` and ``rule``. Written
  *before* forwarding, so a crash cannot lose a call that was made;
* ``outcome``: how that call ended (``attempt_seq`` points at its attempt): ``ok``, ``tool_error``,
  ``protocol_error``, ``timeout``, ``cancelled``, ``upstream_crash``, ``denied`` or ``pending``,
  with the ``approver``, latency and response bytes. Every attempt gets an outcome, denials too.

Each row stores ``prev_hash`` (the previous row's ``hash``) and ``hash``, the SHA-256 of the
canonical JSON of all its other columns. The head (last seq and hash) is anchored outside the
database in a small file of two checksummed slots written in turn with ``pwrite`` (a torn write
leaves the other slot intact), so :meth:`SqliteAuditLog.verify` also catches a truncated tail or
a rewritten chain. :meth:`SqliteAuditLog.prune` deletes old rows but first records a checkpoint
(seq and hash of the last pruned row) in the database and in a file next to the anchor.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from toolcrib.errors import AuditError
from toolcrib.gateway.audit.anchor import Anchor

if TYPE_CHECKING:
    from toolcrib.gateway.trust.secrets import CredentialStore, Redactor

log = logging.getLogger(__name__)

Kind = Literal["search", "attempt", "outcome"]
Outcome = Literal["ok", "tool_error", "protocol_error", "timeout", "cancelled", "upstream_crash", "denied", "pending"]
GENESIS = "0" * 64
HMAC_KEY_REF = "toolcrib/audit-hmac"
MAX_ARGUMENT_CHARS = 65536
"""Redacted arguments longer than this are truncated in the row (the HMAC covers the originals)."""

COLUMNS = (
    "seq", "ts", "kind", "request_id", "principal", "client_name", "session", "transport", "method",
    "server", "tool", "tool_hash", "arguments", "args_hmac", "query", "results", "decision", "rule",
    "approver", "outcome", "error", "latency_ms", "bytes", "attempt_seq", "prev_hash", "hash",
)  # fmt: skip
_FLOAT_COLUMNS = frozenset({"ts", "latency_ms"})
_INT_COLUMNS = frozenset({"seq", "bytes", "attempt_seq"})
_COLUMN_DEFS = ", ".join(
    f"{c} {'REAL' if c in _FLOAT_COLUMNS else 'INTEGER' if c in _INT_COLUMNS else 'TEXT'}" for c in COLUMNS[3:-2]
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL,
    {_COLUMN_DEFS},
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_prune_only BEFORE DELETE ON events
WHEN OLD.seq > (SELECT coalesce(max(seq), 0) FROM checkpoints)
BEGIN SELECT RAISE(ABORT, 'audit rows are removed only by prune, behind a checkpoint'); END;
"""  # noqa: S608 - column names are constants
_INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"  # noqa: S608
_HEAD = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
_CHECKPOINT = "SELECT seq, hash FROM checkpoints ORDER BY seq DESC LIMIT 1"


@dataclass(frozen=True)
class AuditEvent:
    """One thing to record. ``arguments`` are the originals: the sink redacts them and HMACs them."""

    kind: Kind
    request_id: str | int | None = None
    principal: str | None = None
    client_name: str | None = None
    session: str | None = None
    transport: str | None = None
    method: str | None = None
    server: str | None = None
    tool: str | None = None
    tool_hash: str | None = None
    arguments: Mapping[str, Any] | None = None
    query: str | None = None
    results: Sequence[str] | None = None
    decision: str | None = None
    rule: str | None = None
    approver: str | None = None
    outcome: Outcome | None = None
    error: str | None = None
    latency_ms: float | None = None
    bytes: int | None = None
    attempt_seq: int | None = None
    ts: float | None = None


class AuditSink(Protocol):
    """Where audit events go. ``append`` returns the event's sequence number."""

    def append(self, event: AuditEvent) -> int: ...

    def close(self) -> None: ...


@dataclass
class VerifyReport:
    """The result of :meth:`SqliteAuditLog.verify`; ``ok`` is true when ``problems`` is empty."""

    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoint_seq: int = 0
    anchor_seq: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the form every hash in the log is computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def row_hash(row: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of every column except ``hash``."""
    payload = {k: row[k] for k in COLUMNS if k != "hash"}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def load_hmac_key(db_path: str | os.PathLike[str], store: CredentialStore | None = None) -> bytes:
    """The arguments-HMAC key: ``secret:toolcrib/audit-hmac`` if set, else a 0600 file next to the DB."""
    if store is not None and (value := store.get(HMAC_KEY_REF)):
        return value.encode()
    path = Path(f"{db_path}.key")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            raise AuditError(f"audit key file {path} is readable by group or others; run `chmod 600 {path}`") from None
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fp:
        key = secrets.token_bytes(32)
        fp.write(key)
    return key


class SqliteAuditLog:
    """The default :class:`AuditSink`: one SQLite file in WAL mode plus an anchor file.

    Appends run on the event loop: one ``BEGIN IMMEDIATE`` / head read / ``INSERT`` / ``COMMIT`` with
    ``synchronous=NORMAL`` and cached prepared statements, then a ``pwrite`` of the anchor: about
    0.1 ms. Only ``ts`` is indexed (each index costs an append ~15 us); other filters scan.
    Several processes may append to the same file: the head is re-read under SQLite's write lock.
    """

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
        if not create and not self.path.exists():
            raise AuditError(f"no audit log at {self.path}; it is created when `toolcrib serve` first runs")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._anchor = Anchor(Path(anchor_path) if anchor_path else Path(f"{self.path}.anchor"))
        self.checkpoint_path = Path(f"{self._anchor.path}.checkpoint")
        self._hmac_key = hmac_key
        self._redactor = redactor
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open the audit log {self.path} ({exc}); check the path and disk") from None

    def args_hmac(self, arguments: Mapping[str, Any]) -> str:
        """HMAC-SHA256 of the canonical JSON of ``arguments`` under this log's key."""
        if self._hmac_key is None:
            raise AuditError("this audit log was opened without an HMAC key; it cannot record calls")
        return hmac.new(self._hmac_key, canonical_json(arguments).encode(), hashlib.sha256).hexdigest()

    def append(self, event: AuditEvent) -> int:
        """Record ``event``; return its sequence number. Raises :class:`AuditError` when unwritable."""
        row = self._row(event)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    prev_seq, prev_hash = self._head()
                    row["seq"], row["prev_hash"] = prev_seq + 1, prev_hash
                    row["hash"] = row_hash(row)
                    self._db.execute(_INSERT, [row[c] for c in COLUMNS])
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditError(f"cannot write the audit log {self.path} ({exc}); check the disk") from None
            self._anchor.write(row["seq"], row["hash"])
        return int(row["seq"])

    def append_many(self, events: Sequence[AuditEvent]) -> list[int]:
        """Record several events in one transaction (group commit); return their sequence numbers."""
        rows = [self._row(event) for event in events]
        if not rows:
            return []
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    seq, prev = self._head()
                    for row in rows:
                        seq += 1
                        row["seq"], row["prev_hash"] = seq, prev
                        row["hash"] = prev = row_hash(row)
                    self._db.executemany(_INSERT, [[row[c] for c in COLUMNS] for row in rows])
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditError(f"cannot write the audit log {self.path} ({exc}); check the disk") from None
            self._anchor.write(rows[-1]["seq"], rows[-1]["hash"])
        return [int(row["seq"]) for row in rows]

    def _row(self, event: AuditEvent) -> dict[str, Any]:
        row: dict[str, Any] = {k: getattr(event, k, None) for k in COLUMNS}
        row["ts"] = float(event.ts if event.ts is not None else time.time())
        if event.request_id is not None:
            row["request_id"] = str(event.request_id)
        if event.latency_ms is not None:
            row["latency_ms"] = float(event.latency_ms)
        if event.arguments is not None:
            row["args_hmac"] = self.args_hmac(event.arguments)
            redacted = self._scrub(dict(event.arguments))
            text = canonical_json(redacted)
            row["arguments"] = text if len(text) <= MAX_ARGUMENT_CHARS else text[:MAX_ARGUMENT_CHARS] + "…"
        if event.results is not None:
            row["results"] = canonical_json(list(event.results))
        for key in ("query", "error"):
            if row[key] is not None:
                row[key] = self._scrub(row[key])
        return row

    def _scrub(self, value: Any) -> Any:
        return self._redactor.scrub_json(value) if self._redactor is not None else value

    def _head(self) -> tuple[int, str]:
        head = self._db.execute(_HEAD).fetchone() or self._db.execute(_CHECKPOINT).fetchone()
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
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The most recent ``limit`` rows matching every filter, oldest first. ``tool`` is a glob."""
        clauses, params = [], []
        for column, op, value in (
            ("principal", "=", principal),
            ("tool", "GLOB", tool),
            ("ts", ">=", since),
            ("outcome", "=", outcome),
            ("kind", "=", kind),
            ("request_id", "=", request_id),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM events {where} ORDER BY seq DESC LIMIT ?"  # noqa: S608
        with self._lock:
            rows = list(self._rows(sql, [*params, limit]))
        return [_decode(r) for r in reversed(rows)]

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

    def prune(self, before_ts: float) -> int:
        """Delete rows older than ``before_ts`` behind a checkpoint; return how many were deleted."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute(
                    "SELECT seq, hash FROM events WHERE ts < ? ORDER BY seq DESC LIMIT 1", (before_ts,)
                ).fetchone()
                if last is None:
                    self._db.execute("ROLLBACK")
                    return 0
                self._db.execute("INSERT INTO checkpoints VALUES (?, ?, ?)", (last[0], last[1], time.time()))
                deleted = self._db.execute("DELETE FROM events WHERE seq <= ?", (last[0],)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        tmp = self.checkpoint_path.with_name(f".{self.checkpoint_path.name}.tmp")
        tmp.write_text(json.dumps({"seq": last[0], "hash": last[1]}))
        os.replace(tmp, self.checkpoint_path)
        return int(deleted)

    def verify(self) -> VerifyReport:
        """Re-hash the chain; report edited, deleted, inserted or reordered rows and anchor mismatches.

        Safe while a server appends: the anchor is read before the database snapshot, so every row
        it names is in the snapshot; rows past it must be covered by the anchor once the scan ends.
        """
        report = VerifyReport()
        problems = report.problems
        anchor = self._anchor.read()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._scan(report, anchor)
            finally:
                self._db.execute("COMMIT")
        last = report.last_seq if report.last_seq is not None else report.checkpoint_seq
        report.anchor_seq = anchor[0] if anchor else None
        if anchor is None:
            if last:
                problems.append(f"the anchor file {self._anchor.path} is missing or unreadable")
        elif anchor[0] > last:
            problems.append(f"the log ends at row {last} but the anchor says {anchor[0]}: the tail was cut")
        elif anchor[0] < last:
            for _ in range(5):
                later = self._anchor.read()
                if later is not None and later[0] >= last:
                    break
                time.sleep(0.005)
            else:
                problems.append(f"rows {anchor[0] + 1}..{last} come after the anchored head (appended outside)")
        return report

    def _scan(self, report: VerifyReport, anchor: tuple[int, str] | None) -> None:
        problems = report.problems
        checkpoint = self._db.execute(_CHECKPOINT).fetchone()
        prev_seq, prev_hash = (int(checkpoint[0]), str(checkpoint[1])) if checkpoint else (0, GENESIS)
        report.checkpoint_seq = prev_seq
        saved = self._read_checkpoint_file()
        if saved != (checkpoint and (prev_seq, prev_hash)):
            problems.append(
                f"the checkpoint in the database ({checkpoint and prev_seq}) does not match "
                f"{self.checkpoint_path} ({saved and saved[0]}): rows were removed outside prune"
            )
        anchored_hash = prev_hash if anchor and anchor[0] == prev_seq else None
        for row in self._rows("SELECT * FROM events ORDER BY seq"):
            seq = int(row["seq"])
            report.rows += 1
            report.first_seq = seq if report.first_seq is None else report.first_seq
            if seq != prev_seq + 1:
                problems.append(f"rows {prev_seq + 1}..{seq - 1} are missing (deleted)")
            elif row["prev_hash"] != prev_hash:
                problems.append(f"row {seq} does not link to row {prev_seq} (a row was replaced or moved)")
            if row_hash(row) != row["hash"]:
                problems.append(f"row {seq} does not match its hash (edited)")
            prev_seq, prev_hash = seq, str(row["hash"])
            if anchor and anchor[0] == seq:
                anchored_hash = prev_hash
        report.last_seq = prev_seq if report.rows else None
        if anchor and anchor[0] <= prev_seq and anchored_hash != anchor[1]:
            problems.append(f"row {anchor[0]} differs from the anchored head hash (the chain was rewritten)")

    def _read_checkpoint_file(self) -> tuple[int, str] | None:
        try:
            data = json.loads(self.checkpoint_path.read_text())
            return int(data["seq"]), str(data["hash"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return (-1, "unreadable")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("arguments", "results"):
        if isinstance(out.get(key), str):
            with contextlib.suppress(ValueError):
                out[key] = json.loads(out[key])
    return out
