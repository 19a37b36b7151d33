"""Reading the suite's results, judging them against the baseline, comparing two targets.

Results: the suite writes one directory per scenario run, `<prefix>-<scenario>-<ISO time>/checks.json`
(prefix `server` for server scenarios, none for client ones), a JSON array of checks
`{"id", "status", "errorMessage"?, ...}` with status SUCCESS, FAILURE, WARNING, INFO or SKIPPED.
A check id may occur several times; as in the suite (0.2.0-alpha.12, `Xo`), the occurrences
collapse to one verdict, most severe first (FAILURE > WARNING > SUCCESS > SKIPPED); INFO never
counts. Following the suite's two rules:

* a scenario *passes* (counts in the pass rate) when it has no FAILURE check
  (`conformance server --requirements` exit code); a WARNING does not fail it;
* a check *fails* for the baseline when it is FAILURE or WARNING (`--expected-failures`), so a
  warning needs a baseline entry like a failure does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

FAILING = ("FAILURE", "WARNING")
NOT_EXERCISED = "passes directly but was skipped or not run through toolcrib"
_SEVERITY = {"FAILURE": 3, "WARNING": 2, "SUCCESS": 1}
_TIMESTAMP = re.compile(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


def severity(status: str | None) -> int:
    return _SEVERITY.get(status or "", 0)


@dataclass(frozen=True)
class Check:
    id: str
    status: str
    message: str = ""


@dataclass
class ScenarioResult:
    """One scenario's collapsed checks (one per id, INFO dropped) and an optional note (the last
    line the client harness wrote to stderr, or why there are no results)."""

    scenario: str
    checks: dict[str, Check] = field(default_factory=dict)
    note: str = ""
    info: set[str] = field(default_factory=set)
    """Ids of INFO checks: the suite saw an optional path taken (e.g. JSON instead of SSE)."""

    def add(self, check: Check) -> None:
        if check.status == "INFO":
            self.info.add(check.id)
            return
        held = self.checks.get(check.id)
        if held is None or severity(check.status) >= severity(held.status):
            self.checks[check.id] = check

    def status_of(self, check_id: str) -> str | None:
        held = self.checks.get(check_id)
        return held.status if held else None

    @property
    def failing(self) -> dict[str, Check]:
        return {i: c for i, c in self.checks.items() if c.status in FAILING}

    @property
    def passed(self) -> bool:
        """No FAILURE check: the suite's own pass rule for a scenario."""
        return not any(c.status == "FAILURE" for c in self.checks.values())

    @property
    def status(self) -> str:
        """FAIL, WARN, PASS or SKIP (no check passed or failed, e.g. all SKIPPED or only INFO)."""
        statuses = {c.status for c in self.checks.values()}
        if "FAILURE" in statuses:
            return "FAIL"
        if "WARNING" in statuses:
            return "WARN"
        return "PASS" if "SUCCESS" in statuses else "SKIP"


def no_results(scenario: str, why: str) -> ScenarioResult:
    result = ScenarioResult(scenario, note=why)
    result.add(Check("no-results", "FAILURE", why))
    return result


def scenario_name(result_dir: str, prefix: str = "") -> str:
    """`server-tools-list-2026-07-28T10-00-00-000Z` -> `tools-list` (prefix `server`)."""
    name = _TIMESTAMP.sub("", result_dir)
    return name.removeprefix(f"{prefix}-") if prefix else name


_ERROR_LINE = re.compile(r"error|traceback|exception|failed|refused|timed out", re.IGNORECASE)
_SHUTDOWN_LINE = re.compile(r"SIGTERM|shutting down|draining", re.IGNORECASE)


