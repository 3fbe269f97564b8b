"""Human edits on the demo world: take the background features away and measure what it costs.

Run: python -m benchmarks.edit   (writes benchmarks/results/edit.json)
The bundled demo CNN is converted with qpm (the demo's settings: 50 features, 5 per class,
30 s solver limit) on the synthetic concept world. The world knows every image's concepts, so
a feature is a background feature when the concept its activation correlates with most (on
the training images) is one of the five backgrounds. Three edits:
- forbid_spurious: forbid every background feature for every class whose definition has no
  background (for the few classes defined by a background, it is signal, not a shortcut);
- drop: drop every background feature (the program refills the slots from unused channels);
- drop_without_refill: the same, the slots left unused (no class may read them).
Reported per edit: test accuracy and fidelity (agreement with the original CNN) before and
after, background reliance before and after (accuracy on the same test scenes with their
backgrounds shuffled among images, on the classes whose definition has no background, and
the share of head weight on background features), the diff's size, and the edit's time
(solve + bottleneck refit + re-check of accuracy and fidelity on the cached train and test
features) relative to the original conversion, measured cold (extraction included) and
warm (features already cached), side by side in one run. Target: edit <= 10 % of conversion.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

import retrofit
from benchmarks.common import machine, write_result
from retrofit.datasets import SyntheticConceptDataset, demo_world_settings, load_demo_classifier
from retrofit.datasets.synthetic import BACKGROUNDS

SETTINGS = {"method": "qpm", "n_features": 50, "per_class": 5, "time_limit": 30.0, "seed": 0}


def background_features(
    imodel: retrofit.InterpretableModel, features: torch.Tensor, dataset: SyntheticConceptDataset
) -> list[int]:
    """Features whose best-correlated ground-truth concept is a background."""
    z = imodel.bottleneck.transform(features.to(imodel.head.weight.device)).cpu()
    concepts = dataset.concepts.float()
    zc = (z - z.mean(0)) / z.std(0).clamp_min(1e-6)
    cc = (concepts - concepts.mean(0)) / concepts.std(0).clamp_min(1e-6)
    corr = zc.T @ cc / len(z)
    best = corr.argmax(dim=1).tolist()
    names = dataset.concept_names
    return [j for j, k in enumerate(best) if names[k] in BACKGROUNDS]


def shuffled_backgrounds(dataset: SyntheticConceptDataset, seed: int) -> SyntheticConceptDataset:
    """The same scenes with their backgrounds permuted among images (objects untouched)."""
    shuffled = copy.copy(dataset)
    table = dataset._images.copy()
    table[:, 0] = np.random.default_rng(seed).permutation(table[:, 0])
    shuffled._images = table
    return shuffled


@torch.no_grad()
def accuracy(
    imodel: retrofit.InterpretableModel, fs: retrofit.FeatureSet, classes: torch.Tensor
) -> float:
    predicted = imodel.forward_features(fs.features.to(imodel.head.weight.device)).argmax(1).cpu()
    keep = classes[fs.labels]
    return float((predicted[keep] == fs.labels[keep]).float().mean())


def reliance(
    imodel: retrofit.InterpretableModel,
    test: retrofit.FeatureSet,
    shuffled: retrofit.FeatureSet,
    plain: torch.Tensor,
    background: list[int],
) -> dict[str, float]:
    """Accuracy on clean and background-shuffled scenes, for the classes defined without a
    background (plain) and with one, and the plain classes' head weight on background features."""
    weight = imodel.head.weight.abs().cpu()
    out: dict[str, float] = {"n_background_features": len(background)}
    for group, classes in (("plain_classes", plain), ("background_classes", ~plain)):
        clean, mixed = accuracy(imodel, test, classes), accuracy(imodel, shuffled, classes)
        out[f"{group}_accuracy"] = clean
        out[f"{group}_shuffled_background_accuracy"] = mixed
        out[f"{group}_drop_under_shuffling"] = clean - mixed
    plain_rows = weight[plain]
    out["plain_classes_weight_share_on_background_features"] = float(
        plain_rows[:, background].sum() / plain_rows.sum()
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--test-images", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    measured_on = machine(["mip"])
    world = {k: demo_world_settings()[k] for k in ("n_classes", "image_size", "seed")}
    train_set = SyntheticConceptDataset(args.train_images, split="train", **world)
    test_set = SyntheticConceptDataset(args.test_images, split="test", **world)
    model = load_demo_classifier()
    loader = lambda d: DataLoader(d, batch_size=256)  # noqa: E731
    with tempfile.TemporaryDirectory() as cache:
        common = {**SETTINGS, "cache_dir": cache, "progress": False}
        began = time.perf_counter()
        imodel = retrofit.convert(model, loader(train_set), **common)
        cold = time.perf_counter() - began
        began = time.perf_counter()
        retrofit.convert(model, loader(train_set), **common)  # same features, now cached
        warm = time.perf_counter() - began
        extract = lambda d: retrofit.extract(model, loader(d), cache_dir=cache, progress=False)  # noqa: E731
        train, test = extract(train_set), extract(test_set)
    shuffled = retrofit.extract(model, loader(shuffled_backgrounds(test_set, 0)), progress=False)
    signature_backgrounds = train_set.class_signatures[
        :, [train_set.concept_names.index(b) for b in BACKGROUNDS]
    ].any(dim=1)
    plain = ~signature_backgrounds
    background = background_features(imodel, train.features, train_set)
    print(f"{len(background)} background features; {int(plain.sum())} classes without background")
    edits = {
        "forbid_spurious": [
            {"op": "forbid", "class": c, "feature": j}
            for c in torch.nonzero(plain).flatten().tolist()
            for j in background
            if imodel.head.weight[c, j] != 0
        ],
        "drop": [{"op": "drop", "feature": j} for j in background],
        "drop_without_refill": [{"op": "drop", "feature": j, "refill": False} for j in background],
    }
    rows = {}
    for name, edit_list in edits.items():
        result = imodel.edit(edit_list, train, eval_features=test)
        edited = result.model
        seconds = result.seconds
        rows[name] = {
            "n_edits": len(edit_list),
            "accuracy_before": result.before["eval"]["accuracy"],
            "accuracy_after": result.after["eval"]["accuracy"],
            "fidelity_before": result.before["eval"]["fidelity"],
            "fidelity_after": result.after["eval"]["fidelity"],
            "reliance_before": reliance(imodel, test, shuffled, plain, background),
            "reliance_after": reliance(
                edited,
                test,
                shuffled,
                plain,
                background_features(edited, train.features, train_set),
            ),
            "diff": {k: len(v) for k, v in result.diff.items()},
            "seconds": seconds,
            "ratio_to_conversion_cold": seconds["total"] / cold,
            "ratio_to_conversion_warm": seconds["total"] / warm,
        }
        print(name, {k: v for k, v in rows[name].items() if k != "diff"})
    write_result(
        "edit",
        {
            "settings": {
                **SETTINGS,
                "train_images": args.train_images,
                "test_images": args.test_images,
            },
            "target": "an edit (solve + refit + re-check) <= 10 % of the original conversion",
            "background_features": background,
            "classes_without_background": int(plain.sum()),
            "conversion_seconds": {"cold": cold, "warm": warm},
            "edits": rows,
        },
        measured_on,
    )


if __name__ == "__main__":
    main()
