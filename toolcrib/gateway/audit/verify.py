"""``verify``: what the audit log can prove about itself, and what it cannot.

Detected (with the audit key):

* a row edited (its hash no longer matches), deleted, inserted, moved or replaced (the chain of
  ``prev_hash`` links breaks or has a gap), including a rewritten chain (its head differs from the
  keyed anchor) and forged rows appended past the anchored head;
* rows cut from the tail (the keyed anchor names a later row than the log holds);
* rows deleted from the front without a keyed checkpoint, and a checkpoint inserted or altered by
  hand (its HMAC is wrong);
* an anchor slot forged or written with another key (its HMAC is wrong);
* an anchor deleted or replaced while rows existed, even after a writer anchored again: the writer
  records an ``anchor`` row (``rule = "reset"``) in the chain, reported here for ever;
* arguments edited in a row stored in full (``args_hmac`` recomputed from them does not match);
* a ``call`` row's completion edited (outcome, error, latency, bytes, decision, rule, approver or
  completion time): its ``seal``, an HMAC over the row's hash and those columns, no longer matches
  (a wrong or missing seal on a completed row is tampering);
* a completion removed (a completed ``call`` row set back to pending) behind a ``tally`` row or a
  prune checkpoint: each records, under its HMAC, how many ``call`` rows up to its seq were
  completed (cumulative, :mod:`~toolcrib.gateway.audit.tally`), and completions only grow, so
  verify must find at least that many (counted by the same definition the tally was written by);
  a tally also records which ``call`` rows up to its seq were still pending, so a row pending now
  that is not in that set is reported by seq, even when a call completed since makes up the count.
  Tallies written before the set existed, or with more pending rows than
  :data:`~toolcrib.gateway.audit.tally.PENDING_CAP` (the row says so), are checked by their count
  only (listed in the limits).

``call`` rows still pending long after their ``ts`` (:data:`UNFINISHED_AFTER`) are reported as
unfinished in :attr:`VerifyReport.unfinished` (the gateway stopped before the call ended), not as
tampering: removing a completion newer than the latest tally cannot be told from such a row.

Not detectable, listed in :attr:`VerifyReport.limits` every time: see :func:`limits` (SQLite) and
:func:`pg_limits` (PostgreSQL, whose anchor is the keyed ``audit_head`` row rather than a file).

The scan itself (:func:`check_chain`) reads rows through a :class:`RowSource`, so both backends are
checked by the same code: :class:`SqliteRows` here, ``PgRows`` in :mod:`~toolcrib.gateway.audit.log_pg`.
"""

from __future__ import annotations

import hmac
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from toolcrib.gateway.audit.anchor import Anchor
from toolcrib.gateway.audit.keys import CHECKPOINT_LABEL, SEAL_LABEL, derive, mac
from toolcrib.gateway.audit.schema import (
    GENESIS,
    KEYED,
    PENDING,
    checkpoint_message,
    row_hash,
    seal_message,
    tally_message,
)
from toolcrib.gateway.audit.tally import Completions, pending_set

UNFINISHED_AFTER = 3600.0
"""Seconds after its ``ts`` beyond which a pending ``call`` row is reported as unfinished."""


