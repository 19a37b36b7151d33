"""Learning from use (toolcrib/index/usage.py): mining pairs from a real audit log on both backends,
incremental by seq; decay, caps and reset (hypothesis); the signal in search, inside the policy
boundary (``allowed``); both stores."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.gateway.audit.backends import AuditLog
from toolcrib.gateway.audit.events import AuditEvent, Completion
from toolcrib.gateway.audit.log import SqliteAuditLog
from toolcrib.gateway.audit.log_pg import PostgresAuditLog
from toolcrib.index.documents import ToolDoc
from toolcrib.index.embedder import HashingEmbedder
from toolcrib.index.search import ToolIndex, compose
from toolcrib.index.usage import (
    DAY,
    FileUsage,
    PgUsage,
    UsageMiner,
    UsageSignal,
    UsageState,
    export_rows,
    pairs,
    replay,
)
from toolcrib.storage import migrations
from toolcrib.storage.postgres import Database

KEY = b"k" * 32
T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "pg"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[AuditLog, Any, Database | None]]:
    if request.param == "sqlite":
        log: AuditLog = SqliteAuditLog(tmp_path / "audit.db", hmac_key=KEY)
        yield log, FileUsage(tmp_path / "index"), None
        log.close()
        return
    db = Database(request.getfixturevalue("pg_url")).open()
    migrations.upgrade(db)
    yield PostgresAuditLog(db, hmac_key=KEY), PgUsage(db), db
    db.close()


def search(query: str, results: list[str], *, who: str = "alice", session: str = "s1", ts: float = T0) -> AuditEvent:
    return AuditEvent(kind="search", principal=who, session=session, query=query, results=results, ts=ts)


def call(
    tool: str,
    *,
    who: str = "alice",
    session: str = "s1",
    ts: float = T0 + 5,
    outcome: str = "ok",
    decision: str = "allow",
) -> AuditEvent:
    return AuditEvent(
        kind="outcome",
        principal=who,
        session=session,
        tool=tool,
        outcome=outcome,  # type: ignore[arg-type]
        decision=decision,
        method="tools/call:invoke",
        ts=ts,
    )


def test_mining_pairs_only_successful_calls_of_returned_tools(backend: tuple[AuditLog, Any, Any]) -> None:
    audit, store, _ = backend
    audit.append_many(
        [
            search("add two numbers", ["echo__add", "echo__echo"]),
            call("echo__add"),  # the pair
            call("echo__echo", outcome="tool_error"),  # failed
            search("sum of a list", ["echo__add"], ts=T0 + 10),
            call("echo__add", decision="deny", outcome="denied", ts=T0 + 11),  # denied
            search("quarantined thing", ["evil__tool"], ts=T0 + 20),
            call("evil__tool", outcome="denied", decision="deny", ts=T0 + 21),  # quarantined: refused
            search("print text", ["echo__echo"], who="bob", session="s2", ts=T0 + 30),
            call("echo__echo", who="alice", session="s2", ts=T0 + 31),  # another principal
            search("repeat a message", ["echo__echo"], session="s3", ts=T0 + 40),
            call("echo__echo", session="s4", ts=T0 + 41),  # another session
            search("shout text back", ["echo__echo"], session="s5", ts=T0 + 50),
            call("echo__echo", session="s5", ts=T0 + 50 + 601),  # outside the window
            search("time in tokyo", ["time__now"], session="s6", ts=T0 + 60),
            call("echo__add", session="s6", ts=T0 + 61),  # not among the results
            search("approve then sleep", ["echo__sleep"], session="s7", ts=T0 + 70),
            call("echo__sleep", session="s7", decision="approve", ts=T0 + 80),  # approved: a pair
        ]
    )
    signal = UsageSignal()
    miner = UsageMiner(audit, store, HashingEmbedder(), signal)
    report = miner.mine(now=T0 + 100)
    assert report.pairs == 2 and report.anchors == 2
    state = store.load()
    assert {(t, a.text) for t, anchors in state.anchors.items() for a in anchors} == {
        ("echo__add", "add two numbers"),
        ("echo__sleep", "approve then sleep"),
    }
    assert len(signal) == 2 and state.last_seq == report.last_seq
    # incremental: nothing new, nothing mined again
    again = miner.mine(now=T0 + 100)
    assert again.pairs == 0 and store.load().anchors["echo__add"][0].count == 1
    # a later call in the same session pairs with a search mined in the previous pass
    audit.append(call("echo__add", ts=T0 + 200))
    third = miner.mine(now=T0 + 300)
    assert third.pairs == 1
    # the latest search of that session that returned the tool led to it: "sum of a list"
    assert sorted(a.text for a in store.load().anchors["echo__add"]) == ["add two numbers", "sum of a list"]
    audit.append(call("echo__add", ts=T0 + 210))  # the same search again: a repeat use of its anchor
    assert miner.mine(now=T0 + 300).pairs == 1
    rows = export_rows(store.load(), now=T0 + 300)
    assert [(r["query"], r["count"]) for r in rows if r["tool"] == "echo__add"] == [
        ("sum of a list", 2),
        ("add two numbers", 1),
    ]
    assert 0.74 < rows[0]["weight"] <= 0.75


def test_mining_reads_call_rows_and_waits_for_one_in_flight(backend: tuple[AuditLog, Any, Any]) -> None:
    """A ``call`` row is one forwarded call, completed in place after its seq was handed out: mining
    pairs a completed ``ok`` one, and does not move past one still in flight (it may yet end ``ok``)."""
    audit, store, _ = backend
    audit.append(search("add two numbers", ["echo__add"]))
    fields: dict[str, Any] = {"principal": "alice", "session": "s1", "tool": "echo__add", "method": "tools/call:invoke"}
    flying = audit.append(AuditEvent(kind="call", outcome="pending", ts=T0 + 5, arguments={"a": 1}, **fields))
    audit.append(search("unrelated", ["time__now"], ts=T0 + 6))
    miner = UsageMiner(audit, store, HashingEmbedder(), UsageSignal())
    first = miner.mine(now=T0 + 100)
    assert first.pairs == 0 and first.last_seq == flying - 1
    audit.append_many([], completions=[Completion(seq=flying, outcome="ok", decision="allow")])
    second = miner.mine(now=T0 + 100)
    assert second.pairs == 1 and second.last_seq == flying + 1
    assert [a.text for a in store.load().anchors["echo__add"]] == ["add two numbers"]
    failed = audit.append(AuditEvent(kind="call", outcome="pending", ts=T0 + 7, arguments={"a": 2}, **fields))
    audit.append_many([], completions=[Completion(seq=failed, outcome="tool_error", decision="allow")])
    assert miner.mine(now=T0 + 100).pairs == 0  # a failed call teaches nothing
    stale = audit.append(AuditEvent(kind="call", outcome="pending", ts=T0 + 8, arguments={"a": 3}, **fields))
    assert miner.mine(now=T0 + 10_000).last_seq == stale  # unfinished long ago: mined past


def test_multi_query_searches_pair_each_query() -> None:
    rows = [
        {
            "seq": 1,
            "kind": "search",
            "principal": "a",
            "session": "s",
            "ts": T0,
            "query": json.dumps(["x y", "z"]),
            "results": ["t"],
        },
        {
            "seq": 2,
            "kind": "outcome",
            "principal": "a",
            "session": "s",
            "ts": T0 + 1,
            "outcome": "ok",
            "decision": "allow",
            "tool": "t",
        },
    ]
    assert [p.text for p in pairs(rows[:1], rows[1:])] == ["x y", "z"]


def test_stores_share_state_and_reset(backend: tuple[AuditLog, Any, Any]) -> None:
    _, store, _ = backend
    emb = HashingEmbedder()

    def add(state: UsageState) -> None:
        replay(state, [("a__x", "first query"), ("b__y", "second query")], emb.embed, ts=T0)

    store.update(add)
    loaded = store.load()
    assert set(loaded.anchors) == {"a__x", "b__y"}
    assert np.allclose(loaded.vectors["first query"], emb.embed(["first query"])[0])
    store.update(lambda s: s.reset("a__x") and None)
    assert set(store.load().anchors) == {"b__y"}
    store.update(lambda s: s.reset() and None)
    assert store.load().count() == 0 and not store.load().vectors


uses = st.lists(
    st.tuples(st.sampled_from(["t1", "t2", "t3"]), st.text(min_size=1, max_size=12), st.floats(0, 400 * DAY)),
    max_size=60,
)


@settings(max_examples=1000, deadline=None)
@given(uses, st.integers(1, 6), st.floats(0.5, 90))
def test_weights_never_negative_caps_never_exceeded_reset_empties(
    events: list[tuple[str, str, float]], cap: int, half_life_days: float
) -> None:
    state = UsageState()
    half_life = half_life_days * DAY
    for tool, text, ts in events:
        state.add_use(tool, text, T0 + ts, cap=cap, half_life=half_life)
        assert all(len(a) <= cap for a in state.anchors.values())
    for anchors in state.anchors.values():
        for a in anchors:
            for later in (0.0, 1.0, 30 * DAY, 3000 * DAY):
                w = a.weight(T0 + 400 * DAY + later, half_life)
                assert 0.0 <= w < 1.0
                assert a.mass_at(T0 + 400 * DAY + later, half_life) >= 0.0
            assert a.weight(a.at, half_life) >= a.weight(a.at + DAY, half_life)  # decays with age
    state.reset()
    assert state.count() == 0 and not state.vectors and not state.missing_vectors()


def test_repeat_use_grows_and_age_decays() -> None:
    state = UsageState()
    state.add_use("t", "q", T0)
    one = state.anchors["t"][0].weight(T0, 30 * DAY)
    state.add_use("t", "Q ", T0)  # same normalised text
    two = state.anchors["t"][0].weight(T0, 30 * DAY)
    assert one == pytest.approx(0.5) and two == pytest.approx(0.75) and len(state.anchors["t"]) == 1
    assert state.anchors["t"][0].weight(T0 + 30 * DAY, 30 * DAY) == pytest.approx(0.5)


def _index() -> ToolIndex:
    index = ToolIndex(None, HashingEmbedder())
    index.sync(
        [
            ToolDoc("echo__add", "echo", "add", "Add two integers and return the sum", {}),
            ToolDoc("echo__echo", "echo", "echo", "Echo the given text back", {}),
            ToolDoc("time__now", "time", "now", "The current time in a timezone", {}),
            ToolDoc("notes__write", "notes", "write", "Write a note to the notebook", {}),
        ]
    )
    return index


def test_signal_blends_usage_term_and_never_crosses_allowed() -> None:
    index = _index()
    query = "tally my grocery bill"
    before = {h.key: h.score for h in index.search(query, limit=4)}
    state = replay(
        UsageState(), [("echo__add", "tally my grocery bill please")], index.query_cache.embed, ts=time.time()
    )
    signal = UsageSignal(threshold=0.2)
    signal.load(state)
    index.usage = signal
    hits = index.search(query, limit=4, explain=True)
    top = hits[0]
    assert top.key == "echo__add" and top.score > before.get("echo__add", -1.0)
    assert top.parts is not None and top.parts["usage_term"] > 0
    assert round(compose(top.parts), 6) == top.score
    # bob may not use echo__add: alice's anchor never shows it to him
    bob = index.search(query, limit=4, allowed=lambda key: key != "echo__add", explain=True)
    assert "echo__add" not in [h.key for h in bob]
    signal.enabled = False
    assert {h.key: h.score for h in index.search(query, limit=4)} == before
