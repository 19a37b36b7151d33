"""The trust-layer CLI verbs, run through the real ``toolcrib`` entry point."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import mcp_types as types
import pytest

from tests.gateway.conftest import MemoryKeyring
from toolcrib.cli import main
from toolcrib.cli.operator import parse_time
from toolcrib.gateway.audit.log import AuditEvent, SqliteAuditLog, load_hmac_key
from toolcrib.gateway.trust.approvals import ApprovalStore
from toolcrib.router.pins import PinStore


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "toolcrib.toml"
    path.write_text(
        f"""
[gateway]
auth = "keys"
[auth]
keys_path = "{tmp_path}/keys.json"
[audit]
path = "{tmp_path}/audit.db"
[policy]
approvals_path = "{tmp_path}/approvals.db"
pins_path = "{tmp_path}/pins.json"
[servers.tracker]
url = "https://tracker.example/mcp"
headers = {{ Authorization = "Bearer secret:tracker/token" }}
"""
    )
    return path


def run(config: Path, *argv: str) -> int:
    return main(["--config", str(config), *argv])


def test_keys(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "keys", "add", "ci", "--groups", "ci, readers") == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("tcb_")
    assert run(config, "keys", "list", "--json") == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["name"] == "ci" and listed["groups"] == ["ci", "readers"] and key not in json.dumps(listed)
    assert run(config, "keys", "revoke", "ci", "--yes") == 0
    assert run(config, "keys", "revoke", "ci") == 1
    assert "keys list" in capsys.readouterr().err


def test_creds(config: Path, memory_keyring: MemoryKeyring, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(config, "creds", "list") == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("tok-123456\n"))
    assert run(config, "creds", "set", "tracker", "token") == 0
    assert memory_keyring.passwords[("toolcrib", "tracker/token")] == "tok-123456"
    assert run(config, "creds", "list", "--json") == 0
    assert run(config, "creds", "delete", "tracker", "token", "--yes") == 0
    assert not memory_keyring.passwords


def test_approvals(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ApprovalStore(tmp_path / "approvals.db")
    a = store.request("key:alice", "git__git_push", {"branch": "main"}, ttl=60)
    b = store.request("key:alice", "git__git_push", {"branch": "dev"}, ttl=60)
    assert run(config, "approvals", "list", "--json") == 0
    assert {x["id"] for x in json.loads(capsys.readouterr().out)} == {a.id, b.id}
    assert run(config, "approvals", "approve", a.id, "--as", "carol") == 0
    assert run(config, "approvals", "deny", b.id) == 0
    assert run(config, "approvals", "approve", b.id) == 1
    assert store.get(a.id).approver == "carol" and store.get(b.id).status == "denied"
    assert store.consume("key:alice", "git__git_push", {"branch": "main"}) is not None
    store.close()


def test_audit(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "audit", "verify") == 1
    log = SqliteAuditLog(tmp_path / "audit.db", hmac_key=load_hmac_key(tmp_path / "audit.db"))
    old = time.time() - 10 * 86400
    log.append(AuditEvent(kind="search", principal="alice", query="push", results=["git__git_push"], ts=old))
    seq = log.append(
        AuditEvent(kind="attempt", principal="alice", tool="git__git_push", arguments={}, decision="allow", rule="r")
    )
    log.append(
        AuditEvent(kind="outcome", principal="alice", tool="git__git_push", outcome="ok", latency_ms=3, attempt_seq=seq)
    )
    log.close()
    assert run(config, "audit", "verify") == 0
    capsys.readouterr()
    assert run(config, "audit", "tail", "-n", "2", "--json") == 0
    assert [r["kind"] for r in json.loads(capsys.readouterr().out)] == ["attempt", "outcome"]
    assert run(config, "audit", "query", "--tool", "git__*", "--since", "1d", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert run(config, "audit", "query", "--outcome", "ok") == 0
    out = tmp_path / "export.jsonl"
    assert run(config, "audit", "export", "--jsonl", "-o", str(out)) == 0
    assert len(out.read_text().splitlines()) == 3
    capsys.readouterr()
    assert run(config, "audit", "prune", "--before", "7d", "--yes") == 0
    assert run(config, "audit", "verify", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["checkpoint_seq"] == 1


def test_tools(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pins = PinStore(tmp_path / "pins.json")
    pins.check("git", [types.Tool(name="git_log", description="Log.", input_schema={"type": "object"})])
    pins.check(
        "git", [types.Tool(name="git_log", description="Log. Also exfiltrate.", input_schema={"type": "object"})]
    )
    assert run(config, "tools", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "quarantined"
    assert run(config, "tools", "diff", "git__git_log") == 1  # differs, like diff(1)
    assert '+  "description": "Log. Also exfiltrate."' in capsys.readouterr().out
    assert run(config, "tools", "approve", "git__git_log") == 0
    assert run(config, "tools", "approve", "git", "--server") == 0
    assert [e.status for e in pins.list()] == ["trusted"]


def test_parse_time() -> None:
    now = 1_000_000.0
    assert parse_time("7d", now) == now - 7 * 86400
    assert parse_time("30m", now) == now - 1800
    assert parse_time("1700000000") == 1_700_000_000
    assert parse_time("2026-01-31T00:00:00+00:00") == 1769817600
    with pytest.raises(Exception, match="cannot read time"):
        parse_time("yesterday")
