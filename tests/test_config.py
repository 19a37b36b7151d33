"""Config validation: errors name the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolcrib.cli import main
from toolcrib.config import load_config
from toolcrib.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "toolcrib.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_minimal_config_loads(tmp_path: Path) -> None:
    cfg, path = load_config(_write(tmp_path, '[servers.time]\ncommand = "python"\n'))
    assert cfg.gateway.host == "127.0.0.1"
    assert cfg.servers["time"].kind == "stdio"
    assert path.is_absolute()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[servers.x]\ncommand = "a"\nurl = "http://h/mcp"\n', "servers.x: set exactly one of"),
        ('[servers.x]\ncommand = "a"\ntimeout = "soon"\n', "servers.x.timeout"),
        ('[gateway]\nmoed = "x"\n', "gateway.moed: unknown key"),
        ('[gateway]\nmode = "fast"\n', "gateway.mode"),
        ('[servers."a__b"]\ncommand = "a"\n', "contains the separator"),
        ('[servers.x]\nurl = "ftp://h"\n', "must start with http"),
        ("[gateway\n", "invalid TOML"),
    ],
)
def test_errors_name_file_key_and_fix(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in err.value.message
    assert needle in err.value.message


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file; pass --config"):
        load_config(tmp_path / "nope.toml")


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "")
    monkeypatch.setenv("TOOLCRIB_CONFIG", str(path))
    _, found = load_config(None)
    assert found == path.resolve()


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, '[servers.time]\ncommand = "python"\nargs = ["-m", "mcp_server_time"]\n')
    assert main(["--config", str(path), "check"]) == 0
    assert "time: stdio python -m mcp_server_time" in capsys.readouterr().out


def test_check_reports_error_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, '[gateway]\nport = "high"\n')
    assert main(["--config", str(path), "check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("toolcrib: ") and "gateway.port" in err and "Traceback" not in err


def test_auth_none_refused_off_loopback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, '[gateway]\nhost = "0.0.0.0"\n')
    assert main(["--config", str(path), "check"]) == 2
    assert 'auth = "none" is only allowed on a loopback bind' in capsys.readouterr().err


def test_check_reports_secret_references(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, '[servers.gh]\ncommand = "x"\nenv = { T = "secret:gh/token", U = "secret:gh/other" }\n')
    monkeypatch.setenv("TOOLCRIB_SECRET_GH_TOKEN", "value")
    assert main(["--config", str(path), "check"]) == 1
    captured = capsys.readouterr()
    assert "secret:gh/token: set (env)" in captured.out
    assert "secret:gh/other: NOT SET; run `toolcrib creds set gh other`" in captured.err
    assert "value" not in captured.out + captured.err
