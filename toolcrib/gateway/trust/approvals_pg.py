"""Approvals in PostgreSQL, shared by every replica: :class:`PgApprovalStore`.

The same interface and semantics as the SQLite :class:`~toolcrib.gateway.trust.approvals.ApprovalStore`
(and the same statements, :data:`~toolcrib.gateway.trust.approvals.CONSUME_SQL` and its siblings),
over the ``approvals`` table of :mod:`toolcrib.storage.migrations`. What PostgreSQL adds:

- ``consume`` picks its row ``FOR UPDATE SKIP LOCKED`` inside the single ``UPDATE ... RETURNING``:
  two replicas racing for one approval never both get it (the loser sees the row locked, or no
  longer ``approved`` once the winner commits, and gets None).
- The sweep that marks lapsed requests ``expired`` skips rows another transaction holds, so replicas
  sweeping at once never wait on nor deadlock with each other.
- ``request`` holds a transaction-level advisory lock on the binding (principal, tool, arguments
  hash), so replicas asking at once for the same call share one pending request.
- ``approve`` / ``deny`` ``NOTIFY toolcrib_approvals`` with the id inside the deciding transaction:
  the notification is sent exactly when the decision commits, never for a rolled-back one, and an
  :class:`~toolcrib.gateway.trust.approvals.AsyncApprovals` given a
  :class:`~toolcrib.storage.postgres.Listener` on any replica wakes its waiters on that id.

Errors: :class:`~toolcrib.gateway.trust.approvals.ApprovalError` as the SQLite store;
:class:`~toolcrib.errors.StorageError` (one line) when the database is unreachable.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

from toolcrib.gateway.trust.approvals import (
    CHANNEL,
    CONSUME_SQL,
    DECIDE_SQL,
    INSERT_SQL,
    PENDING_SQL,
    Approval,
    Status,
    StoreBase,
    args_hash,
    effective,
    missing,
    new_id,
    row_approval,
    select,
    shown_arguments,
    typed_id,
)

if TYPE_CHECKING:
    from toolcrib.gateway.trust.secrets import Redactor
    from toolcrib.storage.postgres import Database

_CONSUME = CONSUME_SQL.format(lock=" FOR UPDATE SKIP LOCKED")
_EXPIRE = (  # never waits on, nor deadlocks with, another replica's sweep or decision
    "UPDATE approvals SET status = 'expired' WHERE id IN (SELECT id FROM approvals"
    " WHERE status IN ('pending', 'approved') AND expires <= %s FOR UPDATE SKIP LOCKED)"
)


class PgApprovalStore(StoreBase):
    """Approval requests in the ``approvals`` table of ``db`` (opened and migrated:
    :func:`toolcrib.storage.migrations.upgrade`). Thread-safe: each call takes a pooled connection.

    ``concurrency`` is how many calls :class:`~toolcrib.gateway.trust.approvals.AsyncApprovals` runs at
    once (the pool size, ``[storage] pool_size``). Closing the store leaves ``db`` open: its owner
    closes it.
    """

    def __init__(self, db: Database, redactor: Redactor | None = None, *, concurrency: int = 4) -> None:
        self.db = db
        self.concurrency = concurrency
        self._redactor = redactor

    def close(self) -> None:
        """Nothing to release (the pool belongs to ``db``); present for the stores' common interface."""

    def request(
        self, principal: str, tool: str, arguments: Mapping[str, Any], ttl: float, rule: str | None = None
    ) -> Approval:
        """See :meth:`ApprovalStore.request <toolcrib.gateway.trust.approvals.ApprovalStore.request>`."""
        principal, digest, now = typed_id(principal), args_hash(arguments), time.time()
        shown = shown_arguments(self._redactor, arguments)
        with self.db.transaction() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("\n".join((principal, tool, digest)),)
            )
            cur.execute(_EXPIRE, (now,))
            row = cur.execute(PENDING_SQL, (principal, tool, digest, now)).fetchone()
            while row is None:
                row = cur.execute(
                    INSERT_SQL, (new_id(), principal, tool, digest, shown, now, now + ttl, rule)
                ).fetchone()
            return row_approval(row, now)

    def get(self, approval_id: str) -> Approval:
        """See :meth:`ApprovalStore.get <toolcrib.gateway.trust.approvals.ApprovalStore.get>`."""
        with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute("SELECT * FROM approvals WHERE id = %s", (approval_id,)).fetchone()
        if row is None:
            raise missing(approval_id)
        return row_approval(row, time.time())

    def status(self, approval_id: str) -> Status:
        """See :meth:`ApprovalStore.status <toolcrib.gateway.trust.approvals.ApprovalStore.status>`."""
        with self.db.connection() as conn:
            row = conn.execute("SELECT status, expires FROM approvals WHERE id = %s", (approval_id,)).fetchone()
        if row is None:
            raise missing(approval_id)
        return effective(row[0], row[1], time.time())

    def list(self, status: str | None = None) -> list[Approval]:
        """See :meth:`ApprovalStore.list <toolcrib.gateway.trust.approvals.ApprovalStore.list>`."""
        now = time.time()
        with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute("SELECT * FROM approvals ORDER BY created DESC").fetchall()
        return select([row_approval(r, now) for r in rows], status)

    def _decide(self, approval_id: str, status: Status, approver: str, note: str | None) -> Approval:
        now = time.time()
        with self.db.transaction() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_EXPIRE, (now,))
            row = cur.execute(DECIDE_SQL, (status, now, approver, note, approval_id, now)).fetchone()
            if row is not None:
                self.db.notify(CHANNEL, approval_id, conn)  # delivered when this transaction commits
        if row is None:
            raise self._not_pending(approval_id)
        return row_approval(row, now)

    def consume(self, principal: str, tool: str, arguments: Mapping[str, Any]) -> Approval | None:
        """See :meth:`ApprovalStore.consume <toolcrib.gateway.trust.approvals.ApprovalStore.consume>`;
        single-use across replicas (``FOR UPDATE SKIP LOCKED``)."""
        principal, now = typed_id(principal), time.time()
        with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(_CONSUME, (now, principal, tool, args_hash(arguments), now)).fetchone()
        return row_approval(row, now) if row is not None else None
