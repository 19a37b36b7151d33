"""Per-principal limits: calls per minute and calls in flight, keyed by :attr:`Principal.id`.

``[limits]`` (see :class:`toolcrib.config.LimitsConfig`) sets two numbers, each 0 for off:

- ``calls_per_minute``: an exact sliding window. A call is admitted when the principal had fewer
  than N calls admitted in the last 60 seconds, so no 60-second window ever holds more than N
  admitted calls (a burst of N at once is allowed, and then nothing until the oldest is 60 s old).
  Refused calls are not counted. A refusal says when the next call would be admitted.
- ``concurrent_calls``: at most N of the principal's calls are in flight at once; a slot is taken
  when the call is admitted and given back when it ends, however it ends.

``[limits.groups.NAME]`` overrides either number for principals in group NAME; when several of a
principal's groups set a number, the most generous wins (0, off, beats any figure).

**Per replica.** The counts live in this process's memory: with R replicas behind a load balancer a
principal may make up to R x ``calls_per_minute`` calls per minute and R x ``concurrent_calls``
calls at once in total. Restarting a replica forgets its counts.

What counts: every request bound for an upstream that passes the pipeline (``tools/call``, by name
or through ``invoke``, ``resources/read``, ``resources/subscribe``, ``prompts/get``,
``completion/complete``, ``tasks/get``/``result``/``update``); see
:func:`toolcrib.gateway.pipeline.limits_layer`. ``search_tools`` and list requests do not.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from toolcrib.gateway.trust.identity import Principal

if TYPE_CHECKING:
    from toolcrib.config import LimitsConfig

WINDOW = 60.0
"""Seconds of the rate limit's sliding window."""
Rule = Literal["limits.rate", "limits.concurrency"]
RATE_RULE: Rule = "limits.rate"
CONCURRENCY_RULE: Rule = "limits.concurrency"
_SWEEP_EVERY = WINDOW
"""Seconds between sweeps that forget principals with no call in the last window."""


@dataclass(frozen=True)
class Limits:
    """The limits in force for one principal; 0 means no limit."""

    calls_per_minute: int = 0
    concurrent_calls: int = 0


@dataclass(frozen=True)
class Refusal:
    """Why a call was not admitted: ``rule`` (:data:`RATE_RULE` or :data:`CONCURRENCY_RULE`), the
    one-line ``message`` the client reads, and for the rate limit ``retry_after`` (whole seconds,
    at least 1) after which the next call is admitted."""

    rule: Rule
    message: str
    retry_after: int | None = None


class Slot:
    """An admitted call's concurrency slot; :meth:`release` gives it back (idempotent)."""

    __slots__ = ("_key", "_limiter")

    def __init__(self, limiter: Limiter | None, key: str) -> None:
        self._limiter = limiter
        self._key = key

    def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release(self._key)


NO_SLOT = Slot(None, "")
"""What an admitted call gets when no concurrency limit applies to it (releasing it does nothing)."""


def most_generous(values: Iterable[int]) -> int:
    """The most generous of several limits where 0 means unlimited: 0 if any is 0, else the largest."""
    best = -1
    for value in values:
        if value == 0:
            return 0
        best = max(best, value)
    return best


class Limiter:
    """Admits or refuses calls per principal; one per process (the limits hold per replica).

    ``clock`` returns seconds on a monotonic scale (default :func:`time.monotonic`); tests pass a
    fake one. Not thread-safe: call it from the event loop only (it never awaits).
    """

    def __init__(
        self,
        default: Limits,
        groups: dict[str, Limits] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default = default
        self.groups = dict(groups or {})
        self.clock = clock
        self._admitted: dict[str, deque[float]] = {}
        self._in_flight: dict[str, int] = {}
        self._by_groups: dict[frozenset[str], Limits] = {}
        self._swept = clock()

    @classmethod
    def from_config(cls, config: LimitsConfig, *, clock: Callable[[], float] = time.monotonic) -> Limiter:
        """The limiter ``[limits]`` describes; a group's unset key takes the ``[limits]`` value."""
        default = Limits(config.calls_per_minute, config.concurrent_calls)
        groups = {
            name: Limits(
                default.calls_per_minute if g.calls_per_minute is None else g.calls_per_minute,
                default.concurrent_calls if g.concurrent_calls is None else g.concurrent_calls,
            )
            for name, g in config.groups.items()
        }
        return cls(default, groups, clock=clock)

    @property
    def enabled(self) -> bool:
        """False when no principal can ever be limited (every number is 0): the layer is then a no-op."""
        every = [self.default, *self.groups.values()]
        return any(lim.calls_per_minute or lim.concurrent_calls for lim in every)

    def limits_for(self, principal: Principal) -> Limits:
        """``[limits]``, or the most generous of the principal's groups that have an override."""
        if not self.groups or not principal.groups:
            return self.default
        cached = self._by_groups.get(principal.groups)
        if cached is not None:
            return cached
        matching = [self.groups[g] for g in principal.groups if g in self.groups]
        limits = self.default
        if matching:
            limits = Limits(
                most_generous(lim.calls_per_minute for lim in matching),
                most_generous(lim.concurrent_calls for lim in matching),
            )
        if len(self._by_groups) < 1024:
            self._by_groups[principal.groups] = limits
        return limits

    def admit(self, principal: Principal) -> Slot | Refusal:
        """Admit one call of ``principal`` (a :class:`Slot` to release when it ends) or refuse it.

        The concurrency limit is checked first; a refused call is not counted by either limit."""
        limits = self.limits_for(principal)
        key = principal.id
        now = self.clock()
        if now - self._swept >= _SWEEP_EVERY:
            self._sweep(now)
        concurrent = limits.concurrent_calls
        if concurrent and self._in_flight.get(key, 0) >= concurrent:
            return Refusal(
                CONCURRENCY_RULE,
                f"Too many calls in flight for {key} (max {concurrent}, [limits] concurrent_calls); "
                "retry when one finishes",
            )
        per_minute = limits.calls_per_minute
        if per_minute:
            times = self._admitted.get(key)
            if times is None:
                times = self._admitted[key] = deque()
            horizon = now - WINDOW
            while times and times[0] <= horizon:
                times.popleft()
            if len(times) >= per_minute:
                wait = max(1, math.ceil(times[len(times) - per_minute] + WINDOW - now))
                return Refusal(
                    RATE_RULE,
                    f"Rate limit: {key} may make {per_minute} calls per minute ([limits] calls_per_minute); "
                    f"retry in {wait} s",
                    retry_after=wait,
                )
            times.append(now)
        if not concurrent:
            return NO_SLOT
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return Slot(self, key)

    def in_flight(self, principal_id: str) -> int:
        """Calls of ``principal_id`` holding a concurrency slot now."""
        return self._in_flight.get(principal_id, 0)

    def _release(self, key: str) -> None:
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def _sweep(self, now: float) -> None:
        """Forget principals whose last admitted call is older than the window (bounded memory)."""
        horizon = now - WINDOW
        for key in [k for k, times in self._admitted.items() if not times or times[-1] <= horizon]:
            del self._admitted[key]
        self._swept = now
