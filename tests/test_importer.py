"""`toolcrib import` and `toolcrib client-config`."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from toolcrib.cli import main
from toolcrib.config import Config, parse_config

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


# -- issue 9 item 13: real client files, every conversion reported -------------------------------


def _import(src: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str, str]:
    """Run `toolcrib import SRC -o OUT`; return (document, TOML text, stderr report)."""
    out = src.parent / "imported.toml"
    assert main(["import", str(src), "-o", str(out), "--force"]) == 0
    text = out.read_text()
    doc = tomllib.loads(text)
    parse_config(doc, out)
    return doc, text, capsys.readouterr().err


VSCODE_JSONC = """// .vscode/mcp.json as VS Code writes it: comments and trailing commas
{
  "inputs": [
    {"type": "promptString", "id": "perplexity-key", "description": "Perplexity API Key", "password": true},
  ],
  "servers": {
    /* stdio, with every kind of variable */
    "perplexity": {
      "type": "stdio",
      "command": "npx",
      "args": ["-y", "server-perplexity-ask", "--root", "${workspaceFolder}/data", "--doc", "https://a.example//b"],
      "env": {"PERPLEXITY_API_KEY": "${input:perplexity-key}", "GH": "${env:GITHUB_TOKEN}",}, // trailing comma
      "envFile": "${workspaceFolder}/.env",
    },
    "nofile": {"command": "srv", "envFile": "missing.env"},
  },
}
"""


def test_import_vscode_jsonc_variables_and_envfile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".vscode").mkdir()
    src = tmp_path / ".vscode" / "mcp.json"
    src.write_text(VSCODE_JSONC)
    (tmp_path / ".env").write_text('# local secrets\nexport DB_PASSWORD="hunter2 hunter2"\nREGION=eu # inline\n')
    doc, text, err = _import(src, capsys)
    p = doc["servers"]["perplexity"]
    assert p["args"] == ["-y", "server-perplexity-ask", "--root", f"{tmp_path}/data", "--doc", "https://a.example//b"]
    assert p["env"]["PERPLEXITY_API_KEY"] == "secret:perplexity/perplexity-key"
    assert p["env"]["GH"] == "secret:perplexity/github_token"
    assert p["env"]["DB_PASSWORD"] == "secret:perplexity/db_password"
    assert p["env"]["REGION"] == "secret:perplexity/region"
    assert "hunter2" not in text and "${" not in json.dumps(doc)
    assert "VS Code input 'perplexity-key' (Perplexity API Key)" in err
    assert "$GITHUB_TOKEN" in err and "TOOLCRIB_SECRET_PERPLEXITY_GITHUB_TOKEN" in err
    assert "toolcrib creds set perplexity db_password" in err
    assert f"${{workspaceFolder}} -> {str(tmp_path)!r}" in err
    assert "nofile" in doc["servers"] and "envFile" in err and "missing.env" in err and "not imported" in err


def test_import_jsonc_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "mcp.json"
    src.write_text('{\n  // fine\n  "servers": {"a": {"command": "x"}\n')
    assert main(["import", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "JSONC" in err


def test_import_literal_secrets_in_args_and_urls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "claude_desktop_config.json"
    src.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "db": {
                        "command": "npx",
                        "args": [
                            "-y",
                            "@modelcontextprotocol/server-postgres",
                            "postgresql://app:Pa55word-xyz@db.internal:5432/prod",
                            "--api-key",
                            "sk-live0123456789abcdefghij",
                            "--token=tok0123456789abcdefXYZ",
                            "--verbose",
                            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
                        ],
                        "env": {"DATABASE_URL": "mysql://root:r00tpass@localhost/db", "MODE": "ro"},
                    },
                    "search": {"url": "https://search.example/mcp?api_key=k3y-0123456789&region=eu&token=t0k"},
                }
            }
        )
    )
    doc, text, err = _import(src, capsys)
    for literal in ("Pa55word-xyz", "sk-live0123", "tok0123456789", "ghp_0123", "r00tpass", "k3y-0123456789", "t0k"):
        assert literal not in text, literal
    args = doc["servers"]["db"]["args"]
    assert args[2] == "postgresql://app:secret:db/db.internal-password@db.internal:5432/prod"
    assert args[3:] == ["--api-key", "secret:db/api-key", "--token=secret:db/token", "--verbose", "secret:db/arg7"]
    assert doc["servers"]["db"]["env"] == {
        "DATABASE_URL": "mysql://root:secret:db/localhost-password@localhost/db",
        "MODE": "ro",
    }
    assert doc["servers"]["search"]["url"] == (
        "https://search.example/mcp?api_key=secret:search/api_key&region=eu&token=secret:search/token"
    )
    assert err.count("moved ") == 8
    assert "toolcrib creds set db api-key" in err and "TOOLCRIB_SECRET_SEARCH_API_KEY" in err


def test_import_websocket_skipped_and_sse_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "mcp.json"
    src.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "ws": {"url": "wss://rt.example/mcp", "headers": {"Authorization": "Bearer abcdefghijklmnop"}},
                    "typed-ws": {"type": "websocket", "url": "https://rt.example/mcp"},
                    "legacy": {"url": "https://old.example/v1/sse/"},
                    "typed": {"type": "sse", "url": "https://old.example/events"},
                    "streamable": {"type": "http", "url": "https://new.example/sse"},
                    "plain": {"url": "https://new.example/mcp"},
                }
            }
        )
    )
    doc, text, err = _import(src, capsys)
    servers = doc["servers"]
    assert set(servers) == {"legacy", "typed", "streamable", "plain"}
    assert servers["legacy"]["transport"] == "sse" and servers["typed"]["transport"] == "sse"
    assert "transport" not in servers["streamable"] and "transport" not in servers["plain"]
    assert "skipped 'ws': a websocket server" in err and "skipped 'typed-ws'" in err
    assert "abcdefghijklmnop" not in text + err
    assert "URL ends in /sse" in err
    # only websocket servers: nothing to write, one line
    src.write_text(json.dumps({"mcpServers": {"ws": {"url": "ws://127.0.0.1:9/"}}}))
    assert main(["import", str(src)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_import_claude_code_projects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / ".claude.json"
    github = {"type": "stdio", "command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"]}
    src.write_text(
        json.dumps(
            {
                "numStartups": 3,
                "mcpServers": {"github": github},
                "projects": {
                    "/home/u/webapp": {
                        "allowedTools": [],
                        "mcpServers": {
                            "github": github,  # the same server: imported once
                            "db": {"command": "pg-mcp"},
                        },
                    },
                    "/home/u/api": {
                        "mcpServers": {"db": {"command": "other-pg"}, "docs": {"url": "http://127.0.0.1:9/mcp"}}
                    },
                    "/home/u/empty": {"mcpServers": {}},
                },
            }
        )
    )
    doc, _, err = _import(src, capsys)
    servers = doc["servers"]
    assert set(servers) == {"github", "db", "api-db", "docs"}
    assert servers["db"]["command"] == "pg-mcp" and servers["api-db"]["command"] == "other-pg"
    assert "renamed 'db' of project '/home/u/api' -> api-db (a project's server; prefixed with its folder)" in err
    assert "'github' of project '/home/u/webapp' is the same server; imported once" in err
    assert "converted docs (http, from project '/home/u/api')" in err


def test_import_timeouts_auto_approve_and_renames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "cline_mcp_settings.json"
    src.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "cline": {"command": "a", "timeout": 120, "autoApprove": ["read_file"], "disabled": False},
                    "gemini": {"command": "b", "timeout": 600000, "alwaysAllow": ["search"]},
                    "bad-timeout": {"command": "c", "timeout": "soon"},
                    "my.server": {"command": "d", "trust": True},
                    "a__b": {"command": "e"},
                }
            }
        )
    )
    doc, text, err = _import(src, capsys)
    servers = doc["servers"]
    assert servers["cline"]["timeout"] == 120 and servers["gemini"]["timeout"] == 600
    assert "timeout" not in servers["bad-timeout"]
    assert "read as milliseconds" in err and "read as seconds" in err and "not a positive number" in err
    assert "`autoApprove` ['read_file'] not imported: toolcrib never auto-approves" in err
    assert "`alwaysAllow` ['search']" in err and "[[policy.rules]]" in err
    assert "renamed 'my.server' -> my-server" in err and "renamed 'a__b' -> a_b" in err
    assert "field `trust` has no toolcrib equivalent" in err
    assert "# note cline: `autoApprove`" in text  # the notes travel with the file as comments


CODEX = """
model = "o4"

