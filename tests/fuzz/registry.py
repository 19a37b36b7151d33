"""Every fuzz target by name."""

from __future__ import annotations

from tests.fuzz import target_body, target_importer, target_names, target_policy, target_sse
from tests.fuzz.engine import Target

TARGETS: dict[str, Target] = {
    t.TARGET.name: t.TARGET for t in (target_body, target_sse, target_policy, target_names, target_importer)
}
