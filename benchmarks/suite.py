"""Every benchmark, the results it writes, the stages it measures and how it is rerun.

One entry per benchmark module. `python -m benchmarks all` runs each entry's full runs and
`--quick` its quick runs (written to a scratch folder: quick figures are a smoke test, never a
result). A results file is *stale* when a file of the stages it measures changed after the
commit the file records (or when it records none): `python -m benchmarks status` and the
docs' benchmark page say so instead of presenting it as current.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Benchmark:
    """A benchmark module: its runs (argument lists), results stems and measured stages."""

    name: str
    stages: tuple[str, ...]
    runs: tuple[tuple[str, ...], ...] = ((),)
    quick: tuple[tuple[str, ...], ...] = ()
    results: tuple[str, ...] = ()
    summary: str = ""

    @property
    def module(self) -> str:
        return f"benchmarks.{self.name}"

    def result_stems(self) -> tuple[str, ...]:
        return self.results or (self.name,)


_CORE = (
    "retrofit/extraction/features.py",
    "retrofit/extraction/hooks.py",
    "retrofit/extraction/cache.py",
    "retrofit/extraction/streaming.py",
    "retrofit/extraction/pooled_layers.py",
)
_HEADS = (
    "retrofit/methods",
    "retrofit/solvers",
    "retrofit/fitting/bottleneck.py",
    "retrofit/fitting/convert.py",
    "retrofit/settings.py",
)
_CHECK = ("retrofit/check",)
_NAMES = ("retrofit/concepts",)

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "extract",
        _CORE,
        quick=(("--images", "32", "--repeats", "1"),),
        summary="extract / a bare forward loop",
    ),
    Benchmark(
        "heads",
        _CORE + _HEADS,
        quick=(("--train-images", "500", "--test-images", "200", "--time-limit", "5"),),
        summary="accuracy of every head / the dense probe",
    ),
    Benchmark(
        "heads_peer",
        ("retrofit/methods/sparse/head.py", "retrofit/solvers"),
        quick=(("--quick",),),
        summary="our elastic-net path / glm-saga",
    ),
    Benchmark(
        "heads_qpm_scale",
        ("retrofit/methods/qpm/head.py", "retrofit/solvers"),
        runs=((), ("--max-mix", "1"), ("--max-mix", "2"), ("--value-only",)),
        quick=(("--quick", "--time-limit", "10"),),
        results=(
            "heads_qpm_scale",
            "heads_qpm_scale_mix1",
            "heads_qpm_scale_mix2",
            "heads_qpm_scale_value_only",
            "heads_qpm_scale_t1800",
            "heads_qpm_scale_t3000",
            "heads_qpm_scale_highs_t1200",
        ),
        summary="QPM's optimality gap at CUB scale",
    ),
    Benchmark(
        "heads_qpm_candidates",
        ("retrofit/methods/qpm/head.py", "retrofit/solvers"),
        summary="QPM at ImageNet scale by candidate count",
    ),
    Benchmark(
        "export",
        ("retrofit/export", "retrofit/model/interpretable.py"),
        quick=(("--images", "64", "--repeats", "3", "--io-repeats", "1"),),
        summary="inference / the original model; export size and exactness",
    ),
    Benchmark(
        "check",
        _CHECK,
        quick=(
            (
                "--images",
                "64",
                "--train-images",
                "300",
                "--max-pixel-images",
                "4",
                "--repeats",
                "1",
            ),
        ),
        summary="the full check / one forward pass",
    ),
    Benchmark(
        "concepts",
        _NAMES,
        quick=(("--probe", "500", "--repeats", "1"),),
        summary="naming top-1 / top-3 against planted concepts",
    ),
    Benchmark("demo", ("retrofit",), summary="`retrofit demo` wall time"),
    Benchmark(
        "explanation_truth",
        _NAMES + _HEADS,
        runs=(
            ("--worlds", "demo", "--name", "explanation_truth_demo"),
            ("--worlds", "world2", "--name", "explanation_truth_world2"),
            ("--worlds", "world3", "--name", "explanation_truth_world3"),
            ("--worlds", "world4", "--name", "explanation_truth_world4"),
            ("--worlds", "demo", "--methods", "flint", "--name", "explanation_truth_flint"),
        ),
        quick=(("--quick", "--train-images", "1000", "--test-images", "400"),),
        results=(
            "explanation_truth_demo",
            "explanation_truth_world2",
            "explanation_truth_world3",
            "explanation_truth_world4",
            "explanation_truth_flint",
        ),
        summary="class-conditional names against each class's true concepts",
    ),
    Benchmark(
        "flint",
        (
            "retrofit/methods/flint/head.py",
            "retrofit/methods/flint/attributes.py",
            "retrofit/methods/flint/losses.py",
            "retrofit/methods/flint/settings.py",
        ),
        quick=(
            (
                "--worlds",
                "demo",
                "--train-images",
                "500",
                "--test-images",
                "200",
                "--time-limit",
                "5",
            ),
        ),
        summary="FLINT accuracy, fidelity and conciseness",
    ),
    Benchmark(
        "flint_layers",
        ("retrofit/methods/flint/head.py", "retrofit/methods/flint/attributes.py"),
        quick=(("--train-images", "500", "--test-images", "200", "--seeds", "1"),),
        summary="FLINT reading earlier layers",
    ),
    Benchmark(
        "consistency",
        (
            "retrofit/check/consistency.py",
            "retrofit/check/background_swap.py",
            "retrofit/consistency_settings.py",
            "retrofit/fitting/reweight.py",
            "retrofit/fitting/counterfactual.py",
            "retrofit/check/reliance.py",
        ),
        runs=((), ("--part", "swap"), ("--part", "repair")),
        quick=(
            (
                "--seeds",
                "0",
                "--train-images",
                "200",
                "--test-images",
                "100",
                "--reweight-images",
                "100",
                "--rounds",
                "1",
            ),
        ),
        summary="explanation consistency of a shortcut model and its control",
    ),
    Benchmark(
        "encoder_cost",
        _NAMES,
        quick=(("--quick", "--repeats", "1"),),
        summary="naming's encoder pass, ViT-B-32 / the tiny CLIP",
    ),
    Benchmark(
        "inv",
        ("retrofit/inv",),
        quick=(("--images", "20", "--repeats", "1"),),
        summary="cluster-map IoU and the reveal game",
    ),
    Benchmark(
        "edit",
        ("retrofit/editing/apply.py", "retrofit/editing/parse.py", "retrofit/editing/file.py"),
        quick=(("--train-images", "500", "--test-images", "200"),),
        summary="forbidding background features: accuracy and cost",
    ),
    Benchmark(
        "scale",
        _CORE + _HEADS + _CHECK,
        runs=((), ("--parts", "check", "--merge")),
        quick=(
            (
                "--rows",
                "2000",
                "--qsenn-rows",
                "1000",
                "--dist-rows",
                "2000",
                "--half-rows",
                "2000",
                "--check-rows",
                "--split-rows",
                "500",
                "--dense-rows",
                "2000",
                "--time-limit",
                "5",
            ),
        ),
        summary="memory growth and time at 1,000 classes",
    ),
)


def by_name() -> dict[str, Benchmark]:
    return {b.name: b for b in BENCHMARKS}


def recorded_commit(stem: str, results: Path | None = None) -> str | None:
    """The commit results/STEM.json says it was produced at ("+dirty" stripped)."""
    path = (results or COMMITTED_RESULTS) / f"{stem}.json"
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text()).get("commit")
    return recorded.split("+")[0] if isinstance(recorded, str) and recorded else None


def freshness(benchmark: Benchmark, stem: str, results: Path | None = None) -> str:
    """ "current", "stale (...)" or "missing": whether results/STEM.json still measures HEAD."""
    if not ((results or COMMITTED_RESULTS) / f"{stem}.json").is_file():
        return "missing"
    commit = recorded_commit(stem, results)
    if commit is None:
        return "stale (records no commit)"
    try:
        changed = subprocess.run(
            ["git", "diff", "--name-only", commit, "HEAD", "--", *benchmark.stages],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "stale (its commit is not in this clone)"
    return f"stale ({len(changed)} stage files changed since)" if changed else "current"
