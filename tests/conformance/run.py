"""Run the official MCP conformance suite against the everything fixture and toolcrib, per frozen
requirement set, and compare.

    python -m tests.conformance.run                      # both legs, both revisions (make conformance)
    python -m tests.conformance.run --leg server --revision 2026-07-28 --upstream-era modern
    python -m tests.conformance.run --leg client -o out  # keep results and out/summary.json
    python -m tests.conformance.run --leg server --url URL   # a server that is already running

Server leg, per revision REV in 2025-11-25 and 2026-07-28: `conformance server --url URL
--requirements REV` against (a) `python -m tests.servers.everything --http 0` directly and
(b) toolcrib in passthrough mode (`keep_names = true`) in front of the same fixture over stdio,
for both upstream eras (modern: the fixture as is; legacy: `--legacy`, so toolcrib's upstream
session is a 2025-11-25 initialize session). Every scenario of toolcrib must fail no check the
direct run does not fail (check by check); the direct run is judged against
tests/conformance/expected-failures/REV.yaml.

Client leg: each non-auth client scenario of the requirement set (scored and not scored) with
`conformance client --command "<venv python> -m tests.conformance.client" --scenario S
--spec-version REV --force` (what `--requirements REV` does per scenario, without the auth/*
scenarios), judged against the same baseline's `client:` list.

Exit 1 on an unexpected failing check, a stale baseline entry, a check failing through toolcrib
but not directly, or a missing client harness; 0 otherwise. Scenarios the requirement set does
not score are run and reported but only the toolcrib/direct comparison applies to them. The
suite (pinned below) and Node 22 are installed into .tools/ from npm on first use.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conformance import baseline
from tests.conformance.report import LegReport
from tests.conformance.results import ScenarioResult, complete, no_results, read_results
from tests.conformance.targets import Target, launch_direct, launch_gateway, run_logged, stop_group
from tests.conformance.toolchain import (
    NODE_VERSION,
    REVISIONS,
    ROOT,
    SUITE_PACKAGE,
    SUITE_VERSION,
    RequirementSet,
    ensure_toolchain,
    load_requirements,
)

SERVER_RUN_TIMEOUT = 900.0
CLIENT_SCENARIO_TIMEOUT_MS = 60_000
HARNESS = "tests.conformance.client"


def harness_command() -> str:
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = venv_python if venv_python.exists() else Path(sys.executable)
    return f"{shlex.quote(str(python))} -m {HARNESS}"


def harness_problem(root: Path = ROOT) -> str | None:
    """None when `python -m tests.conformance.client` imports under `root`; else one line saying
    what is wrong (missing, or the import's last error line)."""
    if not any((root / "tests" / "conformance" / p).exists() for p in ("client.py", "client/__init__.py")):
        return f"the client harness `python -m {HARNESS}` does not exist yet (tests/conformance/client.py)"
    proc = subprocess.run(
        [sys.executable, "-c", f"import {HARNESS}"], cwd=root, capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"the client harness `python -m {HARNESS}` does not import: {last}"
    return None


MARKER = ".toolcrib-conformance"


def prepare_output(path: Path) -> None:
    """Create `path` and mark it as ours; a directory an earlier run marked is emptied first,
    any other non-empty one is refused."""
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise SystemExit(f"conformance: {path} is not empty and holds no earlier run; pick an empty directory")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("written by python -m tests.conformance.run; emptied by its next run\n")


class Runner:
    def __init__(self, args: argparse.Namespace, node: Path, suite: Path, out: Path, work: Path) -> None:
        self.args, self.node, self.suite, self.out, self.work = args, node, suite, out, work
        self.live: list[subprocess.Popen[bytes]] = []
        self.return_codes: dict[str, int | None] = {}
        self.stopping = False

    def _suite(self, *argv: str) -> list[str]:
        return [str(self.node), str(self.suite), *argv]

    def _job(self, key: str, argv: list[str], log: Path, timeout: float) -> Callable[[], None]:
        def run() -> None:
            if self.stopping:
                return
            log.parent.mkdir(parents=True, exist_ok=True)
            self.return_codes[key] = run_logged(argv, log, timeout, self.live)
            if self.args.verbose:
                print(f"--- {key} (exit {self.return_codes[key]}) ---\n{log.read_text(errors='replace')}", flush=True)

        return run

    def server_jobs(self, rev: str, urls: dict[str, str]) -> list[tuple[str, Callable[[], None]]]:
        jobs = []
        for target, url in urls.items():
            out = self.out / rev / "server" / target.replace("/", "-")
            argv = self._suite("server", "--url", url, "--requirements", rev, "-o", str(out))
            argv += ["--expected-failures", str(baseline.baseline_path(rev, self.args.baseline_dir))]
            key = f"{rev}/server/{target}"
            jobs.append(
                (key, self._job(key, argv, self.out / "logs" / f"{key.replace('/', '-')}.log", SERVER_RUN_TIMEOUT))
            )
        return jobs

    def client_jobs(self, rev: str, scenarios: list[str]) -> list[tuple[str, Callable[[], None]]]:
        jobs = []
        out = self.out / rev / "client" / "toolcrib"
        for scenario in scenarios:
            argv = self._suite("client", "--command", harness_command(), "--scenario", scenario)
            argv += ["--spec-version", rev, "--force", "--timeout", str(CLIENT_SCENARIO_TIMEOUT_MS), "-o", str(out)]
            argv += ["--expected-failures", str(baseline.baseline_path(rev, self.args.baseline_dir))]
            key = f"{rev}/client/{scenario}"
            log = self.out / "logs" / f"{key.replace('/', '-')}.log"
            jobs.append((key, self._job(key, argv, log, CLIENT_SCENARIO_TIMEOUT_MS / 1000 * 3)))
        return jobs

    def stop_all(self) -> None:
        self.stopping = True
        for proc in list(self.live):
            stop_group(proc)


def _client_scenarios(reqs: RequirementSet) -> list[str]:
    return [s for s in reqs.scenarios("client") if not s.startswith("auth/")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--leg", choices=["server", "client", "both"], default="both")
    parser.add_argument("--revision", action="append", choices=REVISIONS, help="requirement set (repeatable)")
    parser.add_argument("--upstream-era", choices=["modern", "legacy", "both"], default="both")
    parser.add_argument("--url", help="server leg against this running MCP endpoint instead of fixture + toolcrib")
    parser.add_argument("-o", "--output", type=Path, help="keep the suite's results, logs and summary.json here")
    parser.add_argument("--jobs", type=int, default=4, help="suite processes run at once (default 4)")
    parser.add_argument("--baseline-dir", type=Path, default=baseline.BASELINE_DIR)
    parser.add_argument("--verbose", action="store_true", help="print every suite process's output")
    args = parser.parse_args(argv)
    revisions = args.revision or list(REVISIONS)
    legs = ["server", "client"] if args.leg == "both" else [args.leg]
    eras = ["modern", "legacy"] if args.upstream_era == "both" else [args.upstream_era]

    # SIGTERM unwinds like Ctrl-C, so every `finally` stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    try:
        baselines = {rev: baseline.load(rev, args.baseline_dir) for rev in revisions}
        gateway_limits = {rev: baseline.load(rev, args.baseline_dir, "gateway") for rev in revisions}
        legacy_limits = {rev: baseline.load(rev, args.baseline_dir, "legacy-upstream") for rev in revisions}
    except baseline.BaselineError as exc:
        raise SystemExit(f"conformance: {exc}") from None
    node, suite = ensure_toolchain()
    reqs = {rev: load_requirements(node, suite, rev) for rev in revisions}
    print(f"conformance: suite {SUITE_PACKAGE}@{SUITE_VERSION} on node {NODE_VERSION}; legs {', '.join(legs)}")

    with tempfile.TemporaryDirectory(prefix="toolcrib-conformance-") as tmp:
        out = args.output.resolve() if args.output else Path(tmp) / "results"
        prepare_output(out)
        work = out / "logs"
        work.mkdir(parents=True, exist_ok=True)
        runner = Runner(args, node, suite, out, work)
        targets: list[Target] = []
        try:
            urls: dict[str, str] = {}
            if "server" in legs:
                if args.url:
                    urls["url"] = args.url
                else:
                    targets = [launch_direct(work), *(launch_gateway(work, era) for era in eras)]
                    urls = {t.name: t.ready() for t in targets}
                for name, url in urls.items():
                    print(f"conformance: {name} at {url}", flush=True)
            problem = harness_problem() if "client" in legs else None
            jobs = []
            for rev in revisions:
                if "server" in legs:
                    jobs += runner.server_jobs(rev, urls)
            for rev in revisions:
                if "client" in legs and problem is None:
                    jobs += runner.client_jobs(rev, _client_scenarios(reqs[rev]))
            print(f"conformance: {len(jobs)} suite runs, {args.jobs} at a time", flush=True)
            pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
            try:
                for future in [pool.submit(job) for _, job in jobs]:
                    future.result()
            finally:
                # On an interrupt: no new suite process, stop the running ones, then let the threads end.
                runner.stop_all()
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            runner.stop_all()
            for target in targets:
                if target.started is not None:
                    target.started.stop()

        reports: list[LegReport] = []
        for rev in revisions:
            rs, entries = reqs[rev], baselines[rev]
            for leg in legs:
                scenarios = _client_scenarios(rs) if leg == "client" else rs.scenarios(leg)
                scored = [s for s in scenarios if rs.is_scored(leg, s)]
                not_scored = {s: rs.not_scored[leg][s] for s in scenarios if s in rs.not_scored[leg]}
                results: dict[str, dict[str, ScenarioResult]] = {}
                notes: list[str] = []
                if leg == "server":
                    for name in urls:
                        found = read_results(out / rev / "server" / name.replace("/", "-"), prefix="server")
                        code = runner.return_codes.get(f"{rev}/server/{name}")
                        why = f"the suite wrote no checks.json (exit {code}; log in logs/)"
                        results[name] = complete(found, scenarios, why)
                else:
                    if problem is not None:
                        notes.append(f"{problem}; {len(scenarios)} client scenarios not run")
                        results["toolcrib"] = {s: no_results(s, problem) for s in scenarios}
                    else:
                        found = read_results(out / rev / "client" / "toolcrib")
                        results["toolcrib"] = complete(found, scenarios, "the suite wrote no checks.json")
                keyed = [(e.scenario, e.check) for e in entries[leg]]
                allowed: dict[str, list[tuple[str, str | None]]] = {}
                for name in results:
                    if leg == "server" and name.startswith("toolcrib/"):
                        limits = gateway_limits[rev]["server"]
                        limits = limits + (legacy_limits[rev]["server"] if name == "toolcrib/legacy" else [])
                        allowed[name] = [(e.scenario, e.check) for e in limits]
                reports.append(LegReport(rev, leg, scored, not_scored, results, keyed, notes, allowed))

    for report in reports:
        print("\n".join(report.lines()))
        code = runner.return_codes.get(f"{report.revision}/server/{report.reference}")
        if report.leg == "server" and code is not None and (code == 0) != report.verdict.ok:
            print(f"  note: the suite's own --expected-failures check exited {code}; see logs/ for its view")
    elapsed = time.monotonic() - began
    ok = all(r.ok for r in reports)
    verdicts = ", ".join(f"{r.revision} {r.leg} {'ok' if r.ok else 'FAILED'}" for r in reports)
    print(f"\nconformance: {verdicts}; took {elapsed:.0f} s")
    if args.output:
        summary = {
            "suite": f"{SUITE_PACKAGE}@{SUITE_VERSION}",
            "node": NODE_VERSION,
            "ok": ok,
            "seconds": round(elapsed, 1),
            "suite_exit_codes": runner.return_codes,
            "reports": [r.to_json() for r in reports],
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"conformance: results and summary.json in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
