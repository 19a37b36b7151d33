"""Approvals on both backends (SQLite file, PostgreSQL): one lifecycle and semantics, single use under
contention between store instances (= replicas), and a decision on one replica (or in another
process) releasing a call held on another through LISTEN/NOTIFY."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from toolcrib.config import Config, PolicyConfig, StorageConfig
from toolcrib.gateway.trust.approvals import ApprovalError, ApprovalStore, AsyncApprovals, args_hash, open_approvals
from toolcrib.gateway.trust.approvals_pg import PgApprovalStore
from toolcrib.gateway.trust.secrets import Redactor
from toolcrib.storage import migrations
from toolcrib.storage.postgres import Database, Listener

ARGS = {"repo_path": "/srv/app", "branch": "main", "force": False}
ROOT = Path(__file__).resolve().parents[2]

Store = ApprovalStore | PgApprovalStore
Factory = Callable[..., Store]
"""``open_store(redactor=None)``: a new store instance over the test's one database (a new
connection for SQLite, a new pool for PostgreSQL: another replica)."""


def _migrate(url: str) -> None:
    db = Database(url).open()
    try:
        migrations.upgrade(db)
    finally:
        db.close()


@pytest.fixture(params=["sqlite", "pg"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    stores: list[Store] = []
    dbs: list[Database] = []
    if request.param == "sqlite":

        def make(redactor: Redactor | None = None) -> Store:
            stores.append(ApprovalStore(tmp_path / "approvals.db", redactor=redactor))
            return stores[-1]

    else:
        url = request.getfixturevalue("pg_url")
        _migrate(url)

        def make(redactor: Redactor | None = None) -> Store:
            dbs.append(Database(url, pool_size=4).open())
            stores.append(PgApprovalStore(dbs[-1], redactor=redactor))
            return stores[-1]

    yield make
    for store in stores:
        store.close()
    for db in dbs:
        db.close()


@pytest.fixture
def store(open_store: Factory) -> Store:
    return open_store()


def test_lifecycle(store: Store) -> None:
    a = store.request("key:alice", "git__git_push", ARGS, ttl=60, rule="push-needs-human")
    assert (a.status, a.principal, a.tool, a.args_hash, a.rule) == (
        "pending",
        "key:alice",
        "git__git_push",
        args_hash(ARGS),
        "push-needs-human",
    )
    assert store.request("key:alice", "git__git_push", dict(ARGS), ttl=60).id == a.id  # idempotent while pending
    assert store.status(a.id) == "pending" and store.get(a.id) == a
    assert [x.id for x in store.list("pending")] == [a.id] and store.list("approved") == []
    assert store.consume("key:alice", "git__git_push", ARGS) is None  # not approved yet
    approved = store.approve(a.id, "operator:ann", note="checked")
    assert (approved.status, approved.approver, approved.note) == ("approved", "operator:ann", "checked")
    assert approved.decided is not None and approved.decided >= a.created
    with pytest.raises(ApprovalError, match="approved, not pending"):
        store.deny(a.id, "operator:bob")
    assert store.request("key:alice", "git__git_push", ARGS, ttl=60).id != a.id  # no longer pending: a new one
    used = store.consume("key:alice", "git__git_push", {"force": False, "branch": "main", "repo_path": "/srv/app"})
    assert used is not None and used.id == a.id and used.status == "used" and used.used is not None
    assert store.consume("key:alice", "git__git_push", ARGS) is None  # single use
    assert store.get(a.id).status == "used" and store.status(a.id) == "used"
    assert [x.status for x in store.list()] == ["pending", "used"]  # newest first
    with pytest.raises(ApprovalError, match="approvals list"):
        store.get("nope")
    with pytest.raises(ApprovalError, match="approvals list"):
        store.status("nope")
    with pytest.raises(ApprovalError, match="approvals list"):
        store.approve("nope", "operator:ann")


def test_binding_to_typed_principal_tool_and_arguments(store: Store) -> None:
    a = store.request("key:agent", "git__git_push", ARGS, ttl=60)
    store.approve(a.id, "operator:ann")
    assert store.consume("oauth:agent", "git__git_push", ARGS) is None  # same subject, other kind
    assert store.consume("key:other", "git__git_push", ARGS) is None
    assert store.consume("key:agent", "git__git_pull", ARGS) is None
    assert store.consume("key:agent", "git__git_push", {**ARGS, "force": True}) is None
    assert store.consume("key:agent", "git__git_push", {**ARGS, "extra": None}) is None
    assert store.get(a.id).status == "approved"
    for bare in ("agent", ":agent", "key:", "nokind:agent"):
        with pytest.raises(ValueError, match="typed principal"):
            store.request(bare, "git__git_push", ARGS, ttl=60)
        with pytest.raises(ValueError, match="typed principal"):
            store.consume(bare, "git__git_push", ARGS)
    used = store.consume("key:agent", "git__git_push", ARGS)
    assert used is not None and used.id == a.id


def test_expiry(store: Store) -> None:
    pending = store.request("key:alice", "t__x", ARGS, ttl=0.3)
    approved = store.request("key:alice", "t__y", ARGS, ttl=0.3)
    store.approve(approved.id, "operator:ann")
    time.sleep(0.5)
    assert store.status(pending.id) == "expired" and store.get(approved.id).status == "expired"
    with pytest.raises(ApprovalError, match="expired, not pending"):
        store.approve(pending.id, "operator:ann")
    assert store.consume("key:alice", "t__y", ARGS) is None  # approved, but too late
    assert {a.id for a in store.list("expired")} == {pending.id, approved.id}
    assert store.request("key:alice", "t__x", ARGS, ttl=60).id != pending.id


def test_deny_with_note(store: Store) -> None:
    a = store.request("key:alice", "t__x", ARGS, ttl=60)
    denied = store.deny(a.id, "operator:ann", note="not on a Friday")
    assert (denied.status, denied.approver, denied.note) == ("denied", "operator:ann", "not on a Friday")
    assert store.get(a.id).note == "not on a Friday"
    assert store.consume("key:alice", "t__x", ARGS) is None
    with pytest.raises(ApprovalError, match="denied, not pending"):
        store.approve(a.id, "operator:bob")


def test_stored_arguments_are_redacted(open_store: Factory) -> None:
    store = open_store(Redactor(["hunter2-secret"]))
    a = store.request("key:alice", "t__x", {"password": "hunter2-secret"}, ttl=60)
    assert a.arguments == {"password": "[REDACTED]"} and a.args_hash == args_hash({"password": "hunter2-secret"})
    assert store.list()[0].arguments == {"password": "[REDACTED]"}
    store.approve(a.id, "operator:ann")
    assert store.consume("key:alice", "t__x", {"password": "hunter2-secret"}) is not None  # bound to the real ones


def test_consume_is_single_use_under_contention(open_store: Factory) -> None:
    """Eight threads over two store instances (two replicas) race to consume one approval, five times."""
    stores = [open_store(), open_store()]
    for round_ in range(5):
        args = {**ARGS, "round": round_}
        a = stores[0].request("key:alice", "t__x", args, ttl=60)
        stores[1].approve(a.id, "operator:ann")
        barrier = threading.Barrier(8)
        wins: list[str] = []
        errors: list[BaseException] = []

        def race(
            store: Store,
            args: dict[str, object] = args,
            barrier: threading.Barrier = barrier,
            wins: list[str] = wins,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                barrier.wait(timeout=30)
                got = store.consume("key:alice", "t__x", args)
                if got is not None:
                    wins.append(got.id)
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        threads = [threading.Thread(target=race, args=(stores[i % 2],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [] and wins == [a.id], (round_, wins, errors)
        assert stores[0].get(a.id).status == "used"


def test_concurrent_requests_for_one_call_share_one_pending(open_store: Factory) -> None:
    stores = [open_store(), open_store()]
    barrier = threading.Barrier(6)
    ids: list[str] = []

    def ask(store: Store) -> None:
        barrier.wait(timeout=30)
        ids.append(store.request("key:alice", "t__x", ARGS, ttl=60).id)

    threads = [threading.Thread(target=ask, args=(stores[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(ids) == 6 and len(set(ids)) == 1


def test_open_approvals_picks_the_backend(tmp_path: Path, pg_url: str) -> None:
    config = Config(policy=PolicyConfig(approvals_path=str(tmp_path / "a.db")), storage=StorageConfig(pool_size=3))
    lite = open_approvals(config, None, None)
    assert isinstance(lite, ApprovalStore) and lite.path == tmp_path / "a.db" and lite.concurrency == 1
    lite.close()
    db = Database(pg_url).open()
    migrations.upgrade(db)
    pg = open_approvals(config, db, Redactor(["s3cret-value"]))
    assert isinstance(pg, PgApprovalStore) and pg.concurrency == 3
    assert pg.request("key:a", "t__x", {"k": "s3cret-value"}, ttl=60).arguments == {"k": "[REDACTED]"}
    db.close()


# cross-replica release (PostgreSQL)


class Replica:
    """One replica's approvals: its own pool, store, LISTEN connection and facade."""

    def __init__(self, url: str, *, poll: float, safety_poll: float) -> None:
        self.db = Database(url).open()
        self.listener = Listener(self.db)
        self.approvals = AsyncApprovals(PgApprovalStore(self.db), self.listener, poll=poll, safety_poll=safety_poll)

    def close(self) -> None:
        self.approvals.close()
        self.db.close()


