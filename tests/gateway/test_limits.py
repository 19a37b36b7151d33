"""Per-principal limits: the limiter on a fake clock (unit and property tests), the [limits] config,
and limits_layer around real terminals that end in every way (result, error, cancellation, timeout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError

from toolcrib.config import LimitsConfig, parse_config
from toolcrib.errors import ConfigError
from toolcrib.gateway.pipeline import LIMITED, Pipeline, UpstreamCall, limits_layer, tool_error
from toolcrib.gateway.trust.identity import Principal
from toolcrib.gateway.trust.limits import (
    CONCURRENCY_RULE,
    NO_SLOT,
    RATE_RULE,
    WINDOW,
    Limiter,
    Limits,
    Refusal,
    Slot,
    most_generous,
)

A = Principal("key", "a")
B = Principal("key", "b")


class Clock:
    """A settable clock in seconds."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _limiter(per_minute: int = 0, concurrent: int = 0, **groups: Limits) -> tuple[Limiter, Clock]:
    clock = Clock()
    return Limiter(Limits(per_minute, concurrent), groups, clock=clock), clock


# ---- the limiter ----------------------------------------------------------------------------------


def test_rate_limit_refuses_past_the_figure_then_recovers_when_the_oldest_call_leaves_the_window() -> None:
    limiter, clock = _limiter(per_minute=3)
    for _ in range(3):
        assert limiter.admit(A) is NO_SLOT
        clock.now += 10
    refused = limiter.admit(A)
    assert isinstance(refused, Refusal) and refused.rule == RATE_RULE
    assert refused.retry_after == 30  # the first call (t=0) leaves the window at t=60; now t=30
    assert refused.message == (
        "Rate limit: key:a may make 3 calls per minute ([limits] calls_per_minute); retry in 30 s"
    )
    clock.now += 29.5
    again = limiter.admit(A)
    assert isinstance(again, Refusal) and again.retry_after == 1  # never 0: at least one second
    clock.now += 0.5
    assert limiter.admit(A) is NO_SLOT  # recovered: t=60 exactly, the first call is out
    assert isinstance(limiter.admit(A), Refusal)  # the second one (t=10) is still in


def test_refused_calls_are_not_counted() -> None:
    limiter, clock = _limiter(per_minute=1)
    assert limiter.admit(A) is NO_SLOT
    for _ in range(100):
        clock.now += 0.5
        assert isinstance(limiter.admit(A), Refusal)
    clock.now = 1000.0 + WINDOW
    assert limiter.admit(A) is NO_SLOT


def test_concurrency_slots_are_taken_and_given_back() -> None:
    limiter, _ = _limiter(concurrent=2)
    one, two = limiter.admit(A), limiter.admit(A)
    assert isinstance(one, Slot) and isinstance(two, Slot) and limiter.in_flight("key:a") == 2
    third = limiter.admit(A)
    assert isinstance(third, Refusal) and third.rule == CONCURRENCY_RULE and third.retry_after is None
    assert third.message == (
        "Too many calls in flight for key:a (max 2, [limits] concurrent_calls); retry when one finishes"
    )
    one.release()
    one.release()  # idempotent: a second release frees nothing more
    assert limiter.in_flight("key:a") == 1
    assert isinstance(limiter.admit(A), Slot)
    assert isinstance(limiter.admit(A), Refusal)


def test_a_concurrency_refusal_costs_no_rate() -> None:
    limiter, _ = _limiter(per_minute=2, concurrent=1)
    held = limiter.admit(A)
    assert isinstance(held, Slot)
    for _ in range(5):
        refused = limiter.admit(A)
        assert isinstance(refused, Refusal) and refused.rule == CONCURRENCY_RULE
    held.release()
    assert isinstance(limiter.admit(A), Slot)  # the second of two per minute


