"""Peer benchmark: retrofit's elastic-net path against glm-saga, the reference path solver.

Both solve the same objective (mean cross-entropy + λα‖W‖₁ + ½λ(1−α)‖W‖², α = 0.99) on the same
standardised synthetic features over the same λ path, one after the other in this process, with
the same thread count, tolerance (1e-4), lookbehind (5) and cap on passes over the data per λ.
Reported: wall-time ratio ours / glm-saga, the objective each reaches at every λ, and the test
accuracy at equal sparsity budgets. glm-saga is a peer, not a dependency:

    /work/venv/bin/pip install glm-saga
    /work/venv/bin/python benchmarks/heads_peer.py            # writes benchmarks/results/heads_peer.json
    /work/venv/bin/python benchmarks/heads_peer.py --quick    # a smaller smoke run, prints only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import sys
import time

import torch
from torch.utils.data import DataLoader

from benchmarks.common import write_result
from retrofit.solvers.elastic_net import elastic_net_path, lambda_max, lambda_path, select_features
from retrofit.solvers.stats import standardise

ALPHA = 0.99
TOL = 1e-4
LOOKBEHIND = 5
GLM_SAGA_LR = 0.1  # glm-saga's usual max_lr
GLM_SAGA_BATCH = 256


def synthetic(n_train: int, n_test: int, d: int, c: int, seed: int = 0):
    """Correlated non-negative 'penultimate features'; each class raises 3 of the first 60 features."""
    g = torch.Generator().manual_seed(seed)
    shifts = torch.zeros(c, d)
    for k in range(c):
        shifts[k, torch.randperm(60, generator=g)[:3]] = 1.5 + torch.rand(3, generator=g)
    mixing = torch.eye(d) + 0.15 * torch.randn(d, 8, generator=g) @ torch.randn(
        8, d, generator=g
    ) / math.sqrt(8)
    n = n_train + n_test
    y = torch.randint(0, c, (n,), generator=g)
    x = torch.relu((torch.randn(n, d, generator=g) + shifts[y]) @ mixing)
    train, mean, std = standardise(x[:n_train])
    return train, y[:n_train], (x[n_train:] - mean) / std, y[n_train:]


def objective(x, y, w, b, lam):
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(x.double() @ w.double().T + b.double(), y).item()
    return (
        loss
        + lam * ALPHA * w.abs().sum().item()
        + 0.5 * lam * (1 - ALPHA) * w.double().square().sum().item()
    )


def accuracy(x, y, w, b):
    return float((torch.addmm(b, x, w.T).argmax(dim=1) == y).float().mean())


def run_ours(x, y, lams, max_epochs):
    start = time.perf_counter()
    path = elastic_net_path(
        x, y, alpha=ALPHA, lambdas=lams, tol=TOL, lookbehind=LOOKBEHIND, max_iter=max_epochs
    )
    seconds = time.perf_counter() - start
    return seconds, [(p.weight, p.bias) for p in path], [p.iterations for p in path]


def run_glm_saga(x, y, c, k, epsilon, max_epochs, seed):
    from glm_saga.elasticnet import IndexedTensorDataset, glm_saga

    loader = DataLoader(
        IndexedTensorDataset(x, y),
        batch_size=GLM_SAGA_BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    linear = torch.nn.Linear(x.shape[1], c)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):  # glm-saga prints its progress
        out = glm_saga(
            linear,
            loader,
            GLM_SAGA_LR,
            max_epochs,
            ALPHA,
            k=k,
            epsilon=epsilon,
            tol=TOL,
            lookbehind=LOOKBEHIND,
            do_zero=False,
            n_classes=c,
        )
    seconds = time.perf_counter() - start
    epochs = []  # glm-saga reports passes only in its log: one stop line per λ
    for line in log.getvalue().splitlines():
        if "early stop at " in line:
            epochs.append(int(line.split("early stop at ")[1].split("]")[0]) + 1)
        elif "did not converge" in line:
            epochs.append(max_epochs)
    return (
        seconds,
        [(p["weight"], p["bias"]) for p in out["path"]],
        [float(p["lam"]) for p in out["path"]],
        epochs,
    )


def densest_within(points, budget):
    """Index of the path point with the most non-zeros not above `budget`."""
    within = [
        (int((w != 0).sum()), i) for i, (w, _) in enumerate(points) if int((w != 0).sum()) <= budget
    ]
    return max(within)[1]


def machine_info(threads):
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu
        )
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "device": "cpu",
        "glm_saga": _version("glm-saga"),
    }


def _version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small smoke run; prints, writes nothing"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both solvers")
    parser.add_argument("--k", type=int, default=10, help="path length (log-spaced λ)")
    parser.add_argument(
        "--max-epochs", type=int, default=200, help="cap on passes over the data per λ"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_train, n_test, d, c, k = (
        (1000, 500, 64, 10, 4) if args.quick else (5000, 2000, 256, 50, args.k)
    )
    epsilon, seed = 1e-3, 0
    x, y, x_test, y_test = synthetic(n_train, n_test, d, c, seed)

    lam_max = lambda_max(x, y, ALPHA)
    lams = lambda_path(lam_max, k, epsilon, include_zero=False)
    ours_s, ours, ours_iters = run_ours(x, y, lams, args.max_epochs)
    peer_s, peer, peer_lams, peer_epochs = run_glm_saga(x, y, c, k, epsilon, args.max_epochs, seed)
    lam_diff = max(abs(a - b) / a for a, b in zip(lams, peer_lams))

    per_lambda = []
    for i, lam in enumerate(lams):
        row = {"lambda": lam}
        for name, points in (("ours", ours), ("glm_saga", peer)):
            w, b = points[i]
            row[name] = {
                "objective": objective(x, y, w, b, lam),
                "nnz": int((w != 0).sum()),
                "train_acc": accuracy(x, y, w, b),
                "test_acc": accuracy(x_test, y_test, w, b),
            }
        row["ours"]["iterations"] = ours_iters[i]
        if i < len(peer_epochs):
            row["glm_saga"]["epochs"] = peer_epochs[i]
        per_lambda.append(row)

    equal_sparsity = []
    for per_class in (1, 2, 5, 10):
        budget = per_class * c
        entry = {"per_class": per_class, "budget_nnz": budget}
        for name, points in (("ours", ours), ("glm_saga", peer)):
            j = densest_within(points, budget)
            w, b = points[j]
            entry[name] = {
                "lambda": lams[j],
                "nnz": int((w != 0).sum()),
                "test_acc": accuracy(x_test, y_test, w, b),
            }
        equal_sparsity.append(entry)

    start = time.perf_counter()
    select_features(x, y, 50)
    select_s = time.perf_counter() - start

    result = {
        "benchmark": "elastic-net path: retrofit (full-batch FISTA, working set) vs glm-saga (minibatch SAGA)",
        "machine": machine_info(args.threads),
        "data": {
            "kind": "synthetic planted, correlated, standardised",
            "n_train": n_train,
            "n_test": n_test,
            "d": d,
            "c": c,
            "seed": seed,
        },
        "settings": {
            "alpha": ALPHA,
            "k": k,
            "epsilon": epsilon,
            "include_zero": False,
            "tol": TOL,
            "lookbehind": LOOKBEHIND,
            "max_epochs_per_lambda": args.max_epochs,
            "glm_saga_lr": GLM_SAGA_LR,
            "glm_saga_batch": GLM_SAGA_BATCH,
        },
        "lambda_path_max_rel_diff": lam_diff,
        "seconds": {"ours": ours_s, "glm_saga": peer_s},
        "time_ratio_ours_over_glm_saga": ours_s / peer_s,
        "objective_sum": {
            "ours": sum(r["ours"]["objective"] for r in per_lambda),
            "glm_saga": sum(r["glm_saga"]["objective"] for r in per_lambda),
        },
        "lambdas_where_ours_objective_is_lower": sum(
            r["ours"]["objective"] <= r["glm_saga"]["objective"] + 1e-6 for r in per_lambda
        ),
        "per_lambda": per_lambda,
        "equal_sparsity": equal_sparsity,
        "ours_select_50_features_seconds": select_s,
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        write_result("heads_peer", result, result["machine"])
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
