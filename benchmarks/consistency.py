"""Explanation consistency on the spurious-background world, and whether reweighting helps.

Run: python -m benchmarks.consistency   (writes benchmarks/results/consistency.json)
     python -m benchmarks.consistency --part repair   (its "repair" section: ALGORITHMS §12)

Models: the shipped spurious CNN (trained where the background predicts the class) and the
control CNN (trained on shuffled backgrounds); the spurious CNN converted with Q-SENN (16
features, 4 per class) on `--train-images` spurious-split training images, without and with reweight="consistency", and
the same two with finetune="backbone". Every seed draws its own training and test scenes
(world seed) and converts with its own seed. Measured on `--test-images` shuffled-background
test images with their true object masks:

- E and flip rate (background = complement of the true mask, PGD ε = 8/255, 10 steps);
- energy share: Σ of the predicted class's heatmap inside the object / Σ over the image;
- pointing game: the heatmap's peak lies on the object;
- accuracy on the shuffled test images and worst-group accuracy (groups: class x background
  aligned with the class or not);
- the check's cost relative to one forward pass over the same images.

`--part swap` (written to the "swap" section of the same JSON, the PGD part kept) measures the
same models with both perturbations side by side: PGD (on the first `--pgd-images` test
images, to keep the run short), the background swap with inpainted donors (each test image's
object on the next image's background, that image's object filled in by diffusion), the swap
with the world's true object-free renders as donors, and the swap with heat-quantile
backgrounds (no masks: what a user without masks gets). Reweighting uses the swap E
(v = 1 − E) on the training images, with their true masks and without (heat quantile).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from benchmarks.common import RESULTS, machine, timed, write_result
from retrofit.check.consistency import ConsistencySettings, consistency, heatmap_function
from retrofit.check.reliance import background_reliance, feature_activations
from retrofit.datasets.spurious import SpuriousBackgroundDataset
from retrofit.datasets.spurious_classifier import load_spurious_classifier, spurious_world_settings
from retrofit.fitting.reweight import consistency_weights

VARIANTS = (
    "original",
    "control",
    "converted",
    "converted_reweight",
    "backbone",
    "backbone_reweight",
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-images", type=int, default=800)
    p.add_argument("--test-images", type=int, default=400)
    p.add_argument("--reweight-images", type=int, default=400)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--part", choices=["pgd", "swap", "swap-weights", "repair"], default="pgd")
    p.add_argument(
        "--copies", type=int, default=4, help="counterfactuals per image (--part repair)"
    )
    p.add_argument("--result", default="consistency", help="results/RESULT.json to write")
    p.add_argument("--pgd-images", type=int, default=200, help="PGD images in --part swap")
    return p.parse_args()


def rendered(dataset: SpuriousBackgroundDataset) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    masks = torch.stack([dataset.mask(i) for i in range(len(dataset))])
    return TensorDataset(images, dataset.labels.clone()), masks


def convert(model: torch.nn.Module, train: TensorDataset, seed: int, **settings: Any):
    return retrofit.convert(
        model,
        DataLoader(train, batch_size=64),
        method="qsenn",
        n_features=16,
        per_class=4,
        seed=seed,
        progress=False,
        **settings,
    )


@torch.no_grad()
def accuracy(model: torch.nn.Module, test: TensorDataset, aligned: torch.Tensor) -> dict:
    images, labels = test.tensors
    predicted = torch.cat(
        [model(images[s : s + 256]).argmax(1) for s in range(0, len(images), 256)]
    )
    correct = (predicted == labels).float()
    groups = [
        correct[(labels == c) & (aligned == a)]
        for c in labels.unique().tolist()
        for a in (True, False)
    ]
    return {
        "accuracy": float(correct.mean()),
        "worst_group_accuracy": min(float(g.mean()) for g in groups if len(g)),
    }


def localisation(model: torch.nn.Module, test: TensorDataset, masks: torch.Tensor) -> dict:
    """Heatmap energy inside the object and pointing-game accuracy, for the predicted class."""
    images, _ = test.tensors
    heatmaps, _ = heatmap_function(model, images[:2])
    share, hits = [], []
    for s in range(0, len(images), 64):
        x, m = images[s : s + 64], masks[s : s + 64]
        with torch.no_grad():
            predicted = model(x).argmax(1)
        heat = heatmaps(x, predicted).flatten(1)
        total = heat.sum(dim=1)
        inside = (heat * m.flatten(1)).sum(dim=1)
        share.append(
            torch.where(total > 0, inside / total.clamp_min(1e-12), m.flatten(1).float().mean(1))
        )
        hits.append(m.flatten(1).gather(1, heat.argmax(dim=1, keepdim=True))[:, 0].float())
    return {
        "energy_in_mask": float(torch.cat(share).mean()),
        "pointing_game": float(torch.cat(hits).mean()),
    }


def measure(model, test, masks, aligned, settings: ConsistencySettings) -> dict[str, Any]:
    loader = DataLoader(test, batch_size=settings.batch_size)
    model.eval()
    forward = timed(lambda: accuracy(model, test, aligned))
    result = consistency(model, loader, masks=masks, settings=settings, progress=False)
    return {
        "consistency": result.mean,
        "flip_rate": result.summary["flip_rate"],
        **localisation(model, test, masks),
        **accuracy(model, test, aligned),
        "check_seconds": result.summary["seconds"],
        "forward_seconds": forward,
        "check_cost_vs_forward": result.summary["seconds"] / forward,
    }


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    world = spurious_world_settings()
    common = {"n_classes": world["n_classes"], "image_size": world["image_size"], "seed": seed}
    train, _ = rendered(
        SpuriousBackgroundDataset(args.train_images, split="train", background="spurious", **common)
    )
    test_set = SpuriousBackgroundDataset(
        args.test_images, split="test", background="shuffled", **common
    )
    test, masks = rendered(test_set)
    settings = ConsistencySettings(max_images=args.test_images, batch_size=100)
    original = load_spurious_classifier("spurious")
    reweight = {
        "reweight": "consistency",
        "reweight_rounds": args.rounds,
        "reweight_images": args.reweight_images,
    }
    backbone = {"finetune": "backbone", "backbone_epochs": 3, "backbone_lr": 0.01}
    builders = {
        "original": lambda: original,
        "control": lambda: load_spurious_classifier("control"),
        "converted": lambda: convert(original, train, seed),
        "converted_reweight": lambda: convert(original, train, seed, **reweight),
        "backbone": lambda: convert(original, train, seed, **backbone),
        "backbone_reweight": lambda: convert(original, train, seed, **backbone, **reweight),
    }
    out: dict[str, Any] = {}
    for name in VARIANTS:
        start = time.perf_counter()
        model = builders[name]()
        build_seconds = time.perf_counter() - start
        out[name] = measure(model, test, masks, test_set.aligned, settings)
        out[name]["build_seconds"] = build_seconds
        history = getattr(model, "stats", {}).get("history", {}).get("reweight")
        if history is not None:
            out[name]["reweight"] = {
                "images": history["images"],
                "train_consistency_per_round": [r["consistency"] for r in history["rounds"]],
                "train_consistency_after": history["consistency_after"],
                "seconds": history["seconds"],
            }
        print(seed, name, {k: round(v, 4) for k, v in out[name].items() if isinstance(v, float)})
    return out


SWAP_VARIANTS = (
    "original",
    "control",
    "converted",
    "converted_reweight_swap",
    "converted_reweight_swap_quantile",
    "backbone",
    "backbone_reweight_swap",
)
SWAP = {"perturbation": "swap", "batch_size": 100}


def measure_both(model, test, test_set, masks, args) -> dict[str, Any]:
    """E and flip rate under PGD and three kinds of swap, localisation, accuracy, cost."""
    n = len(test_set)
    clean = torch.stack([test_set.background_only((i + 1) % n) for i in range(n)])
    loader = DataLoader(test, batch_size=100)
    model.eval()
    forward = timed(lambda: accuracy(model, test, test_set.aligned))
    runs = {
        "pgd": ({"max_images": args.pgd_images, "batch_size": 100}, masks, None),
        "swap": ({**SWAP, "max_images": n}, masks, None),
        "swap_clean": ({**SWAP, "max_images": n}, masks, clean),
        "swap_quantile": ({**SWAP, "max_images": n}, None, None),
    }
    out: dict[str, Any] = {}
    for name, (settings, foreground, backgrounds) in runs.items():
        result = consistency(
            model,
            loader,
            masks=foreground,
            settings=settings,
            backgrounds=backgrounds,
            progress=False,
        )
        out[f"{name}_consistency"] = result.mean
        out[f"{name}_flip_rate"] = result.summary["flip_rate"]
        out[f"{name}_check_cost_vs_forward"] = (
            result.summary["seconds"] / forward * n / result.summary["n_images"]
        )
    return {**out, **localisation(model, test, masks), **accuracy(model, test, test_set.aligned)}


def run_swap_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    world = spurious_world_settings()
    common = {"n_classes": world["n_classes"], "image_size": world["image_size"], "seed": seed}
    train, train_masks = rendered(
        SpuriousBackgroundDataset(args.train_images, split="train", background="spurious", **common)
    )
    test_set = SpuriousBackgroundDataset(
        args.test_images, split="test", background="shuffled", **common
    )
    test, masks = rendered(test_set)
    original = load_spurious_classifier("spurious")
    reweight = {
        "reweight": "consistency",
        "reweight_rounds": args.rounds,
        "reweight_images": args.reweight_images,
        "reweight_consistency": SWAP,
    }
    backbone = {"finetune": "backbone", "backbone_epochs": 3, "backbone_lr": 0.01}
    builders = {
        "original": lambda: original,
        "control": lambda: load_spurious_classifier("control"),
        "converted": lambda: convert(original, train, seed),
        "converted_reweight_swap": lambda: convert(
            original, train, seed, masks=train_masks, **reweight
        ),
        "converted_reweight_swap_quantile": lambda: convert(original, train, seed, **reweight),
        "backbone": lambda: convert(original, train, seed, **backbone),
        "backbone_reweight_swap": lambda: convert(
            original, train, seed, masks=train_masks, **backbone, **reweight
        ),
    }
    out: dict[str, Any] = {}
    for name in SWAP_VARIANTS:
        start = time.perf_counter()
        model = builders[name]()
        out[name] = measure_both(model, test, test_set, masks, args)
        out[name]["build_seconds"] = time.perf_counter() - start
        history = getattr(model, "stats", {}).get("history", {}).get("reweight")
        if history is not None:
            out[name]["reweight"] = {
                "images": history["images"],
                "background": history["background"],
                "train_consistency_per_round": [r["consistency"] for r in history["rounds"]],
                "train_consistency_after": history["consistency_after"],
                "seconds": history["seconds"],
            }
        print(seed, name, {k: round(v, 3) for k, v in out[name].items() if isinstance(v, float)})
    return out


def swap_main(args: argparse.Namespace) -> None:
    measured_on = machine(["captum"])
    per_seed = {seed: run_swap_seed(seed, args) for seed in args.seeds}
    keys = [k for k, v in per_seed[args.seeds[0]]["original"].items() if isinstance(v, float)]
    summary = {
        name: {key: statistics.mean(per_seed[s][name][key] for s in args.seeds) for key in keys}
        for name in SWAP_VARIANTS
    }
    helps = {
        variant: {
            key: all(per_seed[s][variant][key] > per_seed[s][base][key] for s in args.seeds)
            for key in ("accuracy", "worst_group_accuracy", "energy_in_mask", "swap_consistency")
        }
        for variant, base in (
            ("converted_reweight_swap", "converted"),
            ("converted_reweight_swap_quantile", "converted"),
            ("backbone_reweight_swap", "backbone"),
        )
    }
    lower = {
        key: all(per_seed[s]["original"][key] < per_seed[s]["control"][key] for s in args.seeds)
        for key in ("pgd_consistency", "swap_consistency", "swap_clean_consistency")
    }
    previous = _previous(args.result)
    pgd_machine = previous.pop("machine", None)
    previous["swap"] = {
        "machine": measured_on,
        "settings": vars(args) | {"swap": SWAP, "pgd": ConsistencySettings().__dict__},
        "summary": summary,
        "spurious_E_below_control_on_every_seed": lower,
        "reweighting_raises_on_every_seed": helps,
        "per_seed": {str(s): v for s, v in per_seed.items()},
    }
    write_result(args.result, previous, pgd_machine)


def swap_weights(args: argparse.Namespace) -> None:
    """Why reweighting cannot help here: which training images v = 1 − E up-weights. The
    shortcut can only be unlearned from the misaligned images (background of another class);
    this reports their mean swap E and their share of the total weight (vs their share of
    images), on the images reweighting measures, for the spurious CNN."""
    model = load_spurious_classifier("spurious").eval()
    world = spurious_world_settings()
    out = {}
    for seed in args.seeds:
        train_set = SpuriousBackgroundDataset(
            args.train_images,
            n_classes=world["n_classes"],
            image_size=world["image_size"],
            seed=seed,
            split="train",
            background="spurious",
        )
        train, masks = rendered(train_set)
        n = min(args.reweight_images, len(train_set))
        result = consistency(
            model, train, masks=masks, settings={**SWAP, "max_images": n}, progress=False
        )
        weights = consistency_weights(result.scores, clip=5.0, temperature=1.0)
        misaligned = ~train_set.aligned[:n]
        out[str(seed)] = {
            "misaligned_share_of_images": float(misaligned.float().mean()),
            "misaligned_share_of_weight": float(weights[misaligned].sum() / weights.sum()),
            "swap_consistency_aligned": float(result.scores[~misaligned].mean()),
            "swap_consistency_misaligned": float(result.scores[misaligned].mean()),
            "flip_rate_aligned": float(result.flipped[~misaligned].float().mean()),
            "flip_rate_misaligned": float(result.flipped[misaligned].float().mean()),
        }
        print(seed, out[str(seed)])
    previous = _previous(args.result)
    pgd_machine = previous.pop("machine", None)
    previous.setdefault("swap", {})["training_weights_of_the_spurious_cnn"] = out
    write_result(args.result, previous, pgd_machine)


def eta_squared(activations: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Per feature, the share of its variance that `groups` explain (the correlation ratio)."""
    centred = activations - activations.mean(dim=0)
    total = (centred**2).sum(dim=0).clamp_min(1e-12)
    between = sum(
        (groups == g).sum() * (activations[groups == g].mean(dim=0) - activations.mean(dim=0)) ** 2
        for g in groups.unique()
    )
    return between / total