def test_principals_are_independent() -> None:
    limiter, _ = _limiter(per_minute=1, concurrent=1)
    assert isinstance(limiter.admit(A), Slot)
    assert isinstance(limiter.admit(A), Refusal)
    assert isinstance(limiter.admit(B), Slot)
    assert isinstance(limiter.admit(Principal("oauth", "a")), Slot)  # key:a and oauth:a are different callers


def test_the_most_generous_group_wins_and_unset_keys_take_the_default() -> None:
    cfg = LimitsConfig.model_validate(
        {
            "calls_per_minute": 10,
            "concurrent_calls": 2,
            "groups": {
                "ci": {"calls_per_minute": 100},
                "batch": {"calls_per_minute": 50, "concurrent_calls": 8},
                "admins": {"calls_per_minute": 0, "concurrent_calls": 0},
            },
        }
    )
    limiter = Limiter.from_config(cfg)
    assert limiter.limits_for(Principal("key", "x")) == Limits(10, 2)
    assert limiter.limits_for(Principal("key", "x", frozenset({"other"}))) == Limits(10, 2)
    assert limiter.limits_for(Principal("key", "x", frozenset({"ci"}))) == Limits(100, 2)
    assert limiter.limits_for(Principal("key", "x", frozenset({"ci", "batch"}))) == Limits(100, 8)
    assert limiter.limits_for(Principal("key", "x", frozenset({"ci", "admins"}))) == Limits(0, 0)
    assert most_generous([3, 0, 9]) == 0 and most_generous([3, 9]) == 9


def test_all_zero_is_disabled() -> None:
    assert not Limiter.from_config(LimitsConfig()).enabled
    assert Limiter.from_config(LimitsConfig.model_validate({"groups": {"g": {"concurrent_calls": 1}}})).enabled


def test_idle_principals_are_forgotten() -> None:
    limiter, clock = _limiter(per_minute=5)
    for i in range(50):
        limiter.admit(Principal("key", f"k{i}"))
    clock.now += WINDOW * 2
    limiter.admit(A)
    assert set(limiter._admitted) == {"key:a"}


def test_limits_config_errors_name_the_key() -> None:
    for bad, says in (
        ({"calls_per_minute": -1}, "limits.calls_per_minute"),
        ({"burst": 3}, "limits.burst: unknown key"),
        ({"groups": {"ci": {"rate": 3}}}, "limits.groups.ci.rate: unknown key"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_config({"limits": bad}, Path("toolcrib.toml"))
        assert says in err.value.message


# ---- property: never more than the figure in any window, and refused only when full -----------------

steps = st.lists(
    st.tuples(st.integers(min_value=0, max_value=40_000), st.sampled_from([A, B])),  # 1/1024 s between calls
    min_size=1,
    max_size=60,
)


@settings(max_examples=1500, deadline=None)
@given(per_minute=st.integers(min_value=1, max_value=8), steps=steps)
def test_no_window_ever_holds_more_than_the_figure(per_minute: int, steps: list[tuple[int, Principal]]) -> None:
    limiter, clock = _limiter(per_minute=per_minute)
    admitted: dict[str, list[float]] = {"key:a": [], "key:b": []}
    for gap_ms, who in steps:
        clock.now += gap_ms / 1024  # exact in binary: the boundaries are compared without rounding noise
        mine = admitted[who.id]
        in_window = [t for t in mine if t > clock.now - WINDOW]
        got = limiter.admit(who)
        if isinstance(got, Refusal):
            assert len(in_window) >= per_minute  # refused only when the window is full
            assert got.retry_after is not None and got.retry_after >= 1
            # the wait is just enough: the call that frees a place leaves the window within it
            oldest_needed = in_window[len(in_window) - per_minute]
            assert oldest_needed + WINDOW <= clock.now + got.retry_after
            assert got.retry_after == 1 or clock.now + got.retry_after - 1 < oldest_needed + WINDOW
        else:
            assert len(in_window) < per_minute
            mine.append(clock.now)
    for times in admitted.values():
        for i, t in enumerate(times):  # every window (t - 60, t] ending at an admitted call
            assert sum(1 for u in times[: i + 1] if u > t - WINDOW) <= per_minute


@settings(max_examples=1000, deadline=None)
@given(per_minute=st.integers(min_value=1, max_value=5), gaps=st.lists(st.integers(0, 70_000), max_size=40))
def test_after_retry_after_the_call_is_admitted(per_minute: int, gaps: list[int]) -> None:
    limiter, clock = _limiter(per_minute=per_minute)
    for gap in gaps:
        clock.now += gap / 1024
        got = limiter.admit(A)
        if isinstance(got, Refusal):
            assert got.retry_after is not None
            clock.now += got.retry_after
            assert limiter.admit(A) is NO_SLOT


@settings(max_examples=1000, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.sampled_from([A, B])), max_size=50), cap=st.integers(1, 4))
def test_in_flight_never_exceeds_the_figure(ops: list[tuple[bool, Principal]], cap: int) -> None:
    limiter, _ = _limiter(concurrent=cap)
    held: dict[str, list[Slot]] = {"key:a": [], "key:b": []}
    for start, who in ops:
        mine = held[who.id]
        if start or not mine:
            got = limiter.admit(who)
            assert isinstance(got, Refusal) == (len(mine) >= cap)
            if isinstance(got, Slot):
                mine.append(got)
        else:
            mine.pop(0).release()
        assert limiter.in_flight(who.id) == len(mine) <= cap


