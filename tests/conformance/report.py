"""One leg of one revision: its results per target, the verdicts, the table and the JSON summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.conformance.results import Difference, ScenarioResult, Verdict, compare, judge

MESSAGE_WIDTH = 220


def _short(text: str) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= MESSAGE_WIDTH else one_line[: MESSAGE_WIDTH - 3] + "..."


@dataclass
class LegReport:
    """`targets` maps a target name to its results; the first is the reference, judged against
    the baseline (`direct` for the server leg, `toolcrib` for the client leg, `url` for --url);
    every other target is compared with it check by check."""

    revision: str
    leg: str
    scored: list[str]
    not_scored: dict[str, str]
    targets: dict[str, dict[str, ScenarioResult]]
    entries: list[tuple[str, str | None]]
    notes: list[str] = field(default_factory=list)
    allowed: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    """Target -> (scenario, check or None) that may be worse than the reference there: the era
    translation limits of toolcrib in front of a 2025-11-25 upstream (baseline ``*.legacy-upstream.yaml``)."""

    @property
    def reference(self) -> str:
        return next(iter(self.targets))

    @property
    def verdict(self) -> Verdict:
        return judge(self.targets[self.reference], self.scored, self.entries)

    @property
    def differences(self) -> dict[str, list[Difference]]:
        ref = self.targets[self.reference]
        return {name: compare(ref, res) for name, res in self.targets.items() if name != self.reference}

    def excused(self, target: str, scenario: str, check: str) -> bool:
        """True when ``check`` of ``scenario`` may be worse on ``target`` (an ``allowed`` entry)."""
        return any(s == scenario and c in (None, check) for s, c in self.allowed.get(target, []))

    def unexcused(self, target: str, d: Difference) -> list[tuple[str, str | None, str | None, str]]:
        return [w for w in d.worse if not self.excused(target, d.scenario, w[0])]

    def stale_allowed(self) -> list[str]:
        """``allowed`` entries that excuse nothing (the target is no longer worse there): remove them."""
        diffs = self.differences
        out = []
        for target, entries in self.allowed.items():
            for scenario, check in entries:
                found = [d for d in diffs.get(target, []) if d.scenario == scenario]
                if not any(check is None or any(w[0] == check for w in d.worse) for d in found):
                    out.append(f"{target}: {scenario}{':' + check if check else ''}")
        return out

    @property
    def ok(self) -> bool:
        worse = any(self.unexcused(name, d) for name, diffs in self.differences.items() for d in diffs)
        return self.verdict.ok and not worse and not self.notes and not self.stale_allowed()

    def counts(self, target: str) -> tuple[int, int, int, int]:
        """(scored passed, scored total, not-scored passed, not-scored total) for `target`."""
        res = self.targets[target]
        scored = [res[s].passed for s in self.scored if s in res]
        extra = [res[s].passed for s in self.not_scored if s in res]
        return sum(scored), len(self.scored), sum(extra), len(self.not_scored)

    def _kind(self, scenario: str) -> str:
        reason = self.not_scored.get(scenario)
        return f"not scored: {reason}" if reason else "scored"

    def lines(self) -> list[str]:
        out = [f"\n== {self.revision} {self.leg} leg ({len(self.scored)} scored, {len(self.not_scored)} not scored)"]
        width = max(len(t) for t in self.targets) + 2
        against = f"compared with {self.reference}" if len(self.targets) > 1 else ""
        out.append(f"  {'target':<{width}}{'scored':>9}  {'not scored':>10}  {against}".rstrip())
        diffs = self.differences
        for name in self.targets:
            sp, st, np, nt = self.counts(name)
            comparison = ""
            if name in diffs:
                worse = sum(1 for d in diffs[name] if self.unexcused(name, d))
                limits = sum(1 for d in diffs[name] if d.worse and not self.unexcused(name, d))
                better = sum(1 for d in diffs[name] if d.better)
                comparison = f"{worse} scenario(s) worse, {better} better"
                comparison += f", {limits} within the baseline's translation limits" if limits else ""
            out.append(f"  {name:<{width}}{f'{sp}/{st}':>9}  {f'{np}/{nt}':>10}  {comparison}".rstrip())
        for note in self.notes:
            out.append(f"  ! {note}")
        for name, found in diffs.items():
            for d in found:
                ref, res = self.targets[self.reference], self.targets[name]
                status = f"{self.reference} {_status(ref, d.scenario)}, {name} {_status(res, d.scenario)}"
                label = "WORSE " if self.unexcused(name, d) else "limit " if d.worse else "better"
                out.append(f"  {label} {name}: {d.scenario} ({self._kind(d.scenario)}): {status}")
                for check_id, ds, gs, message in [*d.worse, *d.better]:
                    mark = " (baseline)" if self.excused(name, d.scenario, check_id) else ""
                    out.append(f"      - {check_id}{mark}: {ds or 'absent'} -> {gs or 'absent'}: {_short(message)}")
                if d.worse and res.get(d.scenario) and res[d.scenario].note:
                    out.append(f"      note: {_short(res[d.scenario].note)}")
        verdict = self.verdict
        out.append(
            f"  {self.reference} against the baseline: {len(verdict.unexpected)} unexpected failing check(s), "
            f"{len(verdict.stale)} stale entr(ies), {len(verdict.expected)} expected"
        )
        ref = self.targets[self.reference]
        for scenario, check_id, message in verdict.unexpected:
            out.append(f"    UNEXPECTED {scenario}:{check_id}: {_short(message)}")
            note = ref[scenario].note if scenario in ref else ""
            if note and check_id != "no-results":
                out.append(f"      note: {_short(note)}")
        for key in verdict.stale:
            out.append(f"    STALE {key}: passes now (or is no scored scenario); remove it from the baseline")
        for key in self.stale_allowed():
            out.append(
                f"    STALE {key}: no longer worse than {self.reference}; remove it from the translation baseline"
            )
        failing_extra = [s for s in self.not_scored if s in ref and not ref[s].passed]
        if failing_extra:
            out.append(f"  not scored and failing for {self.reference}: {', '.join(failing_extra)}")
        return out

    def to_json(self) -> dict[str, Any]:
        verdict = self.verdict
        return {
            "revision": self.revision,
            "leg": self.leg,
            "reference": self.reference,
            "ok": self.ok,
            "notes": self.notes,
            "translation_limits": {t: [f"{s}{':' + c if c else ''}" for s, c in e] for t, e in self.allowed.items()},
            "stale_translation_limits": self.stale_allowed(),
            "targets": {
                name: {
                    "scored": dict(zip(("passed", "total"), self.counts(name)[:2], strict=True)),
                    "not_scored": dict(zip(("passed", "total"), self.counts(name)[2:], strict=True)),
                    "scenarios": {
                        s: {
                            "scored": s in self.scored,
                            "not_scored_reason": self.not_scored.get(s),
                            "status": r.status,
                            "passed": r.passed,
                            "failing": {c.id: {"status": c.status, "message": c.message} for c in r.failing.values()},
                            "note": r.note or None,
                        }
                        for s, r in res.items()
                    },
                }
                for name, res in self.targets.items()
            },
            "baseline": {
                "unexpected": [{"scenario": s, "check": c, "message": m} for s, c, m in verdict.unexpected],
                "stale": verdict.stale,
                "expected": verdict.expected,
            },
            "differences": {
                name: [
                    {
                        "scenario": d.scenario,
                        "worse": [{"check": c, "reference": a, "target": b, "message": m} for c, a, b, m in d.worse],
                        "better": [{"check": c, "reference": a, "target": b, "message": m} for c, a, b, m in d.better],
                    }
                    for d in diffs
                ]
                for name, diffs in self.differences.items()
            },
        }


def _status(results: dict[str, ScenarioResult], scenario: str) -> str:
    return results[scenario].status if scenario in results else "absent"