def auc(scores: torch.Tensor, truth: torch.Tensor) -> float | None:
    """P(score of a true feature > score of a false one), ties half; None without both kinds."""
    positive, negative = scores[truth], scores[~truth]
    if not len(positive) or not len(negative):
        return None
    wins = (positive[:, None] > negative[None]).float() + 0.5 * (
        positive[:, None] == negative[None]
    ).float()
    return float(wins.mean())


def balanced_rows(labels: torch.Tensor, aligned: torch.Tensor, seed: int) -> list[int]:
    """As many images of every (class, background aligned or not) group as the smallest has."""
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, (c, a) in enumerate(zip(labels.tolist(), aligned.tolist())):
        groups.setdefault((c, a), []).append(i)
    size = min(len(rows) for rows in groups.values())
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for rows in groups.values():
        keep += torch.tensor(rows)[torch.randperm(len(rows), generator=generator)[:size]].tolist()
    return sorted(keep)


# the stronger repair: backbone and bottleneck fine-tuned on originals + counterfactuals
REPAIR_BACKBONE = {"finetune": "backbone", "backbone_epochs": 10, "backbone_lr": 3e-3}


def run_repair_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The shortcut CNN and the control, converted, repaired with counterfactuals, and a
    group-balanced refit (needs group labels: the upper bound); shuffled-background accuracy,
    worst group, swap E, energy in the object; feature reliance against the world's truth."""
    world = spurious_world_settings()
    common = {"n_classes": world["n_classes"], "image_size": world["image_size"], "seed": seed}
    train_set = SpuriousBackgroundDataset(
        args.train_images, split="train", background="spurious", **common
    )
    train, train_masks = rendered(train_set)
    test_set = SpuriousBackgroundDataset(
        args.test_images, split="test", background="shuffled", **common
    )
    test, masks = rendered(test_set)
    swap = ConsistencySettings(perturbation="swap", max_images=args.test_images, batch_size=100)
    repair = {
        "reweight": "counterfactual",
        "masks": train_masks,
        "reweight_images": args.train_images,
        "reweight_copies": args.copies,
    }
    rows = balanced_rows(train.tensors[1], train_set.aligned, seed)
    balanced = TensorDataset(*(t[rows] for t in train.tensors))
    out: dict[str, Any] = {"balanced_images": len(rows)}
    for kind in ("spurious", "control"):
        original = load_spurious_classifier(kind)
        builders = {
            "converted": lambda m=original: convert(m, train, seed),
            "repaired": lambda m=original: convert(m, train, seed, **repair),
            "repaired_backbone": lambda m=original: convert(
                m, train, seed, **repair, **REPAIR_BACKBONE
            ),
            "group_balanced": lambda m=original: convert(m, balanced, seed),
        }
        for name, build in builders.items():
            start = time.perf_counter()
            model = build()
            seconds = time.perf_counter() - start
            loader = DataLoader(test, batch_size=100)
            swapped = consistency(model, loader, masks=masks, settings=swap, progress=False)
            out[f"{kind}/{name}"] = {
                **accuracy(model, test, test_set.aligned),
                "swap_consistency": swapped.mean,
                **localisation(model, test, masks),
                "build_seconds": seconds,
            }
            if name == "converted":
                images, labels = test.tensors
                reliance = background_reliance(model, images, labels, masks, seed=seed)
                activations = feature_activations(model, images)
                reads_background = eta_squared(activations, test_set.backgrounds) > eta_squared(
                    activations, labels
                )
                out[f"{kind}/reliance"] = {
                    "reliance": reliance["reliance"],
                    "reads_background": reads_background.tolist(),
                    "auc": auc(torch.tensor(reliance["reliance"]), reads_background),
                    "suggested_drops": [e["feature"] for e in reliance["suggested_edits"]],
                }
            print(seed, kind, name, {k: round(v, 3) for k, v in out[f"{kind}/{name}"].items()})
        for name in ("repaired", "repaired_backbone"):
            out[f"{kind}/{name}_cost_vs_conversion"] = (
                out[f"{kind}/{name}"]["build_seconds"] / out[f"{kind}/converted"]["build_seconds"]
            )
    return out


