"""Human approvals, held outside the model's reach, in a SQLite file shared with the CLI.

A call whose policy decision is ``approve`` becomes an :class:`Approval` bound to the caller's typed
identity (:attr:`Principal.id <toolcrib.gateway.trust.identity.Principal.id>`, ``KIND:SUBJECT``: an
approval for ``key:agent`` is never used by ``oauth:agent``), the target (namespaced tool key), and
the SHA-256 of the canonical JSON of the *exact* arguments. It records the policy rule that asked
for it. An operator approves or denies it, optionally with a note (``toolcrib approvals approve ID
--note TEXT``, ``POST /admin/approvals/ID``); the server either waits for that (``hold``) or answers
with the id for the client to retry (``pending``). Either way the call goes ahead only through
``consume``, which atomically marks one matching approved, unexpired, unused approval as ``used``:
an approval is good for one call, with those arguments, by that principal, before it expires.

Statuses: ``pending`` -> ``approved`` | ``denied`` | ``expired``; ``approved`` -> ``used`` | ``expired``.

Two faces over one file (created 0600, like its WAL and shared-memory files):

- :class:`ApprovalStore`: synchronous, for the CLI and for code already on a worker thread.
- :class:`AsyncApprovals`: what the gateway uses. Every SQLite call runs on one worker thread at a
  time (a ``CapacityLimiter(1)``), never on the event loop; ``wait`` wakes at once on a decision made
  through the same facade and polls the file (every ``poll`` seconds, default 0.5) for decisions
  made by other processes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import anyio
import anyio.to_thread

from toolcrib.errors import Forbidden, ToolcribError
from toolcrib.gateway.trust.identity import KINDS

if TYPE_CHECKING:
    from toolcrib.gateway.trust.secrets import Redactor

T = TypeVar("T")
Status = Literal["pending", "approved", "denied", "expired", "used"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, principal TEXT NOT NULL, tool TEXT NOT NULL, args_hash TEXT NOT NULL,
    arguments TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    decided REAL, approver TEXT, used REAL, rule TEXT, note TEXT
);
CREATE INDEX IF NOT EXISTS approvals_binding ON approvals (principal, tool, args_hash, status);
"""
_ADDED_COLUMNS = ("rule", "note")
"""Columns later versions added; :class:`ApprovalStore` adds them to a file created before."""
BUSY_TIMEOUT_MS = 5000
"""How long one SQLite statement waits for another process's write lock (on the worker thread)."""


class ApprovalError(ToolcribError):
    """An approval cannot be found or is no longer pending."""


class ApprovalDenied(Forbidden):
    """An operator denied the call, or its approval request expired."""


@dataclass(frozen=True)
class Approval:
    """One approval request. ``principal`` is a ``KIND:SUBJECT`` id; ``tool`` the target key;
    ``arguments`` are redacted, for the operator to read; times are Unix seconds; ``rule`` is the
    id of the policy rule that asked for approval; ``note`` the deciding operator's note."""

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
    rule: str | None = None
    note: str | None = None


