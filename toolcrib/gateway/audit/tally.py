"""``tally`` rows: what one states, how both backends count it, and how ``verify`` checks it.

A ``tally`` row carries ``attempt_seq`` = U, ``bytes`` = C, ``results`` = P and ``seal`` = HMAC
under the seal key (:data:`~toolcrib.gateway.audit.keys.SEAL_LABEL`) of ``"tally:U:C:P"``
(:func:`~toolcrib.gateway.audit.schema.tally_message`; ``results`` is a column the row hash covers,
so no schema change). It states: *when it was written, C ``call`` rows with ``seq <= U`` were
completed*, rows already pruned counted by the latest prune checkpoint's ``completed`` (itself the
same count, up to the checkpoint's seq, when the prune ran; under the checkpoint's HMAC). That is
:func:`completed_upto`, cumulative from the first row of the log. And: *the ``call`` rows after the
latest checkpoint up to U that were still pending then are exactly P*, the compact canonical JSON
list of their seqs, ascending (``[]`` when none; normally few: calls held for approval or running
longer than the settle time). Past :data:`PENDING_CAP` pending rows the set is not stated: P is
``{"more_than":N}`` (N the cap) and the tally states the count only. Tallies written before the
set existed have ``results`` NULL and a seal over ``"tally:U:C"``: count only too.

Why the set: a count can be compensated. Row ``held`` pending and ``quick`` completed when a tally
counts C = 1; ``held`` completes later and someone with write access (no key) sets ``quick`` back
to pending: the count is 1 again and nothing looks wrong. With the set, ``quick`` is pending now
but was not pending when the tally was written: :func:`removed` names it. A prune would delete
that evidence and leave only the checkpoint's count (compensable the same way), so
:func:`prune_check` refuses to prune such a row.

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
count when there is one) rules out a count removed by hand. A new tally is written whenever U, C or
P differs from the latest tally's (a pending set that changed at the same count included).
"""

from __future__ import annotations

import hmac
import json
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from toolcrib.errors import AuditError
from toolcrib.gateway.audit.keys import CHECKPOINT_LABEL, SEAL_LABEL, derive, mac
from toolcrib.gateway.audit.schema import canonical_json, checkpoint_message, tally_message

Fetch = Callable[[str, Sequence[Any]], Sequence[Any] | None]
"""Run one query in the snapshot and return its first row (``cursor.fetchone()``)."""
FetchAll = Callable[[str, Sequence[Any]], Sequence[Sequence[Any]]]
"""Run one query in the snapshot and return all its rows (``cursor.fetchall()``)."""

PENDING_CAP = 10_000
"""The most pending ``call`` rows a tally lists; past it the tally states its count only."""


@dataclass(frozen=True)
class Tally:
    """What a new tally row states: ``upto`` (U, a seq), ``count`` (C, completed ``call`` rows up to
    U) and ``pending`` (P, the ``results`` text: see the module docstring)."""

    upto: int
    count: int
    pending: str


@dataclass(frozen=True)
class TallySql:
    """The five queries :func:`count_tally` needs, in one backend's SQL."""

    settled: str
    """``(cutoff,)`` -> the max seq of rows older than ``cutoff`` (epoch seconds) that are not tallies."""
    checkpoint: str
    """``()`` -> ``seq, hash, mac, completed`` of the latest prune checkpoint."""
    latest: str
    """``(after,)`` -> ``attempt_seq, bytes, seal, results`` of the latest tally row with seq > ``after``."""
    completed: str
    """``(lo, hi)`` -> how many ``call`` rows with ``lo < seq <= hi`` are completed."""
    pending: str
    """``(lo, hi, limit)`` -> the first ``limit`` seqs, ascending, of pending ``call`` rows with ``lo < seq <= hi``."""
    listing: str
    """``(after, lowest)`` -> ``seq, attempt_seq, bytes, seal, results`` of the tally rows with seq > ``after``,
    ``attempt_seq >= lowest`` and a pending set (``results`` not NULL), by seq."""


