"""Shared fixtures: the anyio backend (asyncio) for async tests; a throw-away PostgreSQL cluster."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from tests.pgcluster import Cluster, find_bindir

_NO_POSTGRES = (
    "PostgreSQL server binaries not found: apt-get install postgresql (or set PATH to its bin folder); "
    "CI sets TOOLCRIB_REQUIRE_POSTGRES=1"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """One PostgreSQL cluster per test session (per xdist worker), stopped by its PID at the end.

    Skips without server binaries, unless TOOLCRIB_REQUIRE_POSTGRES=1 (then fails).
    """
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("TOOLCRIB_REQUIRE_POSTGRES") == "1":
            pytest.fail(_NO_POSTGRES, pytrace=False)
        pytest.skip(_NO_POSTGRES)
    with Cluster(bindir) as cluster:
        yield cluster


@pytest.fixture
def pg_url(postgres_cluster: Cluster) -> Iterator[str]:
    """A fresh database ``t_<hex>`` for one test: yields its URL, drops it (WITH (FORCE)) afterwards."""
    name = f"t_{secrets.token_hex(8)}"
    url = postgres_cluster.create_database(name)
    try:
        yield url
    finally:
        postgres_cluster.drop_database(name)
