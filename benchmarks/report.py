"""What every benchmark script shares: timing medians and appending a section to docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HEADER = "# Benchmarks\n\nMeasured figures, each with its command and machine. Appended, never overwritten.\n"


def threads_env(threads: int, **extra: str) -> dict[str, str]:
    """This process's environment with `threads` OpenMP/MKL threads (and `extra` variables): for runs side by
    side, one thread each, so two 2-thread runs do not oversubscribe 2 cores and make each other's timings lie."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **extra}


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """One warm-up call, then the median wall time of `repeats` calls, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def append_markdown(path: str | Path, text: str) -> Path:
    """Append a section (creating the file with its header when missing); never overwrites."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(HEADER, encoding="utf-8")
    with path.open("a", encoding="utf-8") as f:
        f.write("\n" + text.rstrip("\n") + "\n")
    return path


def config_notes(config: Path | None) -> tuple[str, str]:
    """For a run with `--config FILE` (None: none): the heading's " with `--config NAME`" and the plan
    line's "; config {...}" (the file's JSON), so an entry says which plan choices were pinned."""
    if config is None:
        return "", ""
    return f" with `--config {config.name}`", f"; config {config.read_text().strip()}"


def publish(path: str | Path, lines: list[str]) -> str:
    """The section of `lines`, appended to `path` (`append_markdown`) and printed."""
    text = "\n".join(lines)
    append_markdown(path, text)
    print(text)
    return text


def write_results(folder: Path, result: dict[str, Any], rescored: bool, suffix: str = "") -> Path:
    """`result` as JSON in a run folder: `results.json` for the run's own scoring, `results-scored.json`
    when an earlier run is re-scored (its training's `results.json` is kept); `suffix` names a variant
    of the re-score (`results-scored-flips.json`)."""
    path = Path(folder) / (f"results-scored{suffix}.json" if rescored else "results.json")
    path.write_text(json.dumps(result, indent=2))
    return path
