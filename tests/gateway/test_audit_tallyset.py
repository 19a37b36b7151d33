"""Tallies state their pending set (toolcrib.gateway.audit.tally): which ``call`` rows up to their
row were still pending. verify names a row pending now that a tally saw completed, whatever the
count says; prune refuses to delete such a row; old count-only tallies and tallies past the cap are
checked by count and said so in the limits. Both backends, and a hypothesis model on SQLite."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.gateway.test_audit_calls import KEY, call, done, tamper, uncomplete
from tests.gateway.test_audit_calls_attack import write_tally
from toolcrib.errors import AuditError
from toolcrib.gateway.audit import tally as tally_module
from toolcrib.gateway.audit.backends import AuditLog
from toolcrib.gateway.audit.log import SqliteAuditLog
from toolcrib.gateway.audit.tally import pending_set, removed


def test_a_tally_lists_its_pending_rows_under_its_seal(backend: AuditLog) -> None:
    a, b, c = (backend.append(call(i)) for i in range(3))
    backend.append_many([], completions=[done(b)])
    first = backend.tally(settle=0)
    assert first is not None
    [row] = backend.query(kind="tally")
    assert (row["attempt_seq"], row["bytes"], row["results"]) == (c, 1, [a, c])
    assert backend.tally(settle=0) is None  # nothing changed
    backend.append_many([], completions=[done(a)])
    assert backend.tally(settle=0) is not None  # count and set changed
    report = backend.verify()
    assert report.ok and report.tallies_checked == 2 and report.tallies_count_only == 0, report.problems
    tamper(backend, "UPDATE audit_events SET results = '[]' WHERE seq = ?", (first,))  # hide the pending rows
    problems = backend.verify().problems
    assert f"row {first} does not match its hash (edited)" in problems
    assert f"row {first}: the tally's seal is wrong or missing (forged)" in problems


def test_a_count_only_tally_keeps_its_count_check_and_says_what_it_misses(backend: AuditLog) -> None:
    held, quick = backend.append(call(1)), backend.append(call(2))
    backend.append_many([], completions=[done(quick)])
    write_tally(backend, quick, 1)  # as written before the pending set: results NULL, seal over "tally:U:C"
    report = backend.verify()
    assert report.ok and report.tallies_count_only == 1, report.problems
    assert any("1 tally rows were written before tallies listed their pending call rows" in s for s in report.limits)
    uncomplete(backend, quick)
    assert any("a completion was removed" in p for p in backend.verify().problems)  # the count still catches it
    backend.append_many([], completions=[done(quick), done(held)])
    uncomplete(backend, quick)  # compensated by `held`: the known gap of a count-only tally
    assert backend.verify().ok


def test_past_the_cap_a_tally_states_its_count_only(backend: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tally_module, "PENDING_CAP", 2)
    seqs = [backend.append(call(i)) for i in range(4)]
    backend.append_many([], completions=[done(seqs[0])])
    seq = backend.tally(settle=0)
    assert [r["results"] for r in backend.query(kind="tally")] == [{"more_than": 2}]
    report = backend.verify()
    assert report.ok and report.tallies_over_cap == [(seq, 2)], report.problems
    assert any(f"rows {seq} (over 2)" in s for s in report.limits), report.limits
    backend.append_many([], completions=[done(seqs[1])])
    assert backend.tally(settle=0) is not None  # 2 pending rows fit the cap: listed again
    assert backend.query(kind="tally")[-1]["results"] == seqs[2:]
    assert backend.verify().tallies_over_cap == [(seq, 2)]


def test_prune_refuses_to_delete_a_removed_completion(backend: AuditLog) -> None:
    held, quick = backend.append(call(1, ts=1000.0)), backend.append(call(2, ts=1001.0))
    backend.append_many([], completions=[done(quick)])
    tally = backend.tally(settle=0)
    backend.append(call(3))
    backend.append_many([], completions=[done(held)])
    uncomplete(backend, quick)
    with pytest.raises(AuditError, match=rf"call rows {quick} \(tally row {tally}\) were completed when a tally"):
        backend.prune(1002.0)
    assert backend.query(limit=10)[0]["seq"] == held  # nothing pruned
    assert any(f"call rows {quick} (up to row {quick})" in p for p in backend.verify().problems)


def test_pending_set_reads_only_what_a_tally_writes() -> None:
    assert pending_set(None) is None
    assert pending_set("[]") == [] and pending_set("[3,5]") == [3, 5]
    assert pending_set('{"more_than":10000}') == 10000
    for bad in ("[5,3]", "[3,3]", '["3"]', "[true]", "{}", '{"more_than":"x"}', "3", "[1.5]"):
        with pytest.raises(ValueError):
            pending_set(bad)


@settings(max_examples=1000, deadline=None)
@given(pending=st.sets(st.integers(1, 60)), stated=st.sets(st.integers(1, 60)), upto=st.integers(0, 61))
def test_removed_is_the_pending_rows_up_to_upto_missing_from_the_set(
    pending: set[int], stated: set[int], upto: int
) -> None:
    assert removed(sorted(pending), upto, sorted(stated)) == sorted(p for p in pending if p <= upto and p not in stated)


# ---- the model: random call/complete/tally/uncomplete/prune histories on SQLite ----------------------------------

NAMES = ["tally", "call", "complete", "uncomplete", "prune", "call", "complete", "tally", "uncomplete", "call"]
OPS = st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 10)), min_size=6, max_size=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
@example(ops=[("call", 0), ("call", 0), ("complete", 0), ("tally", 0), ("prune", 0), ("tally", 0)])
def test_verify_reports_a_problem_iff_a_completion_a_tally_saw_was_removed(ops: list[tuple[str, int]]) -> None:
    """Model: ``calls`` (seq -> completed now, for rows not pruned; row ``i`` written at ts 1000 + i)
    and, per tally row not pruned, the call rows it saw completed. A tally is written unless the
    latest one saw exactly the completed rows there are now, of the rows not pruned since; verify
    must report a problem exactly when a row pending now was seen completed by a tally still in the
    log; prune must refuse exactly when it would delete such a row (and then deletes nothing)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = SqliteAuditLog(Path(tmp) / "audit.db", hmac_key=KEY)
        try:
            calls: dict[int, bool] = {}
            ts: dict[int, float] = {}
            seen: dict[int, set[int]] = {}  # tally seq -> call rows it saw completed
            n = 0
            for op, arg in ops:
                alive = sorted(calls)
                if op == "call":
                    seq = log.append(call(n, ts=1000.0 + n))
                    calls[seq], ts[seq] = False, 1000.0 + n
                    n += 1
                elif op in ("complete", "uncomplete"):
                    among = [s for s in alive if calls[s] is (op == "uncomplete")]
                    if among:
                        seq = among[arg % len(among)]
                        if op == "complete":
                            log.append_many([], completions=[done(seq)])
                        else:
                            uncomplete(log, seq)
                        calls[seq] = op == "complete"
                elif op == "tally":
                    written, now = log.tally(settle=0), {s for s, c in calls.items() if c}
                    if written is not None:
                        seen[written] = now
                    elif calls:  # nothing new to state: the latest tally saw exactly this, of the rows
                        # not pruned since (a pruned row's completion lives on in the checkpoint's count)
                        assert seen and seen[max(seen)] & set(calls) == now, (seen, calls, now)
                elif op == "prune":
                    before = 1000.0 + arg + 0.5
                    cut = [s for s in alive if ts[s] < before]
                    if not cut:
                        continue
                    last = cut[-1]
                    refuse = any(not calls[s] and any(s in saw for t, saw in seen.items()) for s in cut)
                    if refuse:
                        event("a prune refused")
                        with pytest.raises(AuditError, match="prune would delete that evidence"):
                            log.prune(before)
                        continue
                    log.prune(before)
                    for s in cut:
                        del calls[s]
                    seen = {t: saw for t, saw in seen.items() if t > last}
            expected = any(not calls.get(s, True) for saw in seen.values() for s in saw)
            event(f"a completion removed behind a tally: {expected}")
            report = log.verify()
            assert report.ok is not expected, (report.problems, calls, seen)
            assert all("a completion was removed" in p for p in report.problems), report.problems
        finally:
            log.close()
