"""Reading a client's config file: JSON, VS Code's JSONC, Codex's TOML, and ``envFile`` dotenv files.

Format detection: a ``.toml`` name, or content that is not JSON but parses as TOML, is Codex
(``[mcp_servers.NAME]``); anything else is JSON with comments and trailing commas allowed (VS Code's
JSONC, https://code.visualstudio.com/docs/languages/json#_json-with-comments), parsed by ``json5``,
a superset of JSONC that leaves ``//`` inside strings alone.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import json5

from toolcrib.errors import ConfigError

Format = Literal["json", "codex"]


def load(path: Path) -> tuple[Format, dict[str, Any]]:
    """``(format, document)``; raise :class:`ConfigError` (one line) when unreadable or not an object."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass the path of the client's MCP config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc}); check the path and permissions") from None
    if path.suffix.lower() == ".toml":
        return "codex", _toml(path, text)
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        try:
            data = _join_surrogates(json5.loads(text))
        except ValueError as exc5:
            try:
                return "codex", _toml(path, text, strict=False)
            except ConfigError:
                pass
            where = f"line {exc.lineno}: {exc.msg}" if "Unexpected" not in str(exc5) else _json5_where(exc5)
            raise ConfigError(f"{path}: not valid JSON or JSONC ({where}); fix it first") from None
        except RecursionError:
            raise ConfigError(f"{path}: nested too deeply to read; fix the JSON") from None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"{path}: holds an unpaired surrogate escape (like \\ud800) that TOML cannot store; fix it"
        ) from None
    except (ValueError, RecursionError):
        raise ConfigError(f"{path}: holds a value TOML cannot store (NaN, Infinity or deep nesting); fix it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with `mcpServers`, `servers` or `projects`")
    return "json", data


def _join_surrogates(value: Any) -> Any:
    """json5 decodes an escaped astral character (``"\\ud800\\udc00"``) as two lone surrogates; join them."""
    if isinstance(value, str):
        try:
            return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError:
            return value  # a truly unpaired surrogate: refused below with its own message
    if isinstance(value, list):
        return [_join_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_join_surrogates(k): _join_surrogates(v) for k, v in value.items()}
    return value


def _json5_where(exc: ValueError) -> str:
    text = str(exc).splitlines()[0] if str(exc) else "syntax error"
    return re.sub(r"^<string>:", "line ", text)


def _toml(path: Path, text: str, *, strict: bool = True) -> dict[str, Any]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix it first") from None
    if not strict and "mcp_servers" not in doc:
        raise ConfigError(f"{path}: not a Codex config")
    return doc


_DOTENV = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*?)\s*$")


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export``, quotes, ``#`` comments); raise OSError/UnicodeDecodeError."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _DOTENV.match(line)
        if match is None:
            continue
        key, value = match.group(1), match.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
            if match.group(2)[0] == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"')
        else:
            value = re.sub(r"\s+#.*$", "", value)
        out[key] = value
    return out
