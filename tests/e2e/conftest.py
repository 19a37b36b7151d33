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

from toolcrib.app import Running, running_gateway
from toolcrib.config import Config

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


@pytest.fixture(autouse=True)
def _storage_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """With ``TOOLCRIB_TEST_STORAGE=postgresql``: a fresh database per test for :func:`make_config`,
    and the audit key every replica of it shares."""
    if os.environ.get(STORAGE_ENV, "") != "postgresql":
        yield
        return
    _storage["url"] = request.getfixturevalue("pg_url")
    monkeypatch.setenv("TOOLCRIB_SECRET_TOOLCRIB_AUDIT_HMAC", "cd" * 32)
    try:
        yield
    finally:
        _storage.clear()


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
