"""Operator verbs of the trust layer: ``keys``, ``creds``, ``approvals``, ``audit``, ``tools``.

Each handler is ``func(args, config) -> int``; errors are :class:`~toolcrib.errors.ToolcribError`
with one actionable line, printed by the CLI without a traceback. ``--json`` gives scripts a stable
shape; otherwise output is a ``rich`` table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from toolcrib.cli.words import counted
from toolcrib.config import Config
from toolcrib.errors import SecretError, ToolcribError, UsageError

Handler = Callable[[argparse.Namespace, Config], int]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """``30m``/``12h``/``7d``/``2w`` ago, an ISO date or datetime, or epoch seconds -> epoch seconds.

    Raises :class:`UsageError` (a :class:`ToolcribError`, exit 2) for anything else, including
    non-finite numbers (``nan``, ``1e400``) and times outside what a datetime can show (years 1-9999).
    """
    now = time.time() if now is None else now
    hint = f"cannot read time {text[:40]!r}; use 7d, 12h, 30m, 2026-01-31 or 2026-01-31T12:00"
    try:
        if m := _DURATION.fullmatch(text.strip()):
            value = now - float(m.group(1)) * _UNITS[m.group(2)]
        else:
            try:
                value = float(text)
            except ValueError:
                parsed = dt.datetime.fromisoformat(text)
                if parsed.tzinfo is None:
                    parsed = parsed.astimezone()
                value = parsed.timestamp()
        dt.datetime.fromtimestamp(value, dt.UTC)  # finite and showable, or ValueError/OverflowError
    except (ValueError, OverflowError, OSError):
        raise UsageError(hint) from None
    return value


def time_arg(text: str) -> str:
    """argparse ``type`` for a time option (``--since``, ``--before``): ``text`` unchanged when
    :func:`parse_time` reads it, else a usage error at parse time (one line, exit 2), before any
    state is opened."""
    try:
        parse_time(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def count_type(most: int) -> Callable[[str], int]:
    """argparse ``type`` for a count from 1 to ``most`` (a larger one would overflow SQLite's
    integers or the calendar, and no operator means it)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text[:40]!r} is not a whole number; give one from 1 to {most:,}"
            ) from None
        if not 1 <= value <= most:
            shown = str(value) if len(str(value)) <= 20 else f"a {len(str(value))}-digit number"
            raise argparse.ArgumentTypeError(f"must be from 1 to {most:,}, not {shown}")
        return value

    return parse


#: ``--limit``, ``-n``: rows shown (at most a million).
positive_int = count_type(1_000_000)


