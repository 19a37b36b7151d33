"""``toolcrib client-config CLIENT``: the snippet that points an MCP client at this gateway.

Clients and the file each snippet goes into:

* ``claude-desktop`` (alias ``claude``): Claude Desktop's ``claude_desktop_config.json``. Claude
  Desktop launches local servers over stdio only, so the snippet always runs ``toolcrib serve --stdio``.
* ``claude-code``: a ``claude mcp add`` command line for Claude Code (the CLI).
* ``cursor``: ``~/.cursor/mcp.json`` (``mcpServers``).
* ``vscode``: ``.vscode/mcp.json`` (``servers``, with a hidden ``${input:...}`` prompt for the key).
* ``codex``: ``~/.codex/config.toml`` (``[mcp_servers.NAME]``; the key is read from the environment
  variable named by ``bearer_token_env_var``, which Codex prefers to an inline token).

The launch command is the absolute path of the running ``toolcrib`` executable, so a client that
does not share the virtualenv's ``PATH`` still finds it. A stdio launch also carries ``env.PATH``:
the ``PATH`` of the shell that ran ``client-config``, with the launch command's directory first when
it is not on it (see :func:`launch_path`), because clients start servers with their own minimal
``PATH`` (Claude Desktop: ``/usr/bin:/bin``) and the gateway's stdio servers inherit it.
With ``[gateway] auth = "keys"`` (or ``keys+oauth``) HTTP snippets carry an ``Authorization: Bearer
<KEY>`` placeholder; stdio snippets need no key (stdio mode runs as the local operator).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from toolcrib.config import Config

CLIENTS = ("claude-desktop", "claude", "claude-code", "cursor", "vscode", "codex")
"""Accepted names; ``claude`` is an alias of ``claude-desktop``."""
KEY_PLACEHOLDER = "<KEY>"
CODEX_KEY_ENV = "TOOLCRIB_API_KEY"


def executable() -> list[str]:
    """The command that starts this toolcrib, absolute: ``[/path/to/venv/bin/toolcrib]``, or
    ``[/path/to/python, -m, toolcrib]`` when no ``toolcrib`` script can be found."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name.startswith("toolcrib") and argv0.is_file():
        return [os.path.abspath(argv0)]
    beside = Path(sys.executable).with_name("toolcrib")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("toolcrib")
    if found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "toolcrib"]


def launch_path(command: str, environ: Mapping[str, str] | None = None) -> str:
    """The ``PATH`` a client-launched gateway gets: ``environ["PATH"]`` (default ``os.environ``) with
    the directory of ``command`` (an absolute path) put first when it is not already an entry. In a
    virtualenv that directory holds its ``python`` and the console scripts of servers installed
    beside toolcrib, as when the virtualenv is activated. Only absolute entries are kept: an empty or
    relative one (``.``, ``bin``, ``~/bin``) would name a folder relative to wherever the client starts
    the gateway (Claude Desktop: ``/``) or each server's ``cwd``; so are entries that are not valid
    UTF-8 (a config snippet cannot carry them)."""
    environ = os.environ if environ is None else environ
    here = os.path.dirname(command)
    entries = [p for p in environ.get("PATH", "").split(os.pathsep) if os.path.isabs(p) and _utf8(p)]
    if here and here not in entries:
        entries.insert(0, here)
    return os.pathsep.join(entries)


def _utf8(text: str) -> bool:
    """``text`` has no lone surrogate (``os.environ`` decodes bytes that are not UTF-8 into them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (TOML 1.0: ``"`` ``\\`` and control characters other than
    tab escaped, U+007F included); unlike a JSON string it never holds ``\\uD83D``-style surrogate
    escapes, which TOML rejects."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def gateway_url(config: Config) -> str:
    """``http://HOST:PORT/mcp`` as a client on this machine reaches it (a wildcard bind becomes loopback)."""
    host = config.gateway.host
    if host in ("0.0.0.0", "", "::"):  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.gateway.port}/mcp"


def needs_key(config: Config) -> bool:
    return config.gateway.auth in ("keys", "keys+oauth")


