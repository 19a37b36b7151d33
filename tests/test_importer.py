"""`toolcrib import` and `toolcrib client-config`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from toolcrib.cli import main
from toolcrib.config import Config

CURSOR = {
    "mcpServers": {
        "github": {
            "command": "npx",
            "args": ["-y", "@modelcontextprotocol/server-github"],
            "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_canary1234567890abcdef", "LOG_LEVEL": "info"},
        },
        "linear": {
            "url": "https://mcp.linear.app/sse",
            "type": "sse",
            "headers": {"Authorization": "Bearer lin_api_xyz987"},
        },
        "my.server": {"command": "python", "args": ["-m", "srv"]},
    }
}


def test_import_moves_secrets_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "mcp.json"
    src.write_text(json.dumps(CURSOR))
    out = tmp_path / "toolcrib.toml"
    assert main(["import", str(src), "-o", str(out)]) == 0
    text = out.read_text()
    assert "ghp_canary" not in text and "lin_api_xyz987" not in text
    doc = tomllib.loads(text)
    Config.model_validate(doc)
    gh = doc["servers"]["github"]
    assert gh["env"]["GITHUB_PERSONAL_ACCESS_TOKEN"] == "secret:github/github_personal_access_token"
    assert gh["env"]["LOG_LEVEL"] == "info"
    assert doc["servers"]["linear"]["headers"]["Authorization"] == "Bearer secret:linear/authorization"
    assert doc["servers"]["linear"]["transport"] == "sse"
    assert "my-server" in doc["servers"]
    err = capsys.readouterr().err
    assert "toolcrib creds set github github_personal_access_token" in err
    assert "TOOLCRIB_SECRET_GITHUB_GITHUB_PERSONAL_ACCESS_TOKEN" in err
    # refuses to overwrite
    assert main(["import", str(src), "-o", str(out)]) == 2


def test_import_vscode_servers_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "mcp.json"
    src.write_text(json.dumps({"servers": {"t": {"type": "http", "url": "http://127.0.0.1:9/mcp"}}}))
    assert main(["import", str(src)]) == 0
    assert 'url = "http://127.0.0.1:9/mcp"' in capsys.readouterr().out


@pytest.mark.parametrize("content", ["{not json", "[]", '{"other": 1}'])
def test_import_bad_input_is_one_line(tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.json"
    src.write_text(content)
    assert main(["import", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("client", ["claude", "claude-code", "cursor", "vscode"])
def test_client_config(tmp_path: Path, client: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "toolcrib.toml"
    cfg.write_text("[gateway]\nport = 9999\n")
    assert main(["--config", str(cfg), "client-config", client]) == 0
    out = capsys.readouterr().out
    assert ("127.0.0.1:9999/mcp" in out) or ("serve" in out and str(cfg) in out)