def repair_main(args: argparse.Namespace) -> None:
    measured_on = machine(["captum"])
    per_seed = {seed: run_repair_seed(seed, args) for seed in args.seeds}
    seeds = [str(s) for s in args.seeds]
    rows = {str(s): v for s, v in per_seed.items()}

    def every(test: Any) -> bool:
        return all(test(rows[s]) for s in seeds)

    targets = {
        repair: {
            "shuffled_accuracy_at_least_twice_converted": every(
                lambda r, n=repair: (
                    r[f"spurious/{n}"]["accuracy"] >= 2 * r["spurious/converted"]["accuracy"]
                )
            ),
            "within_0.05_of_group_balanced_or_above": every(
                lambda r, n=repair: (
                    r[f"spurious/{n}"]["accuracy"]
                    >= r["spurious/group_balanced"]["accuracy"] - 0.05
                )
            ),
            "worst_group_above_0": every(
                lambda r, n=repair: r[f"spurious/{n}"]["worst_group_accuracy"] > 0
            ),
            "control_accuracy_within_0.02": every(
                lambda r, n=repair: (
                    abs(r[f"control/{n}"]["accuracy"] - r["control/converted"]["accuracy"]) <= 0.02
                )
            ),
        }
        for repair in ("repaired", "repaired_backbone")
    }
    targets["reliance_auc_at_least_0.9"] = every(
        lambda r: (r["spurious/reliance"]["auc"] or 0) >= 0.9
    )
    names = [k for k, v in rows[seeds[0]].items() if isinstance(v, dict) and "accuracy" in v]
    summary = {
        name: {
            key: statistics.mean(rows[s][name][key] for s in seeds) for key in rows[seeds[0]][name]
        }
        for name in names
    }
    previous = _previous(args.result)
    pgd_machine = previous.pop("machine", None)
    previous["repair"] = {
        "machine": measured_on,
        "settings": vars(args),
        "summary": summary,
        "targets_on_every_seed": targets,
        "per_seed": rows,
    }
    write_result(args.result, previous, pgd_machine)