@dataclass
class VerifyReport:
    """The result of :func:`verify`; ``ok`` is true when ``problems`` is empty.

    ``checked`` and ``limits`` are plain sentences: what was checked, and what this check cannot
    detect (always given, so a passing report is never read as more than it proves).
    """

    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoint_seq: int = 0
    anchor_seq: int | None = None
    keyed: bool = False
    args_checked: int = 0
    args_unchecked: int = 0
    seals_checked: int = 0
    seals_unchecked: int = 0
    completed: int = 0
    """Completed ``call`` rows in the log (since the latest prune checkpoint)."""
    tallies_checked: int = 0
    tallies_count_only: int = 0
    """Tally rows checked by their count only because they were written before the pending set."""
    tallies_over_cap: list[tuple[int, int]] = field(default_factory=list)
    """``(seq, cap)`` of tally rows checked by their count only because more than ``cap`` call rows
    were pending when they were written."""
    unfinished: list[int] = field(default_factory=list)
    """Seqs of ``call`` rows still pending :data:`UNFINISHED_AFTER` seconds after their ``ts``."""
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def limits(key: bool, anchor_beside_db: bool) -> list[str]:
    """The tamperings no verify can detect, as sentences."""
    out = [
        "Truncation after the last anchor write cannot be detected: the anchor is rewritten right after "
        "each commit, so at most the rows of the last write are exposed.",
        "An attacker holding the audit key can forge everything: rows, checkpoints and the anchor.",
        "An attacker who kept an earlier copy of the anchor file can put it back and cut every row after it "
        "(a rollback); only an anchor on storage they cannot write ([audit] anchor_path) prevents this.",
        "Rows removed by `toolcrib audit prune` behind a keyed checkpoint are gone: the chain is checked from "
        "the latest checkpoint on.",
        "Deleting the database together with its anchor leaves nothing to check, and verify proves that what "
        "is in the log was not altered, not that every request reached the log.",
    ]
    if anchor_beside_db:
        out.append(
            "The anchor is in the database's directory: whoever can write one can usually write the other, "
            "so a rollback of both together is not detected."
        )
    if not key:
        out.append(
            "The audit key was not available (secret:toolcrib/audit-hmac, or the .key file beside the database): "
            "the anchor and the checkpoints were checked against unkeyed checksums only and args_hmac not at all, "
            "so anyone able to write the files could have rewritten the whole log."
        )
    return out


def pg_limits(key: bool) -> list[str]:
    """The tamperings no verify of the PostgreSQL log (:mod:`~toolcrib.gateway.audit.log_pg`) can detect."""
    out = [
        "An attacker holding the audit key can forge everything: rows, checkpoints and the head row.",
        "The keyed head row (audit_head) is in the same database as the rows: a database administrator who "
        "cuts rows from the tail and puts back an earlier head row (copied from a backup or read before) "
        "rolls the log back undetected; so does restoring the whole database from a backup.",
        "Rows removed by `toolcrib audit prune` behind a keyed checkpoint are gone: the chain is checked from "
        "the latest checkpoint on.",
        "Dropping the audit tables (or the database) leaves nothing to check, and verify proves that what is "
        "in the log was not altered, not that every request reached the log.",
    ]
    if not key:
        out.append(
            "The audit key was not available (secret:toolcrib/audit-hmac): the head row and the checkpoints were "
            "not authenticated and args_hmac not checked at all, so anyone able to write the tables could have "
            "rewritten the whole log."
        )
    return out


class RowSource(Protocol):
    """Rows of one consistent snapshot of an audit log, whichever backend holds them."""

    def checkpoints(self) -> list[tuple[int, str, str | None, int | None]]:
        """Every prune checkpoint as ``(seq, hash, mac, completed)``, oldest first (``completed``
        None for checkpoints written before version 3)."""
        ...

    def events(self) -> Iterable[Mapping[str, Any]]:
        """Every row as ``{column: value}`` (:data:`~toolcrib.gateway.audit.schema.COLUMNS`), by seq."""
        ...


