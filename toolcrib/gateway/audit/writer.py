"""Audit writes off the event loop, with group commit.

The dispatch path must not wait on SQLite while holding the loop: every call writes two rows.
:class:`AuditWriter` hands events to one writer thread, which commits whatever has queued up in a
single transaction (so 64 concurrent calls cost one commit, not 64). An *attempt* row is awaited
(:meth:`AuditWriter.append`): the call is forwarded only once its row is on disk, so a crash
cannot lose a call that was made. Outcome and search rows are queued (:meth:`AuditWriter.submit`)
and committed within ``LINGER`` (5 ms), usually together with the next attempt row;
:meth:`AuditWriter.close` flushes what is left.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading

from toolcrib.errors import AuditError
from toolcrib.gateway.audit.log import AuditEvent, SqliteAuditLog

log = logging.getLogger("toolcrib.audit")

_Item = tuple["AuditEvent | None", "asyncio.Future[int] | None"]
MAX_BATCH = 512
LINGER = 0.005
"""A batch of queued-only rows waits this long for company (usually the next call's attempt row),
so one commit serves both: at most this much of outcome rows is in memory only."""


def _settle(fut: asyncio.Future[int], seq: int | None, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(seq if seq is not None else 0)


class AuditWriter:
    """One writer thread in front of a :class:`SqliteAuditLog`."""

    def __init__(self, sink: SqliteAuditLog) -> None:
        self.sink = sink
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="toolcrib-audit", daemon=True)
        self._thread.start()
        self._closed = False

    async def append(self, event: AuditEvent) -> int:
        """Write ``event`` and return its sequence number once it is committed."""
        if self._closed:
            raise AuditError("the audit log is closed; the call was not made")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put((event, fut))
        return await fut

    async def flush(self) -> None:
        """Return once everything queued before this call is committed (readers call it first)."""
        if self._closed:
            return
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put((None, fut))
        await fut

    def submit(self, event: AuditEvent) -> None:
        """Queue ``event``; it is committed with the next batch."""
        if self._closed:
            log.error("audit event dropped after close: %s %s %s", event.kind, event.method, event.tool or event.target)
            return
        self._queue.put((event, None))

    def close(self) -> None:
        """Flush every queued event and stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_BATCH:
                durable = any(fut is not None for _, fut in batch)
                try:
                    nxt = self._queue.get_nowait() if durable else self._queue.get(timeout=LINGER)
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[_Item]) -> None:
        try:
            written = iter(self.sink.append_many([event for event, _ in batch if event is not None]))
            seqs: list[int | None] = [next(written) if event is not None else None for event, _ in batch]
            error: BaseException | None = None
        except Exception as exc:  # reported to every waiter; queued-only rows are logged
            seqs, error = [None] * len(batch), exc
            log.error("audit write failed for %d events: %s", len(batch), exc)
        for (_, fut), seq in zip(batch, seqs, strict=True):
            if fut is not None:
                fut.get_loop().call_soon_threadsafe(_settle, fut, seq, error)
