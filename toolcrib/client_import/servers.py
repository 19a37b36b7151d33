"""One client server entry -> one ``[servers.NAME]`` table (or a reported skip).

JSON clients: Claude Desktop / Cursor / Claude Code (``mcpServers``, and Claude Code's
``projects.PATH.mcpServers`` in ``~/.claude.json``), VS Code (``servers`` or ``mcp.servers``, with
``inputs``). Codex: ``[mcp_servers.NAME]`` (https://developers.openai.com/codex/mcp).

Timeouts become seconds: Codex ``*_sec`` as is, ``*_ms`` / 1000; a JSON ``timeout`` above 3600 is read
as milliseconds (Gemini CLI, Claude Code) and at most 3600 as seconds (Cline, Roo Code); either way
the reading is reported.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from toolcrib.client_import.read import read_dotenv
from toolcrib.client_import.scan import ServerScan, ref_name


class Skip(Exception):
    """A server that cannot be converted: skipped and reported as ``reason (what to do)``, never fatal.

    Raised for a transport toolcrib does not speak (websocket, a URL that is not http(s)), an entry with
    neither ``command`` nor ``url``, and a field of the wrong type. ``str(exc)`` is one line.
    """

    def __init__(self, reason: str, todo: str) -> None:
        super().__init__(f"{reason} ({todo})")


_WS_TYPES = {"ws", "websocket", "websockets"}
_HTTP_TYPES = {"http", "streamable-http", "streamablehttp", "streamable_http", "streamable"}
_IGNORED = {"description", "gallery", "version", "dev", "name", "id", "icon", "title"}
_JSON_FIELDS = {
    "command", "args", "env", "cwd", "envFile", "url", "serverUrl", "httpUrl", "headers", "type", "transport",
    "disabled", "enabled", "timeout", "autoApprove", "alwaysAllow",
}  # fmt: skip


FIX_ENTRY = "fix the entry in the client's file and import again"
_WS_TODO = "toolcrib speaks stdio, Streamable HTTP and SSE only; use the server's HTTP endpoint or a stdio bridge"


def _scalar(value: Any) -> bool:
    """A value a client passes on as text: a string, or a number (``"--port", 8080``)."""
    return isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool))


def _text(spec: dict[str, Any], key: str) -> str:
    """``spec[key]`` as a string; raise :class:`Skip` when it is not a string."""
    value = spec[key]
    if not isinstance(value, str):
        raise Skip(f"`{key}` is {type(value).__name__}, not a string", FIX_ENTRY)
    return value


def _str_list(spec: dict[str, Any], key: str) -> list[str]:
    value = spec.get(key) or []
    if not isinstance(value, list) or not all(_scalar(v) for v in value):
        raise Skip(f"`{key}` must be an array of strings", FIX_ENTRY)
    return [str(v) for v in value]


def _str_map(spec: dict[str, Any], key: str) -> dict[str, str]:
    value = spec.get(key) or {}
    if not isinstance(value, dict):
        raise Skip(f"`{key}` must be an object of strings", FIX_ENTRY)
    for k, v in value.items():
        if not _scalar(v):
            raise Skip(f"`{key}` {str(k)[:40]!r} is {type(v).__name__}, not a string", FIX_ENTRY)
    return {str(k): str(v) for k, v in value.items()}


def _seconds(value: Any, unit: str) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return None
    return float(value) / 1000 if unit == "ms" else float(value)


def _json_timeout(entry: dict[str, Any], value: Any, scan: ServerScan) -> None:
    seconds = _seconds(value, "s")
    if seconds is None:
        scan.report.note(scan.server, f"`timeout` {value!r} is not a positive number; ignored")
        return
    if seconds > 3600:
        seconds /= 1000
        scan.report.note(scan.server, f"`timeout` {value!r} read as milliseconds -> timeout = {seconds:g} (seconds)")
    else:
        scan.report.note(scan.server, f"`timeout` {value!r} read as seconds -> timeout = {seconds:g}")
    entry["timeout"] = seconds


def _remote(entry: dict[str, Any], url: str, kind: str, scan: ServerScan) -> None:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if kind in _WS_TYPES or scheme in ("ws", "wss"):
        raise Skip("a websocket server", _WS_TODO)
    if scheme not in ("http", "https"):
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise Skip(f"URL has {shown}, not http:// or https://", "give the server's http(s) MCP endpoint or remove it")
    entry["url"] = scan.url_secrets(scan.variables(url, "url", secret_context=False)[0], "url")
    path = url.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    if kind == "sse":
        entry["transport"] = "sse"
    elif kind not in _HTTP_TYPES and path.lower().endswith("/sse"):
        entry["transport"] = "sse"
        scan.report.note(scan.server, 'URL ends in /sse: imported as legacy SSE (transport = "sse")')


def convert_json(spec: dict[str, Any], scan: ServerScan, workspace: Path) -> tuple[dict[str, Any], str]:
    """``(entry, kind)`` for a JSON client's server; raise :class:`Skip` when it cannot be converted."""
    entry: dict[str, Any] = {}
    type_key = "type" if "type" in spec else "transport"
    kind = _text(spec, type_key).lower().replace(" ", "") if type_key in spec else ""
    url_key = next((k for k in ("url", "serverUrl", "httpUrl") if k in spec), "")
    if kind in _WS_TYPES:
        raise Skip(f"`{type_key}` {kind!r} is a websocket transport", _WS_TODO)
    if kind not in {"", "stdio", "sse", *_HTTP_TYPES}:
        raise Skip(f"`{type_key}` {kind[:40]!r} is not stdio, sse or http", "set it to one of those, or remove it")
    if "command" in spec:
        entry["command"] = scan.variables(_text(spec, "command"), "command", secret_context=False)[0]
        args = _str_list(spec, "args")
        env = _env_file(spec, scan, workspace)
        env.update(scan.table(_str_map(spec, "env"), "env"))
        scan.own_env = env
        if args:
            entry["args"] = scan.args(args)
        if spec.get("cwd"):
            entry["cwd"] = scan.variables(_text(spec, "cwd"), "cwd", secret_context=False)[0]
        if env:
            entry["env"] = env
    elif url_key:
        _remote(entry, _text(spec, url_key), kind, scan)
        headers = scan.table(_str_map(spec, "headers"), "headers")
        if headers:
            entry["headers"] = headers
    else:
        raise Skip("neither `command` nor `url`", 'add `"command"` (stdio) or `"url"` (HTTP/SSE), or remove it')
    if spec.get("disabled") is True or spec.get("enabled") is False:
        entry["enabled"] = False
    if "timeout" in spec:
        _json_timeout(entry, spec["timeout"], scan)
    for key in ("autoApprove", "alwaysAllow"):
        if spec.get(key):
            scan.report.note(
                scan.server,
                f"`{key}` {spec[key]!r} not imported: toolcrib never auto-approves; write a [[policy.rules]] "
                'entry with action = "allow" for those tools if you want them allowed',
            )
    for key in sorted(set(spec) - _JSON_FIELDS - _IGNORED):
        scan.report.note(scan.server, f"field `{key}` has no toolcrib equivalent; ignored")
    return entry, "stdio" if "command" in entry else entry.get("transport", "http")