def args_hash(arguments: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no whitespace) of ``arguments``."""
    text = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def typed_id(principal_id: str) -> str:
    """``principal_id`` itself if it is ``KIND:SUBJECT`` with a known kind; else :class:`ValueError`
    (a bare name such as ``agent`` would let two kinds of caller share an approval)."""
    kind, sep, subject = principal_id.partition(":")
    if not sep or kind not in KINDS or not subject:
        raise ValueError(f"approvals bind a typed principal id (KIND:SUBJECT), not {principal_id!r}")
    return principal_id


class ApprovalStore:
    """Approval requests in ``path``; several processes may open the same file.

    Thread-safe (one lock around one connection), but every method blocks on SQLite for up to
    :data:`BUSY_TIMEOUT_MS` while another process writes: call it from a worker thread or the CLI,
    and use :class:`AsyncApprovals` from async code.
    """

    def __init__(self, path: str | os.PathLike[str], redactor: Redactor | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        _owner_only(self.path)
        self._redactor = redactor
        self._lock = threading.Lock()
        self._closed = False
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        for suffix in ("-wal", "-shm"):  # SQLite gives them the database file's mode; tighten old ones
            _owner_only(Path(f"{self.path}{suffix}"))

    def _migrate(self) -> None:
        """Create the table, or add the columns a file from an older version lacks (under a write lock)."""
        if set(_ADDED_COLUMNS) <= self._columns():
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            have = self._columns()
            for column in _ADDED_COLUMNS:
                if column not in have:
                    self._db.execute(f"ALTER TABLE approvals ADD COLUMN {column} TEXT")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _columns(self) -> set[str]:
        return {r["name"] for r in self._db.execute("PRAGMA table_info(approvals)")}

    def close(self) -> None:
        """Close the connection; later calls fail. Safe to call twice."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def request(
        self, principal: str, tool: str, arguments: Mapping[str, Any], ttl: float, rule: str | None = None
    ) -> Approval:
        """A pending approval for this exact call (``ttl`` seconds to be decided and used): the
        existing one if still pending, else a new one recording ``rule``. ``principal`` must be a
        typed id (:func:`typed_id`)."""
        principal = typed_id(principal)
        digest = args_hash(arguments)
        now = time.time()
        with self._lock:
            self._expire(now)
            row = self._db.execute(
                "SELECT * FROM approvals WHERE principal = ? AND tool = ? AND args_hash = ? "
                "AND status = 'pending' AND expires > ? ORDER BY created DESC LIMIT 1",
                (principal, tool, digest, now),
            ).fetchone()
            if row is not None:
                return _approval(row, now)
            shown = self._redactor.scrub_json(dict(arguments)) if self._redactor else dict(arguments)
            while True:
                approval_id = secrets.token_hex(5)
                try:
                    row = self._db.execute(
                        "INSERT INTO approvals (id, principal, tool, args_hash, arguments, status, created, expires,"
                        " rule) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?) RETURNING *",
                        (approval_id, principal, tool, digest, json.dumps(shown), now, now + ttl, rule),
                    ).fetchone()
                    return _approval(row, now)
                except sqlite3.IntegrityError:
                    continue

    def get(self, approval_id: str) -> Approval:
        """The approval with this id; :class:`ApprovalError` when there is none. Read-only."""
        with self._lock:
            row = self._db.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            raise ApprovalError(f"no approval {approval_id!r}; run `toolcrib approvals list` to see them")
        return _approval(row, time.time())

    def status(self, approval_id: str) -> Status:
        """The current status of one approval (``expired`` once past its expiry); read-only, so it
        does not wait for another process's write lock. :class:`ApprovalError` when there is none."""
        with self._lock:
            row = self._db.execute("SELECT status, expires FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            raise ApprovalError(f"no approval {approval_id!r}; run `toolcrib approvals list` to see them")
        return _effective(row["status"], row["expires"], time.time())

    def list(self, status: str | None = None) -> list[Approval]:
        """Approvals, newest first; only those with ``status`` when given. Read-only."""
        now = time.time()
        with self._lock:
            rows = self._db.execute("SELECT * FROM approvals ORDER BY created DESC").fetchall()
        items = [_approval(r, now) for r in rows]
        return items if status is None else [a for a in items if a.status == status]

    def approve(self, approval_id: str, approver: str, note: str | None = None) -> Approval:
        """Approve a pending request, recording ``approver`` and ``note``; :class:`ApprovalError`
        if it is not pending any more."""
        return self._decide(approval_id, "approved", approver, note)

    def deny(self, approval_id: str, approver: str, note: str | None = None) -> Approval:
        """Deny a pending request, recording ``approver`` and ``note``; :class:`ApprovalError` if
        it is not pending any more."""
        return self._decide(approval_id, "denied", approver, note)

    def _decide(self, approval_id: str, status: Status, approver: str, note: str | None) -> Approval:
        now = time.time()
        with self._lock:
            self._expire(now)
            row = self._db.execute(
                "UPDATE approvals SET status = ?, decided = ?, approver = ?, note = ?"
                " WHERE id = ? AND status = 'pending' AND expires > ? RETURNING *",
                (status, now, approver, note, approval_id, now),
            ).fetchone()
        if row is None:
            current = self.get(approval_id)
            raise ApprovalError(f"approval {approval_id} is {current.status}, not pending; nothing changed")
        return _approval(row, now)

    def consume(self, principal: str, tool: str, arguments: Mapping[str, Any]) -> Approval | None:
        """Use up one approved, unexpired approval for exactly this call by exactly this typed
        principal id; None when there is none."""
        principal = typed_id(principal)
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "UPDATE approvals SET status = 'used', used = ? WHERE id = ("
                " SELECT id FROM approvals WHERE principal = ? AND tool = ? AND args_hash = ?"
                " AND status = 'approved' AND expires > ? ORDER BY created LIMIT 1"
                ") RETURNING *",
                (now, principal, tool, args_hash(arguments), now),
            ).fetchone()
        return _approval(row, now) if row is not None else None

    async def wait(self, approval_id: str, timeout: float, poll: float = 0.2) -> Status:
        """Deprecated: use :meth:`AsyncApprovals.wait`. Polls :meth:`status` off the event loop
        until the request leaves ``pending`` or ``timeout`` seconds pass; returns the status then."""
        deadline = time.monotonic() + timeout
        while True:
            status = await anyio.to_thread.run_sync(self.status, approval_id)
            if status != "pending" or time.monotonic() >= deadline:
                return status
            await anyio.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def _expire(self, now: float) -> None:
        self._db.execute(
            "UPDATE approvals SET status = 'expired' WHERE status IN ('pending', 'approved') AND expires <= ?",
            (now,),
        )