@pytest.fixture
def replicas(pg_url: str) -> Iterator[tuple[Replica, Replica]]:
    _migrate(pg_url)
    # Polls of 60 s: within the bounded waits below, only a NOTIFY can release a waiter.
    a, b = Replica(pg_url, poll=60, safety_poll=60), Replica(pg_url, poll=60, safety_poll=60)
    yield a, b
    a.close()
    b.close()


@pytest.mark.anyio
async def test_a_decision_on_one_replica_releases_a_wait_on_another(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    async with anyio.create_task_group() as tg:
        await tg.start(a.listener.run)
        await tg.start(b.listener.run)
        assert a.listener.connected and b.listener.connected
        held = await a.approvals.request("key:alice", "git__git_push", ARGS, ttl=60, rule="push-needs-human")
        denied = await a.approvals.request("key:alice", "t__other", ARGS, ttl=60)
        results: dict[str, tuple[str, float]] = {}
        decided_at: dict[str, float] = {}

        async def wait(approval_id: str) -> None:
            status = await a.approvals.wait(approval_id, timeout=60)
            results[approval_id] = (status, time.monotonic() - decided_at[approval_id])

        with anyio.fail_after(10):
            async with anyio.create_task_group() as waiters:
                waiters.start_soon(wait, held.id)
                waiters.start_soon(wait, denied.id)
                await anyio.sleep(0.2)  # both waiting
                decided_at[held.id] = time.monotonic()
                await b.approvals.approve(held.id, "operator:ann", note="ok")
                decided_at[denied.id] = time.monotonic()
                await b.approvals.deny(denied.id, "operator:ann")
        assert results[held.id][0] == "approved" and results[denied.id][0] == "denied"
        approve_ms, deny_ms = results[held.id][1] * 1000, results[denied.id][1] * 1000
        print(f"cross-replica release: approve {approve_ms:.1f} ms, deny {deny_ms:.1f} ms")
        assert a.approvals._waiters == {}
        used = await a.approvals.consume("key:alice", "git__git_push", ARGS)
        assert used is not None and used.note == "ok"
        assert await b.approvals.consume("key:alice", "git__git_push", ARGS) is None
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_decision_in_another_process_releases_a_wait(replicas: tuple[Replica, Replica], pg_url: str) -> None:
    a, _ = replicas
    script = textwrap.dedent(
        """
        import sys
        from toolcrib.gateway.trust.approvals_pg import PgApprovalStore
        from toolcrib.storage.postgres import Database
        db = Database(sys.argv[1]).open()
        PgApprovalStore(db).approve(sys.argv[2], "operator:cli", note="from another process")
        db.close()
        """
    )
    async with anyio.create_task_group() as tg:
        await tg.start(a.listener.run)
        held = await a.approvals.request("key:alice", "git__git_push", ARGS, ttl=60)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-c", script, pg_url, held.id], env=env, stderr=subprocess.PIPE)
        try:
            with anyio.fail_after(30):
                status = await a.approvals.wait(held.id, timeout=60)
                released = time.time()
                _, err = await anyio.to_thread.run_sync(proc.communicate)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert status == "approved"
        decided = (await a.approvals.get(held.id)).decided
        assert decided is not None
        print(f"other-process release: {(released - decided) * 1000:.1f} ms after the decision was made")
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_without_a_listener_the_poll_still_releases(pg_url: str) -> None:
    _migrate(pg_url)
    db_a, db_b = Database(pg_url).open(), Database(pg_url).open()
    a = AsyncApprovals(PgApprovalStore(db_a), poll=0.1)
    other = PgApprovalStore(db_b)
    held = await a.request("key:alice", "t__x", ARGS, ttl=60)
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(anyio.to_thread.run_sync, other.approve, held.id, "operator:ann"))
        with anyio.fail_after(20):
            assert await a.wait(held.id, timeout=60) == "approved"
    db_a.close()
    db_b.close()


