"""The throw-away PostgreSQL cluster (tests/pgcluster.py) and its fixtures, against the real server binaries."""

from __future__ import annotations

import os
import secrets
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.pgcluster import Cluster, ClusterError, find_bindir


@pytest.fixture
def other_pg_url(postgres_cluster: Cluster) -> Iterator[str]:
    """A second fresh database, made the same way as pg_url."""
    name = f"t_{secrets.token_hex(8)}"
    url = postgres_cluster.create_database(name)
    yield url
    postgres_cluster.drop_database(name)


def _parent_pid(pid: int) -> int:
    """The parent PID from /proc/PID/stat (the field after the state, which follows the parenthesised name)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_cluster_answers_over_tcp_on_loopback(postgres_cluster: Cluster) -> None:
    assert postgres_cluster.url == f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/postgres"
    with psycopg.connect(postgres_cluster.url) as conn:
        row = conn.execute("SELECT 1 + 1, host(inet_server_addr()), inet_server_port()").fetchone()
        # read while connected: the backend process exits with its connection
        parent = _parent_pid(conn.info.backend_pid)
    assert row == (2, "127.0.0.1", postgres_cluster.port)
    assert parent == postgres_cluster.pid  # .pid is the postmaster serving this connection


def test_pg_urls_are_isolated_databases(pg_url: str, other_pg_url: str) -> None:
    assert pg_url != other_pg_url
    with psycopg.connect(pg_url) as a, psycopg.connect(other_pg_url) as b:
        a.execute("CREATE TABLE marker (v int)")
        a.execute("INSERT INTO marker VALUES (1)")
        a.commit()
        assert a.execute("SELECT current_database()").fetchone() != b.execute("SELECT current_database()").fetchone()
        assert b.execute("SELECT to_regclass('marker')").fetchone() == (None,)
        assert a.execute("SELECT v FROM marker").fetchall() == [(1,)]


def test_drop_database_ends_open_sessions(postgres_cluster: Cluster) -> None:
    name = f"t_{secrets.token_hex(8)}"
    url = postgres_cluster.create_database(name)
    with psycopg.connect(url) as held:
        postgres_cluster.drop_database(name)  # WITH (FORCE): the open session does not block it
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
    with psycopg.connect(postgres_cluster.url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (0,)


def test_listen_notify_across_two_connections(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as listener, psycopg.connect(pg_url, autocommit=True) as sender:
        listener.execute("LISTEN toolcrib_smoke")
        sender.execute("SELECT pg_notify('toolcrib_smoke', 'hello')")
        got = list(listener.notifies(timeout=10, stop_after=1))
        assert [(n.channel, n.payload, n.pid) for n in got] == [("toolcrib_smoke", "hello", sender.info.backend_pid)]


def test_own_cluster_stops_its_postmaster_and_removes_its_dir() -> None:
    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries not found")
    started = time.perf_counter()
    with Cluster() as pg:
        print(f"cluster start (initdb + pg_ctl start): {time.perf_counter() - started:.2f}s")
        pid, root = pg.pid, pg.datadir.parent
        assert pid > 0
        os.kill(pid, 0)  # running
        with psycopg.connect(pg.url) as conn:
            assert _parent_pid(conn.info.backend_pid) == pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not root.exists()


def test_a_postmaster_that_ignores_shutdown_is_killed_by_pid() -> None:
    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries not found")
    with Cluster(stop_grace_s=1) as pg:
        pid = pg.pid
        os.kill(pid, signal.SIGSTOP)  # a stopped postmaster cannot act on pg_ctl's shutdown request
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_failed_start_raises_with_the_server_log() -> None:
    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries not found")
    cluster = Cluster(max_connections=-5)
    tmp_before = set(Path(tempfile.gettempdir()).glob("toolcrib-pg-*"))
    with pytest.raises(ClusterError, match="max_connections") as info:
        cluster.start()
    assert "last lines of" in str(info.value)
    assert cluster._tmp is None
    assert set(Path(tempfile.gettempdir()).glob("toolcrib-pg-*")) <= tmp_before  # its temp dir is removed
