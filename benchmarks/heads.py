"""Interpretable heads: accuracy retention against the dense probe, and peak memory.

Run: python -m benchmarks.heads   (writes benchmarks/results/heads.json)
1. Accuracy retention on the synthetic concept world (50 classes, the bundled demo classifier)
   and on scikit-learn's digits (a small CNN trained here): test accuracy of qpm, qsenn and
   sparse with 5 features per class, relative to the dense linear probe on the same features,
   for finetune="none", "bottleneck" (the default: a learned linear mix of the penultimate
   channels) and "bottleneck" with linear_mix=False (each feature stays one backbone channel,
   only its scale and shift are trained). For the mix, the median correlation of each
   feature with the channel it started from says how far the features moved.
2. Peak memory of selection + fitting relative to the size of the cached features, each method
   in a fresh subprocess: resident memory sampled every 5 ms during the fit, minus the
   resident memory just before it (features already loaded). Measured on the world's small
   cache (5000 x 160, where fixed overheads dominate) and on a 20x larger synthetic cache
   (40,000 x 512, 100 classes) to show how the footprint scales with the cache.
The glm-saga peer comparison is benchmarks/heads_peer.py; QPM at CUB scale is
benchmarks/heads_qpm_scale.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from benchmarks.common import RESULTS, write_result

METHODS = ("qpm", "qsenn", "sparse")
VARIANTS = {
    "none": {"finetune": "none"},
    "bottleneck": {"finetune": "bottleneck"},
    "bottleneck_scale_only": {"finetune": "bottleneck", "linear_mix": False},
}


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits upsampled to 16x16; 128 penultimate features."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def digits_task(seed: int = 0) -> tuple[nn.Module, DataLoader, DataLoader]:
    """Train the digits CNN (seeded) on 75 % of sklearn's digits; loaders for train and test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=16, mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(0.75 * len(labels))
    train, test = order[:cut], order[cut:]
    torch.manual_seed(seed)
    model = DigitsCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for batch in torch.split(train[torch.randperm(len(train))], 64):
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    make = lambda idx: DataLoader(TensorDataset(images[idx], labels[idx]), batch_size=256)  # noqa: E731
    return model, make(train), make(test)


def world_task(n_train: int, n_test: int) -> tuple[nn.Module, DataLoader, DataLoader]:
    from retrofit.datasets import SyntheticConceptDataset, demo_world_settings, load_demo_classifier

    settings = demo_world_settings()
    world = {k: settings[k] for k in ("n_classes", "image_size", "seed")}
    train = SyntheticConceptDataset(n_train, split="train", **world)
    test = SyntheticConceptDataset(n_test, split="test", **world)
    return (
        load_demo_classifier(),
        DataLoader(train, batch_size=256),
        DataLoader(test, batch_size=256),
    )


def retention(name: str, task: tuple, cache: str, time_limit: float) -> dict:
    model, train, test = task
    common = {"cache_dir": cache, "progress": False, "time_limit": time_limit, "seed": 0}
    start = time.perf_counter()
    dense = retrofit.convert(model, train, test, method="dense", finetune="none", **common)
    rows = {
        "dense": {
            "test_accuracy": dense.stats["val"]["accuracy"],
            "seconds": time.perf_counter() - start,
        }
    }
    rows["original_model"] = {"test_accuracy": dense.stats["val"]["original_accuracy"]}
    for method in METHODS:
        for variant, settings in VARIANTS.items():
            start = time.perf_counter()
            imodel = retrofit.convert(model, train, test, method=method, **settings, **common)
            accuracy = imodel.stats["val"]["accuracy"]
            row = {
                "test_accuracy": accuracy,
                "relative_to_dense": accuracy / rows["dense"]["test_accuracy"],
                "features_used": int((imodel.head.weight != 0).any(dim=0).sum()),
                "nonzeros_per_class": float((imodel.head.weight != 0).sum() / imodel.num_classes),
                "seconds": time.perf_counter() - start,
            }
            if imodel.bottleneck.mix is not None and settings["finetune"] != "none":
                row["median_correlation_with_start_channel"] = _start_channel_correlation(
                    imodel, test, cache
                )
            rows[f"{method}/{variant}"] = row
            print(name, method, variant, round(accuracy, 4), round(row["relative_to_dense"], 4))
    return rows


