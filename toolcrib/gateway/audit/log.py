"""The tamper-evident audit log of every request: append-only SQLite (WAL) behind a sink.

Rows (``kind``):

* ``search``: a ``search_tools`` query (``query``) and the tool keys it returned (``results``);
* ``attempt``: a request about to be decided and forwarded upstream: principal, ``method`` (any MCP
  method string: ``tools/call``, ``resources/read``, ``prompts/get``, ``completion/complete``,
  ``resources/subscribe``, ...), ``server``, ``tool`` (namespaced tool) or ``target`` (resource URI,
  prompt name, completion reference), redacted arguments plus an HMAC of the originals, policy
  ``decision`` and ``rule``. Written *before* forwarding, so a crash cannot lose a call that was made;
* ``outcome``: how that request ended (``attempt_seq`` points at its attempt): ``ok``,
  ``tool_error``, ``protocol_error``, ``timeout``, ``cancelled``, ``upstream_crash``, ``denied`` or
  ``pending``, with the ``approver``, latency and response bytes. Every attempt gets an outcome;
* ``auth``: a refused authentication (:func:`auth_refused`): ``outcome = "denied"``, the client's
  ``remote`` address, the reason in ``error``, ``principal`` when one was claimed.

Each row stores ``prev_hash`` (the previous row's ``hash``) and ``hash``, the SHA-256 of the
canonical JSON of its other columns (:func:`~toolcrib.gateway.audit.schema.row_hash`). The head is
anchored outside the database in a keyed file (:mod:`~toolcrib.gateway.audit.anchor`, default
``<db>.anchor``, ``[audit] anchor_path``); :meth:`SqliteAuditLog.prune` deletes old rows behind a
checkpoint row that carries an HMAC. Keys: :mod:`~toolcrib.gateway.audit.keys`. What
:meth:`SqliteAuditLog.verify` detects and what it cannot: :mod:`~toolcrib.gateway.audit.verify`.
The database, its ``-wal`` and ``-shm`` files, the anchor and the key file are 0600.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from toolcrib.errors import AuditError
from toolcrib.gateway.audit.anchor import Anchor
from toolcrib.gateway.audit.keys import (
    CHECKPOINT_LABEL,
    HMAC_KEY_REF,
    create_private,
    derive,
    load_hmac_key,
    mac,
    make_private,
)
from toolcrib.gateway.audit.schema import (
    CHECKPOINT,
    COLUMNS,
    GENESIS,
    HEAD,
    INSERT,
    canonical_json,
    migrate,
    row_hash,
)
from toolcrib.gateway.audit.verify import VerifyReport, verify

if TYPE_CHECKING:
    from toolcrib.gateway.trust.secrets import Redactor

__all__ = [
    "COLUMNS",
    "GENESIS",
    "HMAC_KEY_REF",
    "AuditEvent",
    "AuditSink",
    "SqliteAuditLog",
    "VerifyReport",
    "auth_refused",
    "canonical_json",
    "load_hmac_key",
    "row_hash",
]

log = logging.getLogger(__name__)

Kind = Literal["search", "attempt", "outcome", "auth"]
Outcome = Literal["ok", "tool_error", "protocol_error", "timeout", "cancelled", "upstream_crash", "denied", "pending"]
MAX_ARGUMENT_CHARS = 65536
"""Redacted arguments longer than this are truncated in the row (the HMAC covers the originals)."""


@dataclass(frozen=True)
class AuditEvent:
    """One thing to record. ``arguments`` are the originals: the sink redacts them and HMACs them.

    ``method`` takes any MCP method string; ``tool`` is a namespaced tool key, ``target`` whatever
    else a request names (resource URI, prompt name, completion reference); ``remote`` is the
    client's address (``host:port``). ``error``, ``query`` and ``target`` are redacted too.
    """

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
    target: str | None = None
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
    remote: str | None = None
    ts: float | None = None


def auth_refused(
    reason: str,
    *,
    remote: str | None,
    transport: str | None = "http",
    method: str | None = None,
    principal: str | None = None,
    rule: str | None = None,
) -> AuditEvent:
    """The row for a refused authentication: ``kind="auth"``, ``outcome="denied"``, ``reason`` in
    ``error`` (never the credential itself), ``method`` e.g. ``"POST /mcp"`` or ``"GET /admin/audit"``."""
    return AuditEvent(
        kind="auth",
        outcome="denied",
        decision="deny",
        error=reason,
        remote=remote,
        transport=transport,
        method=method,
        principal=principal,
        rule=rule,
    )


class AuditSink(Protocol):
    """Where audit events go. ``append`` returns the event's sequence number."""

    def append(self, event: AuditEvent) -> int: ...

    def close(self) -> None: ...


