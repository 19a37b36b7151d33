"""``tally`` rows: what one states, how both backends count it, and how ``verify`` checks it.

A ``tally`` row carries ``attempt_seq`` = U, ``bytes`` = C and ``seal`` = HMAC under the seal key
(:data:`~toolcrib.gateway.audit.keys.SEAL_LABEL`) of ``"tally:U:C"``
(:func:`~toolcrib.gateway.audit.schema.tally_message`). It states: *when it was written, C ``call``
rows with ``seq <= U`` were completed*, rows already pruned counted by the latest prune checkpoint's
``completed`` (itself the same count, up to the checkpoint's seq, when the prune ran; under the
checkpoint's HMAC). That is :func:`completed_upto`, cumulative from the first row of the log.

Completions only grow: a ``call`` row is completed once, in place, never set back (the database
refuses it), and rows leave only by prune behind a checkpoint that keeps their count. So at any
later time ``completed_upto(U) >= C`` must hold, whatever completed meanwhile (a call held for
approval, completed after the tally that first covered its row, only raises the count) and after
any later prune (when U is at or below the checkpoint, the checkpoint's count covers every row up
to its seq >= U and so is >= C: nothing is checked there, and nothing false is reported). ``verify``
evaluates exactly that (:meth:`Completions.upto`) and reports a tally whose C it does not reach:
a completion removed (a row set back to pending) after the tally saw it.

:func:`count_tally` is the one counting code of both backends (only their SQL differs,
:func:`tally_sql`): U is the newest row (not a tally) older than the settle time, C is
:func:`completed_upto` read in one snapshot. It never builds on an earlier tally (whose count may
be stale or forged); it builds on the latest checkpoint only after checking that checkpoint's HMAC.
A checkpoint without a count (written before version 3 of the SQLite log, or migration 4 of
PostgreSQL) counts 0: no ``call`` row existed before those versions, and its HMAC (which covers the
count when there is one) rules out a count removed by hand.
"""

from __future__ import annotations

import hmac
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from toolcrib.errors import AuditError
from toolcrib.gateway.audit.keys import CHECKPOINT_LABEL, SEAL_LABEL, derive, mac
from toolcrib.gateway.audit.schema import checkpoint_message, tally_message

Fetch = Callable[[str, Sequence[Any]], Sequence[Any] | None]
"""Run one query in the snapshot and return its first row (``cursor.fetchone()``)."""


@dataclass(frozen=True)
class TallySql:
    """The four queries :func:`count_tally` needs, in one backend's SQL."""

    settled: str
    """``(cutoff,)`` -> the max seq of rows older than ``cutoff`` (epoch seconds) that are not tallies."""
    checkpoint: str
    """``()`` -> ``seq, hash, mac, completed`` of the latest prune checkpoint."""
    latest: str
    """``(after,)`` -> ``attempt_seq, bytes, seal`` of the latest tally row with seq > ``after``."""
    completed: str
    """``(lo, hi)`` -> how many ``call`` rows with ``lo < seq <= hi`` are completed."""


def tally_sql(events: str, checkpoints: str, mark: str) -> TallySql:
    """:class:`TallySql` over the tables ``events`` and ``checkpoints`` with placeholder ``mark``
    (``?`` for SQLite, ``%s`` for psycopg)."""
    return TallySql(
        settled=f"SELECT max(seq) FROM {events} WHERE ts < {mark} AND kind <> 'tally'",  # noqa: S608
        checkpoint=f"SELECT seq, hash, mac, completed FROM {checkpoints} ORDER BY seq DESC LIMIT 1",  # noqa: S608
        latest=(
            f"SELECT attempt_seq, bytes, seal FROM {events} WHERE kind = 'tally' AND seq > {mark} "  # noqa: S608
            "ORDER BY seq DESC LIMIT 1"
        ),
        completed=(
            f"SELECT count(*) FROM {events} WHERE seq > {mark} AND seq <= {mark} "  # noqa: S608
            "AND kind = 'call' AND completed IS NOT NULL"
        ),
    )


