"""Audit writes with group commit, on the event loop.

Every call writes two rows: an *attempt* row, awaited (:meth:`AuditWriter.append`) so the call is
forwarded only once its row is committed (a crash cannot lose a call that was made), and an
*outcome* row, queued (:meth:`AuditWriter.submit`). Rows are gathered and written in one SQLite
transaction per batch:

- a batch holding an awaited row is written at the end of the current turn of the event loop
  (``call_soon``), so every attempt that arrived in the same turn (64 concurrent calls) shares one
  commit;
- a batch of queued rows only waits up to ``LINGER`` (5 ms) for company, usually the next call's
  attempt row, so one commit serves both.

The write runs on the loop's own thread: with WAL and ``synchronous=NORMAL`` a commit is a few
``write`` calls and no ``fsync`` (about 50 us for a small batch here), cheaper than handing rows to
a thread and waking the loop back (two context switches and the GIL per call). It never waits for a
lock there: when another writer holds the database (another process, ``toolcrib audit prune``) the
batch goes to a worker thread, which waits up to the log's ``busy_timeout``, and later batches queue
behind it so the chain keeps its order; the loop serves everything else meanwhile. Called outside
the loop's thread (or with no loop running), :meth:`submit` hands the row to the loop, or writes it
at once when there is none. :meth:`close` flushes what is left.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from toolcrib.errors import AuditBusy, AuditError
from toolcrib.gateway.audit.log import AuditEvent, SqliteAuditLog

log = logging.getLogger("toolcrib.audit")

_Item = tuple[AuditEvent, "asyncio.Future[int] | None"]
MAX_BATCH = 512
"""Rows written in one transaction at most; a bigger backlog is written in several."""
LINGER = 0.005
"""Seconds a batch of queued-only rows waits for company (usually the next call's attempt row),
so one commit serves both: at most this much of outcome rows is in memory only."""


class AuditWriter:
    """Batches rows for a :class:`SqliteAuditLog` and commits each batch in one transaction."""

    def __init__(self, sink: SqliteAuditLog) -> None:
        self.sink = sink
        self._batch: list[_Item] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()
        self._now: asyncio.Handle | None = None
        self._later: asyncio.TimerHandle | None = None
        self._offloop = False
        """A batch is being written by a worker thread (the database was locked): later ones wait."""
        self._closed = False

    async def append(self, event: AuditEvent) -> int:
        """Write ``event`` and return its sequence number once it is committed.

        Raises :class:`AuditError` when the log is closed or the write failed (the call must not
        then be made)."""
        if self._closed:
            raise AuditError("the audit log is closed; the call was not made")
        loop = self._bind()
        fut: asyncio.Future[int] = loop.create_future()
        self._batch.append((event, fut))
        if self._now is None:
            self._now = loop.call_soon(self._flush)
        return await fut

    async def flush(self) -> None:
        """Return once everything queued before this call is committed (readers call it first)."""
        if not self._closed:
            self._flush()

    def submit(self, event: AuditEvent) -> None:
        """Queue ``event``; it is committed with the next batch (within ``LINGER``)."""
        if self._closed:
            log.error("audit event dropped after close: %s %s %s", event.kind, event.method, event.tool or event.target)
            return
        loop = self._loop
        if loop is not None and threading.get_ident() != self._thread:
            loop.call_soon_threadsafe(self.submit, event)
            return
        if loop is None:
            try:
                loop = self._bind()
            except RuntimeError:  # no event loop: nothing to batch with, write it now
                self._batch.append((event, None))
                self._flush()
                return
        self._batch.append((event, None))
        if self._now is None and self._later is None:
            self._later = loop.call_later(LINGER, self._flush)

    def close(self) -> None:
        """Flush every queued event (waiting for the lock if another writer holds it); later appends
        are refused and later submits logged and dropped."""
        if self._closed:
            return
        self._loop = None  # from here on a batch waits for the lock where it is: nothing else is served
        self._offloop = False
        self._flush()
        self._closed = True

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._thread = loop, threading.get_ident()
        return loop

    def _flush(self) -> None:
        if self._now is not None:
            self._now.cancel()
            self._now = None
        if self._later is not None:
            self._later.cancel()
            self._later = None
        while self._batch and not self._offloop:
            batch, self._batch = self._batch[:MAX_BATCH], self._batch[MAX_BATCH:]
            events = [event for event, _ in batch]
            try:
                seqs: list[int | None] = list(self.sink.append_many(events, wait=self._loop is None))
            except AuditBusy:
                self._offload(batch, events)
            except Exception as exc:  # reported to every waiter; queued-only rows are logged
                self._settle(batch, None, exc)
            else:
                self._settle(batch, seqs, None)

    def _offload(self, batch: list[_Item], events: list[AuditEvent]) -> None:
        """Write ``batch`` (its ``events``) in a worker thread that may wait for the lock; flush the rest after it."""
        loop = self._loop
        assert loop is not None
        self._offloop = True
        done = loop.run_in_executor(None, lambda: self.sink.append_many(events))

        def finished(fut: asyncio.Future[list[int]]) -> None:
            self._offloop = False
            error = fut.exception()
            self._settle(batch, None if error else list(fut.result()), error)
            if self._batch and not self._closed:
                self._flush()

        done.add_done_callback(finished)

    def _settle(self, batch: list[_Item], seqs: list[int | None] | None, error: BaseException | None) -> None:
        if error is not None:
            log.error("audit write failed for %d events: %s", len(batch), error)
        for i, (_, fut) in enumerate(batch):
            if fut is None or fut.done():
                continue
            if error is not None or seqs is None:
                fut.set_exception(error or AuditError("the audit write failed"))
            else:
                seq = seqs[i]
                fut.set_result(seq if seq is not None else 0)
