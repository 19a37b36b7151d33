"""Approvals: bound to the typed principal, target and exact arguments; single use; expiry; a
shared 0600 file; rule and note kept; the async facade never blocks the event loop."""

from __future__ import annotations

import functools
import json
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolcrib.gateway.trust.approvals import (
    ApprovalError,
    ApprovalStore,
    AsyncApprovals,
    args_hash,
    typed_id,
)
from toolcrib.gateway.trust.identity import KINDS, Principal
from toolcrib.gateway.trust.secrets import Redactor

ARGS = {"repo_path": "/srv/app", "branch": "main", "force": False}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ApprovalStore]:
    s = ApprovalStore(tmp_path / "approvals.db")
    yield s
    s.close()


def test_approval_is_bound_to_exact_arguments(store: ApprovalStore) -> None:
    a = store.request("key:alice", "git__git_push", ARGS, ttl=60)
    assert a.status == "pending"
    assert store.consume("key:alice", "git__git_push", ARGS) is None
    store.approve(a.id, "operator")
    assert store.consume("key:alice", "git__git_push", {**ARGS, "force": True}) is None
    assert store.consume("key:alice", "git__git_push", {**ARGS, "extra": 1}) is None
    assert store.consume("key:alice", "git__git_push", {"repo_path": "/srv/app", "branch": "main"}) is None
    assert store.consume("key:bob", "git__git_push", ARGS) is None
    assert store.consume("key:alice", "git__git_pull", ARGS) is None
    reordered = {"force": False, "branch": "main", "repo_path": "/srv/app"}
    used = store.consume("key:alice", "git__git_push", reordered)
    assert used is not None and used.id == a.id and used.status == "used" and used.approver == "operator"


def test_single_use(store: ApprovalStore) -> None:
    a = store.request("key:alice", "t__x", ARGS, ttl=60)
    store.approve(a.id, "op")
    assert store.consume("key:alice", "t__x", ARGS) is not None
    assert store.consume("key:alice", "t__x", ARGS) is None
    assert store.get(a.id).status == "used"


def test_request_is_idempotent_while_pending(store: ApprovalStore) -> None:
    a = store.request("key:alice", "t__x", ARGS, ttl=60)
    assert store.request("key:alice", "t__x", dict(ARGS), ttl=60).id == a.id
    assert store.request("key:alice", "t__x", {**ARGS, "force": True}, ttl=60).id != a.id
    store.approve(a.id, "op")
    assert store.request("key:alice", "t__x", ARGS, ttl=60).id != a.id


def test_expiry(store: ApprovalStore) -> None:
    a = store.request("key:alice", "t__x", ARGS, ttl=0.05)
    b = store.request("key:alice", "t__y", ARGS, ttl=0.05)
    store.approve(b.id, "op")
    time.sleep(0.08)
    assert store.get(a.id).status == "expired"
    with pytest.raises(ApprovalError, match="expired"):
        store.approve(a.id, "op")
    assert store.consume("key:alice", "t__y", ARGS) is None
    assert store.get(b.id).status == "expired"


def test_deny_and_decided_once(store: ApprovalStore) -> None:
    a = store.request("key:alice", "t__x", ARGS, ttl=60)
    denied = store.deny(a.id, "op")
    assert denied.status == "denied" and denied.approver == "op"
    with pytest.raises(ApprovalError, match="denied"):
        store.approve(a.id, "op")
    assert store.consume("key:alice", "t__x", ARGS) is None
    with pytest.raises(ApprovalError, match="approvals list"):
        store.get("nope")


def test_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    server = ApprovalStore(tmp_path / "a.db")
    cli = ApprovalStore(tmp_path / "a.db")
    a = server.request("key:alice", "t__x", ARGS, ttl=60)
    assert [p.id for p in cli.list(status="pending")] == [a.id]
    cli.approve(a.id, "operator")
    assert server.get(a.id).status == "approved"
    assert server.consume("key:alice", "t__x", ARGS) is not None
    assert cli.consume("key:alice", "t__x", ARGS) is None
    assert (tmp_path / "a.db").stat().st_mode & 0o777 == 0o600
    server.close()
    cli.close()


