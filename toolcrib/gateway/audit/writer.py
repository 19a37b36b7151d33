"""Audit writes with group commit, on the event loop.

Every forwarded call writes ONE row: a ``call`` row, awaited (:meth:`AuditWriter.append`) so the
call is forwarded only once its row is committed (a crash cannot lose a call that was made), and
later its :class:`~toolcrib.gateway.audit.events.Completion` (the outcome written into that row in
place), queued (:meth:`AuditWriter.submit`): the answer does not wait for it. Rows and
completions are gathered and written in one transaction per batch (the inserts, then the updates;
no extra commit per call):

- a batch holding an awaited item is written at the end of the current turn of the event loop
  (``call_soon``), so every call row that arrived in the same turn (64 concurrent calls) shares one
  commit;
- a batch of queued items only waits up to ``LINGER`` (5 ms) for company, usually the next call's
  row, so one commit serves both.

The write runs on the loop's own thread: with WAL and ``synchronous=NORMAL`` a commit is a few
``write`` calls and no ``fsync`` (about 50 us for a small batch here), cheaper than handing rows to
a thread and waking the loop back (two context switches and the GIL per call). It never waits for a
lock there: when another writer holds the database (another process, ``toolcrib audit prune``) the
batch goes to a worker thread, which waits up to the log's ``busy_timeout``, and later batches queue
behind it so the chain keeps its order; the loop serves everything else meanwhile. Called outside
the loop's thread (or with no loop running), :meth:`submit` hands the row to the loop, or writes it
at once when there is none. :meth:`close` flushes what is left.

One entry that cannot be recorded because of what it holds (the log raises
:class:`~toolcrib.gateway.audit.events.AuditRowError`, e.g. a value the database refuses) fails
only its own call: the batch, rolled back, is written again entry by entry, that entry's waiter
gets the error (a queued one is logged at ERROR) and every other entry is committed. Text is never
such a case: lone surrogates and NUL are stored escaped (:mod:`~toolcrib.gateway.audit.text`).

A log whose appends block on the network (``blocking_io``: the PostgreSQL log, where a commit is a
round trip) is never written on the loop: every batch goes to the worker thread, one at a time, and
rows that arrive meanwhile (awaited or queued) gather into the next batch, written as soon as the
one in flight commits. Awaited rows are still settled only once committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from toolcrib.errors import AuditBusy, AuditError
from toolcrib.gateway.audit.events import AuditEvent, AuditRowError, Completion
from toolcrib.gateway.audit.text import storable

log = logging.getLogger("toolcrib.audit")

Entry = AuditEvent | Completion
"""What the writer batches: a row to insert, or the completion of a ``call`` row."""
_Item = tuple[Entry, "asyncio.Future[int] | None"]
_Result = int | Exception | None
"""What writing one item gave: its seq (a completion's: its row's), or the error that failed it alone."""
MAX_BATCH = 512
"""Rows written in one transaction at most; a bigger backlog is written in several."""
LINGER = 0.005
"""Seconds a batch of queued-only items waits for company (usually the next call's row), so one
commit serves both: at most this much of queued completions is in memory only."""


class BatchLog(Protocol):
    """What the writer needs of a log (both backends in :mod:`toolcrib.gateway.audit.backends`)."""

    @property
    def blocking_io(self) -> bool:
        """True when an append may block on the network: the writer then never runs it on the loop."""
        ...

    def append_many(
        self, events: Sequence[AuditEvent], *, wait: bool = True, completions: Sequence[Completion] = ()
    ) -> list[int]: ...


class AuditWriter:
    """Batches rows for an audit log and commits each batch in one transaction."""

    def __init__(self, sink: BatchLog) -> None:
        self.sink = sink
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: concurrent.futures.Future[list[_Result]] | None = None
        self._idle: list[asyncio.Future[None]] = []
        """:meth:`flush` callers waiting for the batches in flight and queued to be written."""
        self._batch: list[_Item] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()
        self._now: asyncio.Handle | None = None
        self._later: asyncio.TimerHandle | None = None
        self._offloop = False
        """A batch is being written by a worker thread (the database was locked): later ones wait."""
        self._closed = False

    @property
    def queued(self) -> int:
        """Rows waiting to be written (not yet handed to the log): the ``/metrics`` queue depth."""
        return len(self._batch)

    async def append(self, event: Entry) -> int:
        """Write ``event`` (a row, or a :class:`Completion`) and return its sequence number once it
        is committed.

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
        if self._closed:
            return
        self._flush()
        if self._offloop or self._batch:
            idle: asyncio.Future[None] = self._bind().create_future()
            self._idle.append(idle)
            await idle

    def submit(self, event: Entry) -> None:
        """Queue ``event`` (a row, or a :class:`Completion`); it is committed with the next batch
        (within ``LINGER``)."""
        if self._closed:
            if isinstance(event, Completion):
                log.error("audit completion dropped after close: row %d %s", event.seq, event.outcome)
            else:
                log.error(
                    "audit event dropped after close: %s %s %s", event.kind, event.method, event.tool or event.target
                )
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
        if self._inflight is not None:  # let the batch in the worker commit first: the chain keeps its order
            concurrent.futures.wait([self._inflight])
        self._loop = None  # from here on a batch waits for the lock where it is: nothing else is served
        self._offloop = False
        self._flush()
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False)

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
            write = _writer(self.sink, batch)
            if self.sink.blocking_io and self._loop is not None:
                self._offload(batch, write)
                break
            try:
                seqs = write(self._loop is None)
            except AuditBusy:
                self._offload(batch, write)
            except Exception as exc:  # reported to every waiter; queued-only rows are logged
                self._settle(batch, None, exc)
            else:
                self._settle(batch, seqs, None)
        if not self._offloop and not self._batch:
            idle, self._idle = self._idle, []
            for waiter in idle:
                if not waiter.done():
                    waiter.set_result(None)

    def _offload(self, batch: list[_Item], write: functools.partial[list[_Result]]) -> None:
        """Write ``batch`` (with ``write``) in a worker thread that may wait for the lock; flush the rest after it."""
        loop = self._loop
        assert loop is not None
        self._offloop = True
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self._inflight = self._executor.submit(write, True)
        done = asyncio.wrap_future(self._inflight, loop=loop)

        def finished(fut: asyncio.Future[list[_Result]]) -> None:
            self._offloop, self._inflight = False, None
            error = fut.exception()
            self._settle(batch, None if error else list(fut.result()), error)
            if not self._closed:
                self._flush()

        done.add_done_callback(finished)

    def _settle(self, batch: list[_Item], seqs: list[_Result] | None, error: BaseException | None) -> None:
        if error is not None:
            log.error("audit write failed for %d events: %s", len(batch), error)
        for i, (entry, fut) in enumerate(batch):
            seq = seqs[i] if seqs is not None and error is None else None
            if isinstance(seq, Exception):
                log.error("audit write failed for %s (the rest of its batch was written): %s", _what(entry), seq)
            if fut is None or fut.done():
                continue
            if isinstance(seq, Exception):
                fut.set_exception(seq)
            elif error is not None or seqs is None:
                fut.set_exception(error or AuditError("the audit write failed"))
            else:
                fut.set_result(seq if seq is not None else 0)