# ---- the layer: the slot comes back however the call ends --------------------------------------------


def _call(method: str = "tools/call", kind: Any = "tool") -> UpstreamCall:
    return UpstreamCall(principal=A, method=method, kind=kind, target="s__t", server="s", name="t", arguments={})


async def _ok(call: UpstreamCall) -> types.CallToolResult:
    return tool_error("fine")


async def _protocol_error(call: UpstreamCall) -> types.CallToolResult:
    raise MCPError(code=types.INTERNAL_ERROR, message="upstream said no")


async def _crash(call: UpstreamCall) -> types.CallToolResult:
    raise RuntimeError("boom")


async def _forever(call: UpstreamCall) -> types.CallToolResult:
    await anyio.sleep_forever()
    raise AssertionError


@pytest.mark.anyio
async def test_the_layer_gives_the_slot_back_however_the_call_ends() -> None:
    limiter, _ = _limiter(concurrent=1)
    layer = limits_layer(limiter)
    await Pipeline([layer], _ok).call(_call())
    with pytest.raises(MCPError):
        await Pipeline([layer], _protocol_error).call(_call())
    with pytest.raises(RuntimeError):
        await Pipeline([layer], _crash).call(_call())
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.05):
            await Pipeline([layer], _forever).call(_call())
    with anyio.CancelScope() as scope:
        scope.cancel()
        await Pipeline([layer], _forever).call(_call())
    assert limiter.in_flight("key:a") == 0


@pytest.mark.anyio
async def test_the_layer_refuses_with_a_json_rpc_error_and_records_the_rule() -> None:
    limiter, _ = _limiter(per_minute=1)
    pipeline = Pipeline([limits_layer(limiter)], _ok)
    await pipeline.call(_call())
    refused = _call()
    with pytest.raises(MCPError) as err:
        await pipeline.call(refused)
    assert err.value.error.code == LIMITED
    assert err.value.error.data == {"retryAfter": 60}
    assert refused.state.outcome == "denied"
    assert refused.state.decision is not None and refused.state.decision.rule == RATE_RULE
    assert refused.state.decision.action == "deny"
    # giving something back is never refused nor counted
    for method in ("resources/unsubscribe", "tasks/cancel"):
        await pipeline.call(_call(method, "resource"))


@pytest.mark.anyio
async def test_with_every_figure_zero_the_layer_only_forwards() -> None:
    limiter, _ = _limiter()
    pipeline = Pipeline([limits_layer(limiter)], _ok)
    for _ in range(50):
        await pipeline.call(_call())