def test_arguments_shown_redacted(tmp_path: Path) -> None:
    store = ApprovalStore(tmp_path / "a.db", redactor=Redactor(["hunter2-secret"]))
    a = store.request("key:alice", "t__x", {"password": "hunter2-secret"}, ttl=60)
    assert a.arguments == {"password": "[REDACTED]"}
    assert a.args_hash == args_hash({"password": "hunter2-secret"})
    store.close()
    assert b"hunter2-secret" not in (tmp_path / "a.db").read_bytes()


# typed identity, rule, note, file


def test_kind_confusion_key_approval_is_never_used_by_oauth(store: ApprovalStore) -> None:
    key_agent, oauth_agent = Principal("key", "agent"), Principal("oauth", "agent")
    a = store.request(key_agent.id, "git__git_push", ARGS, ttl=60)
    assert a.principal == "key:agent"
    store.approve(a.id, "operator:local")
    assert store.consume(oauth_agent.id, "git__git_push", ARGS) is None
    assert store.request(oauth_agent.id, "git__git_push", ARGS, ttl=60).id != a.id  # its own request
    used = store.consume(key_agent.id, "git__git_push", ARGS)
    assert used is not None and used.id == a.id
    for bare in ("agent", ":agent", "key:", "nokind:agent"):
        with pytest.raises(ValueError, match="typed principal"):
            store.request(bare, "git__git_push", ARGS, ttl=60)
        with pytest.raises(ValueError, match="typed principal"):
            store.consume(bare, "git__git_push", ARGS)


def test_rule_and_note_are_recorded(store: ApprovalStore) -> None:
    a = store.request("key:alice", "t__x", ARGS, ttl=60, rule="push-needs-human")
    b = store.request("key:alice", "t__y", ARGS, ttl=60)
    assert a.rule == "push-needs-human" and a.note is None and b.rule is None
    approved = store.approve(a.id, "operator:ann", note="release day, checked the diff")
    assert (approved.approver, approved.note, approved.rule) == (
        "operator:ann",
        "release day, checked the diff",
        "push-needs-human",
    )
    assert store.deny(b.id, "operator:ann", note="wrong branch").note == "wrong branch"
    assert store.get(a.id).note == "release day, checked the diff"
    used = store.consume("key:alice", "t__x", ARGS)
    assert used is not None and used.rule == "push-needs-human" and used.note == "release day, checked the diff"


_OLD_SCHEMA = """
CREATE TABLE approvals (
    id TEXT PRIMARY KEY, principal TEXT NOT NULL, tool TEXT NOT NULL, args_hash TEXT NOT NULL,
    arguments TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    decided REAL, approver TEXT, used REAL
);
CREATE INDEX approvals_binding ON approvals (principal, tool, args_hash, status);
"""


def test_an_older_file_gains_the_new_columns_and_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_SCHEMA)
        db.execute(
            "INSERT INTO approvals VALUES ('abc', 'key:alice', 't__x', ?, '{}', 'pending', ?, ?, NULL, NULL, NULL)",
            (args_hash(ARGS), time.time(), time.time() + 60),
        )
    db.close()
    path.chmod(0o644)
    store = ApprovalStore(path)
    old = store.get("abc")
    assert old.status == "pending" and old.rule is None and old.note is None
    assert store.approve("abc", "operator:ann", note="ok").note == "ok"
    assert store.request("key:alice", "t__y", ARGS, ttl=60, rule="r1").rule == "r1"
    store.close()
    again = ApprovalStore(path)  # a second open does not migrate twice
    assert again.get("abc").note == "ok"
    files = [p for p in tmp_path.iterdir() if p.name.startswith("old.db")]
    assert {p.name for p in files} >= {"old.db"}
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files), [(p.name, oct(p.stat().st_mode)) for p in files]
    again.close()


