"""Property tests of the resumable-SSE parts (:mod:`toolcrib.gateway.edge.resume`): the
``Last-Event-ID`` parser and the replay buffer's caps and replay rule, on the real objects."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.gateway.edge.resume import Refused, Replay, parse_event_id

HEX16 = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)
SEQ = st.integers(min_value=0, max_value=10**18 - 1)


@settings(max_examples=1500)
@given(HEX16, SEQ)
def test_issued_ids_parse_back(stream: str, seq: int) -> None:
    assert parse_event_id(f"{stream}-{seq}") == (stream, seq)


@settings(max_examples=3000)
@given(
    st.one_of(
        st.text(max_size=40),
        st.text(alphabet=string.hexdigits + "-0123456789 \t", max_size=40),
        st.builds(
            lambda s, n, pad: f"{pad}{s}-{n}{pad}",
            HEX16,
            st.text(alphabet="0123456789", max_size=20),
            st.text(max_size=2),
        ),
    )
)
def test_only_the_canonical_form_parses(value: str) -> None:
    parsed = parse_event_id(value)
    if parsed is not None:
        assert f"{parsed[0]}-{parsed[1]}" == value, "one spelling per id: no padding, case or leading zeros"


@settings(max_examples=3000)
@given(st.binary(max_size=64))
def test_the_parser_never_raises(raw: bytes) -> None:
    parse_event_id(raw.decode("latin-1"))


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.booleans()),
        st.tuples(st.just("append"), st.integers(0, 7), st.integers(0, 400)),
        st.tuples(st.just("finish"), st.integers(0, 7)),
    ),
    max_size=60,
)


def _noop(*_: Any) -> None:
    return None


@settings(max_examples=1200, deadline=None)
@given(OPS, st.integers(1, 12), st.integers(60, 3000))
def test_caps_hold_and_replay_is_exactly_the_later_kept_events(
    ops: list[tuple[Any, ...]], max_events: int, max_bytes: int
) -> None:
    replay = Replay(_noop, max_events=max_events, max_bytes=max_bytes, max_age=3600.0)
    opened = []
    for op in ops:
        if op[0] == "open":
            opened.append(replay.open(standalone=op[1]))
        elif op[0] == "append" and opened:
            log = opened[op[1] % len(opened)]
            if not log.done:
                replay.append(log, "x" * op[2])
        elif op[0] == "finish" and opened:
            replay.finish(opened[op[1] % len(opened)])
        assert replay.count <= max_events and replay.size <= max_bytes
        assert replay.count == sum(len(lg.events) for lg in replay.streams.values())
        assert replay.size == sum(len(f) for lg in replay.streams.values() for _, _, f in lg.events)
    for log in replay.streams.values():
        seqs = [s for s, _, _ in log.events]
        assert seqs == list(range(log.last - len(seqs) + 1, log.last + 1)), "kept events are the newest, no gaps"
        for k in range(-1, log.last + 2):
            if k < 0 or k > log.last:
                with pytest.raises(Refused) as why:
                    replay.find(f"{log.id}-{k}" if k >= 0 else f"{log.id}-x")
                assert why.value.status in (400, 410)
            elif k < log.dropped:
                with pytest.raises(Refused) as why:
                    replay.find(f"{log.id}-{k}")
                assert why.value.status == 410
            else:
                found, cursor = replay.find(f"{log.id}-{k}")
                assert found is log and cursor == k
                assert [s for s, _ in log.after(k)] == list(range(k + 1, log.last + 1))


def test_a_refusal_is_one_line() -> None:
    replay = Replay(_noop)
    for header in ("nonsense", f"{'a' * 16}-3"):
        with pytest.raises(Refused) as why:
            replay.find(header)
        assert why.value.text.count("\n") == 1 and why.value.text.endswith("\n")
