"""Running a fuzz target: a quick pytest run of N examples, or a time-bounded run of many batches."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st


@dataclass(frozen=True)
class Target:
    """``strategy`` draws one input; ``check`` raises (AssertionError or anything) when the code under test is wrong."""

    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]


@dataclass
class Stats:
    name: str
    inputs: int = 0
    failures: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return f"fuzz {self.name}: {self.inputs} inputs, {self.failures} failures in {self.seconds:.0f} s"


def as_test(target: Target, config: settings, counter: list[int] | None = None) -> Callable[[], None]:
    """The target as a hypothesis test (call it to run ``config.max_examples`` examples)."""

    @config
    @given(target.strategy)
    def run(value: Any) -> None:
        if counter is not None:
            counter[0] += 1
        target.check(value)

    return run


def quick_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def fuzz(target: Target, seconds: float) -> Stats:
    """Run ``target`` for about ``seconds`` in batches sized from the measured rate; stop at the first failure.

    A failure is reported by hypothesis (shrunk falsifying example and traceback, on stderr).
    """
    stats = Stats(target.name)
    counter = [0]
    start = time.monotonic()
    batch = 200
    while time.monotonic() - start < seconds:
        config = settings(
            max_examples=batch,
            deadline=None,
            database=None,
            phases=(Phase.generate, Phase.target, Phase.shrink),
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        before, t0 = counter[0], time.monotonic()
        try:
            as_test(target, config, counter)()
        except Exception:
            traceback.print_exc()
            stats.failures += 1
            break
        rate = (counter[0] - before) / max(time.monotonic() - t0, 1e-3)
        remaining = seconds - (time.monotonic() - start)
        batch = int(max(50, min(rate * remaining, rate * 20)))
    stats.inputs = counter[0]
    stats.seconds = time.monotonic() - start
    return stats