class AsyncApprovals:
    """The gateway's face of an :class:`ApprovalStore`: the same operations, each run on one worker
    thread at a time so that neither a held call nor a busy file ever blocks the event loop.

    ``poll`` (seconds) is how often :meth:`wait` re-reads the file for decisions made by another
    process (``toolcrib approvals approve``); a decision made through this object wakes waiters at
    once. Errors are those of :class:`ApprovalStore`.
    """

    def __init__(self, store: ApprovalStore, *, poll: float = 0.5) -> None:
        self.store = store
        self.poll = poll
        self._limiter: anyio.CapacityLimiter | None = None
        self._waiters: dict[str, set[anyio.Event]] = {}

    async def _run(self, func: Callable[[], T]) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(func, limiter=self._limiter)

    async def request(
        self, principal_id: str, target: str, arguments: Mapping[str, Any], ttl: float, rule: str | None = None
    ) -> Approval:
        """See :meth:`ApprovalStore.request`."""
        return await self._run(functools.partial(self.store.request, principal_id, target, arguments, ttl, rule))

    async def consume(self, principal_id: str, target: str, arguments: Mapping[str, Any]) -> Approval | None:
        """See :meth:`ApprovalStore.consume`."""
        return await self._run(functools.partial(self.store.consume, principal_id, target, arguments))

    async def get(self, approval_id: str) -> Approval:
        """See :meth:`ApprovalStore.get`."""
        return await self._run(functools.partial(self.store.get, approval_id))

    async def list(self, status: str | None = None) -> list[Approval]:
        """See :meth:`ApprovalStore.list`."""
        return await self._run(functools.partial(self.store.list, status))

    async def approve(self, approval_id: str, approver_id: str, note: str | None = None) -> Approval:
        """See :meth:`ApprovalStore.approve`; wakes this process's waiters on ``approval_id``."""
        approval = await self._run(functools.partial(self.store.approve, approval_id, approver_id, note))
        self._wake(approval_id)
        return approval

    async def deny(self, approval_id: str, approver_id: str, note: str | None = None) -> Approval:
        """See :meth:`ApprovalStore.deny`; wakes this process's waiters on ``approval_id``."""
        approval = await self._run(functools.partial(self.store.deny, approval_id, approver_id, note))
        self._wake(approval_id)
        return approval

    async def wait(self, approval_id: str, timeout: float) -> Status:
        """Wait until approval ``approval_id`` leaves ``pending`` or ``timeout`` seconds pass; return
        its status then (``pending`` on timeout). :class:`ApprovalError` if there is no such id."""
        deadline = anyio.current_time() + timeout
        event = anyio.Event()
        self._waiters.setdefault(approval_id, set()).add(event)
        try:
            while True:
                status = await self._run(functools.partial(self.store.status, approval_id))
                remaining = deadline - anyio.current_time()
                if status != "pending" or remaining <= 0:
                    return status
                with anyio.move_on_after(min(self.poll, remaining)):
                    await event.wait()
                if event.is_set():  # woken by a decision here (which dropped it): re-read at once
                    event = anyio.Event()
                    self._waiters.setdefault(approval_id, set()).add(event)
        finally:
            waiters = self._waiters.get(approval_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[approval_id]

    def _wake(self, approval_id: str) -> None:
        for event in self._waiters.pop(approval_id, set()):
            event.set()

    def close(self) -> None:
        """Close the underlying store."""
        self.store.close()


def _owner_only(path: Path) -> None:
    """Make an existing file 0600 (no-op if it is missing or already so)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode != 0o600:
        os.chmod(path, 0o600)


def _effective(status: str, expires: float, now: float) -> Status:
    if status in ("pending", "approved") and expires <= now:
        return "expired"
    return cast(Status, status)


def _approval(row: sqlite3.Row, now: float) -> Approval:
    data = dict(row)
    data["arguments"] = json.loads(data["arguments"])
    data["status"] = _effective(data["status"], data["expires"], now)
    return Approval(**data)