def telling_line(text: str) -> str:
    """The line of a harness's stderr most likely to say what went wrong: the last one that
    mentions an error (shutdown chatter skipped), else the last non-empty one."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not _SHUTDOWN_LINE.search(ln)]
    errors = [ln for ln in lines if _ERROR_LINE.search(ln)]
    return (errors or lines or [""])[-1]


def _stderr_line(path: Path) -> str:
    try:
        return telling_line(path.read_text(errors="replace"))
    except OSError:
        return ""


def read_results(output: Path, prefix: str = "") -> dict[str, ScenarioResult]:
    """Every `checks.json` under `output`, keyed by scenario name (nested for `auth/...`)."""
    results: dict[str, ScenarioResult] = {}
    for checks_file in sorted(output.rglob("checks.json")):
        name = scenario_name(checks_file.parent.relative_to(output).as_posix(), prefix)
        result = results.setdefault(name, ScenarioResult(name))
        try:
            checks = json.loads(checks_file.read_text())
            if not isinstance(checks, list):
                raise ValueError("not a JSON array")
        except ValueError as exc:
            result.add(Check("checks-json", "FAILURE", f"unreadable {checks_file.name}: {exc}"))
            continue
        for raw in checks:
            if isinstance(raw, dict):
                status = str(raw.get("status", "FAILURE"))
                message = str(raw.get("errorMessage") or raw.get("description") or "")
                result.add(Check(str(raw.get("id", "?")), status, message))
        stderr = _stderr_line(checks_file.parent / "stderr.txt")
        if stderr and not result.passed:
            result.note = stderr
    return results


def complete(results: dict[str, ScenarioResult], wanted: list[str], why: str) -> dict[str, ScenarioResult]:
    """`results` restricted to `wanted`, in that order, with `no_results(why)` for missing ones."""
    return {name: results.get(name) or no_results(name, why) for name in wanted}


# ---- direct against the baseline ------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the baseline says about one scored run: `unexpected` (scenario, check id, message)
    fails the run, `stale` entries (now passing) fail it too, `expected` are excused."""

    unexpected: list[tuple[str, str, str]]
    stale: list[str]
    expected: list[str]

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.stale


def judge(results: dict[str, ScenarioResult], scored: list[str], entries: list[tuple[str, str | None]]) -> Verdict:
    """Judge the scored scenarios of one run as `conformance --expected-failures` does (`ol` in
    suite 0.2.0-alpha.12): a wholesale entry excuses a failing scenario and is stale when it
    passes; a `scenario:check` entry excuses that check and is stale when the check is SUCCESS
    (absent or skipped is tolerated). Entries naming no scored scenario are stale as well."""
    whole = {s for s, c in entries if c is None}
    per_check: dict[str, set[str]] = {}
    for s, c in entries:
        if c is not None:
            per_check.setdefault(s, set()).add(c)
    unexpected: list[tuple[str, str, str]] = []
    stale: list[str] = []
    expected: list[str] = []
    for name in scored:
        result = results.get(name) or no_results(name, "not run")
        failing = result.failing
        if name in whole:
            (expected if failing else stale).append(name)
            continue
        excused = per_check.get(name, set())
        for check in failing.values():
            if check.id in excused:
                expected.append(f"{name}:{check.id}")
            else:
                unexpected.append((name, check.id, check.message))
        stale += [f"{name}:{c}" for c in sorted(excused) if result.status_of(c) == "SUCCESS"]
    known = set(scored)
    stale += sorted({s for s, _ in entries if s not in known})
    return Verdict(unexpected, stale, expected)


# ---- toolcrib against direct ----------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """Checks that fail through toolcrib but not directly (`worse`) and the reverse (`better`),
    each (check id, direct status or None, toolcrib status or None, toolcrib/direct message)."""

    scenario: str
    worse: list[tuple[str, str | None, str | None, str]]
    better: list[tuple[str, str | None, str | None, str]]


def compare(direct: dict[str, ScenarioResult], gateway: dict[str, ScenarioResult]) -> list[Difference]:
    """Check by check, per scenario: a check is worse through toolcrib when its verdict there is
    FAILURE or WARNING and more severe than directly, or when it succeeds directly and is skipped
    or missing through toolcrib (a feature the direct server offers that toolcrib does not relay),
    unless toolcrib's run reports it as INFO (an optional path the spec allows, such as JSON
    instead of SSE)."""
    diffs: list[Difference] = []
    for name in [*direct, *(n for n in gateway if n not in direct)]:
        d = direct.get(name) or no_results(name, "no direct result")
        g = gateway.get(name) or no_results(name, "no result through toolcrib")
        worse: list[tuple[str, str | None, str | None, str]] = []
        better: list[tuple[str, str | None, str | None, str]] = []
        for check_id in [*d.failing, *(i for i in g.failing if i not in d.failing)]:
            ds, gs = d.status_of(check_id), g.status_of(check_id)
            if severity(gs) > severity(ds) and gs in FAILING:
                worse.append((check_id, ds, gs, g.checks[check_id].message))
            elif severity(ds) > severity(gs) and ds in FAILING:
                better.append((check_id, ds, gs, d.checks[check_id].message))
        for check_id, check in d.checks.items():
            if check.status == "SUCCESS" and g.status_of(check_id) in (None, "SKIPPED") and check_id not in g.info:
                worse.append((check_id, "SUCCESS", g.status_of(check_id), NOT_EXERCISED))
        if worse or better:
            diffs.append(Difference(name, worse, better))
    return diffs
