"""CLI behaviour for operators who make mistakes (issue 9, items 11, 12, 14, 15, 18, 20), through the
real ``toolcrib`` entry point."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.cli import main
from toolcrib.cli.audit import principal_ids
from toolcrib.cli.check import looks_like_literal_secret, malformed_refs
from toolcrib.config import Config, load_config
from toolcrib.gateway.audit.log import AuditEvent, SqliteAuditLog, load_hmac_key
from toolcrib.gateway.trust.identity import KINDS

TOOLCRIB = str(Path(sys.executable).with_name("toolcrib"))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# 11: relative state paths follow the config file, not the working directory


def test_relative_state_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "conf"
    cfg = _write(
        conf / "toolcrib.toml",
        '[auth]\nkeys_path = "state/keys.json"\n[audit]\nanchor_path = "elsewhere/head"\n'
        '[secrets]\nfile = "secrets.toml"\n[servers.s]\ncommand = "python"\ncwd = "work"\n'
        '[servers.abs]\ncommand = "python"\ncwd = "/"\n'
        '[servers.local]\ncommand = "./bin/server"\n[servers.inside]\ncommand = "./bin/server"\ncwd = "w"\n',
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config, _ = load_config(cfg)
    assert config.auth.keys_path == str(conf / "state" / "keys.json")
    assert config.index.path == str(conf / ".toolcrib" / "index")  # defaults too
    assert config.audit.path == str(conf / ".toolcrib" / "audit.db")
    assert config.audit.anchor_path == str(conf / "elsewhere" / "head")
    assert config.policy.approvals_path == str(conf / ".toolcrib" / "approvals.db")
    assert config.policy.pins_path == str(conf / ".toolcrib" / "pins.json")
    assert config.secrets.file == str(conf / "secrets.toml")
    assert config.servers["s"].cwd == str(conf / "work") and config.servers["abs"].cwd == "/"
    assert config.servers["s"].command == "python"  # a bare name is looked up on PATH
    assert config.servers["local"].command == str(conf / "bin" / "server")
    assert config.servers["inside"].command == "./bin/server"  # relative to its cwd, as at start
    assert main(["--config", str(cfg), "keys", "add", "ci"]) == 0
    assert (conf / "state" / "keys.json").exists() and not any(cwd.iterdir())
    capsys.readouterr()
    assert main(["--config", str(cfg), "check"]) in (0, 1)
    assert f"relative paths resolve against {conf}" in capsys.readouterr().out


def test_a_config_built_without_a_file_is_not_resolved() -> None:
    assert Config.model_validate({"index": {"path": "rel/index"}}).index.path == "rel/index"


# 14: check warns for every mistake, and its last line agrees with the exit code


def test_check_clean_config_says_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "t.toml", f'[servers.py]\ncommand = "{sys.executable}"\n')
    assert main(["--config", str(cfg), "check"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == f"{cfg}: ok" and "warning" not in captured.err


def test_check_zero_servers_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "t.toml", "")
    assert main(["--config", str(cfg), "check"]) == 0
    captured = capsys.readouterr()
    assert "no enabled servers" in captured.err
    assert captured.out.splitlines()[-1] == f"{cfg}: ok with 1 warning (see above)"
    assert ": ok" not in captured.out.splitlines()[0]  # the header no longer claims ok


def test_check_names_the_storage_secrets_without_contacting_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOOLCRIB_SECRET_TOOLCRIB_AUDIT_HMAC", raising=False)
    monkeypatch.delenv("TOOLCRIB_SECRET_PG_PASSWORD", raising=False)
    body = (
        f'[servers.py]\ncommand = "{sys.executable}"\n[secrets]\nfile = "{tmp_path / "none.toml"}"\n'
        '[storage]\nurl = "postgresql://toolcrib@127.0.0.1:1/toolcrib"\npassword = "secret:pg/password"\n'
    )
    cfg = _write(tmp_path / "t.toml", body)
    assert main(["--config", str(cfg), "check"]) == 1  # port 1: nothing listens, and nothing was contacted
    captured = capsys.readouterr()
    assert "storage: postgresql://toolcrib@127.0.0.1:1/toolcrib" in captured.out
    assert "secret:pg/password: NOT SET" in captured.err and "toolcrib creds set pg password" in captured.err
    assert "secret:toolcrib/audit-hmac: NOT SET" in captured.err
    monkeypatch.setenv("TOOLCRIB_SECRET_PG_PASSWORD", "pw")
    monkeypatch.setenv("TOOLCRIB_SECRET_TOOLCRIB_AUDIT_HMAC", "ab" * 32)
    assert main(["--config", str(cfg), "check"]) == 0
    assert "secret:pg/password: set (env)" in capsys.readouterr().out


def test_check_reports_each_mistake_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(
        tmp_path / "t.toml",
        '[gateway]\nport = "8765"\n'
        '[servers.missing]\ncommand = "no-such-toolcrib-test-binary"\n'
        '[servers.rel]\ncommand = "./bin/server.sh"\n'
        f'[servers.api]\ncommand = "{sys.executable}"\ntimeout = "30"\n'
        'env = { GITHUB_TOKEN = "secret:github", OPENAI_API_KEY = "sk-abcdefghijklmnopqrstuvwx", LANG = "C" }\n'
        '[servers.web]\nurl = "https://example.com/mcp"\n'
        'headers = { X-Api = "ghp_0123456789abcdefABCDEF0123456789abcd" }\n',
    )
    assert main(["--config", str(cfg), "check"]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "missing: command 'no-such-toolcrib-test-binary' is not on PATH" in err
    assert f"rel: command '{tmp_path}/bin/server.sh' not found or not executable" in err
    assert "api: env.GITHUB_TOKEN: 'secret:github' is not a reference; write secret:NAMESPACE/NAME" in err
    assert "api: env.OPENAI_API_KEY looks like a literal secret" in err
    assert "web: headers.X-Api looks like a literal secret" in err
    assert "LANG" not in err
    assert "gateway.port = '8765' is a string; write it without quotes: port = 8765" in err
    assert "servers.api.timeout = '30' is a string" in err
    assert "sk-abc" not in captured.out + err and "ghp_0123" not in captured.out + err
    assert captured.out.splitlines()[-1] == f"{cfg}: 3 problems, 4 warnings: fix the problems above (exit 1)"


def test_check_warns_for_literal_secrets_in_args_and_urls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLCRIB_SECRET_DB_KEY", "stored")
    cfg = _write(
        tmp_path / "t.toml",
        f'[servers.db]\ncommand = "{sys.executable}"\n'
        'args = ["-m", "x", "--api-key", "abc123", "--token=zzz", "postgres://u:hunter2@db/x", "--name", "db", '
        '"--key", "secret:db/key", "postgres://u@db/x"]\n'
        '[servers.web]\nurl = "https://e.example/mcp?api_key=abc&region=eu"\n',
    )
    assert main(["--config", str(cfg), "check"]) == 0
    captured = capsys.readouterr()
    for where in ("db: args[3]", "db: args[4]", "db: args[5]", "web: url query parameter 'api_key'"):
        assert f"warning {where} looks like a literal secret" in captured.err
    assert "args[7]" not in captured.err and "args[9]" not in captured.err and "args[10]" not in captured.err
    for literal in ("hunter2", "abc123", "zzz", "api_key=abc"):
        assert literal not in captured.out + captured.err  # masked in the printed command line too
    assert "--api-key *** --token=*** *** --name db" in captured.out
    assert captured.out.splitlines()[-1] == f"{cfg}: ok with 4 warnings (see above)"


def test_check_header_does_not_say_ok_when_a_secret_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _write(tmp_path / "t.toml", '[servers.w]\nurl = "https://e.example/mcp"\nheaders = { A = "secret:w/t" }\n')
    assert main(["--config", str(cfg), "check"]) == 1
    out = capsys.readouterr().out
    assert "ok" not in out.split()  # neither the header nor the summary
    assert out.splitlines()[-1].endswith("(exit 1)")


_PART = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}", fullmatch=True)


@settings(max_examples=1000)
@given(prefix=st.text(max_size=20), ns=_PART, name=_PART, suffix=st.sampled_from(["", " ", ",", "@x", "'"]))
def test_valid_references_are_never_malformed(prefix: str, ns: str, name: str, suffix: str) -> None:
    prefix = prefix.replace("secret:", "")
    if prefix.endswith("secret") or prefix.endswith("secret:"[:-1]):
        prefix += " "
    assert malformed_refs(f"{prefix}secret:{ns}/{name}{suffix}") == []


@settings(max_examples=1000)
@given(tail=st.text(max_size=20))
def test_a_reference_without_namespace_and_name_is_malformed(tail: str) -> None:
    text = "secret:" + tail.replace("/", "")
    assert malformed_refs(text) != []
    assert not looks_like_literal_secret("API_KEY", text)  # a reference (even a bad one) is no literal


# 12 and 20: client-config


def test_client_config_launches_the_absolute_executable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "t.toml", "[gateway]\nport = 9999\n")
    outputs = []
    for client in ("claude-desktop", "claude"):
        assert main(["--config", str(cfg), "client-config", client]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]  # `claude` is an alias of `claude-desktop`
    launch = json.loads(outputs[0])["mcpServers"]["toolcrib"]
    assert os.path.isabs(launch["command"]) and os.access(launch["command"], os.X_OK)
    assert launch["args"][-2:] == ["serve", "--stdio"] and str(cfg.resolve()) in launch["args"]


def test_client_config_with_keys_has_a_header_placeholder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "t.toml", '[gateway]\nport = 9999\nauth = "keys"\n')
    assert main(["--config", str(cfg), "client-config", "cursor"]) == 0
    captured = capsys.readouterr()
    entry = json.loads(captured.out)["mcpServers"]["toolcrib"]
    assert entry == {"url": "http://127.0.0.1:9999/mcp", "headers": {"Authorization": "Bearer <KEY>"}}
    assert "`toolcrib keys add NAME`" in captured.err
    assert main(["--config", str(cfg), "client-config", "claude-code"]) == 0
    assert "--header 'Authorization: Bearer <KEY>'" in capsys.readouterr().out
    assert main(["--config", str(cfg), "client-config", "vscode"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["servers"]["toolcrib"]["headers"] == {"Authorization": "Bearer ${input:toolcrib-key}"}
    assert doc["inputs"][0]["password"] is True


def test_client_config_codex(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "t.toml", '[gateway]\nport = 9999\nauth = "keys"\n')
    assert main(["--config", str(cfg), "client-config", "codex"]) == 0
    captured = capsys.readouterr()
    server = tomllib.loads(captured.out)["mcp_servers"]["toolcrib"]
    assert server == {"url": "http://127.0.0.1:9999/mcp", "bearer_token_env_var": "TOOLCRIB_API_KEY"}
    assert "export TOOLCRIB_API_KEY=" in captured.err
    assert main(["--config", str(cfg), "client-config", "codex", "--stdio"]) == 0
    server = tomllib.loads(capsys.readouterr().out)["mcp_servers"]["toolcrib"]
    assert os.path.isabs(server["command"]) and server["args"][-1] == "--stdio"
    assert "bearer_token_env_var" not in server  # stdio runs as the local operator: no key


# 15: destructive verbs


@pytest.fixture
def audit_config(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    log = SqliteAuditLog(path, hmac_key=load_hmac_key(path))
    old = time.time() - 10 * 86400
    for i in range(3):
        log.append(AuditEvent(kind="search", principal="key:agent1", query=f"q{i}", results=[], ts=old))
    log.append(AuditEvent(kind="search", principal="oauth:agent1", query="new", results=[]))
    log.append(AuditEvent(kind="search", principal="key:other", query="other", results=[]))
    log.close()
    return _write(
        tmp_path / "toolcrib.toml", f'[audit]\npath = "{path}"\n[auth]\nkeys_path = "{tmp_path / "keys.json"}"\n'
    )


def _rows(cfg: Path, capsys: pytest.CaptureFixture[str], *filters: str) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["--config", str(cfg), "audit", "query", "--json", *filters]) == 0
    rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return rows


def test_prune_refuses_the_future_counts_dry_runs_and_asks(
    audit_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(audit_config)
    assert main(["--config", cfg, "audit", "prune", "--before", "2099-01-01", "--yes"]) == 2  # a usage error
    assert "is in the future" in capsys.readouterr().err
    assert main(["--config", cfg, "audit", "prune", "--before", "7d", "--dry-run"]) == 0
    assert "would prune 3 rows" in capsys.readouterr().out
    assert main(["--config", cfg, "audit", "prune", "--before", "7d"]) == 2  # stdin is no terminal: --yes needed
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rerun with --yes" in err
    assert len(_rows(audit_config, capsys)) == 5
    assert main(["--config", cfg, "audit", "prune", "--before", "7d", "--yes"]) == 0
    assert len(_rows(audit_config, capsys)) == 2
    assert main(["--config", cfg, "audit", "verify"]) == 0


def test_keys_revoke_and_creds_delete_ask_too(audit_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(audit_config)
    assert main(["--config", cfg, "keys", "add", "ci"]) == 0
    assert main(["--config", cfg, "keys", "revoke", "ci"]) == 2
    assert "rerun with --yes" in capsys.readouterr().err
    assert main(["--config", cfg, "keys", "revoke", "nobody", "--yes"]) == 1
    assert "no API key named 'nobody'" in capsys.readouterr().err
    assert main(["--config", cfg, "creds", "delete", "gh", "token"]) == 2
    assert "rerun with --yes" in capsys.readouterr().err


def test_confirmation_on_a_terminal(audit_config: Path) -> None:
    """On a real terminal (a pty), `keys revoke` asks; `n` keeps the key, `y` revokes it."""
    assert main(["--config", str(audit_config), "keys", "add", "ci"]) == 0
    for answer, code in ((b"n\n", 1), (b"y\n", 0)):
        leader, follower = pty.openpty()
        try:
            proc = subprocess.Popen(
                [TOOLCRIB, "--config", str(audit_config), "keys", "revoke", "ci"],
                stdin=follower,
                stdout=follower,
                stderr=follower,
            )
            os.write(leader, answer)
            assert proc.wait(timeout=120) == code
        finally:
            os.close(follower)
            os.close(leader)
    keys = json.loads((audit_config.parent / "keys.json").read_text())
    assert "ci" not in json.dumps(keys)


# 18: audit query by bare subject; search validated like index


def test_audit_query_matches_a_bare_subject_under_any_kind(
    audit_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows(audit_config, capsys, "--principal", "agent1")
    assert {r["principal"] for r in rows} == {"key:agent1", "oauth:agent1"} and len(rows) == 4
    assert len(_rows(audit_config, capsys, "--principal", "key:agent1")) == 3
    assert len(_rows(audit_config, capsys, "--principal", "agent1", "--limit", "2")) == 2


@settings(max_examples=1000)
@given(subject=st.text(min_size=1, max_size=20))
def test_principal_ids_keep_typed_ids_and_expand_bare_ones(subject: str) -> None:
    ids = principal_ids(subject)
    kind = subject.partition(":")[0]
    if ":" in subject and kind in KINDS:
        assert ids == [subject]
    else:
        assert ids[0] == subject and {f"{k}:{subject}" for k in KINDS} <= set(ids)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["search", ""], "the search query is empty"),
        (["search", "   "], "the search query is empty"),
        (["search", "time", "--server", "nope"], "no server named 'nope'"),
        (["search", "time", "--limit", "500"], "--limit must be from 1 to 20"),
        (["search", "time", "--limit", "0"], "--limit must be from 1 to 20"),
    ],
)
def test_search_arguments_are_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    cfg = _write(tmp_path / "t.toml", f'[index]\npath = "{tmp_path / "index"}"\n')
    assert main(["--config", str(cfg), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "index").exists()  # refused before opening anything