def _iso(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print ``rows`` as a table when every cell fits the terminal unbroken, else as one record per row
    (``column  value`` lines, like ``psql``'s expanded mode), so names, ids and times are never cut
    into pieces on a narrow terminal. Without a terminal (a pipe) rich assumes 80 columns."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    console = Console()
    widths = [
        max([cell_len(c), *(cell_len(x) for r in cells for x in r[i].splitlines())]) for i, c in enumerate(columns)
    ]
    if sum(widths) + 3 * len(widths) + 1 <= console.width:
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    label = max(len(c) for c in columns)
    console.print(f"{title} ({counted(len(cells), 'row')}; one record per row: the table is wider than the terminal)")
    for n, row in enumerate(cells, 1):
        console.print(f"-[ {n} ]" + "-" * max(0, min(console.width, 40) - 6 - len(str(n))), highlight=False)
        for column, value in zip(columns, row, strict=True):
            console.print(f"{column:<{label}}  {value}", highlight=False, soft_wrap=True, markup=False)


def confirm(args: argparse.Namespace, what: str) -> None:
    """Ask ``what? [y/N]`` on a terminal unless ``--yes``; without a terminal and without ``--yes``,
    refuse. Raises :class:`ToolcribError` (exit 1, nothing changed) when not confirmed."""
    if getattr(args, "yes", False):
        return
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to {what} without confirmation; rerun with --yes (no terminal to ask on)")
    try:
        answer = input(f"{what}? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise ToolcribError("cancelled; nothing was changed")


def _operator() -> str:
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):
        return "operator"


# keys

KEY_AUTH_MODES = ("keys", "keys+oauth")
"""``[gateway] auth`` values under which API keys authenticate callers (HTTP and the console login)."""


def _keys(args: argparse.Namespace, config: Config) -> int:
    from toolcrib.cli.db import cli_database
    from toolcrib.gateway.trust.apikeys import ApiKeyStore, key_document

    store = ApiKeyStore(key_document(cli_database(config), config.auth.keys_path))
    if args.action == "add":
        groups = [g.strip() for g in (args.groups or "").split(",") if g.strip()]
        key = store.add(args.name, groups)
        if args.json:
            _print_json({"name": args.name, "groups": groups, "key": key})
        else:
            print(key)
            print(f"key for {args.name!r} (groups: {', '.join(groups) or '-'}); it is shown only once", file=sys.stderr)
        if config.gateway.auth not in KEY_AUTH_MODES:
            print(
                f"warning: [gateway] auth = {json.dumps(config.gateway.auth)}: this key is stored but not checked; "
                'it takes effect only with auth = "keys" or "keys+oauth" (then restart `toolcrib serve`)',
                file=sys.stderr,
            )
    elif args.action == "list":
        keys = store.list()
        if args.json:
            _print_json(
                [{"name": k.name, "groups": list(k.groups), "created": k.created, "prefix": k.prefix} for k in keys]
            )
        else:
            _table(
                "API keys",
                ["name", "groups", "created", "key starts"],
                [(k.name, ", ".join(k.groups), _iso(k.created), k.prefix + "…") for k in keys],
            )
    else:
        if args.name not in {k.name for k in store.list()}:
            raise ToolcribError(f"no API key named {args.name!r}; see `toolcrib keys list`")
        confirm(args, f"revoke API key {args.name!r} (clients using it get 401 from the next request)")
        store.revoke(args.name)
        print(f"revoked {args.name!r}; requests with its key are refused from now on", file=sys.stderr)
    return 0


# creds


def _creds(args: argparse.Namespace, config: Config) -> int:
    from toolcrib.gateway.trust import secrets as creds

    secrets_file = config.secrets.file
    if args.action == "list":
        store = creds.ChainStore(secrets_file)
        rows = []
        for server, cfg in sorted(config.servers.items()):
            for ref in creds.server_refs(cfg):
                try:
                    source = store.source(ref)
                except SecretError as exc:
                    source = f"error: {exc.message}"
                rows.append({"server": server, "ref": f"secret:{ref}", "source": source or "missing"})
        if args.json:
            _print_json(rows)
        else:
            _table("secret references", ["server", "reference", "found in"], [tuple(r.values()) for r in rows])
        return 1 if any(r["source"] == "missing" for r in rows) else 0
    ref = f"{args.server}/{args.name}"
    creds.parse_ref(ref)
    if args.action == "delete":
        confirm(args, f"delete secret:{ref} from the OS keyring and the secrets file")
        removed = creds.delete_secret(ref, secrets_file)
        print(f"secret:{ref} removed from {', '.join(removed) or 'nowhere (it was not stored)'}", file=sys.stderr)
        return 0
    if sys.stdin.isatty():
        value = getpass.getpass(f"value for secret:{ref} (input hidden): ")
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    where = creds.set_secret(ref, value, secrets_file)
    referenced = any(ref in creds.server_refs(s) for s in config.servers.values())
    note = "" if referenced else f"; no server references it yet (write secret:{ref} in a server's env or headers)"
    print(f"stored secret:{ref} in the {'OS keyring' if where == 'keyring' else secrets_file}{note}", file=sys.stderr)
    return 0


# approvals


def _approvals(args: argparse.Namespace, config: Config) -> int:
    import sqlite3

    from toolcrib.cli.db import cli_database
    from toolcrib.gateway.trust.approvals import ApprovalError, open_approvals

    path = config.policy.approvals_path
    try:
        store = open_approvals(config, cli_database(config), None)
    except sqlite3.OperationalError as exc:
        raise ApprovalError(f"{path}: {exc}; another toolcrib process may be writing it, try again") from None
    try:
        if args.action == "list":
            items = store.list(None if args.all else "pending")
            if args.json:
                _print_json([a.__dict__ for a in items])
            else:
                _table(
                    "approvals",
                    ["id", "status", "principal", "tool", "arguments", "rule", "expires", "approver", "note"],
                    [
                        (
                            a.id,
                            a.status,
                            a.principal,
                            a.tool,
                            json.dumps(a.arguments, ensure_ascii=False)[:200],
                            a.rule,
                            _iso(a.expires),
                            a.approver,
                            a.note,
                        )
                        for a in items
                    ],
                )
            return 0
        decide = store.approve if args.action == "approve" else store.deny
        approval = decide(args.id, args.approver or _operator(), args.note)
        print(f"{approval.id}: {approval.status} ({approval.principal} -> {approval.tool})", file=sys.stderr)
        return 0
    except sqlite3.OperationalError as exc:
        raise ApprovalError(f"{path}: {exc}; another toolcrib process may be writing it, try again") from None
    finally:
        store.close()


# tools (pins)


def _tools(args: argparse.Namespace, config: Config) -> int:
    from toolcrib.cli.db import cli_database
    from toolcrib.router.pins import PinStore, pin_document

    pins = PinStore(pin_document(cli_database(config), config.policy.pins_path), config.gateway.separator)
    if args.action == "list":
        entries = pins.list()
        if args.json:
            _print_json([e.__dict__ for e in entries])
        else:
            _table(
                "pinned tools",
                ["tool", "status", "hash", "pinned", "why"],
                [(e.key, e.status, e.hash[:12], _iso(e.pinned_at), e.reason) for e in entries],
            )
    elif args.action == "diff":
        diff = pins.diff(args.key)
        print(diff or f"{args.key}: the current definition is the pinned one")
        return 1 if diff else 0  # like diff(1): 1 when they differ
    elif args.server:
        approved = pins.approve_server(args.key)
        print(f"approved {counted(len(approved), 'tool')} of {args.key}: {', '.join(approved) or '-'}", file=sys.stderr)
    else:
        digest = pins.approve(args.key)
        print(f"{args.key}: pinned {digest[:12]}; it is searchable and callable again", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    """Add the ``keys``, ``creds``, ``approvals``, ``audit`` and ``tools`` verbs to the CLI."""

    def verb(name: str, help_text: str, func: Handler) -> Any:
        parser = sub.add_parser(name, help=help_text)
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        parser.set_defaults(func=func)
        return actions

    def action(actions: Any, name: str, help_text: str, json_flag: bool = False) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        p.set_defaults(json=False)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    acts = verb("keys", 'API keys for `auth = "keys"`', _keys)
    p = action(acts, "add", "create a key and print it once", json_flag=True)
    p.add_argument("name")
    p.add_argument("--groups", help="comma-separated groups for policy rules")
    action(acts, "list", "list keys (never the keys themselves)", json_flag=True)
    p = action(acts, "revoke", "delete a key; takes effect on the next request (asks first unless --yes)")
    p.add_argument("name")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    acts = verb("creds", "downstream secrets in the OS keyring", _creds)
    for name, text in (
        ("set", "store secret:SERVER/NAME (prompted, never on the command line)"),
        ("delete", "remove secret:SERVER/NAME from the keyring and the secrets file"),
    ):
        p = action(acts, name, text)
        p.add_argument("server", help="the namespace, usually the server's name")
        p.add_argument("name", help="the secret's name: secret:SERVER/NAME")
        if name == "delete":
            p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    action(acts, "list", "every secret reference in the config and where it resolves from", json_flag=True)

    acts = verb("approvals", "calls waiting for an operator", _approvals)
    action(acts, "list", "pending approvals (--all for every status)", json_flag=True).add_argument(
        "--all", action="store_true"
    )
    for name in ("approve", "deny"):
        p = action(acts, name, f"{name} a pending call")
        p.add_argument("id")
        p.add_argument("--as", dest="approver", help="who decides (default operator:$USER)")
        p.add_argument("--note", help="why, kept with the approval")

    from toolcrib.cli.audit import _audit

    acts = verb("audit", "the tamper-evident log of searches and calls", _audit)
    action(acts, "tail", "the last N rows", json_flag=True).add_argument("-n", type=positive_int, default=20)
    p = action(acts, "query", "rows matching filters", json_flag=True)
    p.add_argument("--principal", help="KIND:SUBJECT (key:ci), or a bare SUBJECT to match it under any kind")
    p.add_argument("--tool", help="glob over namespaced tool names, e.g. 'git__*'")
    p.add_argument("--since", type=time_arg, help="7d, 12h, 30m, or an ISO date/time")
    p.add_argument(
        "--outcome",
        choices=["ok", "tool_error", "protocol_error", "timeout", "cancelled", "upstream_crash", "denied", "pending"],
    )
    p.add_argument("--kind", choices=["call", "search", "attempt", "outcome", "auth", "tally"])
    p.add_argument("--method", help="glob over MCP methods, e.g. 'resources/*'")
    p.add_argument("--limit", type=positive_int, default=100)
    p = action(acts, "export", "every row as JSON lines, hashes included")
    p.add_argument("--jsonl", action="store_true", help="JSON lines (the only format; accepted for clarity)")
    p.add_argument("-o", "--output", help="file to write (default stdout)")
    action(
        acts,
        "verify",
        "check the chain, keyed checkpoints and anchor, args_hmac; list what it cannot detect",
        json_flag=True,
    )
    p = action(acts, "prune", "delete rows older than --before, keeping verify working (asks first unless --yes)")
    p.add_argument("--before", required=True, type=time_arg, help="7d, 12h, or an ISO date/time; never in the future")
    p.add_argument("--dry-run", action="store_true", help="only print how many rows would be deleted")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    acts = verb("tools", "pinned tool definitions (rug-pull defence)", _tools)
    action(acts, "list", "pinned and quarantined tools", json_flag=True)
    action(acts, "diff", "what changed since the tool was pinned (exit 1 when it differs)").add_argument("key")
    p = action(acts, "approve", "trust a quarantined tool's current definition")
    p.add_argument("key", help="namespaced tool (server__tool), or a server name with --server")
    p.add_argument("--server", action="store_true", help="approve every quarantined tool of server KEY")
