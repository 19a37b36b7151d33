"""The expected-failures baseline: one file per spec revision, in the suite's YAML format.

    tests/conformance/expected-failures/<revision>.yaml

    # comment
    server:
      - scenario              # reason (required)
      - scenario:check-id     # reason (required)
    client: []

This is the subset of YAML the suite's `--expected-failures` reads (0.2.0-alpha.12, README
"Expected Failures"), so the same file is passed to the suite; this reader adds what the suite
does not check: every entry carries a `# reason`, no entry is repeated, and a scenario is not
listed both wholesale and per check (the suite rejects that pair too). `- a: b` (a space after
the colon) is a YAML mapping, which the suite rejects; it is refused here with the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BASELINE_DIR = Path(__file__).with_name("expected-failures")
LEGS = ("server", "client")
_NAME = re.compile(r"^[A-Za-z0-9_./-]+(:[A-Za-z0-9_./:-]+)?$")


class BaselineError(ValueError):
    """A malformed baseline; the message is one line naming the file, the line and the fix."""


@dataclass(frozen=True)
class Entry:
    scenario: str
    check: str | None
    reason: str

    @property
    def key(self) -> str:
        return f"{self.scenario}:{self.check}" if self.check else self.scenario


def baseline_path(revision: str, directory: Path = BASELINE_DIR) -> Path:
    return directory / f"{revision}.yaml"


def parse(text: str, source: str = "<baseline>") -> dict[str, list[Entry]]:
    """Leg -> entries, in file order. Raises BaselineError on anything outside the format above."""
    entries: dict[str, list[Entry]] = {leg: [] for leg in LEGS}
    leg: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        body, sep, comment = raw.partition(" #") if not raw.lstrip().startswith("#") else ("", "#", raw)
        if not body.strip():
            continue
        if m := re.match(r"^(\w+):\s*(\[\])?\s*$", body):
            if m.group(1) not in LEGS:
                raise BaselineError(f"{where}: unknown key {m.group(1)!r}; use `server:` or `client:`")
            leg = m.group(1)
            continue
        m = re.match(r"^\s+-\s+(.*?)\s*$", body)
        if m is None or leg is None:
            raise BaselineError(f"{where}: expected `server:`, `client:` or an indented `- scenario  # reason`")
        value = m.group(1).strip("'\"")
        if ": " in value or value.endswith(":"):
            raise BaselineError(f"{where}: `{value}` is a YAML mapping; write `scenario:check-id` without a space")
        if not _NAME.match(value):
            raise BaselineError(f"{where}: `{value}` is not `scenario` or `scenario:check-id`")
        reason = comment.strip() if sep else ""
        if not reason:
            raise BaselineError(f"{where}: `{value}` has no reason; add `  # why it is expected to fail`")
        scenario, _, check = value.partition(":")
        entry = Entry(scenario, check or None, reason)
        held = entries[leg]
        if any(e.key == entry.key for e in held):
            raise BaselineError(f"{where}: `{value}` is listed twice under {leg}; remove one")
        if any(e.scenario == scenario and (e.check is None) != (entry.check is None) for e in held):
            raise BaselineError(f"{where}: `{scenario}` is listed both wholesale and per check; keep one form")
        held.append(entry)
    return entries


def render(entries: dict[str, list[Entry]], header: str = "") -> str:
    """The file text for `entries` (what `parse` reads back)."""
    lines = [f"# {h}" if h else "#" for h in header.splitlines()]
    for leg in LEGS:
        held = entries.get(leg, [])
        lines.append(f"{leg}:" if held else f"{leg}: []")
        lines += [f"  - {e.key}  # {e.reason}" for e in held]
    return "\n".join(lines) + "\n"


def load(revision: str, directory: Path = BASELINE_DIR, variant: str = "") -> dict[str, list[Entry]]:
    """The baseline of ``revision``, or a variant: ``gateway`` (``<revision>.gateway.yaml``, checks any
    toolcrib target may do worse than direct because the feature cannot cross a gateway) or
    ``legacy-upstream`` (``<revision>.legacy-upstream.yaml``, what toolcrib in front of a
    2025-11-25 upstream may do worse: era translation limits). Each entry says why."""
    path = baseline_path(revision + (f".{variant}" if variant else ""), directory)
    if not path.exists():
        return {leg: [] for leg in LEGS}
    return parse(path.read_text(), str(path))
