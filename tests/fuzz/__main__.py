"""``python -m tests.fuzz [TARGET ...]``: run fuzz targets for ``FUZZ_SECONDS`` (default 60) seconds each.

Prints one line per target (``fuzz sse: 123456 inputs, 0 failures in 60 s``) and exits 1 when any
target failed (hypothesis prints the shrunk failing input and the traceback above that line).
"""

from __future__ import annotations

import logging
import os
import sys

from tests.fuzz.engine import fuzz
from tests.fuzz.registry import TARGETS


def main(argv: list[str]) -> int:
    seconds = float(os.environ.get("FUZZ_SECONDS", "60"))
    names = argv or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"unknown fuzz target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    # The targets feed the real code odd inputs on purpose: its operator warnings (e.g. "name(s)
    # changed for clients") are expected here, thousands of times, and would bury the statistics.
    logging.getLogger("toolcrib").setLevel(logging.ERROR)
    failed = 0
    for name in names:
        stats = fuzz(TARGETS[name], seconds)
        print(stats.line(), flush=True)
        failed += stats.failures
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