def tally_sql(events: str, checkpoints: str, mark: str) -> TallySql:
    """:class:`TallySql` over the tables ``events`` and ``checkpoints`` with placeholder ``mark``
    (``?`` for SQLite, ``%s`` for psycopg)."""
    return TallySql(
        settled=f"SELECT max(seq) FROM {events} WHERE ts < {mark} AND kind <> 'tally'",  # noqa: S608
        checkpoint=f"SELECT seq, hash, mac, completed FROM {checkpoints} ORDER BY seq DESC LIMIT 1",  # noqa: S608
        latest=(
            f"SELECT attempt_seq, bytes, seal, results FROM {events} WHERE kind = 'tally' AND seq > {mark} "  # noqa: S608
            "ORDER BY seq DESC LIMIT 1"
        ),
        completed=(
            f"SELECT count(*) FROM {events} WHERE seq > {mark} AND seq <= {mark} "  # noqa: S608
            "AND kind = 'call' AND completed IS NOT NULL"
        ),
        pending=(
            f"SELECT seq FROM {events} WHERE seq > {mark} AND seq <= {mark} "  # noqa: S608
            f"AND kind = 'call' AND completed IS NULL ORDER BY seq LIMIT {mark}"
        ),
        listing=(
            f"SELECT seq, attempt_seq, bytes, seal, results FROM {events} WHERE kind = 'tally' "  # noqa: S608
            f"AND seq > {mark} AND attempt_seq >= {mark} AND results IS NOT NULL ORDER BY seq"
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


def count_tally(
    fetch: Fetch, fetch_all: FetchAll, sql: TallySql, key: bytes, cutoff: float, cap: int | None = None
) -> Tally | None:
    """The :class:`Tally` a new tally row states: U the newest row older than ``cutoff`` (epoch
    seconds) that is not a tally, C = :func:`completed_upto` U, P the pending ``call`` rows after
    the latest checkpoint up to U (at most ``cap``, default :data:`PENDING_CAP`; past it P says
    so and is not listed); call it inside one read snapshot. None when there is nothing to state:
    no such row past the latest checkpoint, or the latest tally (its seal checked under ``key``,
    the audit key) already states exactly ``(U, C, P)``. Raises :class:`AuditError` when the
    latest checkpoint's HMAC is wrong."""
    cap = PENDING_CAP if cap is None else cap
    found = fetch(sql.settled, (cutoff,))
    if found is None or found[0] is None:
        return None
    upto = int(found[0])
    base_seq, base = checkpoint_base(fetch, sql, key)
    if upto <= base_seq:
        return None
    counted = fetch(sql.completed, (base_seq, upto))
    count = base + int(counted[0] if counted else 0)
    seqs = [int(r[0]) for r in fetch_all(sql.pending, (base_seq, upto, cap + 1))]
    pending = canonical_json(seqs if len(seqs) <= cap else {"more_than": cap})
    latest = fetch(sql.latest, (base_seq,))
    same = latest is not None and (latest[0], latest[1], latest[3]) == (upto, count, pending)
    tag = latest[2] if latest is not None else None
    if same and isinstance(tag, str) and hmac.compare_digest(tag, tally_seal(key, upto, count, pending)):
        return None  # already stated (and genuinely sealed): nothing new
    return Tally(upto, count, pending)


def prune_check(fetch_all: FetchAll, sql: TallySql, key: bytes, base_seq: int, upto: int) -> None:
    """Before a prune deletes the rows after the latest checkpoint (at ``base_seq``) up to ``upto``:
    raise :class:`AuditError` when one of them is a ``call`` row pending now that a tally (after
    that checkpoint, its seal checked under ``key``, the audit key) saw completed. Pruning it would
    leave only the checkpoint's count, which a call completed since can make up (see
    :func:`removed`). Cheap when no row up to ``upto`` is pending (one indexed range read)."""
    pending = [int(r[0]) for r in fetch_all(sql.pending, (base_seq, upto, 2**62))]
    if not pending:
        return
    gone: dict[int, int] = {}
    for seq, tally_upto, count, tag, text in fetch_all(sql.listing, (base_seq, pending[0])):
        if not isinstance(tag, str) or not hmac.compare_digest(tag, tally_seal(key, tally_upto, count, text)):
            continue  # forged or edited: verify reports it; it proves nothing here
        try:
            stated = pending_set(text)
        except ValueError:
            continue
        if isinstance(stated, list):
            for row in removed(pending, int(tally_upto), stated):
                gone.setdefault(row, int(seq))
    if gone:
        shown = ", ".join(f"{r} (tally row {t})" for r, t in sorted(gone.items())[:10])
        raise AuditError(
            f"call rows {shown}{', ...' if len(gone) > 10 else ''} were completed when a tally was written and are "
            "pending now (a completion was removed): prune would delete that evidence; nothing was pruned, run "
            "`toolcrib audit verify`"
        )


def checkpoint_count(fetch: Fetch, fetch_all: FetchAll, sql: TallySql, key: bytes, upto: int) -> int:
    """The ``completed`` count of a new prune checkpoint at row ``upto``: :func:`completed_upto`
    ``upto`` (the latest checkpoint's HMAC-checked count plus the completed ``call`` rows after it),
    after :func:`prune_check` of the rows it would delete. Call it inside the prune's transaction.
    Raises :class:`AuditError` as those two do."""
    base_seq, base = checkpoint_base(fetch, sql, key)
    prune_check(fetch_all, sql, key, base_seq, upto)
    found = fetch(sql.completed, (base_seq, upto))
    return base + int(found[0] if found else 0)


def tally_seal(key: bytes, upto: int, count: int, pending: str | None = None) -> str:
    """The ``seal`` of a tally row stating ``count`` completed ``call`` rows up to row ``upto``
    and the pending set ``pending`` (its ``results`` text; None for a count-only tally as written
    before the set existed), under ``key`` (the audit key)."""
    return mac(derive(key, SEAL_LABEL), tally_message(upto, count, pending))


def pending_set(text: str | None) -> list[int] | int | None:
    """The pending seqs a tally's ``results`` text lists, ascending; the cap (an int) when the
    tally had more pending rows than it lists (``{"more_than":N}``); None when ``results`` is NULL
    (written before the set existed). Raises :class:`ValueError` when ``text`` is none of these
    (edited: verify reports it)."""
    if text is None:
        return None
    value = json.loads(text)
    if isinstance(value, dict) and set(value) == {"more_than"} and type(value["more_than"]) is int:
        return int(value["more_than"])
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise ValueError("not a list of seqs")
    if any(a >= b for a, b in pairwise(value)):
        raise ValueError("not ascending")
    return value


class Completions:
    """The completed ``call`` rows a verify scan has seen after the latest checkpoint, to evaluate
    :func:`completed_upto` as the tally that is being checked defined it."""

    def __init__(self, base_seq: int, base: int) -> None:
        self.base_seq, self.base = base_seq, base
        self.seqs = array("q")
        """Seqs of the completed ``call`` rows after the checkpoint, ascending."""
        self.pending = array("q")
        """Seqs of the pending ``call`` rows after the checkpoint, ascending."""

    def add(self, seq: int) -> None:
        self.seqs.append(seq)

    def add_pending(self, seq: int) -> None:
        self.pending.append(seq)

    def removed(self, upto: int, stated: Sequence[int]) -> list[int]:
        """The ``call`` rows up to ``upto`` pending now that a tally stating the pending set
        ``stated`` (ascending) saw completed: see :func:`removed`."""
        return removed(self.pending, upto, stated)

    def upto(self, upto: int) -> int:
        """:func:`completed_upto` ``upto`` over the rows seen so far (every row up to ``upto`` has
        been seen when a tally naming it is reached: a tally's ``upto`` is below its own seq)."""
        return completed_upto(self.base_seq, self.base, self.seqs, upto)


def completed_upto(base_seq: int, base: int, completed: Sequence[int], upto: int) -> int:
    """How many ``call`` rows with ``seq <= upto`` are completed: ``base`` (the latest checkpoint's
    count, at ``base_seq``) plus the ascending seqs in ``completed`` (completed rows after the
    checkpoint) up to ``upto``; just ``base`` when ``upto <= base_seq``."""
    return base + (bisect_right(completed, upto) if upto > base_seq else 0)


def removed(pending: Sequence[int], upto: int, stated: Sequence[int]) -> list[int]:
    """The seqs in ``pending`` (ascending: ``call`` rows pending now, after the latest checkpoint)
    that are ``<= upto`` and not in ``stated`` (ascending: the pending set of a tally up to
    ``upto``): rows that tally saw completed and that are pending now, a completion removed. A
    merge of both lists, O(len(stated) + the rows pending now up to ``upto``)."""
    out: list[int] = []
    j, n = 0, len(stated)
    for seq in pending[: bisect_right(pending, upto)]:
        while j < n and stated[j] < seq:
            j += 1
        if j >= n or stated[j] != seq:
            out.append(seq)
    return out
