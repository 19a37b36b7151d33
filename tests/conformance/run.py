"""Run the official MCP conformance suite's server scenarios and compare with a baseline.

    python -m tests.conformance.run --direct     # against tests.servers.everything itself
    python -m tests.conformance.run --gateway    # against toolcrib (passthrough) in front of it
    python -m tests.conformance.run --url URL    # against a server that is already running

`--upstream-era modern|legacy|both` (default both) picks how the fixture is reached: modern
is the SDK default (2026-07-28, what an auto-mode client such as the gateway negotiates);
legacy starts it with `--legacy` (refuses server/discover) so the gateway's upstream session
is a 2025-11-25 `initialize` session. The suite itself always speaks 2025-11-25.

Installs pinned Node and suite versions into .tools/ from npm when missing, starts the
target, runs `conformance server --url URL -o DIR`, reads every scenario's checks.json,
compares with tests/conformance/expected-failures.txt, prints a table, and exits 1 on an
unexpected failure or an unexpected pass. Every process it starts is stopped on exit.

A scenario passes when it has no FAILURE or WARNING check and at least one SUCCESS (or only
INFO checks): warnings count as failures, as in the suite's own baseline check.

expected-failures.txt: one scenario per line, `name  # reason`; prefix `direct:`,
`gateway:`, `gateway/modern:`, `gateway/legacy:` (or `direct/<era>:`, `url:`) to limit an
entry to one target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
NODE_VERSION = "22.23.3"
SUITE_VERSION = "0.1.16"
SUITE_PACKAGE = "@modelcontextprotocol/conformance"
EXPECTED_FILE = Path(__file__).with_name("expected-failures.txt")
STARTUP_TIMEOUT = 60.0
SUITE_TIMEOUT = 600.0


# ---- toolchain -----------------------------------------------------------------------------


def _node_package() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
    if sys.platform != "linux" or arch is None:
        raise SystemExit(f"conformance: no pinned Node package for {sys.platform}/{machine}; install Node 22+")
    return f"node-linux-{arch}"


def node_binary() -> Path:
    return TOOLS / "node" / "node_modules" / _node_package() / "bin" / "node"


def suite_entry() -> Path:
    return TOOLS / "conformance" / "node_modules" / SUITE_PACKAGE / "dist" / "index.js"


def _installed_version(package_json: Path) -> str | None:
    try:
        return str(json.loads(package_json.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _npm_install(prefix: Path, spec: str) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("conformance: npm is not on PATH; install Node/npm (any version) to bootstrap Node 22")
    print(f"conformance: installing {spec} into {prefix.relative_to(ROOT)}", flush=True)
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", spec],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def ensure_toolchain() -> tuple[Path, Path]:
    """Install the pinned Node and suite into .tools/ if missing; return (node, suite js)."""
    package = _node_package()
    node_pkg_json = TOOLS / "node" / "node_modules" / package / "package.json"
    if _installed_version(node_pkg_json) != NODE_VERSION or not node_binary().exists():
        _npm_install(TOOLS / "node", f"{package}@{NODE_VERSION}")
    suite_pkg_json = TOOLS / "conformance" / "node_modules" / SUITE_PACKAGE / "package.json"
    if _installed_version(suite_pkg_json) != SUITE_VERSION or not suite_entry().exists():
        _npm_install(TOOLS / "conformance", f"{SUITE_PACKAGE}@{SUITE_VERSION}")
    return node_binary(), suite_entry()


def list_server_scenarios(node: Path, suite: Path) -> list[str]:
    out = subprocess.run([str(node), str(suite), "list", "--server"], check=True, capture_output=True, text=True).stdout
    return re.findall(r"^\s*-\s+(\S+)", out, flags=re.MULTILINE)


# ---- processes -----------------------------------------------------------------------------


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
        # Anything the target left behind in its own group (e.g. the gateway's upstream).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(name: str, argv: list[str], workdir: Path, cwd: Path, env: dict[str, str] | None = None) -> Started:
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Started(name, proc, log)


def _wait_for(started: Started, ready: Callable[[], bool], what: str) -> None:
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


def start_direct(workdir: Path, era: str) -> tuple[Started, str]:
    started = start("everything", [sys.executable, *fixture_args(era), "--http", "0"], workdir, cwd=ROOT)
    found: list[str] = []

    def listening() -> bool:
        match = re.search(r"^LISTENING (\S+)", started.log.read_text(errors="replace"), flags=re.MULTILINE)
        if match:
            found.append(match.group(1))
        return bool(match)

    _wait_for(started, listening, "printing LISTENING")
    return started, found[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(port: int, era: str = "modern") -> str:
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


def start_gateway(workdir: Path, era: str) -> tuple[Started, str]:
    toolcrib = ROOT / ".venv" / "bin" / "toolcrib"
    if not toolcrib.exists():
        raise SystemExit(f"conformance: {toolcrib} is missing; run `make install`")
    port = _free_port()
    config = workdir / "toolcrib.toml"
    config.write_text(gateway_config(port, era))
    # State the gateway keeps relative to its cwd (audit db, index) stays in the temp dir.
    (workdir / ".toolcrib").mkdir(exist_ok=True)
    started = start(
        "toolcrib",
        [str(toolcrib), "--config", str(config), "serve"],
        workdir,
        cwd=workdir,
        env={"TOOLCRIB_CONFIG": str(config)},
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    _wait_for(started, healthy, "answering GET /healthz with 200")
    return started, f"http://127.0.0.1:{port}/mcp"


# ---- results -------------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: str
    success: int = 0
    failure: int = 0
    warning: int = 0
    info: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """FAIL, WARN, PASS, INFO (only informational checks: the suite found nothing to
        test, e.g. JSON instead of SSE; it passes, as in the suite's own baseline check)."""
        if self.failure:
            return "FAIL"
        if self.warning:
            return "WARN"
        if self.success:
            return "PASS"
        return "INFO" if self.info else "FAIL"

    @property
    def passed(self) -> bool:
        return self.status in ("PASS", "INFO")


_TIMESTAMP = re.compile(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


def read_results(output: Path) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    for checks_file in sorted(output.glob("*/checks.json")):
        scenario = _TIMESTAMP.sub("", checks_file.parent.name).removeprefix("server-")
        outcome = outcomes.setdefault(scenario, Outcome(scenario))
        try:
            checks = json.loads(checks_file.read_text())
        except ValueError as exc:
            outcome.failure += 1
            outcome.messages.append(f"unreadable checks.json: {exc}")
            continue
        for check in checks:
            status = check.get("status")
            if status == "SUCCESS":
                outcome.success += 1
            elif status == "INFO":
                outcome.info += 1
            elif status in ("FAILURE", "WARNING"):
                if status == "FAILURE":
                    outcome.failure += 1
                else:
                    outcome.warning += 1
                outcome.messages.append(f"{check.get('id')}: {check.get('errorMessage') or status}")
    return outcomes


def read_expected(path: Path, target: str) -> dict[str, str]:
    """Scenario -> reason for the entries that apply to `target`.

    `target` is `url`, `direct/<era>` or `gateway/<era>`; an entry scoped `gateway:` applies
    to both gateway eras, `gateway/legacy:` to one.
    """
    expected: dict[str, str] = {}
    if not path.exists():
        return expected
    for line in path.read_text().splitlines():
        entry, _, reason = line.partition("#")
        entry = entry.strip()
        if not entry:
            continue
        scope, sep, name = entry.partition(":")
        if sep:
            if scope not in (target, target.split("/")[0]):
                continue
            entry = name.strip()
        expected[entry] = reason.strip()
    return expected


def report(outcomes: dict[str, Outcome], wanted: list[str], expected: dict[str, str]) -> int:
    for name in wanted:
        if name not in outcomes:
            outcomes[name] = Outcome(name, messages=["scenario produced no results"])
    unexpected_fail = [o for o in outcomes.values() if not o.passed and o.scenario not in expected]
    unexpected_pass = [o for o in outcomes.values() if o.passed and o.scenario in expected]

    width = max(len(n) for n in outcomes) if outcomes else 10
    print(f"\n{'scenario':<{width}}  result  ok/fail/warn  baseline")
    print(f"{'-' * width}  ------  ------------  --------")
    for o in sorted(outcomes.values(), key=lambda o: o.scenario):
        if o.scenario in expected:
            baseline = "unexpected pass" if o.passed else "expected failure"
        else:
            baseline = "" if o.passed else "UNEXPECTED FAILURE"
        counts = f"{o.success}/{o.failure}/{o.warning}"
        print(f"{o.scenario:<{width}}  {o.status:<6}  {counts:<12}  {baseline}")
        if not o.passed:
            reason = expected.get(o.scenario)
            for msg in o.messages[:3]:
                print(f"{'':<{width}}    - {msg[:160]}")
            if reason:
                print(f"{'':<{width}}    baseline: {reason}")
    passed = sum(o.passed for o in outcomes.values())
    print(f"\n{passed}/{len(outcomes)} scenarios passed", end="")
    print(f"; {len(unexpected_fail)} unexpected failures; {len(unexpected_pass)} unexpected passes")
    for o in unexpected_pass:
        print(f"  remove {o.scenario!r} from {EXPECTED_FILE.relative_to(ROOT)}: it passes now")
    return 1 if unexpected_fail or unexpected_pass else 0


# ---- main ----------------------------------------------------------------------------------


@dataclass
class Run:
    """One suite run against one target; `main` runs one per era."""

    mode: str
    era: str
    node: Path
    suite: Path
    args: argparse.Namespace
    all_scenarios: list[str]

    @property
    def target(self) -> str:
        return "url" if self.mode == "url" else f"{self.mode}/{self.era}"

    def execute(self) -> int:
        with tempfile.TemporaryDirectory(prefix="toolcrib-conformance-") as tmp:
            workdir = Path(tmp)
            output = self.args.output / self.target.replace("/", "-") if self.args.output else workdir / "results"
            if output.exists() and any(output.iterdir()):
                raise SystemExit(f"conformance: {output} is not empty")
            started: Started | None = None
            try:
                if self.mode == "direct":
                    started, url = start_direct(workdir, self.era)
                elif self.mode == "gateway":
                    started, url = start_gateway(workdir, self.era)
                else:
                    url = self.args.url
                print(f"\n=== conformance: {self.target} at {url}", flush=True)
                self._run_suite(url, output, workdir / "suite.log")
                outcomes = read_results(output)
                wanted = self.args.scenario or (self.all_scenarios if self.args.suite == "all" else [])
                code = report(outcomes, wanted, read_expected(self.args.expected, self.target))
                if code and started is not None and not self.args.verbose:
                    print(f"\n--- last lines of the {started.name} log ---\n{started.tail(15)}")
                return code
            finally:
                if started is not None:
                    started.stop()

    def _run_suite(self, url: str, output: Path, log: Path) -> None:
        with log.open("wb") as sink:
            for scenario in self.args.scenario or [None]:
                cmd = [str(self.node), str(self.suite), "server", "--url", url, "-o", str(output)]
                cmd += ["--scenario", scenario] if scenario else ["--suite", self.args.suite]
                subprocess.run(
                    cmd, cwd=log.parent, stdout=sink, stderr=subprocess.STDOUT, timeout=SUITE_TIMEOUT, check=False
                )
        if self.args.verbose:
            print(log.read_text(errors="replace"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--direct", action="store_true", help="run against tests.servers.everything directly")
    target.add_argument("--gateway", action="store_true", help="run against toolcrib in front of the fixture (default)")
    target.add_argument("--url", help="run against an MCP endpoint that is already running")
    parser.add_argument(
        "--upstream-era",
        choices=["modern", "legacy", "both"],
        default="both",
        help="the fixture's era: modern (2026-07-28, what an auto client picks) or legacy (refuses "
        "server/discover, so it is reached over 2025-11-25 initialize); both runs the suite twice",
    )
    parser.add_argument("--suite", choices=["all", "active", "pending"], default="all")
    parser.add_argument("--scenario", action="append", default=[], help="run only this scenario (repeatable)")
    parser.add_argument("--expected", type=Path, default=EXPECTED_FILE, help="expected-failures file")
    parser.add_argument("--output", type=Path, help="keep the suite's results under this directory")
    parser.add_argument("--verbose", action="store_true", help="print the suite's own output")
    args = parser.parse_args(argv)
    mode = "url" if args.url else "direct" if args.direct else "gateway"
    eras = ["modern", "legacy"] if args.upstream_era == "both" else [args.upstream_era]
    if mode == "url":
        eras = eras[:1]

    # SIGTERM unwinds like Ctrl-C, so every `finally` stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    node, suite = ensure_toolchain()
    all_scenarios = list_server_scenarios(node, suite)
    unknown = [s for s in args.scenario if s not in all_scenarios]
    if unknown:
        raise SystemExit(f"conformance: unknown scenario(s) {unknown}; known: {', '.join(all_scenarios)}")
    print(f"conformance: suite {SUITE_PACKAGE}@{SUITE_VERSION} on node {NODE_VERSION}")
    codes = {}
    for era in eras:
        run = Run(mode, era, node, suite, args, all_scenarios)
        codes[run.target] = run.execute()
    summary = ", ".join(f"{t} {'ok' if c == 0 else 'FAILED'}" for t, c in codes.items())
    print(f"\nconformance: {summary}; took {time.monotonic() - began:.1f} s")
    return max(codes.values())


if __name__ == "__main__":
    sys.exit(main())
