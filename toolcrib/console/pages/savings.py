"""Savings: tokens of the full tool list vs what clients actually loaded, per day and per principal.

``GET /console/savings?days=N`` (``N`` from 1 to :data:`MAX_DAYS`, default :data:`DEFAULT_DAYS`):
the last ``N`` UTC days up to today from the gateway's
:class:`~toolcrib.observe.savings.SavingsLedger` (the shared store plus this replica's counts not
flushed yet): totals, an SVG bar chart with a "full list" and a "loaded" bar per day (days
without traffic drawn as 0), and a table per principal (``KIND:SUBJECT``, summed over the range,
most saved first). What the counters mean is the ledger's business (see its module docstring):
``full`` = tokens of every tool the principal may see, for each ``tools/list`` answered;
``loaded`` = tokens of the list it really got plus every ``search_tools`` result; saved = full - loaded.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import anyio
from aiohttp import web

from toolcrib.console import web as cw
from toolcrib.console.app import Console, Route
from toolcrib.console.plot import Group, Series, grouped_bars
from toolcrib.errors import ToolcribError
from toolcrib.observe.savings import DayRow, PrincipalRow, SavingsLedger

DEFAULT_DAYS = 14
MAX_DAYS = 366
SERIES = (Series("full list", "full"), Series("loaded", "loaded"))


def day_groups(rows: list[DayRow], first: dt.date, last: dt.date) -> list[Group]:
    """One chart group per day in ``[first, last]`` (missing days as zeros): full, loaded tokens."""
    by_day = {r.day: r for r in rows}
    out = []
    day = first
    while day <= last:
        r = by_day.get(day)
        full, loaded = (r.full, r.loaded) if r is not None else (0, 0)
        out.append(Group(day.strftime("%m-%d"), day.isoformat(), day.isoformat(), (float(full), float(loaded))))
        day += dt.timedelta(days=1)
    return out


def routes(console: Console) -> list[Route]:
    async def page(request: web.Request) -> web.Response:
        text = request.query.get("days", "").strip() or str(DEFAULT_DAYS)
        values: dict[str, Any] = {"page_id": "savings", "days": text, "error": None, "ledger": False}
        if not (text.isascii() and text.isdigit() and len(text) <= 6) or not 1 <= int(text) <= MAX_DAYS:
            values["error"] = f"days must be a whole number from 1 to {MAX_DAYS}, not {text[:20]!r}."
            return cw.page("savings.html", request, status=400, **values)
        ledger: SavingsLedger | None = getattr(console.parts, "savings", None)
        if ledger is None:
            values["error"] = "This gateway keeps no token-savings ledger."
            return cw.page("savings.html", request, **values)
        days = int(text)
        last = ledger.today()
        first = last - dt.timedelta(days=days - 1)

        def read() -> tuple[list[DayRow], list[PrincipalRow]]:
            return ledger.days(first, last), ledger.by_principal(first, last)

        try:
            day_rows, principal_rows = await anyio.to_thread.run_sync(read)
        except ToolcribError as exc:
            values["error"] = f"The savings store could not be read: {exc.message}"
            return cw.page("savings.html", request, status=503, **values)
        full = sum(r.full for r in day_rows)
        loaded = sum(r.loaded for r in day_rows)
        chart = grouped_bars(
            day_groups(day_rows, first, last),
            SERIES,
            title=f"Tokens per day, {first.isoformat()} to {last.isoformat()} (UTC): full tool list vs loaded",
            desc=(
                f"Over {days} days: the full tool lists came to {full:,} tokens, clients loaded {loaded:,}. "
                "Per-day figures are in each bar's title and in the table below the chart."
            ),
            unit="tokens",
            chart_id="savings-chart",
        )
        values.update(
            ledger=True,
            first=first,
            last=last,
            chart=chart,
            full=full,
            loaded=loaded,
            saved=full - loaded,
            lists=sum(r.lists for r in day_rows),
            day_rows=list(reversed(day_rows)),
            principals=principal_rows,
            where=ledger.where,
            choices=(1, 7, 14, 30, 90),
        )
        return cw.page("savings.html", request, **values)

    return [("GET", "/console/savings", page)]