[mcp_servers.docs]
command = "npx"
args = ["-y", "mcp-docs", "--api-key", "sk-abcdefghijklmnop0123"]
env = { LOG = "info" }
env_vars = ["DOCS_TOKEN"]
startup_timeout_sec = 20
tool_timeout_sec = 90
enabled_tools = ["search", "fetch"]

[mcp_servers.figma]
url = "https://mcp.figma.com/mcp"
bearer_token_env_var = "FIGMA_OAUTH_TOKEN"
http_headers = { "X-Figma-Region" = "us-east-1" }
env_http_headers = { "X-Api-Key" = "FIGMA_KEY" }
startup_timeout_ms = 5000
disabled_tools = ["delete"]

[mcp_servers.off]
command = "x"
enabled = false
"""


@pytest.mark.parametrize("filename", ["config.toml", "codex-config"])
def test_import_codex_toml(tmp_path: Path, filename: str, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / filename  # by extension, or by content when the name says nothing
    src.write_text(CODEX)
    doc, text, err = _import(src, capsys)
    docs, figma, off = doc["servers"]["docs"], doc["servers"]["figma"], doc["servers"]["off"]
    assert docs["args"] == ["-y", "mcp-docs", "--api-key", "secret:docs/api-key"]
    assert docs["env"] == {"LOG": "info", "DOCS_TOKEN": "secret:docs/docs_token"}
    assert (docs["connect_timeout"], docs["timeout"], docs["include"]) == (20, 90, ["search", "fetch"])
    assert figma["headers"] == {
        "X-Figma-Region": "us-east-1",
        "X-Api-Key": "secret:figma/figma_key",
        "Authorization": "Bearer secret:figma/figma_oauth_token",
    }
    assert (figma["connect_timeout"], figma["exclude"]) == (5, ["delete"])
    assert off["enabled"] is False
    assert "sk-abcdefghijklmnop" not in text
    assert "$FIGMA_OAUTH_TOKEN (bearer_token_env_var)" in err
    assert 'export TOOLCRIB_SECRET_FIGMA_FIGMA_OAUTH_TOKEN="$FIGMA_OAUTH_TOKEN"' in err


def test_import_codex_toml_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for content in ('model = "o4"\n', "[mcp_servers.x\n"):
        src = tmp_path / "config.toml"
        src.write_text(content)
        assert main(["import", str(src)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_import_cli_end_to_end(tmp_path: Path) -> None:
    """The installed `toolcrib` executable, as a user runs it: TOML to stdout, report to stderr."""
    (tmp_path / ".vscode").mkdir()
    src = tmp_path / ".vscode" / "mcp.json"
    src.write_text(VSCODE_JSONC)
    exe = Path(sys.executable).parent / "toolcrib"
    proc = subprocess.run([str(exe), "import", str(src)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = tomllib.loads(proc.stdout)
    parse_config(doc, tmp_path / "toolcrib.toml")
    assert set(doc["servers"]) == {"perplexity", "nofile"}
    assert "converted perplexity (stdio)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("2 converted, ")


def test_import_env_variables_in_both_syntaxes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`${env:X}` (VS Code), `${X}` and `${X:-default}` (Claude Code): a reference where a secret goes, the
    current value (or default) where a plain setting goes; unknown variables are kept and reported."""
    monkeypatch.setenv("DATA_DIR", "/srv/data")
    monkeypatch.delenv("LOG_DIR", raising=False)
    src = tmp_path / "settings.json"  # VS Code user settings: servers and inputs under "mcp"
    src.write_text(
        """{
  "editor.fontSize": 14,
  "mcp": {
    "inputs": [{"type": "promptString", "id": "tok", "description": "Tracker token"}],
    "servers": {
      "tracker": {
        "url": "https://tracker.example/mcp",
        "headers": {"Authorization": "Bearer ${input:tok}", "X-Team": "${TEAM_ID}"},
      },
      "files": {
        "command": "files-mcp",
        "args": ["${env:DATA_DIR}", "${LOG_DIR:-/tmp/logs}", "${API_KEY}", "${command:pickFolder}"],
        "env": {"API_KEY": "${API_KEY}"},
      },
    },
  },
}"""
    )
    doc, _, err = _import(src, capsys)
    tracker, files = doc["servers"]["tracker"], doc["servers"]["files"]
    assert tracker["headers"] == {"Authorization": "Bearer secret:tracker/tok", "X-Team": "secret:tracker/team_id"}
    assert "VS Code input 'tok' (Tracker token)" in err
    assert files["args"] == ["/srv/data", "/tmp/logs", "secret:files/api_key", "${command:pickFolder}"]
    assert files["env"] == {"API_KEY": "secret:files/api_key"}  # the same variable, the same reference
    assert "${env:DATA_DIR} -> its current value '/srv/data'" in err
    assert "${LOG_DIR:-/tmp/logs} -> its default '/tmp/logs'" in err
    assert "${command:pickFolder} has no toolcrib equivalent; kept, edit it by hand" in err


