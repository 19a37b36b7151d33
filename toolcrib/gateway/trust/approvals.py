"""Human approvals, held outside the model's reach, in a SQLite file shared with the CLI.

A call whose policy decision is ``approve`` becomes an :class:`Approval` bound to the principal's
name, the tool, and the SHA-256 of the canonical JSON of the *exact* arguments. An operator
approves or denies it (``toolcrib approvals approve ID``, ``POST /admin/approvals/ID``); the server
either waits for that (``hold``) or answers with the id for the client to retry (``pending``).
Either way the call goes ahead only through :meth:`ApprovalStore.consume`, which atomically marks
one matching approved, unexpired, unused approval as ``used``: an approval is good for one call,
with those arguments, by that principal, before it expires.

Statuses: ``pending`` -> ``approved`` | ``denied`` | ``expired``; ``approved`` -> ``used`` | ``expired``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from toolcrib.errors import Forbidden, ToolcribError

if TYPE_CHECKING:
    from toolcrib.gateway.trust.secrets import Redactor

Status = Literal["pending", "approved", "denied", "expired", "used"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, principal TEXT NOT NULL, tool TEXT NOT NULL, args_hash TEXT NOT NULL,
    arguments TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    decided REAL, approver TEXT, used REAL
);
CREATE INDEX IF NOT EXISTS approvals_binding ON approvals (principal, tool, args_hash, status);
"""


class ApprovalError(ToolcribError):
    """An approval cannot be found or is no longer pending."""


class ApprovalDenied(Forbidden):
    """An operator denied the call, or its approval request expired."""


@dataclass(frozen=True)
class Approval:
    """One approval request. ``arguments`` are redacted, for the operator to read."""

    id: str
    principal: str
    tool: str
    args_hash: str
    arguments: dict[str, Any]
    status: Status
    created: float
    expires: float
    decided: float | None = None
    approver: str | None = None
    used: float | None = None


def args_hash(arguments: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no whitespace) of ``arguments``."""
    text = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class ApprovalStore:
    """Approval requests in ``path`` (created 0600); several processes may open the same file."""

    def __init__(self, path: str | os.PathLike[str], redactor: Redactor | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._redactor = redactor
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def request(self, principal: str, tool: str, arguments: Mapping[str, Any], ttl: float) -> Approval:
        """A pending approval for this exact call: an existing one if still pending, else a new one."""
        digest = args_hash(arguments)
        now = time.time()
        with self._lock:
            self._expire(now)
            row = self._db.execute(
                "SELECT * FROM approvals WHERE principal = ? AND tool = ? AND args_hash = ? "
                "AND status = 'pending' ORDER BY created DESC LIMIT 1",
                (principal, tool, digest),
            ).fetchone()
            if row is not None:
                return _approval(row)
            shown = self._redactor.scrub_json(dict(arguments)) if self._redactor else dict(arguments)
            while True:
                approval_id = secrets.token_hex(5)
                try:
                    self._db.execute(
                        "INSERT INTO approvals (id, principal, tool, args_hash, arguments, status, created, expires)"
                        " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                        (approval_id, principal, tool, digest, json.dumps(shown), now, now + ttl),
                    )
                    break
                except sqlite3.IntegrityError:
                    continue
        return self.get(approval_id)

    def get(self, approval_id: str) -> Approval:
        """The approval with this id; :class:`ApprovalError` when there is none."""
        with self._lock:
            self._expire(time.time())
            row = self._db.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            raise ApprovalError(f"no approval {approval_id!r}; run `toolcrib approvals list` to see them")
        return _approval(row)

    def list(self, status: str | None = None) -> list[Approval]:
        """Approvals, newest first; only those with ``status`` when given."""
        with self._lock:
            self._expire(time.time())
            if status is None:
                rows = self._db.execute("SELECT * FROM approvals ORDER BY created DESC").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM approvals WHERE status = ? ORDER BY created DESC", (status,)
                ).fetchall()
        return [_approval(r) for r in rows]

    def approve(self, approval_id: str, approver: str) -> Approval:
        """Approve a pending request; :class:`ApprovalError` if it is not pending any more."""
        return self._decide(approval_id, "approved", approver)

    def deny(self, approval_id: str, approver: str) -> Approval:
        """Deny a pending request; :class:`ApprovalError` if it is not pending any more."""
        return self._decide(approval_id, "denied", approver)

    def _decide(self, approval_id: str, status: Status, approver: str) -> Approval:
        now = time.time()
        with self._lock:
            self._expire(now)
            changed = self._db.execute(
                "UPDATE approvals SET status = ?, decided = ?, approver = ? WHERE id = ? AND status = 'pending'",
                (status, now, approver, approval_id),
            ).rowcount
        current = self.get(approval_id)
        if not changed:
            raise ApprovalError(f"approval {approval_id} is {current.status}, not pending; nothing changed")
        return current

    def consume(self, principal: str, tool: str, arguments: Mapping[str, Any]) -> Approval | None:
        """Use up one approved, unexpired approval for exactly this call; None when there is none."""
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "UPDATE approvals SET status = 'used', used = ? WHERE id = ("
                " SELECT id FROM approvals WHERE principal = ? AND tool = ? AND args_hash = ?"
                " AND status = 'approved' AND expires > ? ORDER BY created LIMIT 1"
                ") RETURNING *",
                (now, principal, tool, args_hash(arguments), now),
            ).fetchone()
        return _approval(row) if row is not None else None

    async def wait(self, approval_id: str, timeout: float, poll: float = 0.2) -> Status:
        """Poll until the request leaves ``pending`` or ``timeout`` passes; return its status then."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.get(approval_id).status
            if status != "pending" or time.monotonic() >= deadline:
                return status
            await anyio.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def _expire(self, now: float) -> None:
        self._db.execute(
            "UPDATE approvals SET status = 'expired' WHERE status IN ('pending', 'approved') AND expires <= ?",
            (now,),
        )


def _approval(row: sqlite3.Row) -> Approval:
    data = dict(row)
    data["arguments"] = json.loads(data["arguments"])
    return Approval(**data)
