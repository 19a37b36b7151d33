"""Sealed tokens (requestState, task ids, approval state): only toolcrib mints them, for one purpose
and one principal; anything else a client sends back is refused with InvalidToken, never a crash."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.gateway.trust.sealed import PREFIX, InvalidToken, Sealer

SEALER = Sealer(b"k" * 32)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=1000)
@given(data=JSON, who=st.text(min_size=1, max_size=30))
def test_round_trip(data: object, who: str) -> None:
    token = SEALER.seal("request_state", who, data, ttl=60)
    assert token.startswith(PREFIX)
    assert SEALER.open(token, "request_state", who) == data


@settings(max_examples=1000)
@given(data=JSON, position=st.integers(min_value=0), replacement=st.characters(codec="ascii"))
def test_any_change_to_a_token_is_refused(data: object, position: int, replacement: str) -> None:
    token = SEALER.seal("task", "key:alice", data, ttl=60)
    i = position % len(token)
    changed = token[:i] + replacement + token[i + 1 :]
    if changed == token:
        return
    with pytest.raises(InvalidToken):
        SEALER.open(changed, "task", "key:alice")


@settings(max_examples=1000)
@given(junk=st.one_of(st.text(max_size=200), st.binary(max_size=100), st.integers(), st.none()))
def test_anything_else_is_refused_cleanly(junk: object) -> None:
    with pytest.raises(InvalidToken):
        SEALER.open(junk, "request_state", "key:alice")
    if isinstance(junk, str):
        with pytest.raises(InvalidToken):
            SEALER.open(PREFIX + junk, "request_state", "key:alice")


def test_bound_to_purpose_principal_key_and_time() -> None:
    token = SEALER.seal("request_state", "key:alice", {"n": 1}, ttl=60)
    for purpose, who in (("task", "key:alice"), ("request_state", "key:bob"), ("request_state", "jwt:alice")):
        with pytest.raises(InvalidToken):
            SEALER.open(token, purpose, who)
    with pytest.raises(InvalidToken):
        Sealer(os.urandom(32)).open(token, "request_state", "key:alice")
    expired = SEALER.seal("request_state", "key:alice", {"n": 1}, ttl=-5)
    with pytest.raises(InvalidToken, match="expired"):
        SEALER.open(expired, "request_state", "key:alice")
