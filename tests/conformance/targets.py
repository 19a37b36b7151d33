"""The processes the conformance runner starts: the everything fixture, toolcrib in front of it,
and the suite's own Node processes.

Every child gets its own process group (`start_new_session`) and is stopped by its PID:
SIGTERM, then SIGKILL after a grace period, then SIGKILL to what is left of its group (the
gateway's stdio upstream, the client harness's gateway). Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.conformance.toolchain import ROOT

STARTUP_TIMEOUT = 60.0


@dataclass
class Started:
    """A child process in its own process group, stopped TERM-then-KILL by `stop()`."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Anything the child left behind in its own group (e.g. the gateway's upstream).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the runner dies, even by SIGKILL (Linux
    ``prctl(PR_SET_PDEATHSIG)``), so a killed run leaves no fixture or gateway behind (children are
    in their own session, out of reach of a signal to the runner's group). A no-op elsewhere."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def start(name: str, argv: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> Started:
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    return Started(name, proc, log)


def wait_for(started: Started, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if started.proc.poll() is not None:
            raise SystemExit(
                f"conformance: {started.name} exited with {started.proc.returncode} before {what}:\n{started.tail()}"
            )
        if ready():
            return
        time.sleep(0.1)
    raise SystemExit(f"conformance: {started.name} did not get to {what} in {STARTUP_TIMEOUT:.0f} s:\n{started.tail()}")


def fixture_args(era: str) -> list[str]:
    """`python -m` arguments for the everything fixture; `legacy` refuses server/discover."""
    return ["-m", "tests.servers.everything", *(["--legacy"] if era == "legacy" else [])]


@dataclass
class Target:
    """A server under test: `name` is `direct`, `toolcrib/modern`, `toolcrib/legacy` or `url`."""

    name: str
    started: Started | None
    ready: Callable[[], str]  # blocks until the target answers; returns its MCP URL


def launch_direct(workdir: Path, era: str = "modern") -> Target:
    started = start(
        f"everything-{era}", [sys.executable, *fixture_args(era), "--http", "0"], workdir / f"direct-{era}.log", ROOT
    )
    found: list[str] = []

    def listening() -> bool:
        match = re.search(r"^LISTENING (\S+)", started.log.read_text(errors="replace"), flags=re.MULTILINE)
        if match:
            found.append(match.group(1))
        return bool(match)

    def ready() -> str:
        wait_for(started, listening, "printing LISTENING")
        return found[0]

    return Target("direct", started, ready)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(port: int, era: str = "modern") -> str:
    """toolcrib.toml for passthrough mode (`keep_names = true`) over the fixture on stdio."""
    python = json.dumps(str(ROOT / ".venv" / "bin" / "python"))
    return (
        "[gateway]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        'mode = "passthrough"\n'
        "keep_names = true\n"
        "\n"
        "[servers.everything]\n"
        f"command = {python}\n"
        f"args = {json.dumps(fixture_args(era))}\n"
        f"cwd = {json.dumps(str(ROOT))}\n"
    )


def launch_gateway(workdir: Path, era: str) -> Target:
    toolcrib = ROOT / ".venv" / "bin" / "toolcrib"
    if not toolcrib.exists():
        raise SystemExit(f"conformance: {toolcrib} is missing; run `make install`")
    home = workdir / f"toolcrib-{era}"
    # State the gateway keeps relative to its cwd (audit db, index) stays in the temp dir.
    (home / ".toolcrib").mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = home / "toolcrib.toml"
    config.write_text(gateway_config(port, era))
    started = start(
        f"toolcrib-{era}",
        [str(toolcrib), "--config", str(config), "serve"],
        workdir / f"toolcrib-{era}.log",
        cwd=home,
        env={"TOOLCRIB_CONFIG": str(config)},
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def ready() -> str:
        wait_for(started, healthy, "answering GET /healthz with 200")
        return f"http://127.0.0.1:{port}/mcp"

    return Target(f"toolcrib/{era}", started, ready)


def run_logged(argv: list[str], log: Path, timeout: float, live: list[subprocess.Popen[bytes]]) -> int | None:
    """Run one suite process in its own group with output to `log`; its return code, or None
    when it ran past `timeout` seconds (then it is killed). `live` holds it while it runs so
    the caller can stop it on an interrupt."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    live.append(proc)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        stop_group(proc)
        live.remove(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a suite process and whatever it started in its group (the client harness)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
