"""``toolcrib import``: a client's MCP config file -> toolcrib TOML plus a report.

Inputs: Claude Desktop / Cursor / Claude Code ``mcpServers`` JSON (with Claude Code's per-project
``projects.PATH.mcpServers``), VS Code ``servers`` / ``mcp.servers`` JSONC (comments, trailing commas,
``inputs``, ``envFile``), and Codex ``config.toml`` ``[mcp_servers.NAME]`` tables. The TOML never holds a
secret: literals and client-side variables become ``secret:SERVER/NAME`` references. The report (on
stderr, and as comments at the top of the TOML) lists every server converted, secret moved, server
renamed or skipped, and every note. One bad server never loses the others: a server that cannot be
converted (websocket or non-http(s) URL, neither ``command`` nor ``url``, a field of the wrong type, an
entry toolcrib's config rejects) is listed as ``skipped NAME: reason (what to do)`` and the rest are
imported. Errors are :class:`ConfigError` with one line: an unreadable file, no servers in it, or no
server that could be imported.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from toolcrib.client_import.read import Format, load
from toolcrib.client_import.report import Report
from toolcrib.client_import.scan import ServerScan, looks_secret
from toolcrib.client_import.servers import FIX_ENTRY, Skip, convert_codex, convert_json, vscode_inputs
from toolcrib.config import SERVER_NAME_RE, ServerConfig, parse_config
from toolcrib.errors import ConfigError

__all__ = ["Report", "convert", "import_client_config", "looks_secret"]

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _server_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]", "-", name).strip("-_")[:40] or "server"
    base = re.sub(r"_{2,}", "_", base)
    if not base[0].isalnum():
        base = "s" + base
    out, n = base, 2
    while out in taken:
        out, n = f"{base}-{n}", n + 1
    return out


def _entries(fmt: Format, data: dict[str, Any], source: str) -> list[tuple[str, Any, str]]:
    """``(raw name, spec, project)`` for every server in the file; project is "" outside Claude Code projects."""
    if fmt == "codex":
        servers = data.get("mcp_servers")
        if not isinstance(servers, dict) or not servers:
            raise ConfigError(f"{source}: no [mcp_servers.NAME] tables found; pass Codex's config.toml")
        return [(name, spec, "") for name, spec in servers.items()]
    servers = data.get("mcpServers", data.get("servers"))
    if servers is None and isinstance(data.get("mcp"), dict):
        servers = data["mcp"].get("servers")
    found: list[tuple[str, Any, str]] = []
    if isinstance(servers, dict):
        found += [(name, spec, "") for name, spec in servers.items()]
    projects = data.get("projects")
    if isinstance(projects, dict):
        for project, settings in projects.items():
            if isinstance(settings, dict) and isinstance(settings.get("mcpServers"), dict):
                found += [(name, spec, str(project)) for name, spec in settings["mcpServers"].items()]
    if not found:
        raise ConfigError(
            f"{source}: no `mcpServers` (Claude Desktop, Cursor, Claude Code), `servers` (VS Code), "
            "`projects.*.mcpServers` (~/.claude.json) or [mcp_servers] (Codex) found; pass the client's MCP config file"
        )
    return found


def _validate(entry: dict[str, Any]) -> None:
    """Raise :class:`Skip` (one line) when the converted entry is not a valid ``[servers.NAME]`` table."""
    try:
        ServerConfig.model_validate(entry)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ").replace("\n", " ")
        raise Skip(f"not a valid server: {where + ': ' if where else ''}{msg}", FIX_ENTRY) from None


def _workspace(path: Path) -> Path:
    """``${workspaceFolder}`` for this file: the parent of ``.vscode/`` or ``.cursor/``, else the file's folder."""
    folder = path.resolve().parent
    return folder.parent if folder.name in (".vscode", ".cursor") else folder


def convert(fmt: Format, data: dict[str, Any], path: Path) -> tuple[dict[str, Any], Report]:
    """``(toml_document, report)`` for a loaded client config."""
    source, report = str(path), Report()
    out: dict[str, Any] = {"gateway": {"host": "127.0.0.1", "port": 8765, "mode": "dispatcher"}, "servers": {}}
    taken: set[str] = set()
    seen: dict[tuple[str, str], str] = {}  # (raw name, spec repr) -> imported name, for Claude Code projects
    inputs = vscode_inputs(data) if fmt == "json" else {}
    workspace = _workspace(path)
    for raw, spec, project in _entries(fmt, data, source):
        label = f"{raw!r}" + (f" of project {project!r}" if project else "")
        if not isinstance(spec, dict):
            report.skipped.append((label, f"is {type(spec).__name__}, not an object ({FIX_ENTRY})"))
            continue
        if project and (raw, repr(spec)) in seen:
            report.note(seen[raw, repr(spec)], f"{label} is the same server; imported once")
            continue
        if SERVER_NAME_RE.match(raw) and "__" not in raw and raw not in taken:
            name, why = raw, ""
        elif project:
            name = _server_name(f"{Path(project).name}-{raw}", taken)
            why = "a project's server; prefixed with its folder"
        else:
            name = _server_name(raw, taken)
            why = "already taken" if raw in taken else "not a valid toolcrib server name ([A-Za-z0-9_-], no __)"
        scan = ServerScan(name, report, workspace, inputs)
        mark = (len(report.secrets), len(report.notes))
        try:
            entry, kind = convert_codex(spec, scan) if fmt == "codex" else convert_json(spec, scan, workspace)
            _validate(entry)
        except Skip as exc:  # one bad server never loses the others
            del report.secrets[mark[0] :], report.notes[mark[1] :]
            report.skipped.append((label, str(exc)))
            continue
        taken.add(name)
        seen[raw, repr(spec)] = name
        if why:
            report.renamed.append((label, name, why))
        out["servers"][name] = entry
        report.converted.append((name, kind + (f", from project {project!r}" if project else "")))
    if not out["servers"]:
        reasons = "; ".join(f"{raw}: {why}" for raw, why in report.skipped[:3])
        more = f"; and {len(report.skipped) - 3} more" if len(report.skipped) > 3 else ""
        raise ConfigError(
            _CONTROL.sub("?", f"{source}: no server could be imported ({reasons}{more}); nothing written")
        )
    return out, report


def import_client_config(path: Path, output: Path | None, *, force: bool = False) -> int:
    """Convert ``path`` and write the TOML to ``output`` (stdout when None); the report goes to stderr.

    Returns the exit code (0). Raises :class:`ConfigError` for an unreadable or unusable file, or an
    existing ``output`` without ``force``.
    """
    fmt, data = load(path)
    doc, report = convert(fmt, data, path)
    parse_config(doc, output or Path("toolcrib.toml"))
    header = [f"# Imported from {path} by `toolcrib import`: {report.summary()}."]
    header += [f"# {_CONTROL.sub('?', line)}" for line in report.lines()]
    text = "\n".join(header) + "\n\n" + tomli_w.dumps(doc)
    if output is None:
        sys.stdout.write(text)
    else:
        if output.exists() and not force:
            raise ConfigError(f"{output}: already exists; pass --force to overwrite or choose another -o path")
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output} ({len(doc['servers'])} servers)", file=sys.stderr)
    for line in report.lines():
        print(line, file=sys.stderr)
    print(report.summary(), file=sys.stderr)
    return 0
