"""The ``audit`` verbs: ``tail``, ``query``, ``export``, ``verify`` and ``prune`` over the audit log.

Handlers are ``func(args, config) -> int`` like the other operator verbs (see :mod:`toolcrib.cli.operator`,
which registers them); errors are one-line :class:`~toolcrib.errors.ToolcribError`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from toolcrib.cli.operator import _iso, _print_json, _table, confirm, parse_time
from toolcrib.cli.words import counted
from toolcrib.config import Config
from toolcrib.errors import AuditError, UsageError

if TYPE_CHECKING:
    from toolcrib.gateway.audit.backends import AuditLog


def principal_ids(text: str) -> list[str]:
    """``KIND:SUBJECT`` as given, or, for a bare ``SUBJECT``, that subject under every principal kind
    (``key:``, ``oauth:``, ``operator:``, ``anonymous:``) plus the bare text (rows written before ids were typed)."""
    from toolcrib.gateway.trust.identity import KINDS

    kind, sep, _ = text.partition(":")
    if sep and kind in KINDS:
        return [text]
    return [text, *(f"{k}:{text}" for k in sorted(KINDS))]


def _audit(args: argparse.Namespace, config: Config) -> int:
    from toolcrib.cli.db import cli_database
    from toolcrib.gateway.audit.backends import audit_key, open_audit_log
    from toolcrib.gateway.trust.secrets import ChainStore

    db = cli_database(config)
    key = audit_key(config, db, ChainStore(config.secrets.file), create=False)
    log = open_audit_log(config, db, hmac_key=key, create=False)
    try:
        if args.action == "verify":
            return _audit_verify(log, args.json)
        if args.action == "prune":
            return _audit_prune(log, args)
        if args.action == "export":
            out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
            try:
                count = log.export_jsonl(out)
            finally:
                if out is not sys.stdout:
                    out.close()
            print(f"exported {counted(count, 'row')}", file=sys.stderr)
            return 0
        if args.action == "tail":
            rows = log.tail(args.n)
        else:
            since = parse_time(args.since) if args.since else None
            if args.limit < 1:
                raise UsageError(f"--limit must be at least 1, not {args.limit}")
            found: dict[int, dict[str, Any]] = {}
            for principal in principal_ids(args.principal) if args.principal else [None]:
                for row in log.query(
                    principal=principal,
                    tool=args.tool,
                    since=since,
                    outcome=args.outcome,
                    kind=args.kind,
                    method=args.method,
                    limit=args.limit,
                ):
                    found[row["seq"]] = row
            rows = [found[seq] for seq in sorted(found)][-args.limit :]
        if args.json:
            _print_json(rows)
        else:
            _table(
                "audit",
                ["seq", "time", "kind", "principal", "method", "tool / target / query", "decision", "outcome", "ms"],
                [
                    (
                        r["seq"],
                        _iso(r["ts"]),
                        r["kind"],
                        r["principal"] or r.get("remote"),
                        r["method"],
                        r["tool"] or r.get("target") or r["query"],
                        f"{r['decision']} ({r['rule']})" if r["decision"] else "",
                        r["outcome"],
                        f"{r['latency_ms']:.1f}" if r["latency_ms"] is not None else "",
                    )
                    for r in rows
                ],
            )
        return 0
    finally:
        log.close()
        if db is not None:
            db.close()


def _audit_prune(log: AuditLog, args: argparse.Namespace) -> int:
    """Refuse a cut-off in the future; count with ``--dry-run``; otherwise confirm, then prune."""
    before = parse_time(args.before)
    if before > time.time():
        raise UsageError(
            f"--before {args.before} is in the future ({_iso(before)}) and would delete every row; "
            "give a past time such as 90d or 2026-01-31"
        )
    count = log.prune_count(before)
    if args.dry_run:
        print(f"would prune {counted(count, 'row')} older than {_iso(before)} (dry run: nothing deleted)")
        return 0
    if count == 0:
        print(f"no rows older than {_iso(before)}; nothing to prune", file=sys.stderr)
        return 0
    confirm(args, f"delete {count} audit rows older than {_iso(before)}")
    deleted = log.prune(before)
    print(f"pruned {counted(deleted, 'row')} older than {_iso(before)}; checkpoint written", file=sys.stderr)
    return 0


def _audit_verify(log: AuditLog, as_json: bool) -> int:
    """Print what was checked, every problem and every limit; non-zero exit when there are problems."""
    report = log.verify()
    if as_json:
        _print_json({**report.__dict__, "ok": report.ok})
    else:
        for title, lines in (
            ("checked", report.checked),
            ("PROBLEMS", report.problems),
            ("cannot detect", report.limits),
        ):
            if lines:
                print(f"{title}:")
                for line in lines:
                    print(f"  - {line}")
        span = f"rows {report.first_seq}..{report.last_seq}" if report.rows else "no rows"
        print(f"audit {log.where}: {span}, checkpoint {report.checkpoint_seq}, anchor {report.anchor_seq}")
    if not report.ok:
        raise AuditError(
            f"audit log failed verification ({counted(len(report.problems), 'problem')}); "
            "keep a copy of it and investigate"
        )
    print(
        "ok: the chain, the checkpoints, the anchored head, args_hmac and the completion seals agree "
        "(see the limits above)",
        file=sys.stderr,
    )
    return 0
