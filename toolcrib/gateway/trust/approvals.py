"""Human approvals, held outside the model's reach: a SQLite file shared with the CLI (the embedded
default), or PostgreSQL shared by every replica (:mod:`toolcrib.gateway.trust.approvals_pg`).

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

Faces (:func:`open_approvals` picks the store from the config):

- :class:`ApprovalStore`: synchronous, over one SQLite file (created 0600, like its WAL and
  shared-memory files), for the CLI and for code already on a worker thread.
- :class:`~toolcrib.gateway.trust.approvals_pg.PgApprovalStore`: the same interface and semantics
  over PostgreSQL; a decision NOTIFYs ``toolcrib_approvals`` (payload: the id) when it commits.
- :class:`AsyncApprovals`: what the gateway uses. Store calls run on worker threads (one at a time
  for SQLite, up to the pool size for PostgreSQL: the store's ``concurrency``), never on the event
  loop; ``wait`` wakes at once on a decision made through the same facade or, given a
  :class:`~toolcrib.storage.postgres.Listener`, announced by any replica, and otherwise re-reads the
  status every ``poll`` seconds (0.5; 5 as a safety net while the listener is connected).
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
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

import anyio
import anyio.to_thread

from toolcrib.errors import Forbidden, ToolcribError
from toolcrib.gateway.trust.identity import KINDS

if TYPE_CHECKING:
    from toolcrib.config import Config
    from toolcrib.gateway.trust.approvals_pg import PgApprovalStore
    from toolcrib.gateway.trust.secrets import Redactor
    from toolcrib.storage.postgres import Database, Listener

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
CHANNEL = "toolcrib_approvals"
"""The NOTIFY channel a PostgreSQL decision is announced on; payload: the approval id."""


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


class ApprovalBackend(Protocol):
    """What :class:`AsyncApprovals` needs of a store (:class:`ApprovalStore` and ``PgApprovalStore``)."""

    concurrency: int
    """How many calls may run at once on worker threads."""

    def request(
        self, principal: str, tool: str, arguments: Mapping[str, Any], ttl: float, rule: str | None = None
    ) -> Approval: ...
    def get(self, approval_id: str) -> Approval: ...
    def status(self, approval_id: str) -> Status: ...
    def list(self, status: str | None = None) -> list[Approval]: ...
    def approve(self, approval_id: str, approver: str, note: str | None = None) -> Approval: ...
    def deny(self, approval_id: str, approver: str, note: str | None = None) -> Approval: ...
    def consume(self, principal: str, tool: str, arguments: Mapping[str, Any]) -> Approval | None: ...
    def close(self) -> None: ...


class StoreBase:
    """The store logic both backends share; a backend supplies ``_decide`` and ``get``."""

    def _decide(self, approval_id: str, status: Status, approver: str, note: str | None) -> Approval:
        raise NotImplementedError

    def get(self, approval_id: str) -> Approval:
        raise NotImplementedError

    def approve(self, approval_id: str, approver: str, note: str | None = None) -> Approval:
        """Approve a pending request, recording ``approver`` and ``note``; :class:`ApprovalError`
        if it is not pending any more."""
        return self._decide(approval_id, "approved", approver, note)

    def deny(self, approval_id: str, approver: str, note: str | None = None) -> Approval:
        """Deny a pending request, recording ``approver`` and ``note``; :class:`ApprovalError` if
        it is not pending any more."""
        return self._decide(approval_id, "denied", approver, note)

    def _not_pending(self, approval_id: str) -> ApprovalError:
        """The error for a decision that changed nothing (reads the current status)."""
        current = self.get(approval_id)
        return ApprovalError(f"approval {approval_id} is {current.status}, not pending; nothing changed")


class ApprovalStore(StoreBase):
    """Approval requests in ``path``; several processes may open the same file.

    Thread-safe (one lock around one connection), but every method blocks on SQLite for up to
    :data:`BUSY_TIMEOUT_MS` while another process writes: call it from a worker thread or the CLI,
    and use :class:`AsyncApprovals` from async code.
    """

    concurrency = 1
    """One connection behind one lock: :class:`AsyncApprovals` runs one call at a time."""

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
        principal, digest, now = typed_id(principal), args_hash(arguments), time.time()
        shown = shown_arguments(self._redactor, arguments)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # the look-up and the insert under one write lock
            try:
                self._db.execute(EXPIRE_SQL.replace("%s", "?"), (now,))
                row = self._db.execute(PENDING_SQL.replace("%s", "?"), (principal, tool, digest, now)).fetchone()
                while row is None:
                    values = (new_id(), principal, tool, digest, shown, now, now + ttl, rule)
                    row = self._db.execute(INSERT_SQL.replace("%s", "?"), values).fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return row_approval(row, now)

    def get(self, approval_id: str) -> Approval:
        """The approval with this id; :class:`ApprovalError` when there is none. Read-only."""
        with self._lock:
            row = self._db.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            raise missing(approval_id)
        return row_approval(row, time.time())

    def status(self, approval_id: str) -> Status:
        """The current status of one approval (``expired`` once past its expiry); read-only, so it
        does not wait for another process's write lock. :class:`ApprovalError` when there is none."""
        with self._lock:
            row = self._db.execute("SELECT status, expires FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            raise missing(approval_id)
        return effective(row["status"], row["expires"], time.time())

    def list(self, status: str | None = None) -> list[Approval]:
        """Approvals, newest first; only those with ``status`` when given. Read-only."""
        now = time.time()
        with self._lock:
            rows = self._db.execute("SELECT * FROM approvals ORDER BY created DESC").fetchall()
        return select([row_approval(r, now) for r in rows], status)

    def _decide(self, approval_id: str, status: Status, approver: str, note: str | None) -> Approval:
        now = time.time()
        with self._lock:
            self._db.execute(EXPIRE_SQL.replace("%s", "?"), (now,))
            row = self._db.execute(
                DECIDE_SQL.replace("%s", "?"), (status, now, approver, note, approval_id, now)
            ).fetchone()
        if row is None:
            raise self._not_pending(approval_id)
        return row_approval(row, now)

    def consume(self, principal: str, tool: str, arguments: Mapping[str, Any]) -> Approval | None:
        """Use up one approved, unexpired approval for exactly this call by exactly this typed
        principal id; None when there is none. Atomic: one statement under SQLite's write lock."""
        principal, now = typed_id(principal), time.time()
        with self._lock:
            row = self._db.execute(
                CONSUME_SQL.format(lock="").replace("%s", "?"), (now, principal, tool, args_hash(arguments), now)
            ).fetchone()
        return row_approval(row, now) if row is not None else None


# The statements both backends run (PostgreSQL placeholders; SQLite replaces %s with ?).
EXPIRE_SQL = "UPDATE approvals SET status = 'expired' WHERE status IN ('pending', 'approved') AND expires <= %s"
PENDING_SQL = (
    "SELECT * FROM approvals WHERE principal = %s AND tool = %s AND args_hash = %s"
    " AND status = 'pending' AND expires > %s ORDER BY created DESC LIMIT 1"
)
INSERT_SQL = (
    "INSERT INTO approvals (id, principal, tool, args_hash, arguments, status, created, expires, rule)"
    " VALUES (%s, %s, %s, %s, %s, 'pending', %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING *"
)
DECIDE_SQL = (
    "UPDATE approvals SET status = %s, decided = %s, approver = %s, note = %s"
    " WHERE id = %s AND status = 'pending' AND expires > %s RETURNING *"
)
CONSUME_SQL = (
    "UPDATE approvals SET status = 'used', used = %s WHERE status = 'approved' AND id = ("
    " SELECT id FROM approvals WHERE principal = %s AND tool = %s AND args_hash = %s"
    " AND status = 'approved' AND expires > %s ORDER BY created LIMIT 1{lock}"
    ") RETURNING *"
)
"""``{lock}``: empty for SQLite (one writer), ``FOR UPDATE SKIP LOCKED`` for PostgreSQL."""


class AsyncApprovals:
    """The gateway's face of a store (:class:`ApprovalStore` or ``PgApprovalStore``): the same
    operations, run on worker threads (at most ``store.concurrency`` at once) so that neither a held
    call nor a busy database ever blocks the event loop.

    ``listener`` (PostgreSQL): subscribe to :data:`CHANNEL`, so a decision made on any replica wakes
    this one's waiters on that id at once; a re-made LISTEN connection wakes every waiter to
    re-read. ``poll`` (seconds) is how often :meth:`wait` re-reads the status otherwise (decisions
    by another process on SQLite, or while the listener is disconnected); ``safety_poll`` (seconds)
    replaces it while the listener is connected. A decision made through this object wakes its
    waiters at once. Errors are those of the store.
    """

    def __init__(
        self,
        store: ApprovalBackend,
        listener: Listener | None = None,
        *,
        poll: float = 0.5,
        safety_poll: float = 5.0,
    ) -> None:
        self.store = store
        self.listener = listener
        self.poll = poll
        self.safety_poll = safety_poll
        self._limiter: anyio.CapacityLimiter | None = None
        self._waiters: dict[str, set[anyio.Event]] = {}
        if listener is not None:
            listener.subscribe(CHANNEL, self._wake, self._wake_all)

    async def _run(self, func: Callable[[], T]) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(max(1, self.store.concurrency))
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
        self._waiters.setdefault(approval_id, set()).add(event)  # before the first read: no wake-up is lost
        try:
            first = await self.get(approval_id)
            status, expires = first.status, first.expires
            while True:
                remaining = deadline - anyio.current_time()
                if status != "pending" or remaining <= 0:
                    return status
                interval = self.safety_poll if self.listener is not None and self.listener.connected else self.poll
                until_expiry = max(0.0, expires - time.time()) + 0.01  # notice the expiry without a poll
                with anyio.move_on_after(min(interval, remaining, until_expiry)):
                    await event.wait()
                if event.is_set():  # woken (which dropped it): re-register before the re-read
                    event = anyio.Event()
                    self._waiters.setdefault(approval_id, set()).add(event)
                status = await self._run(functools.partial(self.store.status, approval_id))
        finally:
            waiters = self._waiters.get(approval_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[approval_id]

    def _wake(self, approval_id: str) -> None:
        for event in self._waiters.pop(approval_id, set()):
            event.set()

    def _wake_all(self) -> None:
        for approval_id in list(self._waiters):
            self._wake(approval_id)

    def close(self) -> None:
        """Close the underlying store."""
        self.store.close()


def open_approvals(config: Config, db: Database | None, redactor: Redactor | None) -> ApprovalStore | PgApprovalStore:
    """The configured store: PostgreSQL over ``db`` (an opened, migrated :class:`Database`; up to
    ``[storage] pool_size`` calls at once), else the SQLite file ``[policy] approvals_path``."""
    if db is None:
        return ApprovalStore(config.policy.approvals_path, redactor=redactor)
    from toolcrib.gateway.trust.approvals_pg import PgApprovalStore

    return PgApprovalStore(db, redactor=redactor, concurrency=config.storage.pool_size)


def missing(approval_id: str) -> ApprovalError:
    """The error for an unknown id."""
    return ApprovalError(f"no approval {approval_id!r}; run `toolcrib approvals list` to see them")


def new_id() -> str:
    """A fresh approval id: 10 hex digits (retried on the rare collision)."""
    return secrets.token_hex(5)


def shown_arguments(redactor: Redactor | None, arguments: Mapping[str, Any]) -> str:
    """The JSON text stored for the operator: ``arguments`` with secrets redacted."""
    return json.dumps(redactor.scrub_json(dict(arguments)) if redactor else dict(arguments))


def select(items: list[Approval], status: str | None) -> list[Approval]:
    """``items`` with ``status`` (the effective one, so ``expired`` finds lapsed requests), or all."""
    return items if status is None else [a for a in items if a.status == status]


def _owner_only(path: Path) -> None:
    """Make an existing file 0600 (no-op if it is missing or already so)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode != 0o600:
        os.chmod(path, 0o600)


def effective(status: str, expires: float, now: float) -> Status:
    """``status`` as seen at ``now``: a pending or approved request past ``expires`` is ``expired``."""
    if status in ("pending", "approved") and expires <= now:
        return "expired"
    return cast(Status, status)


def row_approval(row: sqlite3.Row | Mapping[str, Any], now: float) -> Approval:
    """An :class:`Approval` from a table row (SQLite or PostgreSQL, same columns)."""
    data = dict(row)
    data["arguments"] = json.loads(data["arguments"])
    data["status"] = effective(data["status"], data["expires"], now)
    return Approval(**data)
