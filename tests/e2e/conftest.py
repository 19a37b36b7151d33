"""End-to-end fixtures: a real gateway in-process on an ephemeral port, real upstream servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from toolcrib.app import Running, open_storage, running_gateway
from toolcrib.config import Config
from toolcrib.gateway.audit.backends import AuditLog, audit_key, open_audit_log
from toolcrib.gateway.trust.apikeys import ApiKeyStore, key_document
from toolcrib.gateway.trust.approvals import ApprovalBackend, open_approvals
from toolcrib.gateway.trust.secrets import ChainStore
from toolcrib.router.pins import PinStore, pin_document
from toolcrib.storage.postgres import Database

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
TOOLCRIB = str(Path(sys.executable).with_name("toolcrib"))


def stdio_server(module: str, *args: str, **extra: Any) -> dict[str, Any]:
    """A [servers.X] table that runs one of our fixture servers over stdio."""
    return {"command": PY, "args": ["-m", module, *args], "cwd": str(ROOT), **extra}


STORAGE_ENV = "TOOLCRIB_TEST_STORAGE"
"""``postgresql``: every in-process gateway of these tests keeps its state in a fresh PostgreSQL
database (``make test-postgres``); unset: the embedded default (``make test``)."""
_storage: dict[str, str] = {}
_databases: dict[str, Database] = {}
"""One open :class:`Database` per ``[storage] url`` for the running test (closed at its end)."""

embedded_only = pytest.mark.skipif(
    os.environ.get(STORAGE_ENV, "") == "postgresql",
    reason="checks the embedded backend's files themselves (SQLite, JSON, permissions)",
)
"""Marks a test that inspects or damages the embedded state files: skipped on PostgreSQL."""


@pytest.fixture(autouse=True)
def _storage_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """With ``TOOLCRIB_TEST_STORAGE=postgresql``: a fresh database per test for :func:`make_config`,
    and the audit key every replica of it shares."""
    if os.environ.get(STORAGE_ENV, "") == "postgresql":
        _storage["url"] = request.getfixturevalue("pg_url")
        monkeypatch.setenv("TOOLCRIB_SECRET_TOOLCRIB_AUDIT_HMAC", "cd" * 32)
    try:
        yield
    finally:
        _storage.clear()
        while _databases:
            _databases.popitem()[1].close()


def make_config(
    servers: dict[str, dict[str, Any]], tmp: Path | None = None, policy: dict[str, Any] | None = None, **gateway: Any
) -> Config:
    """A config on an ephemeral port whose state files (index, audit, pins, approvals) live in ``tmp``
    (or, under ``TOOLCRIB_TEST_STORAGE=postgresql``, in this test's PostgreSQL database)."""
    data: dict[str, Any] = {"gateway": {"port": 0, **gateway}, "servers": servers, "policy": dict(policy or {})}
    if "url" in _storage:
        data["storage"] = {"url": _storage["url"]}
    if tmp is not None:
        data["index"] = {"path": str(tmp / "index")}
        data["audit"] = {"path": str(tmp / "audit.db")}
        data["auth"] = {"keys_path": str(tmp / "keys.json")}
        data["policy"].setdefault("pins_path", str(tmp / "pins.json"))
        data["policy"].setdefault("approvals_path", str(tmp / "approvals.db"))
    return Config.model_validate(data)


def storage_toml() -> str:
    """The ``[storage]`` table :func:`make_config` applies, as TOML for a config file a test writes
    (empty when embedded)."""
    return f"[storage]\nurl = {json.dumps(_storage['url'])}\n" if "url" in _storage else ""


def database(cfg: Config) -> Database | None:
    """The database ``cfg``'s ``[storage] url`` names, connected and migrated (one per URL for the
    test, closed at its end); None when embedded."""
    url = cfg.storage.url
    if url is None:
        return None
    if url not in _databases:
        db = open_storage(cfg)
        assert db is not None
        _databases[url] = db
    return _databases[url]


def key_store(cfg: Config) -> ApiKeyStore:
    """The API key store ``cfg`` names: ``[auth] keys_path`` or the shared database."""
    return ApiKeyStore(key_document(database(cfg), cfg.auth.keys_path))


def approval_store(cfg: Config) -> ApprovalBackend:
    """The approval store ``cfg`` names (close it when done): ``[policy] approvals_path`` or the database."""
    return open_approvals(cfg, database(cfg), None)


def audit_log(cfg: Config) -> AuditLog:
    """The existing audit log ``cfg`` names, for reading (usable with ``with``). SQLite: unkeyed, as
    a reader without the key file sees it; PostgreSQL: with the shared key from the environment."""
    db = database(cfg)
    key = None if db is None else audit_key(cfg, db, ChainStore(cfg.secrets.file), create=False)
    return open_audit_log(cfg, db, hmac_key=key, create=False)


def stored_audit(cfg: Config) -> bytes:
    """Everything the audit log ``cfg`` names has stored, as bytes: the SQLite file and its siblings
    (WAL, anchor, key), or the text of every row of the database's audit tables."""
    db = database(cfg)
    if db is None:
        path = Path(cfg.audit.path)
        return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))
    with db.connection() as conn:
        rows = [
            str(row[0])
            for query in (
                "SELECT t::text FROM audit_events t",
                "SELECT t::text FROM audit_checkpoints t",
                "SELECT t::text FROM audit_head t",
            )
            for row in conn.execute(query).fetchall()
        ]
    return "\n".join(rows).encode()


def pin_store(cfg: Config) -> PinStore:
    """The pin store ``cfg`` names: ``[policy] pins_path`` or the shared database."""
    return PinStore(pin_document(database(cfg), cfg.policy.pins_path), cfg.gateway.separator)


GatewayFactory = Callable[..., AbstractAsyncContextManager[Running]]


@pytest.fixture
def gateway(tmp_path: Path) -> GatewayFactory:
    """``async with gateway(servers, **gateway_options) as rt`` starts toolcrib; exit stops it and its children."""

    @asynccontextmanager
    async def start(
        servers: dict[str, dict[str, Any]], policy: dict[str, Any] | None = None, **options: Any
    ) -> AsyncIterator[Running]:
        options.setdefault("mode", "passthrough")
        cfg = make_config(servers, tmp_path, policy, **options)
        async with running_gateway(cfg, connect_wait=20) as rt:
            yield rt

    return start


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    """PIDs of every live descendant of ``root`` (the processes it started, and theirs), found by the
    parent links in ``/proc/<pid>/stat`` alone: never another process on the machine, whatever its name."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (parent := _parent(int(entry.name))) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


async def upstream_pid(client: Any, info_uri: str) -> int:
    """The PID the echo fixture reports for itself (resource ``echo://info``, read through the gateway
    as ``info_uri``): the one process the gateway started for that upstream."""
    result = await client.read_resource(info_uri)
    return int(json.loads(result.contents[0].text)["pid"])


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextmanager
def serve_process(config: Path, cwd: Path, *flags: str) -> Iterator[subprocess.Popen[str]]:
    """`toolcrib FLAGS --config CONFIG serve` as a child with stderr piped; killed by its own PID if it
    is still running at the end, and its pipe closed."""
    argv = [TOOLCRIB, *flags, "--config", str(config), "serve"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=cwd)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