def snippet(client: str, config: Config, config_path: Path | str, *, stdio: bool = False) -> tuple[str, list[str]]:
    """``(text for stdout, notes for stderr)`` for ``client`` (one of :data:`CLIENTS`).

    Raises ``ValueError`` for an unknown client (argparse restricts the choices first)."""
    if client not in CLIENTS:
        raise ValueError(f"unknown client {client!r}; choose one of {', '.join(CLIENTS)}")
    cmd = executable()
    launch_args = [*cmd[1:], "--config", str(Path(config_path).resolve()), "serve", "--stdio"]
    launch: dict[str, Any] = {"command": cmd[0], "args": launch_args, "env": {"PATH": launch_path(cmd[0])}}
    url = gateway_url(config)
    stdio = stdio or client in ("claude", "claude-desktop")
    notes: list[str] = []
    if stdio:
        notes.append("the client starts `toolcrib serve --stdio` itself; it runs as the local operator (no key needed)")
        notes.append(
            "env.PATH is this shell's PATH (toolcrib's directory first), so servers named by a bare command "
            "(python, npx, uvx) are found as here; edit it if you move them"
        )
    else:
        if config.gateway.port == 0:
            notes.append("[gateway] port is 0 (a random port each start): set a fixed port for clients to use")
        notes.append(f"start the gateway first: {shlex.join([*cmd, '--config', str(config_path), 'serve'])}")
    key = needs_key(config) and not stdio
    if key and client == "codex":
        notes.append(f"auth = {config.gateway.auth!r}: export {CODEX_KEY_ENV}=<a key from `toolcrib keys add NAME`>")
    elif key:
        notes.append(
            f"auth = {config.gateway.auth!r}: replace {KEY_PLACEHOLDER} with a key from "
            "`toolcrib keys add NAME` (printed once)"
        )
    header = {"Authorization": f"Bearer {KEY_PLACEHOLDER}"} if key else {}

    if client == "codex":
        return _codex(launch if stdio else None, url, key), notes
    if client == "claude-code":
        if stdio:
            env_flag = ["-e", f"PATH={launch['env']['PATH']}"]
            return shlex.join(["claude", "mcp", "add", "toolcrib", *env_flag, "--", cmd[0], *launch_args]), notes
        extra = ["--header", f"Authorization: Bearer {KEY_PLACEHOLDER}"] if key else []
        return shlex.join(["claude", "mcp", "add", "--transport", "http", "toolcrib", url, *extra]), notes
    if client == "vscode":
        if stdio:
            return json.dumps({"servers": {"toolcrib": {"type": "stdio", **launch}}}, indent=2), notes
        server: dict[str, Any] = {"type": "http", "url": url}
        doc: dict[str, Any] = {"servers": {"toolcrib": server}}
        if key:
            server["headers"] = {"Authorization": "Bearer ${input:toolcrib-key}"}
            doc = {
                "inputs": [
                    {"type": "promptString", "id": "toolcrib-key", "description": "toolcrib API key", "password": True}
                ],
                **doc,
            }
            notes[-1] = "VS Code prompts for the key (from `toolcrib keys add NAME`) and stores it"
        return json.dumps(doc, indent=2), notes
    if stdio:
        return json.dumps({"mcpServers": {"toolcrib": launch}}, indent=2), notes
    entry: dict[str, Any] = {"url": url}
    if header:
        entry["headers"] = header
    return json.dumps({"mcpServers": {"toolcrib": entry}}, indent=2), notes


def _codex(launch: dict[str, Any] | None, url: str, key: bool) -> str:
    lines = ["[mcp_servers.toolcrib]"]
    if launch is not None:
        lines.append(f"command = {toml_string(launch['command'])}")
        lines.append(f"args = [{', '.join(toml_string(a) for a in launch['args'])}]")
        lines.append(f"env = {{ PATH = {toml_string(launch['env']['PATH'])} }}")
    else:
        lines.append(f"url = {toml_string(url)}")
        if key:
            lines.append(f'bearer_token_env_var = "{CODEX_KEY_ENV}"')
    return "\n".join(lines)
