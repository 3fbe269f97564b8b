"""Helpers shared by the benchmark scripts: machine facts, medians, writing results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

# `python -m benchmarks all --quick` points this at a scratch folder: quick runs are smoke tests
RESULTS = Path(os.environ.get("RETROFIT_BENCHMARK_RESULTS") or Path(__file__).parent / "results")


def machine(packages: Iterable[str] = ()) -> dict[str, Any]:
    """What the numbers were measured on; `packages` adds their installed versions."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }
    return info | {name: _version(name) for name in packages}


def commit() -> str | None:
    """The git commit the numbers were measured at (with "+dirty" for uncommitted changes)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            # results files rewritten by earlier benchmarks of the same run do not count
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!benchmarks/results",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_medians(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each variant, run in rotating order so drift hits all alike."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for round_index in range(repeats):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            times[name].append(timed(variants[name]))
    return {n: statistics.median(t) for n, t in times.items()}


def write_result(name: str, payload: dict[str, Any], measured_on: dict | None = None) -> Path:
    """Write results/NAME.json atomically (a crash keeps the old file).

    `measured_on` is machine() taken when the run began; by default it is taken now. Every
    file records the commit the process started at (its code) and the command (its settings).
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    report = {
        "machine": measured_on or machine(),
        **payload,
        "commit": STARTED_AT,
        "command": " ".join(["python -m", _module_name(), *sys.argv[1:]]),
    }
    tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
    tmp.replace(path)
    return path


# the commit a benchmark process started at: its code, even if the checkout moves on mid-run
STARTED_AT = commit()


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem
