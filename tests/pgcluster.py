"""A throw-away PostgreSQL cluster for tests, built from the machine's server binaries.

``Cluster`` runs ``initdb`` into a fresh temp dir and starts a postmaster on a free
127.0.0.1 port (durability off: ``fsync``, ``synchronous_commit`` and
``full_page_writes`` are off, so it is for tests only). Authentication is ``trust``
for the superuser ``postgres``. PostgreSQL refuses to run as root, so under root the
binaries run through ``runuser -u postgres --`` and the temp dir is owned by
``postgres``.

Usage::

    with Cluster() as pg:
        url = pg.create_database("t_abc")  # postgresql://postgres@127.0.0.1:PORT/t_abc
        ...
        pg.drop_database("t_abc")

Stopping is ``pg_ctl stop -m fast`` on the cluster's own data dir, then SIGKILL to
the postmaster PID it started if that is still alive; nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

_SERVER_TOOLS = ("initdb", "pg_ctl", "pg_isready", "postgres")
_STOP_GRACE_S = 5  # seconds pg_ctl stop may take, then again before SIGKILL
_REAP_WAIT_S = 10.0
_START_TIMEOUT_S = 60
_LOG_TAIL_LINES = 20


class ClusterError(RuntimeError):
    """The cluster could not be created, started or used; the message carries the server log's tail."""


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in _SERVER_TOOLS)


