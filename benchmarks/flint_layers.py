"""Does FLINT gain from earlier layers? flint with and without `flint_layers`, side by side.

Run: python -m benchmarks.flint_layers   (writes benchmarks/results/flint_layers.json)
On the synthetic concept world (the bundled demo classifier), FLINT with default settings reads
the pooled penultimate features alone, then also the pooled outputs of earlier blocks of the
demo CNN. Held-out numbers as in benchmarks/flint.py (accuracy relative to the original,
fidelity@1/@5, CNS(τ=2), dead attributes), plus the fitting time (convert on cached features)
and the extraction time of each layer set, over several seeds so that differences between
layer sets can be told from differences between seeds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import retrofit
from benchmarks.common import machine, write_result
from benchmarks.flint import measure
from benchmarks.heads import world_task

# DemoCNN (retrofit/datasets/demo.py): features.2 is the 48-channel block at 32 px, features.5
# the second 96-channel block at 16 px; the penultimate features are the 160 channels at 8 px
LAYER_SETS = {
    "penultimate": None,
    "+features.5": ["features.5"],
    "+features.2+features.5": ["features.2", "features.5"],
}


def fit_and_measure(model, train, test, layers, cache: str, seed: int) -> dict:
    start = time.perf_counter()
    imodel = retrofit.convert(
        model,
        train,
        method="flint",
        flint_layers=layers,
        cache_dir=cache,
        progress=False,
        seed=seed,
    )
    seconds = time.perf_counter() - start
    return {
        "feature_dim": imodel.bottleneck.in_features,
        "seconds": seconds,
        "revived_attributes": imodel.stats["head"]["history"].get("revived"),
        **measure(imodel, test, cache),
    }


def summary(runs: list[dict]) -> dict:
    """Mean and spread over seeds of the headline numbers."""
    values = {
        "accuracy_relative": [r["accuracy_relative"] for r in runs],
        "fidelity@1": [r["fidelity@1"] for r in runs],
        "fidelity@5": [r["fidelity@5"] for r in runs],
        "cns@2": [r["cns"]["2"] for r in runs],
        "dead_share": [r["dead_share"] for r in runs],
        "seconds": [r["seconds"] for r in runs],
    }
    return {
        name: {"mean": statistics.mean(v), "min": min(v), "max": max(v)}
        for name, v in values.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    measured_on = machine()
    model, train, test = world_task(args.train_images, args.test_images)
    rows = {}
    with tempfile.TemporaryDirectory() as cache:
        for label, layers in LAYER_SETS.items():
            start = time.perf_counter()
            for loader in (train, test):  # fill the cache first: fitting is timed alone
                retrofit.extract(
                    model, loader, cache_dir=cache, progress=False, pooled_layers=layers
                )
            extract_seconds = time.perf_counter() - start
            runs = []
            for seed in range(args.seeds):
                run = fit_and_measure(model, train, test, layers, cache, seed)
                runs.append(run)
                print(
                    label,
                    f"seed {seed} D {run['feature_dim']} acc_rel {run['accuracy_relative']:.4f} "
                    f"fid1 {run['fidelity@1']:.4f} cns2 {run['cns']['2']:.2f} "
                    f"dead {run['dead_share']:.3f} fit {run['seconds']:.1f}s",
                    flush=True,
                )
            rows[label] = {
                "flint_layers": layers,
                "feature_dim": runs[0]["feature_dim"],
                "extract_seconds": extract_seconds,
                "summary": summary(runs),
                "runs": runs,
            }
    results = {
        "settings": vars(args),
        "note": "times were taken on a shared, unevenly loaded machine: compare quality, not time",
        "synthetic_world": rows,
    }
    print("wrote", write_result("flint_layers", results, measured_on))


if __name__ == "__main__":
    main()