def _writer(sink: BatchLog, batch: list[_Item]) -> functools.partial[list[_Result]]:
    """``write(wait) -> seqs``: the batch's rows and completions in one ``append_many``; the result
    has one entry per item (a completion's is its row's seq)."""
    events = [e for e, _ in batch if isinstance(e, AuditEvent)]
    completions = [e for e, _ in batch if isinstance(e, Completion)]
    return functools.partial(_write, sink, batch, events, completions)


def _write(
    sink: BatchLog, batch: list[_Item], events: list[AuditEvent], completions: list[Completion], wait: bool
) -> list[_Result]:
    """The batch in one transaction; when one of its entries cannot be recorded
    (:class:`AuditRowError`, which rolls the whole transaction back), each entry alone, in order,
    so that entry fails only its own call and every other one is written. The entry-by-entry
    writes wait for the lock (after the failed attempt had it, a wait is unlikely); an error that
    is not about one entry (disk, connection) fails that entry and every later one without
    trying them."""
    try:
        return _write_all(sink, batch, events, completions, wait)
    except AuditRowError:
        if len(batch) == 1:
            raise
    out: list[_Result] = []
    for i, item in enumerate(batch):
        entry = item[0]
        alone = ([entry], []) if isinstance(entry, AuditEvent) else ([], [entry])
        try:
            out.extend(_write_all(sink, [item], *alone, True))
        except AuditRowError as exc:
            out.append(exc)
        except Exception as exc:  # the log itself failed: nothing later is tried
            out.extend([exc] * (len(batch) - i))
            break
    return out


def _write_all(
    sink: BatchLog, batch: list[_Item], events: list[AuditEvent], completions: list[Completion], wait: bool
) -> list[_Result]:
    more = {"completions": completions} if completions else {}
    seqs = iter(sink.append_many(events, wait=wait, **more))
    return [e.seq if isinstance(e, Completion) else next(seqs) for e, _ in batch]


def _what(entry: Entry) -> str:
    if isinstance(entry, Completion):
        return f"the completion of row {entry.seq} ({storable(str(entry.outcome))})"
    return storable(f"a {entry.kind} row ({entry.method} {entry.tool or entry.target or ''})")
