"""N real ``toolcrib serve`` replicas on one PostgreSQL database behind one real nginx.

Used by ``tests/e2e/test_replicas.py`` (``make replicas``) and ``benchmarks/replicas.py``::

    with replica_set(tmp, pg_url, n=3, servers=ECHO) as rs:
        key = rs.add_key("alice", groups=["admins"])
        ...   # rs.url is nginx's /mcp; rs.replicas[i].url is replica i's own /mcp

Each replica is the ``toolcrib`` console script beside ``sys.executable`` (``--config FILE serve``),
on its own free 127.0.0.1 port, with its own state dir (index, SQLite fallbacks, keys file) and
the shared ``[storage] url``, ``auth = "keys"``, and the same audit key in
``TOOLCRIB_SECRET_TOOLCRIB_AUDIT_HMAC`` (64 hex chars, random per set). Ready means every
replica's ``GET /readyz`` answered 200 and nginx accepts connections.

nginx (``/usr/sbin/nginx`` or on PATH) runs in the foreground from its own prefix dir: an
``upstream`` block of the replicas (round robin, ``keepalive``), HTTP/1.1 to them,
``proxy_buffering off`` (SSE), ``proxy_read_timeout 1h``, the client's ``Host`` passed on (the
public name :data:`PUBLIC_HOST` is in every replica's ``[gateway] allowed_hosts`` and
``public_url``). ``proxy_next_upstream`` is nginx's default (``error timeout``): a POST already sent
to a replica is never re-sent elsewhere, so a replica dying mid-call fails that call (502); a
request that could not be sent (connection refused) goes to the next replica. Every answer carries
``X-Toolcrib-Upstream: $upstream_addr`` (the replica, or ``A, B`` when nginx moved on), and the
access log (``nginx/access.log``) records it with the upstream status.

Every process started here is stopped by its own PID: SIGTERM, SIGKILL after :data:`STOP_GRACE_S`;
a replica's own children (its stdio upstreams), recorded from ``/proc`` before it is signalled, are
SIGKILLed by PID if they outlive it (they would after a SIGKILL).

Errors: :class:`ReplicaError` (one line plus the log tail of whatever failed to start).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOOLCRIB = str(Path(sys.executable).with_name("toolcrib"))
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
NGINX_MISSING = "nginx is not installed: `apt-get install -y nginx` (CI's .ci/run installs it)"
PUBLIC_HOST = "replicas.toolcrib.test"
"""The name clients send in ``Host`` through nginx (nginx itself listens on 127.0.0.1)."""
AUDIT_KEY_ENV = "TOOLCRIB_SECRET_TOOLCRIB_AUDIT_HMAC"
STOP_GRACE_S = 15.0
READY_TIMEOUT_S = 120.0
ECHO_SERVERS: dict[str, dict[str, Any]] = {
    "echo": {"command": sys.executable, "args": ["-m", "tests.servers.echo"], "cwd": str(ROOT)}
}
"""``[servers]`` with the stdio echo fixture (tools ``echo__echo``, ``echo__sleep``, ...), one per replica."""


class ReplicaError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- TOML ------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def to_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Two levels of tables (``[section]``, ``[section.name]`` for mapping values, ``[[section.key]]``
    for lists of mappings) and scalars/lists/inline tables below: enough for a toolcrib config."""
    out: list[str] = []
    for section, body in data.items():
        scalars = {k: v for k, v in body.items() if not _is_table(v) and not _is_table_list(v)}
        out.append(f"[{section}]")
        out += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in scalars.items()]
        out.append("")
        for k, v in body.items():
            if _is_table(v):
                out.append(f"[{section}.{json.dumps(k)}]")
                out += [f"{json.dumps(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
                out.append("")
            elif _is_table_list(v):
                for item in v:
                    out.append(f"[[{section}.{json.dumps(k)}]]")
                    out += [f"{json.dumps(kk)} = {_toml_value(vv)}" for kk, vv in item.items()]
                    out.append("")
    return "\n".join(out)


def _is_table(v: Any) -> bool:
    return isinstance(v, Mapping)


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)


