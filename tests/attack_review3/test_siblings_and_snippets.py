"""Attack review 3 (notes/h_attack3.md): findings in ``shared_state`` and client-config snippets.

* A sibling ``*.toml`` that is a symlink loop, a FIFO or nested deeper than the parser's recursion
  made ``toolcrib check`` print a traceback or hang forever, and ``toolcrib serve`` crash after it
  had started: a sibling is only another config's candidate, never a reason to fail.
* The Codex snippet's TOML strings were JSON strings: a character outside the BMP (``\\ud83d...``)
  or a DEL made the snippet invalid TOML; ``env.PATH`` kept relative entries (``.``, ``bin``),
  which resolve against whatever folder a client starts the gateway in.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.cli.clients import launch_path, snippet
from toolcrib.config import Config, shared_state

TOOLCRIB = str(Path(sys.executable).with_name("toolcrib"))
MAIN = '[gateway]\nhost = "127.0.0.1"\nport = 0\n'


def _check(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOOLCRIB, "--config", str(cfg), "check"], capture_output=True, text=True, timeout=120)


def _folder(tmp_path: Path) -> Path:
    cfg = tmp_path / "main.toml"
    cfg.write_text(MAIN, encoding="utf-8")
    (tmp_path / "twin.toml").write_text(MAIN, encoding="utf-8")  # shares .toolcrib/: still reported
    return cfg


def _bad_sibling(kind: str, folder: Path) -> None:
    if kind == "symlink-loop":
        os.symlink(folder / "b.toml", folder / "a.toml")
        os.symlink(folder / "a.toml", folder / "b.toml")
    elif kind == "fifo":
        os.mkfifo(folder / "pipe.toml")
    elif kind == "deep":
        (folder / "deep.toml").write_text("a = " + "[" * 50_000 + "]" * 50_000 + "\n", encoding="utf-8")
    elif kind == "directory":
        (folder / "dir.toml").mkdir()


@pytest.mark.parametrize("kind", ["symlink-loop", "fifo", "deep", "directory"])
def test_check_survives_an_odd_sibling(tmp_path: Path, kind: str) -> None:
    cfg = _folder(tmp_path)
    _bad_sibling(kind, tmp_path)
    done = _check(cfg)  # a FIFO sibling used to block here forever (the timeout kills the child)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
    assert "twin.toml in the same folder uses the same state" in done.stderr


@pytest.mark.parametrize("kind", ["symlink-loop", "deep"])
def test_shared_state_skips_an_odd_sibling(tmp_path: Path, kind: str) -> None:
    cfg = _folder(tmp_path)
    _bad_sibling(kind, tmp_path)
    from toolcrib.config import load_config

    config, path = load_config(cfg)
    assert [p.name for p, _ in shared_state(config, path)] == ["twin.toml"]


def test_serve_starts_beside_a_symlink_loop(tmp_path: Path) -> None:
    cfg = _folder(tmp_path)
    _bad_sibling("symlink-loop", tmp_path)
    proc = subprocess.Popen(
        [TOOLCRIB, "--config", str(cfg), "serve"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "uses the same state" in line or "Traceback" in line:
                break
        assert any("twin.toml in the same folder uses the same state" in x for x in lines), "".join(lines)
        assert proc.poll() is None, "".join(lines)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# client-config snippets

_CONFIG = Config.model_validate({})


def _codex_path(path_value: str) -> str:
    old = os.environ.get("PATH")
    os.environ["PATH"] = path_value
    try:
        text, _ = snippet("codex", _CONFIG, "/tmp/x.toml", stdio=True)
    finally:
        if old is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = old
    doc = tomllib.loads(text)
    value = doc["mcp_servers"]["toolcrib"]["env"]["PATH"]
    assert isinstance(value, str)
    return value


def test_codex_snippet_is_toml_for_any_path_characters() -> None:
    weird = '/opt/\U0001f600/bin:/opt/del\x7fdir:/opt/tab\tdir:/opt/q"uote\\s'
    here = os.path.dirname(snippet("codex", _CONFIG, "/tmp/x.toml", stdio=True)[0].split('"')[1])
    assert _codex_path(weird) == f"{here}:{weird}"


_entry = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=":\x00"), min_size=1, max_size=12)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.builds(lambda e: "/" + e, _entry), max_size=5))
def test_codex_snippet_round_trips_any_absolute_path_list(entries: list[str]) -> None:
    value = ":".join(entries)
    got = _codex_path(value).split(":")
    assert got[len(got) - len(entries) :] == entries  # toolcrib's folder first, then the shell's PATH as it is


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.one_of(_entry, st.builds(lambda e: "/" + e, _entry), st.just("")), max_size=6))
def test_launch_path_keeps_only_absolute_entries(entries: list[str]) -> None:
    got = launch_path("/venv/bin/toolcrib", {"PATH": ":".join(entries)}).split(":")
    assert got[0] == "/venv/bin" or "/venv/bin" in entries
    assert all(e.startswith("/") for e in got)
    assert [e for e in got if e != "/venv/bin"] == [e for e in entries if e.startswith("/") and e != "/venv/bin"]