class SqliteAuditLog:
    """The default :class:`AuditSink`: one SQLite file in WAL mode plus a keyed anchor file.

    ``hmac_key`` is the audit key (:func:`load_hmac_key`); without it nothing with arguments can be
    recorded, prune is refused and :meth:`verify` can check only unkeyed checksums. ``anchor_path``
    defaults to ``<path>.anchor``. Appends run on the calling thread: one ``BEGIN IMMEDIATE`` /
    head read / ``INSERT`` / ``COMMIT`` with ``synchronous=NORMAL``, then a ``pwrite`` of the
    anchor: about 0.1 ms. Only ``ts`` is indexed. Several processes may append to the same file:
    the head is re-read under SQLite's write lock. Raises :class:`AuditError` when unusable.
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
        self._anchor = Anchor(Path(anchor_path) if anchor_path else Path(f"{self.path}.anchor"), hmac_key)
        self.anchor_path = self._anchor.path
        self._hmac_key = hmac_key
        self._checkpoint_key = derive(hmac_key, CHECKPOINT_LABEL) if hmac_key is not None else None
        self._redactor = redactor
        self._lock = threading.Lock()
        try:
            create_private(self.path)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            migrate(self._db)
            self._db.execute("SELECT count(*) FROM checkpoints").fetchone()  # opens the WAL and SHM
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open the audit log {self.path} ({exc}); check the path and disk") from None
        make_private(self.path, f"{self.path}-wal", f"{self.path}-shm", self._anchor.path)
        if create and hmac_key is not None:
            self._adopt_unkeyed()

    def _adopt_unkeyed(self) -> None:
        """Upgrade from an unkeyed version, trusting what is there on first use: sign checkpoints the
        old checkpoint file confirms, and key the anchor if its unkeyed head is the database's head."""
        legacy = Path(f"{self._anchor.path}.checkpoint")
        with self._lock, contextlib.suppress(OSError, ValueError, KeyError, TypeError, sqlite3.Error):
            unsigned = self._db.execute("SELECT seq, hash FROM checkpoints WHERE mac IS NULL").fetchall()
            if unsigned:
                saved = json.loads(legacy.read_text())
                confirmed = (int(saved["seq"]), str(saved["hash"]))
                if confirmed in [(int(s), str(h)) for s, h in unsigned]:
                    for seq, digest in unsigned:
                        if seq <= confirmed[0]:
                            self._db.execute(
                                "UPDATE checkpoints SET mac = ? WHERE seq = ?", (self._checkpoint_mac(seq, digest), seq)
                            )
            if self._anchor.read() is None:
                head = self._head()
                if head[0] and self._anchor.read(authenticated=False) == head:
                    self._anchor.write(*head)

    def args_hmac(self, arguments: Mapping[str, Any]) -> str:
        """HMAC-SHA256 (hex) of the canonical JSON of ``arguments`` under this log's key."""
        if self._hmac_key is None:
            raise AuditError("this audit log was opened without an HMAC key; it cannot record calls")
        return mac(self._hmac_key, canonical_json(arguments))

    def _checkpoint_mac(self, seq: int, digest: str) -> str:
        if self._checkpoint_key is None:
            raise AuditError("prune needs the audit key (secret:toolcrib/audit-hmac or the .key file beside the log)")
        return mac(self._checkpoint_key, f"{seq}:{digest}")

    def append(self, event: AuditEvent) -> int:
        """Record ``event``; return its sequence number. Raises :class:`AuditError` when unwritable."""
        return self.append_many([event])[0]

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
                    self._db.executemany(INSERT, [[row[c] for c in COLUMNS] for row in rows])
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
            original = canonical_json(dict(event.arguments))
            text = canonical_json(self._scrub(dict(event.arguments)))
            row["args_stored"] = "full" if text == original else "redacted"
            if len(text) > MAX_ARGUMENT_CHARS:
                text, row["args_stored"] = text[:MAX_ARGUMENT_CHARS] + "…", "truncated"
            row["arguments"] = text
        if event.results is not None:
            row["results"] = canonical_json(list(event.results))
        for key in ("query", "error", "target"):
            if row[key] is not None:
                row[key] = self._scrub(row[key])
        return row

    def _scrub(self, value: Any) -> Any:
        return self._redactor.scrub_json(value) if self._redactor is not None else value

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
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The most recent ``limit`` rows matching every filter, oldest first. ``tool`` and ``method``
        are globs (``git__*``, ``resources/*``)."""
        clauses, params = [], []
        for column, op, value in (
            ("principal", "=", principal),
            ("tool", "GLOB", tool),
            ("ts", ">=", since),
            ("outcome", "=", outcome),
            ("kind", "=", kind),
            ("request_id", "=", request_id),
            ("method", "GLOB", method),
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
        """Delete rows older than ``before_ts`` behind a keyed checkpoint; return how many were
        deleted. Raises :class:`AuditError` without the audit key."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute(
                    "SELECT seq, hash FROM events WHERE ts < ? ORDER BY seq DESC LIMIT 1", (before_ts,)
                ).fetchone()
                if last is None:
                    self._db.execute("ROLLBACK")
                    return 0
                self._db.execute(
                    "INSERT INTO checkpoints (seq, hash, ts, mac) VALUES (?, ?, ?, ?)",
                    (last[0], last[1], time.time(), self._checkpoint_mac(int(last[0]), str(last[1]))),
                )
                deleted = self._db.execute("DELETE FROM events WHERE seq <= ?", (last[0],)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(deleted)

    def verify(self) -> VerifyReport:
        """Check the chain, the checkpoints, the anchor and ``args_hmac``; see
        :func:`toolcrib.gateway.audit.verify.verify` for what is detected and what cannot be."""
        return verify(self._db, self._lock, self._anchor, self._hmac_key, self.path)


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("arguments", "results"):
        if isinstance(out.get(key), str):
            with contextlib.suppress(ValueError):
                out[key] = json.loads(out[key])
    return out
