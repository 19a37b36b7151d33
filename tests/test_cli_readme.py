"""The README's CLI sections stay true: every verb and client it names exists, and the commands it
tells a new user to run after `make run` work from the repository root (issue 9, item 19)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from toolcrib.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TOOLCRIB = str(Path(sys.executable).with_name("toolcrib"))


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.index("\n## ", start + 3)
    return README[start:end]


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_verb_is_in_the_command_block_and_every_listed_verb_exists() -> None:
    block = _section("The command").split("```")[1]
    listed = {m.group(1) for m in re.finditer(r"^  ([a-z-]+) ", block, re.M)}
    assert listed == set(_choices(build_parser()))


def test_every_client_config_client_is_documented() -> None:
    sub = _choices(build_parser())["client-config"]
    clients = next(a for a in sub._actions if a.dest == "client").choices
    assert clients is not None
    table = _section("Point your client at it")
    for client in clients:
        assert f"`{client}`" in table


def test_the_documented_post_make_run_commands_work_from_the_repo_root() -> None:
    assert ".venv/bin/toolcrib --config toolcrib/demo/toolcrib.toml" in README
    assert 'export PATH="$PWD/.venv/bin:$PATH"' in README  # the demo's `command = "python"` is the venv's
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run(
        [TOOLCRIB, "--config", "toolcrib/demo/toolcrib.toml", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].endswith(": ok")
    assert f"relative paths resolve against {ROOT / 'toolcrib' / 'demo'}" in out.stdout


def test_license_file_is_the_apache_2_text() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
