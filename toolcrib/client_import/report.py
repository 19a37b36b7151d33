"""What ``toolcrib import`` did, item by item: the report printed after the TOML is written.

Every input server ends in exactly one of ``converted`` or ``skipped``; every literal secret (or
client-side variable) replaced by a ``secret:`` reference is in ``secrets``; every server whose name
changed is in ``renamed``; everything else a user should know (a field that has no toolcrib
equivalent, a unit converted, a variable expanded) is a ``note``. No entry holds a secret value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from toolcrib.gateway.trust.secrets import env_var_name


@dataclass(frozen=True)
class MovedSecret:
    server: str
    where: str  # "env.API_KEY", "args[3]", "url", "headers.Authorization"
    ref: str  # "secret:server/name"
    origin: str  # "a literal", "VS Code input 'x'", "$GITHUB_TOKEN", ...

    def how(self) -> str:
        """How to store it; a secret the client read from ``$VAR`` maps to ``TOOLCRIB_SECRET_NS_NAME="$VAR"``."""
        ns_name = self.ref.split(":", 1)[1]
        from_env = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)", self.origin)
        value = f'="${from_env.group(1)}"' if from_env else ""
        return f"`toolcrib creds set {ns_name.replace('/', ' ')}` or export {env_var_name(self.ref)}{value}"


@dataclass
class Report:
    converted: list[tuple[str, str]] = field(default_factory=list)  # (name, kind)
    secrets: list[MovedSecret] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (raw name repr, reason)
    renamed: list[tuple[str, str, str]] = field(default_factory=list)  # (raw name repr, new name, why)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (server, text)

    def note(self, server: str, text: str) -> None:
        self.notes.append((server, text))

    def lines(self) -> list[str]:
        """One line per item, grouped: converted, secrets, renamed, skipped, notes."""
        out = [f"converted {name} ({kind})" for name, kind in self.converted]
        out += [
            f"moved {s.origin} out of {s.server}.{s.where} -> {s.ref}; store it with {s.how()}" for s in self.secrets
        ]
        out += [f"renamed {raw} -> {new} ({why})" for raw, new, why in self.renamed]
        out += [f"skipped {raw}: {why}" for raw, why in self.skipped]
        out += [f"note {server}: {text}" for server, text in self.notes]
        return out

    def summary(self) -> str:
        return (
            f"{len(self.converted)} converted, {len(self.secrets)} moved to secrets, "
            f"{len(self.renamed)} renamed, {len(self.skipped)} skipped, {len(self.notes)} notes"
        )
