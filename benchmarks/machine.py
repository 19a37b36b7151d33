"""The machine a benchmark ran on, for report headers."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    """One markdown line: cores, CPU, OS, Python, date."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Machine: {len(os.sched_getaffinity(0))} cores (nproc), {cpu_model()}, "
        f"{platform.system()} {platform.release()}, Python {sys.version.split()[0]}; run {now}."
    )
