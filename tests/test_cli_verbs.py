"""Operator verbs against real servers: `toolcrib index` then `toolcrib search` on the persisted index."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from toolcrib.cli import main


def test_index_then_search(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "toolcrib.toml"
    cfg.write_text(
        f"""
[index]
path = "{tmp_path / "index"}"
[servers.time]
command = "{sys.executable}"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
"""
    )
    assert main(["--config", str(cfg), "search", "time"]) == 1
    assert "run `toolcrib index` first" in capfd.readouterr().err
    assert main(["--config", str(cfg), "index"]) == 0
    assert "2 added" in capfd.readouterr().err
    assert main(["--config", str(cfg), "index"]) == 0
    assert "2 unchanged; 0 embedded" in capfd.readouterr().err
    assert main(["--config", str(cfg), "search", "what time is it in Tokyo", "--json"]) == 0
    rows = json.loads(capfd.readouterr().out)
    assert rows[0]["name"] == "time__get_current_time"
    assert main(["--config", str(cfg), "index", "--server", "nope"]) == 2
