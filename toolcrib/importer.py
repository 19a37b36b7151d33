"""Moving between client configs and toolcrib: ``toolcrib import`` and ``toolcrib client-config``.

``import`` lives in :mod:`toolcrib.client_import` (JSON, VS Code JSONC and Codex TOML in; TOML and a
report of converted, moved-to-secret, renamed and skipped items out); its names are re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolcrib.client_import import Report, convert, import_client_config, looks_secret
from toolcrib.config import Config

__all__ = ["Report", "client_snippet", "convert", "import_client_config", "looks_secret"]


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