def _previous(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "swap":
        swap_main(args)
        return
    if args.part == "swap-weights":
        swap_weights(args)
        return
    if args.part == "repair":
        repair_main(args)
        return
    measured_on = machine(["captum"])
    per_seed = {seed: run_seed(seed, args) for seed in args.seeds}
    keys = [k for k, v in per_seed[args.seeds[0]]["original"].items() if isinstance(v, float)]
    summary = {
        name: {
            key: {
                "mean": statistics.mean(per_seed[s][name][key] for s in args.seeds),
                "min": min(per_seed[s][name][key] for s in args.seeds),
                "max": max(per_seed[s][name][key] for s in args.seeds),
            }
            for key in keys
        }
        for name in VARIANTS
    }
    helps = {
        mode: {
            key: all(
                per_seed[s][f"{base}_reweight"][key] > per_seed[s][base][key] for s in args.seeds
            )
            for key in ("accuracy", "worst_group_accuracy", "energy_in_mask", "consistency")
        }
        for mode, base in (("head_and_bottleneck", "converted"), ("backbone", "backbone"))
    }
    swap = _previous(args.result).get("swap")
    write_result(
        args.result,
        {
            "settings": vars(args) | {"consistency": ConsistencySettings().__dict__},
            "summary": summary,
            "reweighting_raises_on_every_seed": helps,
            "per_seed": {str(s): v for s, v in per_seed.items()},
            **({"swap": swap} if swap is not None else {}),
        },
        measured_on,
    )


if __name__ == "__main__":
    main()
