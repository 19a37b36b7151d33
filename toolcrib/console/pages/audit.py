"""Audit explorer: filter the tamper-evident log, open a row, check the chain, export.

- ``GET /console/audit?since=&until=&principal=&tool=&decision=&outcome=&kind=&before=``: the rows
  matching every filter, newest first, :data:`PAGE` at a time; ``before`` (a ``seq``) is the cursor
  of the next page. ``since``/``until`` take what ``toolcrib audit query --since`` takes (``7d``,
  ``12h``, ``2026-01-31``, ``2026-01-31T12:00``, epoch seconds; ``since <= ts < until``);
  ``principal`` is ``KIND:SUBJECT`` or a bare subject (every kind, as the CLI reads it); ``tool`` a
  glob (``echo__*``); ``decision`` one of :data:`DECISIONS`; ``outcome`` one of :data:`OUTCOMES`.
  A filter that cannot be read gives the page with a one-line error and status 400.
- ``GET /console/audit/{seq}``: one row's full record (every column). A ``call`` row is both the
  attempt and the outcome (completed in place, or still pending); a row of an older log's
  ``attempt``/``outcome`` pair links to the other half.
- ``GET /console/audit/verify``: a fragment (loaded by htmx) with the result of the same check as
  ``toolcrib audit verify`` (run in a worker thread): ok or broken with the first bad ``seq``, the
  last checkpoint and anchored head, what was checked and what cannot be detected.
- ``GET /console/audit/export?<the same filters>``: every matching row (no page limit), oldest
  first, as JSON Lines in the format of ``toolcrib audit export`` (each row as stored, so an auditor
  can recompute its ``hash``); ``Content-Disposition: attachment``.

Reads go through the gateway's :data:`~toolcrib.gateway.audit.backends.AuditLog` (SQLite or
PostgreSQL), after flushing the writer's queue, in a worker thread.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args
from urllib.parse import urlencode

import anyio
from aiohttp import web

from toolcrib.cli.audit import principal_ids
from toolcrib.cli.operator import parse_time
from toolcrib.console import web as cw
from toolcrib.console.app import Console, Route
from toolcrib.errors import ToolcribError
from toolcrib.gateway.audit.backends import AuditLog
from toolcrib.gateway.audit.events import Kind, Outcome
from toolcrib.gateway.audit.schema import canonical_json
from toolcrib.gateway.audit.verify import VerifyReport
from toolcrib.gateway.trust.policy import Action

PAGE = 50
"""Rows per page of the table."""
EXPORT_BATCH = 1000
"""Rows read per query while exporting (pages back through the log with the ``before`` cursor)."""
DECISIONS: tuple[str, ...] = get_args(Action)
OUTCOMES: tuple[str, ...] = get_args(Outcome)
KINDS: tuple[str, ...] = get_args(Kind)
FIELDS = ("since", "until", "principal", "tool", "decision", "outcome", "kind")
"""The filter fields of the form, in the order of the query string."""
_ROW_REF = re.compile(r"\brows? (\d+)")


@dataclass
class Filters:
    """The explorer's filters, read from a query string by :meth:`parse`."""

    raw: dict[str, str] = field(default_factory=dict)
    """The non-empty fields as given (to refill the form and build links)."""
    since: float | None = None
    until: float | None = None
    principals: list[str | None] = field(default_factory=lambda: [None])
    tool: str | None = None
    decision: str | None = None
    outcome: str | None = None
    kind: str | None = None

    @classmethod
    def parse(cls, query: Any) -> Filters:
        """Read ``query`` (a mapping of str); raises :class:`ToolcribError` (one line) for a bad field."""
        raw = {name: str(query.get(name, "")).strip() for name in FIELDS}
        raw = {name: value for name, value in raw.items() if value}
        f = cls(raw=raw)
        if "since" in raw:
            f.since = parse_time(raw["since"])
        if "until" in raw:
            f.until = parse_time(raw["until"])
        if "principal" in raw:
            f.principals = list(principal_ids(raw["principal"]))
        f.tool = raw.get("tool")
        for name, allowed in (("decision", DECISIONS), ("outcome", OUTCOMES), ("kind", KINDS)):
            value = raw.get(name)
            if value is not None and value not in allowed:
                raise ToolcribError(f"unknown {name} {value[:40]!r}; choose one of {', '.join(allowed)}")
            setattr(f, name, value)
        return f

    def query(self, audit: AuditLog, *, before: int | None, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` matching rows with ``seq < before``, newest first (blocking)."""
        found: dict[int, dict[str, Any]] = {}
        for principal in self.principals:
            for row in audit.query(
                principal=principal, tool=self.tool, since=self.since, until=self.until,
                decision=self.decision, outcome=self.outcome, kind=self.kind, before=before, limit=limit,
            ):  # fmt: skip
                found[int(row["seq"])] = row
        return [found[seq] for seq in sorted(found, reverse=True)[:limit]]

    def link(self, **extra: Any) -> str:
        """This filter's query string plus ``extra`` (None values left out)."""
        items = {**self.raw, **{k: v for k, v in extra.items() if v is not None}}
        return urlencode(items)


def stored(row: dict[str, Any]) -> dict[str, Any]:
    """A queried row as stored (``arguments``/``results`` back to their canonical JSON text), so
    :func:`~toolcrib.gateway.audit.schema.row_hash` recomputes its ``hash``."""
    out = dict(row)
    for name in ("arguments", "results"):
        if out.get(name) is not None and not isinstance(out[name], str):
            out[name] = canonical_json(out[name])
    return out


def first_bad_seq(problems: list[str]) -> int | None:
    """The lowest row number named by any of a verify report's problems (None when none names one)."""
    seqs = [int(m.group(1)) for line in problems for m in _ROW_REF.finditer(line)]
    return min(seqs) if seqs else None


def routes(console: Console) -> list[Route]:
    parts = console.parts
    verifying = anyio.Lock()

    async def read(fn: Callable[[], Any]) -> Any:
        await parts.writer.flush()
        return await anyio.to_thread.run_sync(fn)

    async def explorer(request: web.Request) -> web.Response:
        try:
            filters = Filters.parse(request.query)
            before = _seq(request.query.get("before"))
        except ToolcribError as exc:
            return cw.page(
                "audit.html", request, status=400, page_id="audit", error=exc.message, rows=[],
                filters=Filters(raw={k: v for k in FIELDS if (v := request.query.get(k, "").strip())}),
                next_link=None, newest_link=None, **_choices(),
            )  # fmt: skip
        rows: list[dict[str, Any]] = await read(lambda: filters.query(parts.audit, before=before, limit=PAGE + 1))
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        next_link = f"/console/audit?{filters.link(before=rows[-1]['seq'])}" if more else None
        newest_link = f"/console/audit?{filters.link()}" if before is not None else None
        return cw.page(
            "audit.html", request, page_id="audit", error=None, rows=rows, filters=filters,
            next_link=next_link, newest_link=newest_link, **_choices(),
        )  # fmt: skip

    async def record(request: web.Request) -> web.Response:
        seq = int(request.match_info["seq"])
        rows: list[dict[str, Any]] = await read(lambda: parts.audit.query(before=seq + 1, limit=1))
        if not rows or rows[0]["seq"] != seq:
            return cw.page("audit_row.html", request, status=404, page_id="audit", row=None, seq=seq, outcome_row=None)
        row = rows[0]
        outcome_row = None
        if row["kind"] == "attempt" and row.get("request_id") is not None:
            later: list[dict[str, Any]] = await read(
                lambda: parts.audit.query(
                    kind="outcome", request_id=row["request_id"], principal=row["principal"], limit=20
                )
            )
            outcome_row = next((r for r in later if r.get("attempt_seq") == seq), None)
        return cw.page("audit_row.html", request, page_id="audit", row=row, seq=seq, outcome_row=outcome_row)

    async def verify(request: web.Request) -> web.Response:
        started = time.monotonic()
        try:
            async with verifying:
                report: VerifyReport = await anyio.to_thread.run_sync(parts.audit.verify)
        except ToolcribError as exc:
            return cw.fragment(
                "audit_verify.html", request, report=None, error=exc.message, bad=None, took=0.0,
                where=parts.audit.where,
            )  # fmt: skip
        return cw.fragment(
            "audit_verify.html", request, report=report, error=None, bad=first_bad_seq(report.problems),
            took=time.monotonic() - started, where=parts.audit.where,
        )  # fmt: skip

    async def export(request: web.Request) -> web.StreamResponse:
        try:
            filters = Filters.parse(request.query)
        except ToolcribError as exc:
            return web.Response(status=400, text=exc.message + "\n")

        def every_row() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            before: int | None = None
            while True:
                batch = filters.query(parts.audit, before=before, limit=EXPORT_BATCH)
                out.extend(batch)
                if len(batch) < EXPORT_BATCH:
                    return out[::-1]
                before = int(batch[-1]["seq"])

        rows: list[dict[str, Any]] = await read(every_row)
        body = "".join(canonical_json(stored(row)) + "\n" for row in rows)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return web.Response(
            text=body,
            content_type="application/x-ndjson",
            headers={
                "Content-Disposition": f'attachment; filename="toolcrib-audit-{stamp}.jsonl"',
                "Cache-Control": "no-store",
                "X-Toolcrib-Rows": str(len(rows)),
            },
        )

    return [
        ("GET", "/console/audit", explorer),
        ("GET", "/console/audit/verify", verify),
        ("GET", "/console/audit/export", export),
        ("GET", r"/console/audit/{seq:\d{1,18}}", record),
    ]


def _seq(text: str | None) -> int | None:
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ToolcribError(f"before must be a row number (seq), not {text[:40]!r}")
    return int(text)


def _choices() -> dict[str, Any]:
    return {"decisions": DECISIONS, "outcomes": OUTCOMES, "kinds": KINDS}
