"""Helpers shared by the benchmarks: machine description, percentiles, BENCHMARKS.md sections."""

from __future__ import annotations

import math
import os
import platform
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    k = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[k]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


def machine_line() -> str:
    packages = ", ".join(f"{p} {_version(p)}" for p in ("torch", "transformers", "peft", "redis", "langchain-core"))
    return (f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; {packages}.")


def record_section(title: str, body: str) -> None:
    """Append one results section to BENCHMARKS.md (newest last; older runs stay for comparison)."""
    existing = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    BENCHMARKS.write_text(existing.rstrip() + f"\n\n## {title}\n\n{body}")