@torch.no_grad()
def _start_channel_correlation(
    imodel: retrofit.InterpretableModel, loader: DataLoader, cache: str
) -> float:
    """Median corr(mixed feature j, the channel it was initialised to) over the features the
    head uses whose starting channel varies (dead ReLU channels have no correlation)."""
    x = retrofit.extract(imodel.backbone, loader, cache_dir=cache, progress=False).features
    used = (imodel.head.weight != 0).any(dim=0)
    mixed = imodel.bottleneck.transform(x)[:, used]
    start = x[:, imodel.bottleneck.selected[used]]
    n = mixed.shape[1]
    corr = torch.corrcoef(torch.cat([mixed, start], dim=1).T)[:n, n:].diagonal()
    return float(corr[start.std(dim=0) > 0].median())


MEMORY_CHILD = """
import json, os, sys, threading, time
from safetensors.torch import load_file
from retrofit.config import RetrofitConfig
from retrofit.methods.base import get_head

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

data = load_file(sys.argv[1])
x, y = data["features"], data["labels"]
baseline, peak, done = rss(), [0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)

thread = threading.Thread(target=sample)
thread.start()
get_head(sys.argv[2])(x, y, RetrofitConfig(method=sys.argv[2], progress=False, time_limit=60.0))
done.set()
thread.join()
print(json.dumps({"peak_growth_bytes": max(0, peak[0] - baseline), "feature_bytes": x.numel() * 4}))
"""


def peak_memory(features_file: Path) -> dict:
    rows = {}
    for method in ("dense", *METHODS):
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, str(features_file), method],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["ratio_to_features"] = row["peak_growth_bytes"] / row["feature_bytes"]
        rows[method] = row
        print("memory", method, round(row["ratio_to_features"], 2))
    return rows


def _save_features(features: torch.Tensor, labels: torch.Tensor, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({"features": features.contiguous(), "labels": labels.contiguous()}, str(path))
    return path


def _world_features(args: argparse.Namespace, cache: str) -> Path:
    """The world's training features as a safetensors file for the memory subprocesses."""
    model, train, _ = world_task(args.train_images, 1)
    feats = retrofit.extract(model, train, cache_dir=cache, progress=False)
    return _save_features(feats.features, feats.labels, Path(cache) / "world_features.safetensors")


def _large_features(cache: str, n: int = 40_000, dim: int = 512, classes: int = 100) -> Path:
    """Seeded non-negative class-mean + noise features, shaped like a large pooled cache."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(classes, (n,), generator=g)
    means = torch.rand(classes, dim, generator=g) * (torch.rand(classes, dim, generator=g) < 0.1)
    features = torch.relu(3 * means[labels] + torch.randn(n, dim, generator=g))
    return _save_features(features, labels, Path(cache) / "large_features.safetensors")


def memory_results(args: argparse.Namespace, cache: str) -> dict:
    return {
        "peak_memory": peak_memory(_world_features(args, cache)),
        "peak_memory_large": peak_memory(_large_features(cache)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--memory-only", action="store_true", help="redo part 2 only, keep part 1")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.memory_only:
        previous = json.loads((RESULTS / "heads.json").read_text())
        previous.pop("machine", None)
        with tempfile.TemporaryDirectory() as cache:
            previous.update(memory_results(args, cache))
        print("wrote", write_result("heads", previous))
        return
    results: dict = {
        "settings": vars(args),
        "target": 'each method >= 0.97 of dense with 5 per class, finetune="bottleneck" (the default)',
    }
    with tempfile.TemporaryDirectory() as cache:
        world = world_task(args.train_images, args.test_images)
        results["synthetic_world"] = retention("world", world, cache, args.time_limit)
        results["digits"] = retention("digits", digits_task(), cache, args.time_limit)
        results.update(memory_results(args, cache))
    results["rusage_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("wrote", write_result("heads", results))


if __name__ == "__main__":
    main()