# ---- processes ---------------------------------------------------------------------------------------


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    """Live descendants of ``root`` found by the parent links in ``/proc`` (never by name)."""
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


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM ``proc`` by its PID, SIGKILL after ``grace`` s; then SIGKILL any child it left behind."""
    children = descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    _reap_orphans(children)


def _reap_orphans(pids: Sequence[int]) -> None:
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


@dataclass
class Replica:
    """One ``toolcrib serve`` process: ``index``, ``port``, ``dir`` (state + ``serve.log``), ``config``."""

    index: int
    port: int
    dir: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    killed_children: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    @property
    def addr(self) -> str:
        """How nginx names it in ``$upstream_addr``."""
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "serve.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> float:
        """SIGKILL by PID (its stdio children are recorded first and reaped by :meth:`stop`); returns
        ``time.monotonic()`` right after the signal was sent."""
        assert self.proc is not None
        self.killed_children = descendants(self.proc.pid)
        os.kill(self.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        self.proc.wait()
        return killed_at

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
        _reap_orphans(self.killed_children)


@dataclass
class ReplicaSet:
    """The running set: ``replicas``, nginx on ``nginx_port`` (pid ``nginx_pid``), the shared
    ``pg_url``, the audit key (``audit_key``, hex) and ``env`` (the environment every replica and
    CLI call gets)."""

    dir: Path
    pg_url: str
    audit_key: str
    replicas: list[Replica]
    nginx_port: int = 0
    nginx_proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, AUDIT_KEY_ENV: self.audit_key}

    @property
    def url(self) -> str:
        """nginx's ``/mcp`` on 127.0.0.1 (send ``Host: {host}``)."""
        return f"http://127.0.0.1:{self.nginx_port}/mcp"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    @property
    def host(self) -> str:
        """The ``Host`` header for requests through nginx."""
        return f"{PUBLIC_HOST}:{self.nginx_port}"

    @property
    def nginx_pid(self) -> int:
        assert self.nginx_proc is not None
        return self.nginx_proc.pid

    def cli(self, *args: str, replica: int = 0, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``toolcrib --config <replica's config> ARGS`` with the set's environment; never raises on exit status."""
        argv = [TOOLCRIB, "--config", str(self.replicas[replica].config), *args]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.replicas[replica].dir
        )

    def add_key(self, name: str, groups: Sequence[str] = (), replica: int = 0) -> str:
        """``toolcrib keys add NAME --json [--groups ...]`` against one replica's config; the key."""
        extra = ["--groups", ",".join(groups)] if groups else []
        out = self.cli("keys", "add", name, "--json", *extra, replica=replica)
        if out.returncode != 0:
            raise ReplicaError(f"toolcrib keys add {name} exited {out.returncode}: {out.stderr.strip()}")
        return str(json.loads(out.stdout)["key"])

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Every live replica's ``/readyz`` answers 200 (else :class:`ReplicaError` with its log tail)."""
        deadline = time.monotonic() + timeout
        for r in self.replicas:
            while True:
                assert r.proc is not None
                if r.proc.poll() is not None:
                    raise ReplicaError(f"replica {r.index} exited {r.proc.returncode}:\n{_tail(r.log)}")
                if _get_status(f"{r.base}/readyz") == 200:
                    break
                if time.monotonic() > deadline:
                    raise ReplicaError(f"replica {r.index} not ready within {timeout:g} s:\n{_tail(r.log)}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.nginx_proc is not None:
            _stop(self.nginx_proc)
        for r in self.replicas:
            r.stop()


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def replica_config(
    rdir: Path,
    port: int,
    pg_url: str,
    nginx_port: int,
    servers: Mapping[str, Mapping[str, Any]],
    policy: Mapping[str, Any] | None = None,
    gateway: Mapping[str, Any] | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The config of one replica as a dict of TOML tables (see :func:`to_toml`)."""
    return {
        "gateway": {
            "host": "127.0.0.1",
            "port": port,
            "mode": "passthrough",
            "auth": "keys",
            "allowed_hosts": [PUBLIC_HOST],
            "public_url": f"http://{PUBLIC_HOST}:{nginx_port}",
            "max_sessions": 100_000,
            "max_sessions_per_principal": 100_000,
            **(gateway or {}),
        },
        "storage": {"url": pg_url},
        "index": {"path": str(rdir / "index")},
        "audit": {"path": str(rdir / "audit.db")},
        "auth": {"keys_path": str(rdir / "keys.json")},
        "policy": {
            "pins_path": str(rdir / "pins.json"),
            "approvals_path": str(rdir / "approvals.db"),
            "default": "allow",  # with auth on, an unset default denies everything
            **(policy or {}),
        },
        **dict(extra or {}),
        "servers": {name: dict(s) for name, s in servers.items()},
    }


NGINX_CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 4096; }}
http {{
    log_format replicas '$msec $status "$request" upstream=$upstream_addr upstream_status=$upstream_status '
                        'rt=$request_time';
    access_log {dir}/access.log replicas;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    upstream toolcrib {{
{servers}
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name {host};
        client_max_body_size 5m;
        location / {{
            proxy_pass http://toolcrib;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            add_header X-Toolcrib-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def _start_nginx(directory: Path, port: int, upstreams: Sequence[str]) -> subprocess.Popen[bytes]:
    if NGINX is None:
        raise ReplicaError(NGINX_MISSING)
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    servers = "\n".join(f"        server {u};" for u in upstreams)
    conf.write_text(NGINX_CONF.format(user=user, dir=directory, port=port, host=PUBLIC_HOST, servers=servers))
    cmd = [NGINX, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log"), "-g", "daemon off;"]
    errlog = (directory / "stderr.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errlog)
    errlog.close()
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise ReplicaError(f"nginx exited with {proc.returncode}: {_tail(directory / 'stderr.log').strip()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                _stop(proc)
                raise ReplicaError("nginx did not listen within 15 s") from None
            time.sleep(0.05)


@contextlib.contextmanager
def replica_set(
    directory: Path,
    pg_url: str,
    n: int = 3,
    *,
    servers: Mapping[str, Mapping[str, Any]] = ECHO_SERVERS,
    policy: Mapping[str, Any] | None = None,
    gateway: Mapping[str, Any] | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
) -> Iterator[ReplicaSet]:
    """Start ``n`` replicas (state under ``directory/rI``) and nginx (``directory/nginx``); wait
    until every ``/readyz`` is 200; yield the :class:`ReplicaSet`; stop everything by PID on exit.

    ``servers``: the ``[servers]`` tables; ``policy``/``gateway``: keys merged into those sections;
    ``extra``: more sections (e.g. ``{"limits": {...}}``). Raises :class:`ReplicaError`."""
    if NGINX is None:
        raise ReplicaError(NGINX_MISSING)
    nginx_port = free_port()
    rs = ReplicaSet(directory, pg_url, secrets.token_hex(32), [])
    try:
        for i in range(n):
            rdir = directory / f"r{i}"
            rdir.mkdir(parents=True, exist_ok=True)
            port = free_port()
            cfg = rdir / "toolcrib.toml"
            data = replica_config(rdir, port, pg_url, nginx_port, servers, policy, gateway, extra)
            cfg.write_text(to_toml(data), encoding="utf-8")
            rs.replicas.append(Replica(i, port, rdir, cfg))
        for r in rs.replicas:
            with r.log.open("wb") as log:
                argv = [TOOLCRIB, "--config", str(r.config), "serve"]
                r.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=r.dir, env=rs.env)
        rs.wait_ready(ready_timeout)
        rs.nginx_port = nginx_port
        rs.nginx_proc = _start_nginx(directory / "nginx", nginx_port, [r.addr for r in rs.replicas])
        yield rs
    finally:
        rs.stop()
