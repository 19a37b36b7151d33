"""Prometheus metrics of one gateway, served at ``GET /metrics`` in the text format of
``prometheus_client.CONTENT_TYPE_LATEST`` (``text/plain; version=1.0.0``).

Every :class:`Metrics` owns its own :class:`prometheus_client.CollectorRegistry` (never the global
one: several gateways may run in one process). Names follow the Prometheus naming guide
(https://prometheus.io/docs/practices/naming/): the ``toolcrib_`` prefix, base units (seconds),
``_total`` on counters, ``_seconds`` on durations.

=========================================  =========  ===================================  ==========================
name                                       type       labels                               what
=========================================  =========  ===================================  ==========================
``toolcrib_requests_total``                counter    method, server, tool, outcome        MCP requests answered
``toolcrib_request_duration_seconds``      histogram  method                               time to answer one
``toolcrib_search_duration_seconds``       histogram                                       ``search_tools`` index work
``toolcrib_search_results``                histogram                                       tools one search returned
``toolcrib_upstream_up``                   gauge      server                               1 connected, else 0
``toolcrib_upstream_restarts_total``       counter    server                               reconnections after the first
``toolcrib_approvals_pending``             gauge                                           approval requests undecided
``toolcrib_approval_wait_seconds``         histogram                                       a call's wait for approval
``toolcrib_audit_queue_depth``             gauge                                           audit rows not yet written
``toolcrib_audit_write_duration_seconds``  histogram                                       one batch's write
``toolcrib_sessions``                      gauge                                           open MCP HTTP sessions
``toolcrib_tool_tokens_full_total``        counter                                         tokens of the full tool lists
``toolcrib_tool_tokens_loaded_total``      counter                                         tokens clients really loaded
=========================================  =========  ===================================  ==========================

Label values are bounded: ``method`` is an MCP method the gateway serves (anything else is
``other``); ``server`` a configured server or empty; ``tool`` only on ``tools/call``: the catalog
key of the REAL tool (behind ``invoke`` too), ``search_tools``, or empty when the request named no
tool the catalog holds; ``outcome`` one of :data:`OUTCOMES`. Gauges mirroring live state (upstream
up, sessions, audit queue) are read at scrape time by :class:`_Live`, never on the hot path.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

OUTCOMES = (
    "ok",
    "tool_error",
    "denied",
    "pending",
    "timeout",
    "upstream_crash",
    "protocol_error",
    "error",
    "cancelled",
)
"""``outcome`` label values: as in the audit log (``ok``, ``tool_error`` = a result with ``isError``,
``denied`` by policy, quarantine, approval or a limit, ``pending`` approval, ``timeout``,
``upstream_crash``, ``protocol_error`` = a JSON-RPC error from or about an upstream), plus ``error``
for a request the gateway refused itself before any upstream (unknown tool, bad parameters) and
``cancelled``."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: from half a millisecond (a cached listing) to a minute (a slow tool)."""
SEARCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
RESULT_BUCKETS = (0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
APPROVAL_BUCKETS = (0.1, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
AUDIT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class _Requests(Collector):
    """``toolcrib_requests_total`` and ``toolcrib_request_duration_seconds`` kept in plain dicts of
    numbers and turned into metric families at scrape time: counting a request is a dict update and
    a bisection (about a microsecond), not the locked ``prometheus_client`` children (several). Only
    the event loop's thread records into it."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str, str], int] = {}
        self.buckets: dict[str, list[int]] = {}
        """Per method: observations per bucket of :data:`LATENCY_BUCKETS` (not cumulative), then +Inf."""
        self.sums: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(
            "toolcrib_requests",
            "MCP requests answered, by method, upstream server, tool (tools/call only) and outcome.",
            labels=["method", "server", "tool", "outcome"],
        )
        for key, count in sorted(self.counts.items()):
            counter.add_metric(list(key), float(count))
        yield counter
        histogram = HistogramMetricFamily(
            "toolcrib_request_duration_seconds",
            "Seconds from an MCP request's arrival at the gateway to its answer, by method.",
            labels=["method"],
        )
        bounds = [*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
        for method, counts in sorted(self.buckets.items()):
            running, cumulative = 0, []
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            histogram.add_metric([method], cumulative, self.sums[method])
        yield histogram

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _Live(Collector):
    """Gauges read from the running gateway at scrape time (upstreams, sessions, audit queue)."""

    def __init__(self) -> None:
        self.upstreams: Callable[[], Iterable[tuple[str, bool]]] | None = None
        self.restarts: dict[str, int] = {}
        self.sessions: Callable[[], int] | None = None
        self.audit_queue: Callable[[], int] | None = None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "toolcrib_upstream_up", "1 when the upstream server is connected, else 0.", labels=["server"]
        )
        for name, connected in self.upstreams() if self.upstreams is not None else ():
            up.add_metric([name], 1.0 if connected else 0.0)
        yield up
        restarts = CounterMetricFamily(
            "toolcrib_upstream_restarts",
            "Times an upstream server connected again after its first connection (restart, reconnect, reload).",
            labels=["server"],
        )
        for name, count in sorted(self.restarts.items()):
            restarts.add_metric([name], float(count))
        yield restarts
        yield GaugeMetricFamily(
            "toolcrib_sessions",
            "Open MCP sessions (2025-11-25 Streamable HTTP sessions held by this replica).",
            value=float(self.sessions() if self.sessions is not None else 0),
        )
        yield GaugeMetricFamily(
            "toolcrib_audit_queue_depth",
            "Audit rows queued in memory, not yet written to the log.",
            value=float(self.audit_queue() if self.audit_queue is not None else 0),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    """The metrics of one gateway (see the module docstring for names, types and labels).

    Hot-path methods take seconds as floats: :meth:`request` (every MCP request) updates plain
    dicts; :meth:`searched`, :meth:`approval_waited` and :meth:`audit_written` (which may run on
    worker threads) use ``prometheus_client``'s thread-safe histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._requests = _Requests()
        r.register(self._requests)
        self._search = Histogram(
            "toolcrib_search_duration_seconds",
            "Seconds of search_tools work in the tool index (query embedding and ranking).",
            buckets=SEARCH_BUCKETS,
            registry=r,
        )
        self._results = Histogram(
            "toolcrib_search_results",
            "Tools one search_tools request returned.",
            buckets=RESULT_BUCKETS,
            registry=r,
        )
        self._approval_wait = Histogram(
            "toolcrib_approval_wait_seconds",
            "Seconds a call that needs approval spent in the approval step (held for an operator's decision) "
            "before it went ahead or was refused.",
            buckets=APPROVAL_BUCKETS,
            registry=r,
        )
        self._audit_write = Histogram(
            "toolcrib_audit_write_duration_seconds",
            "Seconds to write one batch of audit rows (one transaction).",
            buckets=AUDIT_BUCKETS,
            registry=r,
        )
        self._tokens_full = Counter(
            "toolcrib_tool_tokens_full",
            "Tokens of the full tool list each tools/list answer would have carried (every tool the principal "
            "may see). Tokens saved = this minus toolcrib_tool_tokens_loaded_total.",
            registry=r,
        )
        self._tokens_loaded = Counter(
            "toolcrib_tool_tokens_loaded",
            "Tokens of tool definitions clients really loaded: tools/list answers plus search_tools results.",
            registry=r,
        )
        self.approvals_pending = Gauge(
            "toolcrib_approvals_pending",
            "Approval requests waiting for an operator's decision (read from the approval store at scrape time).",
            registry=r,
        )
        self.live = _Live()
        r.register(self.live)

    # ---- hot path ---------------------------------------------------------------------------

    def request(self, method: str, server: str, tool: str, outcome: str, seconds: float) -> None:
        """Count one answered MCP request and observe its duration (seconds). Event loop thread only."""
        requests = self._requests
        key = (method, server, tool, outcome)
        requests.counts[key] = requests.counts.get(key, 0) + 1
        buckets = requests.buckets.get(method)
        if buckets is None:
            buckets = requests.buckets[method] = [0] * (len(LATENCY_BUCKETS) + 1)
            requests.sums[method] = 0.0
        buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bound >= seconds (le), else +Inf
        requests.sums[method] += seconds

    def searched(self, seconds: float) -> None:
        """One ``search_tools`` index search took ``seconds``."""
        self._search.observe(seconds)

    def search_results(self, count: int) -> None:
        """One ``search_tools`` request returned ``count`` tools."""
        self._results.observe(count)

    def approval_waited(self, seconds: float) -> None:
        """A call spent ``seconds`` in the approval step."""
        self._approval_wait.observe(seconds)

    def audit_written(self, seconds: float) -> None:
        """One batch of audit rows took ``seconds`` to write."""
        self._audit_write.observe(seconds)

    def tokens(self, full: int, loaded: int) -> None:
        """One savings record (tokens, both >= 0): the ledger's ``on_record``
        (:class:`toolcrib.observe.savings.SavingsLedger`)."""
        if full:
            self._tokens_full.inc(full)
        if loaded:
            self._tokens_loaded.inc(loaded)

    def upstream_restarted(self, server: str) -> None:
        """``server`` connected again after its first connection."""
        self.live.restarts[server] = self.live.restarts.get(server, 0) + 1

    # ---- scrape -----------------------------------------------------------------------------

    def render(self) -> bytes:
        """The exposition text of every metric (``prometheus_client.CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


class TimedLog:
    """An audit log (:class:`~toolcrib.gateway.audit.writer.BatchLog`) whose batch writes are timed
    into ``toolcrib_audit_write_duration_seconds``; everything else is the wrapped log's."""

    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    @property
    def blocking_io(self) -> bool:
        return bool(self._inner.blocking_io)

    def append_many(self, events: Sequence[Any], *, wait: bool = True, completions: Sequence[Any] = ()) -> list[int]:
        started = time.perf_counter()
        try:
            more = {"completions": completions} if completions else {}
            seqs: list[int] = self._inner.append_many(events, wait=wait, **more)
            return seqs
        finally:
            self._metrics.audit_written(time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


__all__ = ["OUTCOMES", "Metrics", "TimedLog"]
