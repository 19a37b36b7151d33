"""CLI findings of a new user (notes/h_newuser2.md items 3-5), through the real ``toolcrib`` process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOOLCRIB = str(Path(sys.executable).with_name("toolcrib"))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _run(cfg: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOOLCRIB, "--config", str(cfg), *args], input=stdin, capture_output=True, text=True, timeout=120
    )


# 3: a key that does nothing says so


@pytest.mark.parametrize("auth", ["none", "oauth"])
def test_keys_add_warns_when_auth_does_not_check_keys(tmp_path: Path, auth: str) -> None:
    extra = (
        '\n[auth]\nissuer = "https://id.example.com"\naudience = "https://gw.example.com/mcp"\n'
        if auth == "oauth"
        else ""
    )
    cfg = _write(tmp_path / "t.toml", f'[gateway]\nauth = "{auth}"\n{extra}')
    out = _run(cfg, "keys", "add", "ci")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("tcb_")  # stored and printed as before
    (warning,) = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert f'[gateway] auth = "{auth}"' in warning
    assert 'only with auth = "keys" or "keys+oauth"' in warning


@pytest.mark.parametrize("auth", ["keys", "keys+oauth"])
def test_keys_add_is_quiet_when_keys_are_checked(tmp_path: Path, auth: str) -> None:
    extra = (
        '\n[auth]\nissuer = "https://id.example.com"\naudience = "https://gw.example.com/mcp"\n'
        if "oauth" in auth
        else ""
    )
    cfg = _write(tmp_path / "t.toml", f'[gateway]\nauth = "{auth}"\n{extra}')
    out = _run(cfg, "keys", "add", "ci", "--json")
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr
