"""Approvals: bound to principal, tool and exact arguments; single use; expiry; shared file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from toolcrib.gateway.trust.approvals import ApprovalError, ApprovalStore, args_hash
from toolcrib.gateway.trust.secrets import Redactor

ARGS = {"repo_path": "/srv/app", "branch": "main", "force": False}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ApprovalStore]:
    s = ApprovalStore(tmp_path / "approvals.db")
    yield s
    s.close()


def test_approval_is_bound_to_exact_arguments(store: ApprovalStore) -> None:
    a = store.request("alice", "git__git_push", ARGS, ttl=60)
    assert a.status == "pending"
    assert store.consume("alice", "git__git_push", ARGS) is None
    store.approve(a.id, "operator")
    assert store.consume("alice", "git__git_push", {**ARGS, "force": True}) is None
    assert store.consume("alice", "git__git_push", {**ARGS, "extra": 1}) is None
    assert store.consume("alice", "git__git_push", {"repo_path": "/srv/app", "branch": "main"}) is None
    assert store.consume("bob", "git__git_push", ARGS) is None
    assert store.consume("alice", "git__git_pull", ARGS) is None
    reordered = {"force": False, "branch": "main", "repo_path": "/srv/app"}
    used = store.consume("alice", "git__git_push", reordered)
    assert used is not None and used.id == a.id and used.status == "used" and used.approver == "operator"


def test_single_use(store: ApprovalStore) -> None:
    a = store.request("alice", "t__x", ARGS, ttl=60)
    store.approve(a.id, "op")
    assert store.consume("alice", "t__x", ARGS) is not None
    assert store.consume("alice", "t__x", ARGS) is None
    assert store.get(a.id).status == "used"


def test_request_is_idempotent_while_pending(store: ApprovalStore) -> None:
    a = store.request("alice", "t__x", ARGS, ttl=60)
    assert store.request("alice", "t__x", dict(ARGS), ttl=60).id == a.id
    assert store.request("alice", "t__x", {**ARGS, "force": True}, ttl=60).id != a.id
    store.approve(a.id, "op")
    assert store.request("alice", "t__x", ARGS, ttl=60).id != a.id


def test_expiry(store: ApprovalStore) -> None:
    a = store.request("alice", "t__x", ARGS, ttl=0.05)
    b = store.request("alice", "t__y", ARGS, ttl=0.05)
    store.approve(b.id, "op")
    time.sleep(0.08)
    assert store.get(a.id).status == "expired"
    with pytest.raises(ApprovalError, match="expired"):
        store.approve(a.id, "op")
    assert store.consume("alice", "t__y", ARGS) is None
    assert store.get(b.id).status == "expired"


def test_deny_and_decided_once(store: ApprovalStore) -> None:
    a = store.request("alice", "t__x", ARGS, ttl=60)
    denied = store.deny(a.id, "op")
    assert denied.status == "denied" and denied.approver == "op"
    with pytest.raises(ApprovalError, match="denied"):
        store.approve(a.id, "op")
    assert store.consume("alice", "t__x", ARGS) is None
    with pytest.raises(ApprovalError, match="approvals list"):
        store.get("nope")


def test_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    server = ApprovalStore(tmp_path / "a.db")
    cli = ApprovalStore(tmp_path / "a.db")
    a = server.request("alice", "t__x", ARGS, ttl=60)
    assert [p.id for p in cli.list(status="pending")] == [a.id]
    cli.approve(a.id, "operator")
    assert server.get(a.id).status == "approved"
    assert server.consume("alice", "t__x", ARGS) is not None
    assert cli.consume("alice", "t__x", ARGS) is None
    assert (tmp_path / "a.db").stat().st_mode & 0o777 == 0o600
    server.close()
    cli.close()


@pytest.mark.anyio
async def test_wait_returns_when_decided_elsewhere(tmp_path: Path) -> None:
    server = ApprovalStore(tmp_path / "a.db")
    cli = ApprovalStore(tmp_path / "a.db")
    a = server.request("alice", "t__x", ARGS, ttl=60)

    async def operator() -> None:
        await anyio.sleep(0.1)
        cli.approve(a.id, "op")

    async with anyio.create_task_group() as tg:
        tg.start_soon(operator)
        assert await server.wait(a.id, timeout=5, poll=0.02) == "approved"
    b = server.request("alice", "t__y", ARGS, ttl=60)
    start = time.monotonic()
    assert await server.wait(b.id, timeout=0.1, poll=0.02) == "pending"
    assert time.monotonic() - start < 1
    server.close()
    cli.close()


def test_arguments_shown_redacted(tmp_path: Path) -> None:
    store = ApprovalStore(tmp_path / "a.db", redactor=Redactor(["hunter2-secret"]))
    a = store.request("alice", "t__x", {"password": "hunter2-secret"}, ttl=60)
    assert a.arguments == {"password": "[REDACTED]"}
    assert a.args_hash == args_hash({"password": "hunter2-secret"})
    store.close()
    assert b"hunter2-secret" not in (tmp_path / "a.db").read_bytes()