def test_new_file_and_its_wal_are_0600(tmp_path: Path) -> None:
    store = ApprovalStore(tmp_path / "a.db")
    store.request("key:alice", "t__x", ARGS, ttl=60)
    names = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert "a.db-wal" in names and set(names.values()) == {0o600}, names
    store.close()


@settings(max_examples=1000)
@given(kind=st.text(max_size=10), subject=st.text(max_size=10), sep=st.sampled_from([":", "", "/"]))
def test_typed_id_accepts_exactly_known_kind_colon_subject(kind: str, subject: str, sep: str) -> None:
    text = f"{kind}{sep}{subject}"
    good = sep == ":" and kind in KINDS and subject != ""
    if good:
        assert typed_id(text) == text
    else:
        with pytest.raises(ValueError):
            typed_id(text)


@settings(max_examples=1000)
@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
            max_leaves=4,
        ),
        max_size=4,
    ),
    st.randoms(),
)
def test_args_hash_ignores_key_order_only(arguments: dict[str, object], rnd: random.Random) -> None:
    items = list(arguments.items())
    rnd.shuffle(items)
    assert args_hash(dict(items)) == args_hash(arguments)
    assert args_hash({**arguments, "\x00extra": 1}) != args_hash(arguments)


# the async facade


@pytest.fixture
def approvals(tmp_path: Path) -> Iterator[AsyncApprovals]:
    facade = AsyncApprovals(ApprovalStore(tmp_path / "approvals.db"))
    yield facade
    facade.close()


@pytest.mark.anyio
async def test_wait_does_not_block_the_loop_and_wakes_on_a_decision_here(tmp_path: Path) -> None:
    approvals = AsyncApprovals(ApprovalStore(tmp_path / "a.db"), poll=60)  # only a wake-up can end it in time
    a = await approvals.request("key:alice", "t__x", ARGS, ttl=120, rule="r1")
    statuses: list[str] = []
    spins = 0

    async def waiter() -> None:
        statuses.append(await approvals.wait(a.id, timeout=120))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            tg.start_soon(waiter)  # two waiters on one id
            for _ in range(50):
                await anyio.sleep(0)
                spins += 1
            assert spins == 50 and statuses == []
            await approvals.approve(a.id, "operator:ann", note="fine")
    assert statuses == ["approved", "approved"]
    assert approvals._waiters == {}
    used = await approvals.consume("key:alice", "t__x", ARGS)
    assert used is not None and used.note == "fine" and used.rule == "r1"
    approvals.close()


@pytest.mark.anyio
async def test_wait_outcomes(approvals: AsyncApprovals) -> None:
    a = await approvals.request("key:alice", "t__x", ARGS, ttl=60)
    assert await approvals.wait(a.id, timeout=0.05) == "pending"
    async with anyio.create_task_group() as tg:
        tg.start_soon(approvals.deny, a.id, "operator:ann", "no")
        with anyio.fail_after(20):
            assert await approvals.wait(a.id, timeout=60) == "denied"
    assert [x.status for x in await approvals.list()] == ["denied"]
    assert await approvals.list("pending") == []
    approvals.poll = 0.05
    short = await approvals.request("key:alice", "t__y", ARGS, ttl=0.2)
    with anyio.fail_after(20):
        assert await approvals.wait(short.id, timeout=60) == "expired"
    with pytest.raises(ApprovalError, match="approvals list"):
        await approvals.wait("nope", timeout=1)
    with pytest.raises(ApprovalError, match="expired"):
        await approvals.approve(short.id, "operator:ann")


