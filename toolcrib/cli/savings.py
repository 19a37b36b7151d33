"""The ``savings`` verb: tokens of the full tool list vs what clients loaded, per UTC day or per principal.

Reads what gateways flushed (every few seconds) to ``savings.db`` beside ``[audit] path``, or to the
``token_savings`` table of ``[storage] url`` (see :mod:`toolcrib.observe.savings`).
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from toolcrib.cli.operator import count_type
from toolcrib.config import Config
from toolcrib.errors import UsageError


def _percent(saved: int, full: int) -> str:
    return f"{100 * saved / full:.1f}%" if full else ""


def _savings(args: argparse.Namespace, config: Config) -> int:
    from toolcrib.cli.db import cli_database
    from toolcrib.cli.operator import _print_json, _table
    from toolcrib.observe.savings import SavingsLedger, open_savings_store, utc_day

    if args.days < 1:
        raise UsageError(f"--days must be at least 1, not {args.days}")
    db = cli_database(config)
    try:
        ledger = SavingsLedger(open_savings_store(config, db, create=False), flush_every=None)
        try:
            until = utc_day(ledger.clock())
            since = until - dt.timedelta(days=args.days - 1)
            span = f"{since.isoformat()}..{until.isoformat()} (UTC)"
            if args.by_principal:
                prows = ledger.by_principal(since, until)
                if args.json:
                    _print_json([{"principal": r.id, **_fields(r)} for r in prows])
                else:
                    _table(
                        f"token savings by principal, {span}, {ledger.where}",
                        ["principal", "full", "loaded", "saved", "saved %", "lists"],
                        [(r.id, r.full, r.loaded, r.saved, _percent(r.saved, r.full), r.lists) for r in prows],
                    )
                return 0
            drows = ledger.days(since, until)
            if args.json:
                _print_json([_fields(r) for r in drows])
            else:
                _table(
                    f"token savings per day, {span}, {ledger.where}",
                    ["day", "full", "loaded", "saved", "saved %", "lists"],
                    [(r.day, r.full, r.loaded, r.saved, _percent(r.saved, r.full), r.lists) for r in drows],
                )
            return 0
        finally:
            ledger.close()
    finally:
        if db is not None:
            db.close()


def _fields(row: Any) -> dict[str, Any]:
    out = dict(row.__dict__)
    if isinstance(out.get("day"), dt.date):
        out["day"] = out["day"].isoformat()
    return out


def register(sub: Any) -> None:
    """Add the ``savings`` verb."""
    p = sub.add_parser(
        "savings", help="tokens of the full tool list vs what clients loaded (per UTC day, or per principal)"
    )
    p.add_argument(
        "--days",
        type=count_type(36_500),
        default=7,
        metavar="N",
        help="the last N UTC days, today included (default 7)",
    )
    p.add_argument("--by-principal", action="store_true", help="one row per principal, summed over those days")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_savings)
