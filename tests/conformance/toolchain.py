"""The pinned Node and conformance suite under .tools/, and the suite's frozen requirement sets.

Node (`node-linux-<arch>` from npm) and `@modelcontextprotocol/conformance` are installed into
.tools/node and .tools/conformance with `npm install --prefix` the first time they are missing or
at another version. A requirement set (`requirements/<revision>.yaml` in the suite, read through
`conformance list --requirements REV`) names, per leg (`server`, `client`), the scenarios a spec
revision requires (scored) and those it runs and reports without scoring (`extension`,
`added-after-release`, `pending`).
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
NODE_VERSION = "22.23.3"
SUITE_VERSION = "0.2.0-alpha.12"
SUITE_PACKAGE = "@modelcontextprotocol/conformance"
REVISIONS = ("2025-11-25", "2026-07-28")
LEGS = ("server", "client")


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


@dataclass
class RequirementSet:
    """One frozen requirement set: per leg, the scored scenarios (in the suite's order) and the
    not-scored ones with their reason (`extension`, `added-after-release` or `pending`)."""

    revision: str
    scored: dict[str, list[str]] = field(default_factory=lambda: {leg: [] for leg in LEGS})
    not_scored: dict[str, dict[str, str]] = field(default_factory=lambda: {leg: {} for leg in LEGS})

    def scenarios(self, leg: str) -> list[str]:
        return [*self.scored[leg], *self.not_scored[leg]]

    def is_scored(self, leg: str, scenario: str) -> bool:
        return scenario in self.scored[leg]


_SECTION = {"Server scenarios": "server", "Client scenarios": "client"}


def parse_requirements_listing(revision: str, text: str) -> RequirementSet:
    """Read the output of `conformance list --requirements REV`.

    Shape (suite 0.2.0-alpha.12): a `Server scenarios (...):` and a `Client scenarios (...):`
    section of `  - name` lines, then `Run and reported, but never scored:` with `  <reason> (n):`
    headers over `    - name [leg]` lines. Raises ValueError when nothing is recognised.
    """
    reqs = RequirementSet(revision)
    leg: str | None = None
    reason: str | None = None
    for line in text.splitlines():
        header = next((v for k, v in _SECTION.items() if line.startswith(k)), None)
        if header is not None:
            leg, reason = header, None
            continue
        if line.startswith("Run and reported, but never scored"):
            leg, reason = None, ""
            continue
        if reason is not None and (m := re.match(r"^  (\S[^(]*?) \(\d+\):\s*$", line)):
            reason = m.group(1)
            continue
        if reason and (m := re.match(r"^\s+- (\S+) \[(server|client)\]\s*$", line)):
            reqs.not_scored[m.group(2)][m.group(1)] = reason
        elif leg is not None and (m := re.match(r"^\s+- (\S+)\s*$", line)):
            reqs.scored[leg].append(m.group(1))
    if not any(reqs.scored.values()):
        raise ValueError(f"no scenarios found in the requirement listing for {revision}")
    return reqs


def load_requirements(node: Path, suite: Path, revision: str) -> RequirementSet:
    out = subprocess.run(
        [str(node), str(suite), "list", "--requirements", revision], check=True, capture_output=True, text=True
    ).stdout
    return parse_requirements_listing(revision, out)
