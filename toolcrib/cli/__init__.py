"""``toolcrib``: one command with verbs. Run ``toolcrib VERB --help`` for each verb's options.

Errors a user can fix print one line and exit non-zero; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

from toolcrib import __version__
from toolcrib.cli.logs import setup_logging
from toolcrib.config import Config, load_config
from toolcrib.errors import ToolcribError

Handler = Callable[[argparse.Namespace, Config], int]


def _cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from toolcrib import serve as runtime
    from toolcrib.app import check_bind
    from toolcrib.startup import check_port_free

    updates: dict[str, Any] = {}
    if args.host:
        updates["host"] = args.host
    if args.port is not None:
        updates["port"] = args.port
    if args.mode:
        updates["mode"] = args.mode
    if updates:
        config = config.model_copy(update={"gateway": config.gateway.model_copy(update=updates)})
    if args.stdio:
        runtime.run(partial(runtime.serve_stdio_mode, config))
    else:
        check_bind(config)
        check_port_free(config.gateway.host, config.gateway.port)  # before any upstream starts
        runtime.run(partial(runtime.serve, config, config_path=Path(args.config_path)))
    return 0


def _cmd_check(args: argparse.Namespace, config: Config) -> int:
    from toolcrib.cli.check import run_check

    return run_check(args, config)


def _cmd_import(args: argparse.Namespace, config: Config | None) -> int:
    from toolcrib.client_import import import_client_config

    return import_client_config(Path(args.path), Path(args.output) if args.output else None, force=args.force)


def _cmd_client_config(args: argparse.Namespace, config: Config) -> int:
    from toolcrib.cli.clients import snippet

    text, notes = snippet(args.client, config, args.config_path, stdio=args.stdio)
    print(text)
    for note in notes:
        print(f"# {note}", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``toolcrib: MESSAGE; see `toolcrib VERB --help```)
    and exit code 2 instead of the usage block; every verb's parser is one (``add_subparsers`` and
    ``add_parser`` make children of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"toolcrib: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="toolcrib",
        description="One MCP endpoint in front of many MCP servers: proxy, semantic tool router, trust gateway.",
    )
    parser.add_argument("--version", action="version", version=f"toolcrib {__version__}")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $TOOLCRIB_CONFIG or ./toolcrib.toml)")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v: a log line per request; -vv: debug, libraries too"
    )
    parser.add_argument("--log-json", action="store_true", help="write log lines as JSON objects (one per line)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = sub.add_parser("serve", help="run the gateway (Streamable HTTP on 127.0.0.1, or --stdio)")
    p.add_argument("--stdio", action="store_true", help="serve one client over stdin/stdout")
    p.add_argument("--host", help="bind address (overrides [gateway] host)")
    p.add_argument("--port", type=int, help="port (overrides [gateway] port; 0 picks a free one)")
    p.add_argument("--mode", choices=["dispatcher", "passthrough"], help="overrides [gateway] mode")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("check", help="validate the config file without starting anything")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("import", help="convert a client's MCP config into toolcrib TOML, with a report")
    p.add_argument("path", help="Claude Desktop / Cursor / Claude Code JSON, VS Code JSONC, or Codex config.toml")
    p.add_argument("-o", "--output", help="write TOML here (default: print to stdout)")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.set_defaults(func=_cmd_import, no_config=True)

    p = sub.add_parser("client-config", help="print the snippet that points a client at toolcrib")
    p.add_argument(
        "client",
        choices=["claude-desktop", "claude", "claude-code", "cursor", "vscode", "codex"],
        help="claude-desktop (alias: claude) = the Claude Desktop app; claude-code = the `claude` CLI",
    )
    p.add_argument("--stdio", action="store_true", help="have the client launch `toolcrib serve --stdio`")
    p.set_defaults(func=_cmd_client_config)

    _register_optional(sub)
    _accept_config_after_verb(parser)
    return parser


def _accept_config_after_verb(parser: argparse.ArgumentParser) -> None:
    """Let `toolcrib VERB [ACTION] --config PATH` work as well as `toolcrib --config PATH VERB`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any("--config" in a.option_strings for a in child._actions):
                    child.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
                _accept_config_after_verb(child)


def _register_optional(sub: Any) -> None:
    """Verbs that live with the subsystem they operate on."""
    for module in (
        "toolcrib.cli.index",
        "toolcrib.cli.operator",
        "toolcrib.cli.db",
        "toolcrib.cli.savings",
        "toolcrib.bench",
    ):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (2 for a usage error, printed as one line, 0 after
    ``--help`` or ``--version``) instead of raising :class:`SystemExit`."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: a usage error (see _Parser.error), --help or --version
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    setup_logging(args.verbose, args.log_json)
    try:
        config: Config | None = None
        if not getattr(args, "no_config", False):
            config, args.config_path = load_config(args.config)
        handler: Callable[[argparse.Namespace, Any], int] = args.func
        return handler(args, config)
    except ToolcribError as exc:
        print(f"toolcrib: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except BaseExceptionGroup as group:  # a task group wrapped a user error: still one line
        user = _user_error(group)
        if user is None:
            raise
        print(f"toolcrib: {user.message}", file=sys.stderr)
        return user.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _user_error(group: BaseExceptionGroup[Any]) -> ToolcribError | None:
    """The first :class:`ToolcribError` in ``group`` when every leaf is one (or a cancellation)."""
    errors = group.subgroup(lambda e: isinstance(e, ToolcribError))
    rest = group.subgroup(lambda e: not isinstance(e, (ToolcribError, BaseExceptionGroup)))
    if errors is None or rest is not None:
        return None
    leaf: BaseException = errors
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, ToolcribError) else None


if __name__ == "__main__":
    raise SystemExit(main())
