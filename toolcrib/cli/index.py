"""CLI verbs for operators of the router: ``toolcrib index`` and ``toolcrib search``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from toolcrib.config import Config
from toolcrib.errors import ConfigError, IndexError_, UsageError


def expander(config: Config) -> Callable[[str], str]:
    """Resolve ``secret:`` references the way the server does (for verbs that connect upstreams)."""
    from toolcrib.gateway.trust import secrets as credentials

    return credentials.expander(credentials.ChainStore(config.secrets.file))


def _cmd_index(args: argparse.Namespace, config: Config) -> int:
    from toolcrib.router.pool import Pool
    from toolcrib.router.reindex import Reindexer, open_index

    if args.server and args.server not in config.enabled_servers:
        raise ConfigError(f"no enabled server named {args.server!r}; see `toolcrib check` for the list")
    console = Console(stderr=True)
    from toolcrib.cli.db import cli_database

    index = open_index(config, db=cli_database(config))
    cfg = config
    if args.server:
        cfg = config.model_copy(update={"servers": {args.server: config.servers[args.server]}})

    async def run() -> Any:
        pool = Pool(cfg, expand_secret=expander(config))
        async with pool.running():
            await pool.wait_ready(args.wait)
            catalog = pool.catalog
            for name, up in sorted(pool.upstreams.items()):
                if up.state.status != "connected":
                    console.print(f"[yellow]{name}: not connected ({up.state.error or up.state.status}); skipped[/]")
            servers = {n for n, up in pool.upstreams.items() if up.state.status == "connected"}
            reindexer = Reindexer(index, lambda: catalog)
            with Progress(
                TextColumn("embedding"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            ) as bar:
                task = bar.add_task("embed", total=None)

                def progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                return await reindexer.sync(servers, full=args.full, progress=progress)

    report = anyio.run(run)
    console.print(
        f"index {_where(index, config)}: {report.added} added, {report.changed} changed, {report.removed} removed, "
        f"{report.unchanged} unchanged; {report.embedded} embedded in {report.seconds:.2f} s",
        soft_wrap=True,
    )
    console.print(f"model: {_model_line(index.embedder)}", soft_wrap=True)
    return 0


def _model_line(embedder: Any) -> str:
    """The index's model; for ``[index] model = "auto"`` also which one it chose and why."""
    describe = getattr(embedder, "describe", None)
    return str(describe()) if callable(describe) else str(embedder.model_id)


def _cmd_search(args: argparse.Namespace, config: Config) -> int:
    from toolcrib.router.dispatcher import MAX_LIMIT
    from toolcrib.router.reindex import open_index

    if not args.query.strip():
        raise ConfigError('the search query is empty; describe the tool you need, e.g. toolcrib search "current time"')
    if not 1 <= args.limit <= MAX_LIMIT:
        raise ConfigError(f"--limit must be from 1 to {MAX_LIMIT} (as for search_tools), not {args.limit}")
    if args.server and args.server not in config.servers:
        raise ConfigError(f"no server named {args.server!r}; see `toolcrib check` for the list")
    from toolcrib.cli.db import cli_database

    index = open_index(config, db=cli_database(config))
    if len(index) == 0:
        raise IndexError_(f"the index at {_where(index, config)} is empty; run `toolcrib index` first")
    if config.index.learn_from_use:
        _load_usage(index, config)
    hits = index.search(args.query, limit=args.limit, server=args.server, explain=args.explain)
    rows = []
    for hit in hits:
        doc = index.doc(hit.key)
        row: dict[str, Any] = {
            "name": hit.key,
            "server": doc.server if doc else "",
            "score": round(float(hit.score), 4),
            "description": (doc.description if doc else "")[:200],
        }
        if hit.parts is not None:
            row["parts"] = hit.parts
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    from toolcrib.index.search import describe_parts

    table = Table(title=f"search: {args.query}")
    for col in ("score", "name", "description", *(["parts"] if args.explain else [])):
        # score and name stay whole (a name is what the user copies); description and parts wrap at words
        table.add_column(
            col, overflow="fold", no_wrap=col in ("score", "name"), min_width=12 if col == "description" else None
        )
    for r in rows:
        extra = [describe_parts(r["parts"])] if "parts" in r else []
        table.add_row(f"{r['score']:.3f}", str(r["name"]), str(r["description"]), *extra)
    Console().print(table)
    return 0


