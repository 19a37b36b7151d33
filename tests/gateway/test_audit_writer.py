"""The audit writer thread: durable appends, group commit, flush on close, errors reach the caller."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from toolcrib.errors import AuditError
from toolcrib.gateway.audit.log import AuditEvent, SqliteAuditLog
from toolcrib.gateway.audit.writer import AuditWriter

pytestmark = pytest.mark.anyio


def _log(tmp_path: Path) -> SqliteAuditLog:
    return SqliteAuditLog(tmp_path / "audit.db", hmac_key=b"k" * 32)


async def test_concurrent_appends_are_committed_in_order_and_verify(tmp_path: Path) -> None:
    log = _log(tmp_path)
    writer = AuditWriter(log)
    seqs: list[int] = []

    async def one(i: int) -> None:
        seqs.append(await writer.append(AuditEvent(kind="attempt", tool=f"t{i}", arguments={"i": i})))
        writer.submit(AuditEvent(kind="outcome", tool=f"t{i}", outcome="ok"))

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(one, i)
    writer.close()
    assert sorted(seqs) == sorted(set(seqs)) and len(seqs) == 100
    rows = log.query(limit=1000)
    assert len(rows) == 200
    assert [r["seq"] for r in rows] == list(range(1, 201))
    assert log.verify().ok
    log.close()


async def test_write_failure_reaches_the_waiting_call(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "audit.db")  # no HMAC key: a call with arguments cannot be recorded
    writer = AuditWriter(log)
    with pytest.raises(AuditError):
        await writer.append(AuditEvent(kind="attempt", tool="x", arguments={"a": 1}))
    writer.close()
    with pytest.raises(AuditError, match="closed"):
        await writer.append(AuditEvent(kind="attempt", tool="x"))
    log.close()