@pytest.mark.anyio
async def test_a_reconnect_wakes_every_waiter_to_re_read(replicas: tuple[Replica, Replica]) -> None:
    """A decision whose NOTIFY was missed (no LISTEN yet) is picked up when on_reconnect wakes the waiters."""
    a, b = replicas
    held = await a.approvals.request("key:alice", "t__x", ARGS, ttl=60)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def wait() -> None:
                results.append(await a.approvals.wait(held.id, timeout=60))

            tg.start_soon(wait)
            await anyio.sleep(0.2)
            await anyio.to_thread.run_sync(b.approvals.store.approve, held.id, "operator:ann")  # nobody listens
            await anyio.sleep(0.2)
            assert results == []
            a.approvals._wake_all()  # what the Listener's on_reconnect calls
    assert results == ["approved"]


@pytest.mark.anyio
async def test_the_facade_runs_pg_calls_concurrently(pg_url: str) -> None:
    """Up to the pool size at once on PostgreSQL (SQLite: one): four 0.5 s statements overlap."""
    _migrate(pg_url)
    db = Database(pg_url, pool_size=4).open()
    approvals = AsyncApprovals(PgApprovalStore(db, concurrency=4))
    running, peak = 0, 0
    lock = threading.Lock()

    def slow() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        with db.connection() as conn:
            conn.execute("SELECT pg_sleep(0.5)")
        with lock:
            running -= 1

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(approvals._run, slow)
    assert peak > 1
    db.close()
