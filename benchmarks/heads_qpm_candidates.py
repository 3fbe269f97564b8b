"""QPM at ImageNet scale: how many candidate features the program should choose from.

The concept world of heads_qpm_scale with 1,000 classes (600 concepts, 10 images per class,
2,048 features), n_features 50, per_class 5, CBC on 2 threads with a 60 s budget. For each
candidate count: the whole qpm head (constants, pre-selection, clique threshold, local search,
program) timed, the objective of the returned head, the solver's bound (over the candidates
only) and its status. The default count (see default_candidate_count) is the 600 row; 2,000
was the default before the cap. Writes benchmarks/results/heads_qpm_candidates.json.

    python benchmarks/heads_qpm_candidates.py
"""

from __future__ import annotations

import json
import time
import warnings

import torch

from benchmarks.common import machine, write_result
from benchmarks.heads_qpm_scale import SOLVER_PACKAGES, concept_world
from retrofit.config import RetrofitConfig
from retrofit.methods.qpm.constants import default_candidate_count
from retrofit.methods.qpm.head import fit_qpm

COUNTS = (400, 600, 1000, 2000)
TIME_LIMIT = 60.0


def main() -> None:
    torch.set_num_threads(2)
    measured_on = machine(SOLVER_PACKAGES)
    features, labels = concept_world(n_classes=1000, n_concepts=600, per_class_images=10)
    n_classes, dim = int(labels.max()) + 1, int(features.shape[1])
    runs = []
    for count in COUNTS:
        config = RetrofitConfig(
            n_features=50,
            per_class=5,
            solver="cbc",
            threads=2,
            time_limit=TIME_LIMIT,
            seed=0,
            progress=False,
            qpm={"candidates": count},
        )
        began = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stats = fit_qpm(features, labels, config).stats
        keys = ("n_candidates", "n_pairs", "n_variables", "start_objective", "objective")
        runs.append(
            {
                **{key: stats[key] for key in keys},
                **{key: stats[key] for key in ("bound", "gap", "status", "time")},
                "total_time_s": time.perf_counter() - began,
                "warnings": [str(w.message) for w in caught],
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    report = {
        "benchmark": "heads_qpm_candidates",
        "data": {"n_images": int(features.shape[0]), "dim": dim, "n_classes": n_classes},
        "settings": {"n_features": 50, "per_class": 5, "solver": "cbc", "time_limit_s": TIME_LIMIT},
        "default_count": default_candidate_count(50, n_classes, dim),
        "runs": runs,
    }
    write_result("heads_qpm_candidates", report, measured_on)


if __name__ == "__main__":
    main()