def _env_file(spec: dict[str, Any], scan: ServerScan, workspace: Path) -> dict[str, str]:
    if not spec.get("envFile"):
        return {}
    name = scan.variables(_text(spec, "envFile"), "envFile", secret_context=False)[0]
    path = Path(name).expanduser()
    path = path if path.is_absolute() else workspace / path
    try:
        values = read_dotenv(path)
    except (OSError, UnicodeDecodeError) as exc:
        scan.report.note(scan.server, f"envFile {str(path)!r} cannot be read ({type(exc).__name__}); not imported")
        return {}
    return {
        key: scan.move(value, key, f"env.{key}", f"the value of {key} in envFile {str(path)!r}")
        for key, value in values.items()
        if value
    }


def convert_codex(spec: dict[str, Any], scan: ServerScan) -> tuple[dict[str, Any], str]:
    """``(entry, kind)`` for a Codex ``[mcp_servers.NAME]`` table; raise :class:`Skip` when it cannot be converted."""
    entry: dict[str, Any] = {}
    if "command" in spec:
        entry["command"] = _text(spec, "command")
        args = _str_list(spec, "args")
        if args:
            entry["args"] = scan.args(args)
        if spec.get("cwd"):
            entry["cwd"] = _text(spec, "cwd")
        env = scan.table(_str_map(spec, "env"), "env")
        for var in _str_list(spec, "env_vars"):
            env.setdefault(var, _env_ref(scan, var, f"env.{var}", "forwarded by Codex"))
        if env:
            entry["env"] = env
    elif "url" in spec:
        _remote(entry, _text(spec, "url"), "", scan)
        headers = scan.table(_str_map(spec, "http_headers"), "headers")
        for header, var in _str_map(spec, "env_http_headers").items():
            headers[header] = _env_ref(scan, var, f"headers.{header}", f"Codex header {header!r}")
        if spec.get("bearer_token_env_var"):
            var = _text(spec, "bearer_token_env_var")
            headers["Authorization"] = "Bearer " + _env_ref(scan, var, "headers.Authorization", "bearer_token_env_var")
        if headers:
            entry["headers"] = headers
    else:
        raise Skip("neither `command` nor `url`", "add `command` (stdio) or `url` (HTTP/SSE), or remove the table")
    if spec.get("enabled") is False:
        entry["enabled"] = False
    for key, target, unit in (
        ("startup_timeout_sec", "connect_timeout", "s"),
        ("startup_timeout_ms", "connect_timeout", "ms"),
        ("tool_timeout_sec", "timeout", "s"),
    ):
        if key in spec:
            seconds = _seconds(spec[key], unit)
            if seconds is None:
                scan.report.note(scan.server, f"`{key}` {spec[key]!r} is not a positive number; ignored")
            else:
                entry[target] = seconds
    for key, target in (("enabled_tools", "include"), ("disabled_tools", "exclude")):
        if isinstance(spec.get(key), list) and spec[key]:
            entry[target] = [str(t) for t in spec[key]]
    known = {"command", "args", "cwd", "env", "env_vars", "url", "http_headers", "env_http_headers"}
    known |= {"bearer_token_env_var", "enabled", "startup_timeout_sec", "startup_timeout_ms", "tool_timeout_sec"}
    known |= {"enabled_tools", "disabled_tools"}
    for key in sorted(set(spec) - known - _IGNORED):
        scan.report.note(scan.server, f"field `{key}` has no toolcrib equivalent; ignored")
    return entry, "stdio" if "command" in entry else entry.get("transport", "http")


def _env_ref(scan: ServerScan, var: str, where: str, why: str) -> str:
    """A reference standing for environment variable ``var`` that the client read at launch."""
    ref = scan.move(var, ref_name(var), where, f"${var} ({why})")
    return ref


def vscode_inputs(data: dict[str, Any]) -> dict[str, str]:
    """VS Code ``inputs`` (top level of ``mcp.json``, or ``mcp.inputs`` in ``settings.json``): ``{id: description}``."""
    inputs = data.get("inputs", data["mcp"].get("inputs") if isinstance(data.get("mcp"), dict) else None)
    if not isinstance(inputs, list):
        return {}
    return {
        str(i["id"]): re.sub(r"\s+", " ", str(i.get("description", "")))[:80]
        for i in inputs
        if isinstance(i, dict) and "id" in i
    }