def checkpoint_base(fetch: Fetch, sql: TallySql, key: bytes) -> tuple[int, int]:
    """``(seq, completed)`` of the latest prune checkpoint (``(0, 0)`` without one; a count-less
    checkpoint counts 0, see the module docstring), its HMAC checked under ``key`` (the audit key).
    Raises :class:`AuditError` when that HMAC is wrong: nothing may be counted on top of it."""
    found = fetch(sql.checkpoint, ())
    if found is None:
        return 0, 0
    seq, digest, tag, completed = int(found[0]), str(found[1]), found[2], found[3]
    count = None if completed is None else int(completed)
    expected = mac(derive(key, CHECKPOINT_LABEL), checkpoint_message(seq, digest, count))
    if not isinstance(tag, str) or not hmac.compare_digest(tag, expected):
        raise AuditError(
            f"the latest prune checkpoint (row {seq}) has a wrong or missing HMAC (tampered with, or signed with "
            "another audit key): nothing is counted or pruned on top of it; run `toolcrib audit verify`"
        )
    return seq, count or 0


def count_tally(fetch: Fetch, sql: TallySql, key: bytes, cutoff: float) -> tuple[int, int] | None:
    """``(U, C)`` for a new tally row: U the newest row older than ``cutoff`` (epoch seconds) that
    is not a tally, C = :func:`completed_upto` U; call it inside one read snapshot. None when there
    is nothing to state: no such row past the latest checkpoint, or the latest tally (its seal
    checked under ``key``, the audit key) already states exactly ``(U, C)``. Raises
    :class:`AuditError` when the latest checkpoint's HMAC is wrong."""
    found = fetch(sql.settled, (cutoff,))
    if found is None or found[0] is None:
        return None
    upto = int(found[0])
    base_seq, base = checkpoint_base(fetch, sql, key)
    if upto <= base_seq:
        return None
    counted = fetch(sql.completed, (base_seq, upto))
    count = base + int(counted[0] if counted else 0)
    latest = fetch(sql.latest, (base_seq,))
    same = latest is not None and (latest[0], latest[1]) == (upto, count) and isinstance(latest[2], str)
    if same and latest is not None and hmac.compare_digest(str(latest[2]), tally_seal(key, upto, count)):
        return None  # already stated (and genuinely sealed): nothing new
    return upto, count


def tally_seal(key: bytes, upto: int, count: int) -> str:
    """The ``seal`` of a tally row stating ``count`` completed ``call`` rows up to row ``upto``,
    under ``key`` (the audit key)."""
    return mac(derive(key, SEAL_LABEL), tally_message(upto, count))


class Completions:
    """The completed ``call`` rows a verify scan has seen after the latest checkpoint, to evaluate
    :func:`completed_upto` as the tally that is being checked defined it."""

    def __init__(self, base_seq: int, base: int) -> None:
        self.base_seq, self.base = base_seq, base
        self.seqs = array("q")
        """Seqs of the completed ``call`` rows after the checkpoint, ascending."""

    def add(self, seq: int) -> None:
        self.seqs.append(seq)

    def upto(self, upto: int) -> int:
        """:func:`completed_upto` ``upto`` over the rows seen so far (every row up to ``upto`` has
        been seen when a tally naming it is reached: a tally's ``upto`` is below its own seq)."""
        return completed_upto(self.base_seq, self.base, self.seqs, upto)


def completed_upto(base_seq: int, base: int, completed: Sequence[int], upto: int) -> int:
    """How many ``call`` rows with ``seq <= upto`` are completed: ``base`` (the latest checkpoint's
    count, at ``base_seq``) plus the ascending seqs in ``completed`` (completed rows after the
    checkpoint) up to ``upto``; just ``base`` when ``upto <= base_seq``."""
    return base + (bisect_right(completed, upto) if upto > base_seq else 0)