def find_bindir() -> Path | None:
    """The folder holding PostgreSQL's server binaries (initdb, pg_ctl, pg_isready, postgres), or None.

    Tried in order: ``pg_config --bindir`` (pg_config found on PATH), the folder of an
    ``initdb`` on PATH, then ``/usr/lib/postgresql/*/bin`` newest major version first.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)

    def _major(path: str) -> tuple[int, str]:
        version = Path(path).parent.name
        return (int(version) if version.isdigit() else -1, version)

    candidates.extend(Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True))
    for bindir in candidates:
        if _has_tools(bindir):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of ``pid`` from /proc, or None if it is gone.

    Without /proc (not Linux) the state is "?" and the start time 0, from ``os.kill(pid, 0)``.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ("?", 0)
    # Fields after the parenthesised command name (which may hold spaces): state is field 3, starttime field 22.
    fields = stat.rpartition(")")[2].split()
    return (fields[0], int(fields[19]))


class _Process:
    """A process named by PID and start time, so a reused PID is never mistaken for it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        stat = _proc_stat(pid)
        self.start = stat[1] if stat is not None else -1

    def _stat(self) -> tuple[str, int] | None:
        stat = _proc_stat(self.pid)
        if stat is None or (stat[1] != self.start and stat[1] != 0):
            return None
        return stat

    def exists(self) -> bool:
        """True while it is in the process table (running, or a zombie not yet reaped)."""
        return self._stat() is not None

    def alive(self) -> bool:
        """True while it runs (exists and is not a zombie)."""
        stat = self._stat()
        return stat is not None and stat[0] != "Z"

    def kill(self) -> None:
        """SIGKILL it, if it still runs."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float, *, reaped: bool = False) -> bool:
        """Poll until it has exited (``reaped``: until it has also left the process table); False on timeout."""
        check = self.exists if reaped else self.alive
        deadline = time.monotonic() + timeout
        while check():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


class Cluster:
    """A PostgreSQL cluster in a temp dir, listening on 127.0.0.1:``port``; a context manager.

    Attributes after ``start()`` (or ``__enter__``): ``port`` (int), ``url``
    (``postgresql://postgres@127.0.0.1:PORT/postgres``), ``pid`` (the postmaster's PID
    from ``postmaster.pid``), ``datadir``, ``sockdir``, ``logfile``.

    ``max_connections`` is the server setting; ``stop_grace_s`` (seconds) is how long
    ``pg_ctl stop -m fast`` may take, and then how long the postmaster gets before SIGKILL.

    Raises ``ClusterError`` (with the server log's last lines) if the binaries are
    missing or initdb/start fails.
    """

    def __init__(
        self, bindir: Path | None = None, *, max_connections: int = 200, stop_grace_s: int = _STOP_GRACE_S
    ) -> None:
        found = bindir if bindir is not None else find_bindir()
        if found is None:
            raise ClusterError("PostgreSQL server binaries not found: apt-get install postgresql")
        self.bindir = found
        self.max_connections = max_connections
        self.stop_grace_s = stop_grace_s
        self.port = 0
        self.pid = 0
        self._tmp: Path | None = None
        self._postmaster: _Process | None = None
        self._as_root = os.geteuid() == 0

    # -- paths ---------------------------------------------------------------

    @property
    def datadir(self) -> Path:
        return self._root / "data"

    @property
    def sockdir(self) -> Path:
        return self._root / "sock"

    @property
    def logfile(self) -> Path:
        return self._root / "server.log"

    @property
    def _root(self) -> Path:
        if self._tmp is None:
            raise ClusterError("the cluster is not started")
        return self._tmp

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """The URL of database ``dbname`` in this cluster (TCP, 127.0.0.1, user postgres)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    # -- lifecycle -----------------------------------------------------------

    def _cmd(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bindir / tool), *args]
        if self._as_root:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def _run(self, tool: str, *args: str, timeout: float = _START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        # cwd is the temp dir: the postgres user may not be able to enter the caller's cwd.
        return subprocess.run(
            self._cmd(tool, *args), capture_output=True, text=True, timeout=timeout, cwd=self._root, check=False
        )

    def _log_tail(self) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(server log is empty)"

    def start(self) -> Cluster:
        """initdb into a new temp dir and start the postmaster; returns self."""
        if self._tmp is not None:
            raise ClusterError("the cluster is already started")
        self._tmp = Path(tempfile.mkdtemp(prefix="toolcrib-pg-"))
        try:
            self._init()
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _init(self) -> None:
        self.sockdir.mkdir()
        self.logfile.touch()
        if self._as_root:
            # mkdtemp makes the dir 0700 root; hand the whole tree to postgres so it can traverse and write.
            for path in (self._root, self.sockdir, self.logfile):
                shutil.chown(path, user="postgres", group="postgres")
        res = self._run("initdb", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D", str(self.datadir))
        if res.returncode != 0:
            raise ClusterError(f"initdb failed (exit {res.returncode}):\n{(res.stderr or res.stdout).strip()}")

    def _start(self) -> None:
        last_error = ""
        for _attempt in range(3):  # the free port can be taken between probing it and binding it
            self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off"
                f" -c synchronous_commit=off -c full_page_writes=off -c max_connections={self.max_connections}"
            )
            res = self._run(
                "pg_ctl", "start", "-w", "-t", str(_START_TIMEOUT_S), "-D", str(self.datadir), "-l", str(self.logfile),
                "-o", options,
            )  # fmt: skip
            if res.returncode == 0:
                self.pid = self._read_pid()
                self._postmaster = _Process(self.pid)
                return
            last_error = f"pg_ctl start failed (exit {res.returncode}): {(res.stderr or res.stdout).strip()}"
            self._kill_leftover()
            if "already in use" not in self._log_tail():
                break
        raise ClusterError(f"{last_error}\nlast lines of {self.logfile}:\n{self._log_tail()}")

    def _read_pid(self) -> int:
        try:
            return int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError) as exc:
            raise ClusterError(f"postmaster.pid unreadable after start: {exc}\n{self._log_tail()}") from exc

    def _leftover(self) -> _Process | None:
        """The postmaster this cluster's data dir names, after a failed or interrupted start; None if none."""
        try:
            return _Process(int((self.datadir / "postmaster.pid").read_text().splitlines()[0]))
        except (OSError, ValueError, IndexError):
            return None

    def _kill_leftover(self) -> None:
        proc = self._leftover()
        if proc is not None:
            proc.kill()
            proc.wait(_STOP_GRACE_S)

    def stop(self) -> None:
        """Stop the postmaster (fast shutdown, SIGKILL by PID after a grace period) and remove the temp dir.

        On return the postmaster PID has left the process table (waited up to 10 s for init to reap it).
        Idempotent; safe after a failed start.
        """
        if self._tmp is None:
            return
        try:
            proc = self._postmaster if self._postmaster is not None else self._leftover()
            if proc is not None and proc.alive():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._run(
                        "pg_ctl", "stop", "-m", "fast", "-w", "-t", str(self.stop_grace_s), "-D", str(self.datadir)
                    )
                if not proc.wait(self.stop_grace_s):
                    proc.kill()
                    proc.wait(_STOP_GRACE_S)
            if proc is not None:
                # pg_ctl's postmaster is re-parented to init, which reaps it in its own time; wait for that
                # so a caller's os.kill(pid, 0) sees ProcessLookupError once stop() has returned.
                proc.wait(_REAP_WAIT_S, reaped=True)
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self._postmaster = None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` (autocommit); returns its URL."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS ``name`` WITH (FORCE): open sessions on it are terminated first."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