@pytest.mark.anyio
async def test_kind_confusion_through_the_facade(approvals: AsyncApprovals) -> None:
    a = await approvals.request(Principal("key", "agent").id, "t__x", ARGS, ttl=60)
    await approvals.approve(a.id, "operator:ann")
    assert await approvals.consume(Principal("oauth", "agent").id, "t__x", ARGS) is None
    assert (await approvals.get(a.id)).status == "approved"
    assert await approvals.consume(Principal("key", "agent").id, "t__x", ARGS) is not None


@pytest.mark.anyio
async def test_a_write_lock_held_elsewhere_does_not_stall_the_loop(tmp_path: Path) -> None:
    """Another connection holds the file's write lock for 2 s; a request queued behind it waits on
    the worker thread while a ticker on the loop keeps ticking."""
    approvals = AsyncApprovals(ApprovalStore(tmp_path / "a.db"))
    locked, released = threading.Event(), threading.Event()

    def hold_write_lock() -> None:
        db = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO approvals (id, principal, tool, args_hash, arguments, status, created, expires)"
            " VALUES ('held', 'key:bob', 't__z', 'x', '{}', 'pending', 0, 1e12)"
        )
        locked.set()
        time.sleep(2)
        db.execute("COMMIT")
        released.set()
        db.close()

    holder = threading.Thread(target=hold_write_lock)
    holder.start()
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            await anyio.sleep(0.05)
            ticks += 1

    try:
        await anyio.to_thread.run_sync(locked.wait)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            a = await approvals.request("key:alice", "t__x", ARGS, ttl=60)
            assert released.is_set()  # the request really waited for the other writer
            done = True
    finally:
        holder.join()
    assert a.status == "pending" and (await approvals.get("held")).principal == "key:bob"
    assert ticks >= 10, ticks  # about 40 in 2 s; a blocked loop gives 0 or 1
    approvals.close()


@pytest.mark.anyio
async def test_another_connection_in_a_thread_releases_a_waiter(tmp_path: Path) -> None:
    approvals = AsyncApprovals(ApprovalStore(tmp_path / "a.db"), poll=0.1)
    other = ApprovalStore(tmp_path / "a.db")
    a = await approvals.request("key:alice", "t__x", ARGS, ttl=60)
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(anyio.to_thread.run_sync, other.approve, a.id, "operator:cli"))
        with anyio.fail_after(20):
            assert await approvals.wait(a.id, timeout=60) == "approved"
    other.close()
    approvals.close()


@pytest.mark.anyio
async def test_cli_approve_in_another_process_releases_a_waiter(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    config = tmp_path / "toolcrib.toml"
    config.write_text(f"[policy]\napprovals_path = {json.dumps(str(db))}\n")
    approvals = AsyncApprovals(ApprovalStore(db))  # default poll
    a = await approvals.request("key:alice", "git__git_push", ARGS, ttl=60, rule="push-needs-human")
    cli = [sys.executable, "-m", "toolcrib", "--config", str(config), "approvals"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    statuses: list[str] = []

    async def waiter() -> None:
        statuses.append(await approvals.wait(a.id, timeout=60))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            done = await anyio.run_process(
                [*cli, "approve", a.id, "--as", "operator:ann", "--note", "checked"], env=env, check=False
            )
            assert done.returncode == 0, done.stderr.decode()
    assert statuses == ["approved"]
    listed = await anyio.run_process([*cli, "list", "--all", "--json"], env=env)
    [row] = json.loads(listed.stdout)
    assert (row["id"], row["rule"], row["note"], row["approver"]) == (
        a.id,
        "push-needs-human",
        "checked",
        "operator:ann",
    )
    again = await anyio.run_process([*cli, "deny", a.id], env=env, check=False)
    assert again.returncode != 0 and b"not pending" in again.stderr and b"Traceback" not in again.stderr
    assert await approvals.consume("oauth:alice", "git__git_push", ARGS) is None
    assert await approvals.consume("key:alice", "git__git_push", ARGS) is not None
    approvals.close()