BAD_JSON_SERVERS: dict[str, Any] = {
    "files": {"url": "ftp://files.example/"},
    "nothing": {"description": "neither command nor url", "env": {"API_KEY": "sk-live-0123456789abcdef"}},
    "cmd-list": {"command": ["npx", "-y", "x"]},
    "args-text": {"command": "npx", "args": "-y x", "env": {"API_KEY": "sk-live-0123456789abcdef"}},
    "env-list": {"command": "npx", "env": ["A=1"]},
    "env-object": {"command": "npx", "env": {"DEPTH": {"max": 3}}},
    "url-number": {"url": 8080},
    "grpc": {"type": "grpc", "url": "https://g.example/"},
    "type-list": {"type": ["http"], "url": "https://g.example/"},
    "headers-null": {"url": "https://h.example/mcp", "headers": {"X-Key": None}},
    "string": "npx -y x",
}
BAD_JSON_REASONS = {
    "files": "URL has scheme 'ftp', not http:// or https:// (give the server's http(s) MCP endpoint or remove it)",
    "nothing": 'neither `command` nor `url` (add `"command"` (stdio) or `"url"` (HTTP/SSE), or remove it)',
    "cmd-list": "`command` is list, not a string (fix the entry",
    "args-text": "`args` must be an array of strings (fix the entry",
    "env-list": "`env` must be an object of strings (fix the entry",
    "env-object": "`env` 'DEPTH' is dict, not a string (fix the entry",
    "url-number": "`url` is int, not a string (fix the entry",
    "grpc": "`type` 'grpc' is not stdio, sse or http (set it to one of those, or remove it)",
    "type-list": "`type` is list, not a string (fix the entry",
    "headers-null": "`headers` 'X-Key' is NoneType, not a string (fix the entry",
    "string": "is str, not an object (fix the entry",
}