def _load_usage(index: Any, config: Config) -> None:
    """Give a CLI search the anchors the gateway blends in (``[index] learn_from_use``)."""
    from toolcrib.cli.db import cli_database
    from toolcrib.index.usage import UsageSignal, usage_store

    state = usage_store(config.index.path, cli_database(config)).load()
    fingerprint = str(getattr(index.embedder, "query_fingerprint", index.embedder.fingerprint))
    if state.anchors and state.fingerprint == fingerprint:
        signal = UsageSignal(half_life_days=config.index.usage_half_life_days)
        signal.load(state)
        index.usage = signal


def _cmd_usage(args: argparse.Namespace, config: Config) -> int:
    """``toolcrib index usage show [TOOL] | export | reset [TOOL]`` (operators: the anchors are the
    queries principals searched, so only whoever can read the index store sees them)."""
    from toolcrib.cli.db import cli_database
    from toolcrib.index.usage import export_rows, usage_store

    store = usage_store(config.index.path, cli_database(config))
    half_life = config.index.usage_half_life_days
    if args.usage_action == "reset":
        if args.tool and args.tool not in store.load().anchors:
            raise UsageError(
                f"no usage anchors for tool {args.tool!r}; `toolcrib index usage show` lists the tools that have some"
            )
        dropped = 0

        def change(state: Any) -> None:
            nonlocal dropped
            dropped = state.reset(args.tool)

        store.update(change)
        which = f"of {args.tool} " if args.tool else ""
        print(f"usage anchors {which}reset: {dropped} dropped ({store.where})")
        return 0
    state = store.load()
    rows = export_rows(state, half_life_days=half_life)
    if args.usage_action == "export":
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    console = Console()
    status = "on" if config.index.learn_from_use else "off ([index] learn_from_use = false: no mining, no blending)"
    console.print(
        f"usage anchors at {store.where}: learning from use {status}; audit mined up to seq {state.last_seq}",
        soft_wrap=True,
    )
    if not state.anchors:
        console.print(
            "no anchors yet: the gateway mines its audit log every "
            f"{config.index.usage_interval:g} s ([index] usage_interval) for searches followed by a successful "
            "invoke of a found tool by the same principal and session",
            soft_wrap=True,
        )
        return 0
    if args.tool:
        if args.tool not in state.anchors:
            console.print(f"no anchors for {args.tool!r}")
            return 0
        table = Table(title=f"anchors of {args.tool}")
        for col in ("weight", "uses", "last use (UTC)", "query"):
            table.add_column(col, overflow="fold")
        for r in rows:
            if r["tool"] == args.tool:
                table.add_row(f"{r['weight']:.3f}", str(r["count"]), _utc(r["last"]), r["query"])
        console.print(table)
        return 0
    table = Table(title="usage anchors per tool")
    for col in ("tool", "anchors", "uses", "top weight", "last use (UTC)"):
        table.add_column(col, overflow="fold")
    by_tool: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_tool.setdefault(r["tool"], []).append(r)
    for tool, anchors in by_tool.items():
        table.add_row(
            tool,
            str(len(anchors)),
            str(sum(a["count"] for a in anchors)),
            f"{max(a['weight'] for a in anchors):.3f}",
            _utc(max(a["last"] for a in anchors)),
        )
    console.print(table)
    return 0


def _utc(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def register(sub: Any) -> None:
    p = sub.add_parser("index", help="(re)build the tool index from the configured servers")
    p.add_argument("--server", help="only this server")
    p.add_argument("--full", action="store_true", help="re-embed everything, not only changed tools")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for servers to connect")
    p.set_defaults(func=_cmd_index)
    index_sub = p.add_subparsers(dest="index_action", metavar="{usage}")
    u = index_sub.add_parser("usage", help="the anchors learned from use: show, export (JSONL), reset")
    usage_sub = u.add_subparsers(dest="usage_action", required=True, metavar="{show,export,reset}")
    for action, text in (
        ("show", "anchors per tool (or one tool's anchors: query, weight, uses)"),
        ("export", "every anchor as JSON lines on stdout"),
        ("reset", "forget every anchor (or one tool's)"),
    ):
        a = usage_sub.add_parser(action, help=text)
        if action != "export":
            a.add_argument("tool", nargs="?", help="a tool key, e.g. time__get_current_time")
        else:
            a.set_defaults(tool=None)
        a.set_defaults(func=_cmd_usage)

    p = sub.add_parser("search", help="search the persisted tool index like search_tools does")
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=5, help="number of results, 1 to 20 (as search_tools)")
    p.add_argument("--server", help="only tools of this server")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--explain", action="store_true", help="show the parts of each score (dense, lexical, how they were fused)"
    )
    p.set_defaults(func=_cmd_search)


def _where(index: Any, config: Config) -> str:
    """Where the index lives: its database row with ``[storage] url``, else ``[index] path``."""
    store = getattr(index, "store", None)
    return str(getattr(store, "where", config.index.path))