class SqliteRows:
    """:class:`RowSource` over an open SQLite audit database (call inside one read transaction)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def checkpoints(self) -> list[tuple[int, str, str | None, int | None]]:
        cursor = self._db.execute("SELECT * FROM checkpoints ORDER BY seq")
        names = [d[0] for d in cursor.description]
        out = []
        for r in cursor:
            named = dict(zip(names, r, strict=True))
            done = named.get("completed")
            out.append((int(r[0]), str(r[1]), named.get("mac"), None if done is None else int(done)))
        return out

    def events(self) -> Iterator[dict[str, Any]]:
        cursor = self._db.execute("SELECT * FROM events ORDER BY seq")
        names = [d[0] for d in cursor.description]
        for values in cursor:
            yield dict(zip(names, values, strict=True))


def verify(
    db: sqlite3.Connection, lock: threading.Lock, anchor: Anchor, key: bytes | None, db_path: Path, schema: int
) -> VerifyReport:
    """Re-hash the chain, check every checkpoint's and anchor slot's HMAC and every recomputable
    ``args_hmac``; report each finding as one sentence.

    Safe while a server appends: the anchor is read before the database snapshot, so every row it
    names is in the snapshot; rows past it must be covered by the anchor once the scan ends.
    """
    report = VerifyReport(keyed=key is not None)
    problems = report.problems
    if schema < KEYED and key is not None:
        problems.append("this log predates the keyed anchor and checkpoints; start `toolcrib serve` once to upgrade it")
    try:
        data: bytes | None = anchor.path.read_bytes()
    except FileNotFoundError:
        data = None
    head = anchor.read(data) if data is not None else None
    with lock:
        db.execute("BEGIN")
        try:
            check_chain(SqliteRows(db), report, head, key)
        finally:
            db.execute("COMMIT")
    last = report.last_seq if report.last_seq is not None else report.checkpoint_seq
    report.anchor_seq = head[0] if head else None
    how = "its HMAC checked" if key is not None else "unkeyed checksum only"
    for seq in anchor.forged(data) if data is not None else []:
        problems.append(f"the anchor slot naming row {seq} has a wrong or missing HMAC (forged, or another key)")
    if head is None:
        if last:
            state = "missing" if data is None else "holds no valid head"
            problems.append(f"the anchor file {anchor.path} {state}, yet the log has rows up to {last}")
    elif head[0] > last:
        problems.append(f"the log ends at row {last} but the anchor says {head[0]}: the tail was cut")
    elif head[0] < last:
        for _ in range(5):
            later = anchor.read()
            if later is not None and later[0] >= last:
                report.checked.append(f"the head matches the anchor at row {later[0]} ({how})")
                break
            time.sleep(0.005)
        else:
            problems.append(f"rows {head[0] + 1}..{last} come after the anchored head (appended outside)")
    else:
        report.checked.append(f"the head matches the anchor at row {head[0]} ({how})")
    finish(report, limits(key is not None, anchor.path.resolve().parent == db_path.resolve().parent))
    return report


def finish(report: VerifyReport, backend_limits: list[str]) -> None:
    """Put the backend's limits first, after them the ones the scan found (unchecked args_hmac and
    seals, unfinished calls, the completion-removal window)."""
    if report.unfinished:
        shown = ", ".join(str(s) for s in report.unfinished[:10]) + (", ..." if len(report.unfinished) > 10 else "")
        report.limits.append(
            f"{len(report.unfinished)} call rows are still pending more than {UNFINISHED_AFTER / 3600:g} h after "
            f"they were written (rows {shown}): unfinished, their end never recorded (the gateway stopped "
            "mid-call), or a completion removed after the last tally, which cannot be told apart."
        )
    if report.seals_unchecked:
        report.limits.append(
            f"The seals of {report.seals_unchecked} completed call rows were not checked (no audit key): their "
            "outcome, error, latency and bytes could have been edited."
        )
    report.limits.append(
        "A completion removed (a call row set back to pending) is detected only behind a tally row (written "
        "every minute for rows older than 10 minutes) or a prune checkpoint; a newer one looks like a call in flight."
    )
    if report.tallies_count_only:
        report.limits.append(
            f"{report.tallies_count_only} tally rows were written before tallies listed their pending call rows: "
            "they state a count only, and behind them a completion removed is missed when a call completed since "
            "makes up the count."
        )
    if report.tallies_over_cap:
        over = report.tallies_over_cap
        shown = ", ".join(f"{s} (over {c})" for s, c in over[:10]) + (", ..." if len(over) > 10 else "")
        report.limits.append(
            f"{len(over)} tally rows had more pending call rows than they list (rows {shown}): they state a count "
            "only, and behind them a completion removed is missed when a call completed since makes up the count."
        )
    if report.args_unchecked:
        report.limits.append(
            f"args_hmac of {report.args_unchecked} rows cannot be checked: their stored arguments are redacted "
            "or truncated (or predate the marker that says so), and the HMAC covers the originals."
        )
    report.limits[:0] = backend_limits


def check_chain(source: RowSource, report: VerifyReport, head: tuple[int, str] | None, key: bytes | None) -> None:
    """Check the checkpoints' HMACs and the chain from the latest checkpoint on, against ``head``
    (the anchored ``(seq, hash)``, None when there is none): fills ``report``."""
    checkpoints = source.checkpoints()
    _checkpoints(checkpoints, report, key)
    _scan(source.events(), checkpoints[-1] if checkpoints else None, report, head, key)


def _checkpoints(rows: list[tuple[int, str, str | None, int | None]], report: VerifyReport, key: bytes | None) -> None:
    if not rows:
        return
    report.checkpoint_seq = int(rows[-1][0])
    if key is None:
        return
    ckey = derive(key, CHECKPOINT_LABEL)
    for seq, digest, tag, completed in rows:
        expected = mac(ckey, checkpoint_message(seq, digest, completed))
        if not isinstance(tag, str) or not hmac.compare_digest(tag, expected):
            report.problems.append(
                f"the checkpoint at row {seq} has a wrong or missing HMAC: rows were removed outside prune"
            )
    report.checked.append(f"the HMAC of {len(rows)} prune checkpoints")


def _scan(
    rows: Iterable[Mapping[str, Any]],
    checkpoint: tuple[int, str, str | None, int | None] | None,
    report: VerifyReport,
    head: tuple[int, str] | None,
    key: bytes | None,
) -> None:
    problems = report.problems
    prev_seq, prev_hash = (int(checkpoint[0]), str(checkpoint[1])) if checkpoint else (0, GENESIS)
    anchored_hash = prev_hash if head and head[0] == prev_seq else None
    calls = _Calls(prev_seq, int(checkpoint[3] or 0) if checkpoint else 0, key, report)
    for row in rows:
        seq = int(row["seq"])
        report.rows += 1
        report.first_seq = seq if report.first_seq is None else report.first_seq
        if seq != prev_seq + 1:
            problems.append(f"rows {prev_seq + 1}..{seq - 1} are missing (deleted)")
        elif row["prev_hash"] != prev_hash:
            problems.append(f"row {seq} does not link to row {prev_seq} (a row was replaced or moved)")
        if row_hash(row) != row["hash"]:
            problems.append(f"row {seq} does not match its hash (edited)")
        if row.get("args_hmac") is not None:
            _check_args(row, report, key)
        kind = row["kind"]
        if kind == "call":
            calls.call(row)
        elif kind == "tally":
            calls.tally(row)
        elif kind == "anchor":
            _anchor_row(row, report)
        prev_seq, prev_hash = seq, str(row["hash"])
        if head and head[0] == seq:
            anchored_hash = prev_hash
    report.last_seq = prev_seq if report.rows else None
    if head and head[0] <= prev_seq and anchored_hash != head[1]:
        problems.append(f"row {head[0]} differs from the anchored head hash (the chain was rewritten)")
    start = f"the checkpoint at row {checkpoint[0]}" if checkpoint else "the genesis hash"
    span = f"rows {report.first_seq}..{report.last_seq}" if report.rows else "no rows"
    report.checked.append(f"the hash chain of {report.rows} rows ({span}) from {start}: each hash and each link")
    if report.args_checked:
        report.checked.append(f"args_hmac recomputed for {report.args_checked} rows whose arguments are stored in full")
    if report.seals_checked:
        report.checked.append(f"the seal of {report.seals_checked} completed call rows (their outcome, error, latency)")
    if report.tallies_checked:
        report.checked.append(
            f"{report.tallies_checked} tally rows: no completion removed behind them "
            f"({report.completed} completed calls)"
        )


def seal_ok(row: Mapping[str, Any], seal_key: bytes) -> bool:
    """True when ``row`` (a completed ``call`` row, as stored) carries the seal of its completion:
    HMAC under ``seal_key`` (:data:`~toolcrib.gateway.audit.keys.SEAL_LABEL`) of its ``hash`` and
    its :data:`~toolcrib.gateway.audit.schema.COMPLETION` columns."""
    tag = row.get("seal")
    if not isinstance(tag, str) or row.get("completed") is None:
        return False
    return hmac.compare_digest(tag, mac(seal_key, seal_message(str(row["hash"]), row)))


class _Calls:
    """The ``call`` and ``tally`` part of the scan: seals, pending rows, completion counts."""

    def __init__(self, base_seq: int, base: int, key: bytes | None, report: VerifyReport) -> None:
        self.done = Completions(base_seq, base)
        self.key = derive(key, SEAL_LABEL) if key is not None else None
        self.report = report
        self.cutoff = time.time() - UNFINISHED_AFTER

    def call(self, row: Mapping[str, Any]) -> None:
        report, seq = self.report, int(row["seq"])
        if row.get("completed") is None:
            if any(row.get(c) != v for c, v in PENDING.items()):
                report.problems.append(f"row {seq}: a pending call row carries completion fields (edited)")
            elif float(row["ts"]) < self.cutoff:
                report.unfinished.append(seq)
            self.done.add_pending(seq)
            return
        self.done.add(seq)
        report.completed += 1
        if self.key is None:
            report.seals_unchecked += 1
            return
        report.seals_checked += 1
        if not seal_ok(row, self.key):
            report.problems.append(
                f"row {seq}: the seal of its completion is wrong or missing (outcome, error, latency or bytes edited)"
            )

    def tally(self, row: Mapping[str, Any]) -> None:
        report, seq = self.report, int(row["seq"])
        upto, claimed, text = row.get("attempt_seq"), row.get("bytes"), row.get("results")
        if not isinstance(upto, int) or not isinstance(claimed, int) or not isinstance(text, str | None):
            report.problems.append(f"row {seq}: a tally row without its count (edited)")
            return
        if self.key is not None:
            tag = row.get("seal")
            expected = mac(self.key, tally_message(upto, claimed, text))
            if not isinstance(tag, str) or not hmac.compare_digest(tag, expected):
                report.problems.append(f"row {seq}: the tally's seal is wrong or missing (forged)")
                return
        try:
            stated = pending_set(text)
        except ValueError:
            report.problems.append(f"row {seq}: a tally row whose pending set is not a list of seqs (edited)")
            return
        report.tallies_checked += 1
        if stated is None:
            report.tallies_count_only += 1
        elif isinstance(stated, int):
            report.tallies_over_cap.append((seq, stated))
        else:
            gone = self.done.removed(upto, stated)
            if gone:
                shown = ", ".join(str(s) for s in gone[:10]) + (", ..." if len(gone) > 10 else "")
                report.problems.append(
                    f"row {seq}: call rows {shown} (up to row {upto}) were completed when it was written and are "
                    "pending now: a completion was removed (a row set back to pending)"
                )
                return
        found = self.done.upto(upto)  # what tally() counted when it wrote the row, counted now
        if found < claimed:
            report.problems.append(
                f"row {seq}: {claimed} call rows up to row {upto} were completed when it was written, the log now "
                f"has {found}: a completion was removed (a row set back to pending)"
            )


def _anchor_row(row: Mapping[str, Any], report: VerifyReport) -> None:
    """A writer's note about the anchor: one upgrade adoption is a limit, anything else a problem."""
    adopted = row["rule"] == "adopt-unkeyed"
    if adopted and not any(line.startswith("Rows before row") for line in report.limits):
        report.limits.append(
            f"Rows before row {row['seq']} were written before the log was keyed: at the upgrade their unkeyed "
            "anchor and checkpoints were adopted as found, so tampering before it cannot be ruled out."
        )
    else:
        again = "a second upgrade adoption, which only tampering explains: " if adopted else ""
        report.problems.append(f"row {row['seq']}: {again}{row['error']}")


def _check_args(row: Mapping[str, Any], report: VerifyReport, key: bytes | None) -> None:
    stored, arguments = row.get("args_stored"), row["arguments"]
    if key is None or arguments is None or stored not in (None, "full"):
        report.args_unchecked += 1
        return
    matches = hmac.compare_digest(mac(key, arguments), str(row["args_hmac"]))
    if stored is None and not matches:
        report.args_unchecked += 1  # written before the marker: redacted and edited look alike
        return
    report.args_checked += 1
    if not matches:
        report.problems.append(f"row {row['seq']}: the stored arguments do not match args_hmac (edited)")