def test_import_bad_servers_are_skipped_with_a_reason_and_the_rest_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ftp://, neither command nor url, wrong types: each one `skipped NAME: reason (what to do)`, the good
    servers around them imported, and no secret of a skipped server reported or written."""
    src = tmp_path / "mcp.json"
    good = {
        "ok": {"command": "uvx", "args": ["mcp-server-time", "--port", 8080]},
        "web": {"url": "https://w.example/mcp"},
    }
    src.write_text(json.dumps({"mcpServers": {"ok": good["ok"], **BAD_JSON_SERVERS, "web": good["web"]}}))
    doc, text, err = _import(src, capsys)
    assert set(doc["servers"]) == {"ok", "web"}
    assert doc["servers"]["ok"]["args"] == ["mcp-server-time", "--port", "8080"]
    header = text.split("\n\n", 1)[0]
    for name, reason in BAD_JSON_REASONS.items():
        assert f"skipped {name!r}: {reason}" in err, name
        assert f"# skipped {name!r}: {reason}" in header, name
    assert err.count("skipped '") == len(BAD_JSON_SERVERS) and "2 converted" in err
    assert "sk-live" not in text + err and "\nmoved " not in err


def test_import_bad_codex_tables_are_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "config.toml"
    src.write_text(
        'model = "o4"\n[mcp_servers.good]\ncommand = "npx"\n'
        '[mcp_servers.files]\nurl = "ftp://files.example/"\n'
        "[mcp_servers.empty]\nstartup_timeout_sec = 5\n"
        '[mcp_servers.args]\ncommand = "npx"\nargs = "-y x"\n'
        '[mcp_servers.vars]\ncommand = "npx"\nenv_vars = "TOKEN"\n'
        '[mcp_servers.bearer]\nurl = "https://b.example/mcp"\nbearer_token_env_var = 7\n'
    )
    doc, _text, err = _import(src, capsys)
    assert set(doc["servers"]) == {"good"}
    assert "skipped 'files': URL has scheme 'ftp'" in err
    assert "skipped 'empty': neither `command` nor `url` (add `command` (stdio) or `url` (HTTP/SSE)" in err
    assert "skipped 'args': `args` must be an array of strings (" in err
    assert "skipped 'vars': `env_vars` must be an array of strings (" in err
    assert "skipped 'bearer': `bearer_token_env_var` is int, not a string (" in err
    assert "\nmoved " not in err  # the skipped servers' references are not reported


def test_import_nothing_importable_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "mcp.json"
    src.write_text(json.dumps({"mcpServers": BAD_JSON_SERVERS}))
    assert main(["import", str(src), "-o", str(tmp_path / "out.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no server could be imported" in err and "nothing written" in err
    assert "'files': URL has scheme 'ftp'" in err and f"and {len(BAD_JSON_SERVERS) - 3} more" in err
    assert not (tmp_path / "out.toml").exists()


def test_import_mcp_remote_header_args(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mcp-remote --header "Authorization: Bearer X"`: the literal moves out; `${AUTH_HEADER}` set by the
    server's own env becomes that env value, itself moved out to a reference."""
    src = tmp_path / "claude_desktop_config.json"
    src.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "viaenv": {
                        "command": "npx",
                        "args": ["mcp-remote", "https://r.example/sse", "--header", "Authorization:${AUTH_HEADER}"],
                        "env": {"AUTH_HEADER": "Bearer tok_abcdef0123456789"},
                    },
                    "literal": {
                        "command": "npx",
                        "args": [
                            *["mcp-remote", "https://r.example/mcp", "--header", "Authorization: Bearer abc0123456789"],
                            *["--header", "X-Api-Key:k-123456", "--header", "X-Trace:on"],
                        ],
                    },
                }
            }
        )
    )
    doc, text, err = _import(src, capsys)
    assert "tok_abcdef" not in text and "abc0123456789" not in text and "k-123456" not in text
    viaenv, literal = doc["servers"]["viaenv"], doc["servers"]["literal"]
    assert viaenv["args"][-1] == "Authorization:Bearer secret:viaenv/auth_header"
    assert viaenv["env"] == {"AUTH_HEADER": "Bearer secret:viaenv/auth_header"}
    assert "${AUTH_HEADER} -> the server's env value of AUTH_HEADER" in err
    assert literal["args"][3:] == [
        "Authorization: Bearer secret:literal/authorization",
        "--header",
        "X-Api-Key:secret:literal/x-api-key",
        "--header",
        "X-Trace:on",
    ]
