"""Overview: upstreams with their state, calls per minute, error rate, pending approvals, index size
and tokens saved today. ``GET /console`` (the page) and ``GET /console/overview/live`` (the same
figures as a fragment, polled every 5 s)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sized
from typing import Any

from aiohttp import web

from toolcrib.console import web as cw
from toolcrib.console.app import Console, Route

WINDOW = 300.0
"""Seconds of audit outcomes the rates are computed over (5 minutes)."""


def routes(console: Console) -> list[Route]:
    async def overview(request: web.Request) -> web.Response:
        return cw.page("overview.html", request, **await figures(console))

    async def live(request: web.Request) -> web.Response:
        return cw.fragment("overview_live.html", request, **await figures(console))

    return [("GET", "/console", overview), ("GET", "/console/overview/live", live)]


async def figures(console: Console) -> dict[str, Any]:
    """What the overview shows, read from the live parts (see the module docstring)."""
    parts = console.parts
    quarantined = parts.trust.quarantined
    upstreams = []
    for name, up in sorted(parts.pool.upstreams.items()):
        held = sorted(k for k, e in parts.pool.catalog.tools.items() if e.server == name and k in quarantined)
        upstreams.append(
            {
                "name": name,
                "status": up.state.status,
                "protocol": up.state.protocol_version or "-",
                "tools": len(up.listing.tools),
                "quarantined": held,
                "error": up.state.error,
            }
        )
    await parts.writer.flush()
    outcomes = console.recent_outcomes(WINDOW)
    failed = sum(1 for row in outcomes if row.get("outcome") != "ok")
    pending = await parts.approvals.list("pending")
    index = parts.gateway.index
    savings = getattr(parts, "savings", None)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    return {
        "page_id": "overview",
        "upstreams": upstreams,
        "calls_per_minute": _per_minute(outcomes),
        "calls_window": len(outcomes),
        "error_rate": (failed / len(outcomes)) if outcomes else None,
        "pending": len(pending),
        "index_size": len(index) if isinstance(index, Sized) else None,
        "mode": parts.gateway.mode,
        "tokens_saved": savings.saved_today() if savings is not None else None,
        "today": today,
        "window_min": int(WINDOW // 60),
    }


def _per_minute(outcomes: list[dict[str, Any]]) -> float:
    """Calls per minute over the last minute of the window (ended calls newer than now - 60 s)."""
    since = time.time() - 60.0
    return float(sum(1 for row in outcomes if row["ts"] >= since))
