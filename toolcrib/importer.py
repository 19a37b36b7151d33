"""Moving between client configs and toolcrib: ``toolcrib import`` and ``toolcrib client-config``.

``import`` reads the ``mcpServers`` JSON of Claude Desktop, Cursor or Claude Code (or the
``servers`` JSON of VS Code) and writes the equivalent TOML. Literal secrets found in ``env`` or
``headers`` are replaced by ``secret:SERVER/NAME`` references and listed, with how to store them;
the TOML never holds a secret.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import tomli_w

from toolcrib.config import SERVER_NAME_RE, Config, parse_config
from toolcrib.errors import ConfigError
from toolcrib.gateway.trust.secrets import env_var_name

_SECRET_KEY = re.compile(r"(token|secret|passw|api[_-]?key|apikey|auth|credential|private|access[_-]?key)", re.I)
_BEARER = re.compile(r"^(Bearer|Basic|Token)\s+(\S+)$", re.I)


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())


def looks_secret(key: str, value: str) -> bool:
    """A literal that should not live in a config file: a secret-like key name, or a token-like value."""
    if not value or value.startswith(("secret:", "${")):
        return False
    if _SECRET_KEY.search(key):
        return True
    return len(value) >= 20 and " " not in value and "/" not in value and _entropy(value) > 3.5


def _ref_name(key: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", key.lower()).strip("_.-") or "secret"
    return name if name[0].isalnum() else "s" + name


def _server_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]", "-", name).strip("-_")[:40] or "server"
    base = re.sub(r"_{2,}", "_", base)
    if not base[0].isalnum():
        base = "s" + base
    out, n = base, 2
    while out in taken:
        out, n = f"{base}-{n}", n + 1
    return out


def convert(data: dict[str, Any], source: str) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Return ``(toml_document, moved)`` where moved lists ``(server, field, reference)``."""
    servers = data.get("mcpServers", data.get("servers"))
    if servers is None and isinstance(data.get("mcp"), dict):
        servers = data["mcp"].get("servers")
    if not isinstance(servers, dict) or not servers:
        raise ConfigError(
            f"{source}: no `mcpServers` (Claude Desktop, Cursor, Claude Code) or `servers` (VS Code) object found; "
            "pass the client's MCP config file"
        )
    out: dict[str, Any] = {
        "gateway": {"host": "127.0.0.1", "port": 8765, "mode": "dispatcher"},
        "servers": {},
    }
    moved: list[tuple[str, str, str]] = []
    taken: set[str] = set()
    for raw_name, spec in servers.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{source}: server {raw_name!r} is not an object; fix the JSON")
        keep = SERVER_NAME_RE.match(raw_name) and "__" not in raw_name and raw_name not in taken
        name = raw_name if keep else _server_name(raw_name, taken)
        taken.add(name)
        entry: dict[str, Any] = {}
        kind = str(spec.get("type", spec.get("transport", ""))).lower()
        if "command" in spec:
            entry["command"] = str(spec["command"])
            args = spec.get("args") or []
            if not isinstance(args, list):
                raise ConfigError(f"{source}: server {raw_name!r}: `args` must be an array of strings; fix the JSON")
            if args:
                entry["args"] = [str(a) for a in args]
            if spec.get("cwd"):
                entry["cwd"] = str(spec["cwd"])
            secrets_field, values = "env", spec.get("env") or {}
        elif "url" in spec or "serverUrl" in spec:
            entry["url"] = str(spec.get("url", spec.get("serverUrl")))
            if kind == "sse":
                entry["transport"] = "sse"
            secrets_field, values = "headers", spec.get("headers") or {}
        else:
            raise ConfigError(f"{source}: server {raw_name!r} has neither `command` nor `url`; fix or remove it")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: server {raw_name!r}: `{secrets_field}` must be an object; fix the JSON")
        cleaned: dict[str, str] = {}
        for key, value in values.items():
            value = str(value)
            bearer = _BEARER.match(value)
            literal = bearer.group(2) if bearer else value
            if looks_secret(key, literal) or (bearer and not literal.startswith(("secret:", "${"))):
                ref = f"secret:{name}/{_ref_name(key)}"
                cleaned[key] = f"{bearer.group(1)} {ref}" if bearer else ref
                moved.append((name, f"{secrets_field}.{key}", ref))
            else:
                cleaned[key] = value
        if cleaned:
            entry[secrets_field] = cleaned
        if spec.get("disabled") is True:
            entry["enabled"] = False
        out["servers"][name] = entry
    return out, moved


def import_client_config(path: Path, output: Path | None, *, force: bool = False) -> int:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass the path of the client's MCP config JSON") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc}); check the path and permissions") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); fix it first") from None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"{path}: holds an unpaired surrogate escape (like \\ud800) that TOML cannot store; fix it"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with `mcpServers`")
    doc, moved = convert(data, str(path))
    parse_config(doc, output or Path("toolcrib.toml"))
    text = "# Imported from " + str(path) + " by `toolcrib import`.\n" + tomli_w.dumps(doc)
    if output is None:
        sys.stdout.write(text)
    else:
        if output.exists() and not force:
            raise ConfigError(f"{output}: already exists; pass --force to overwrite or choose another -o path")
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output} ({len(doc['servers'])} servers)", file=sys.stderr)
    for server, where, ref in moved:
        print(
            f"moved a literal secret out of {server}.{where} -> {ref}; store it with "
            f"`toolcrib creds set {ref.split(':', 1)[1].replace('/', ' ')}` or set ${env_var_name(ref)}",
            file=sys.stderr,
        )
    return 0


def client_snippet(client: str, config: Config, config_path: Path | str, *, stdio: bool = False) -> str:
    """The JSON a client needs to reach this gateway."""
    url = f"http://{config.gateway.host}:{config.gateway.port}/mcp"
    launch = {
        "command": "toolcrib",
        "args": ["--config", str(Path(config_path).resolve()), "serve", "--stdio"],
    }
    if client == "vscode":
        server: dict[str, Any] = {"type": "stdio", **launch} if stdio else {"type": "http", "url": url}
        return json.dumps({"servers": {"toolcrib": server}}, indent=2)
    if client == "claude-code":
        if stdio:
            return "claude mcp add toolcrib -- toolcrib --config " + str(Path(config_path).resolve()) + " serve --stdio"
        return f"claude mcp add --transport http toolcrib {url}"
    if client == "claude" or stdio:
        # Claude Desktop launches stdio servers; it reaches HTTP servers through the stdio bridge.
        return json.dumps({"mcpServers": {"toolcrib": launch}}, indent=2)
    return json.dumps({"mcpServers": {"toolcrib": {"url": url}}}, indent=2)
