"""A client-launched gateway works from any folder and PATH (new-user finding 1).

Claude Desktop and its kind start ``toolcrib serve --stdio`` with cwd ``/`` and a minimal ``PATH``
that lacks the virtualenv. The demo config must still connect every server: its paths are anchored at
the config's folder (``cwd = "."``) and the ``client-config`` snippet carries ``env.PATH`` with
toolcrib's directory first, so the demo's ``python`` is the virtualenv's.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.e2e.conftest import ROOT, TOOLCRIB

pytestmark = pytest.mark.anyio

MINIMAL_PATH = "/usr/bin:/bin"
"""What Claude Desktop gives a server it launches on Linux/macOS (no virtualenv, no ~/.local/bin)."""


def _client_env() -> dict[str, str]:
    env = {"PATH": MINIMAL_PATH, "HOME": os.environ.get("HOME", "/")}
    if "PYTHONPATH" in os.environ:  # a checkout that is not the installed one (a git worktree)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _demo_copy(tmp_path: Path) -> Path:
    """The bundled demo config in a fresh folder, with the git repository `make run` would create."""
    folder = tmp_path / "demo"
    folder.mkdir()
    cfg = folder / "toolcrib.toml"
    shutil.copyfile(ROOT / "toolcrib" / "demo" / "toolcrib.toml", cfg)
    text = cfg.read_text().replace("port = 8765", "port = 0")
    cfg.write_text(text)
    repo = folder / ".toolcrib" / "demo-repo"
    repo.mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "README.md").write_text("# demo\n")
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    return cfg


def _client_config(cfg: Path, *client: str) -> str:
    out = subprocess.run(
        [TOOLCRIB, "--config", str(cfg), "client-config", *client],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env=_client_env(),
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_the_claude_desktop_snippet_runs_the_demo_from_root_with_a_minimal_path(tmp_path: Path) -> None:
    cfg = _demo_copy(tmp_path)
    launch = json.loads(_client_config(cfg, "claude-desktop"))["mcpServers"]["toolcrib"]
    assert launch["env"]["PATH"].split(os.pathsep)[0] == os.path.dirname(launch["command"])
    assert launch["env"]["PATH"].endswith(MINIMAL_PATH)
    params = StdioServerParameters(
        command=launch["command"], args=launch["args"], env=_client_env() | launch["env"], cwd="/"
    )
    repo = cfg.parent / ".toolcrib" / "demo-repo"
    with anyio.fail_after(120):
        async with Client(params) as c:
            calls = {
                "time__get_current_time": {"timezone": "UTC"},
                "git__git_status": {"repo_path": str(repo)},
                "notes__add_note": {"title": "t", "text": "from /"},
            }
            for tool, arguments in calls.items():
                result = await c.call_tool("invoke", {"tool": tool, "arguments": arguments})
                assert not result.is_error, (tool, result.content)
    assert (cfg.parent / ".toolcrib" / "demo-notes.json").exists()  # the notes server's cwd: the config's folder
    assert not Path("/.toolcrib").exists()


def test_every_stdio_snippet_carries_the_path(tmp_path: Path) -> None:
    cfg = _demo_copy(tmp_path)
    expected = f"{Path(TOOLCRIB).parent}{os.pathsep}{MINIMAL_PATH}"
    cursor = json.loads(_client_config(cfg, "cursor", "--stdio"))["mcpServers"]["toolcrib"]
    vscode = json.loads(_client_config(cfg, "vscode", "--stdio"))["servers"]["toolcrib"]
    codex = tomllib.loads(_client_config(cfg, "codex", "--stdio"))["mcp_servers"]["toolcrib"]
    assert cursor["env"] == vscode["env"] == codex["env"] == {"PATH": expected}
    words = shlex.split(_client_config(cfg, "claude-code", "--stdio"))
    assert words[words.index("-e") + 1] == f"PATH={expected}" and words.index("-e") < words.index("--")
    assert "env" not in json.loads(_client_config(cfg, "cursor"))["mcpServers"]["toolcrib"]  # HTTP: no launch
