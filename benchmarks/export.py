"""Inference overhead of the interpretable model, export size, save and load times.

Run: python -m benchmarks.export   (writes benchmarks/results/export.json)
A torchvision resnet18 (random init, 20 classes, 128 px) is converted on random data. The
figure of merit is the wall time of InterpretableModel(x) over model(x) on the same batch,
measured side by side in one process (target <= 1.02): the ratio of the interleaved medians, and
the median of per-round ratios (each round times both back to back, in alternating order), which
is the steadier of the two on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

import retrofit
from benchmarks.common import interleaved_medians, timed, write_result
from retrofit.model.interpretable import load


def paired_ratio(
    candidate: Callable[[], object], reference: Callable[[], object], rounds: int
) -> float:
    """Median over rounds of candidate time / reference time, timed back to back."""
    ratios = []
    for index in range(rounds):
        if index % 2:
            base, other = timed(reference), timed(candidate)
        else:
            other, base = timed(candidate), timed(reference)
        ratios.append(other / base)
    return statistics.median(ratios)


def folder_bytes(folder: Path) -> dict[str, int]:
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    return {**sizes, "total": sum(sizes.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--method", default="qpm")
    parser.add_argument("--n-features", type=int, default=40)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--io-repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=args.classes).eval()
    images = torch.rand(args.images, 3, args.size, args.size)
    labels = torch.arange(args.images) % args.classes
    batches = [
        (images[i : i + args.batch_size], labels[i : i + args.batch_size])
        for i in range(0, args.images, args.batch_size)
    ]
    start = time.perf_counter()
    imodel = retrofit.convert(
        model,
        batches,
        method=args.method,
        n_features=args.n_features,
        per_class=args.per_class,
        epochs=5,
        time_limit=30,
        base_model="torchvision:resnet18",
        progress=False,
    )
    convert_seconds = time.perf_counter() - start

    batch = images[: args.batch_size]
    single = images[:1]

    def run(m: torch.nn.Module, x: torch.Tensor):
        def call() -> None:
            with torch.no_grad():
                m(x)

        return call

    for warm in (run(model, batch), run(imodel, batch)):
        warm()
    inference = interleaved_medians(
        {
            "original_batch": run(model, batch),
            "interpretable_batch": run(imodel, batch),
            "original_single": run(model, single),
            "interpretable_single": run(imodel, single),
        },
        args.repeats,
    )
    paired = {
        "batch": paired_ratio(run(imodel, batch), run(model, batch), args.repeats),
        "single_image": paired_ratio(run(imodel, single), run(model, single), args.repeats),
    }

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_times: dict[str, list[float]] = {"without_backbone": [], "with_backbone": []}
        for _ in range(args.io_repeats):
            save_times["without_backbone"].append(
                timed(lambda: imodel.save_pretrained(root / "small"))
            )
            save_times["with_backbone"].append(
                timed(lambda: imodel.save_pretrained(root / "full", include_backbone=True))
            )
        load_medians = interleaved_medians(
            {
                "model_given": lambda: load(root / "small", model=model),
                "from_backbone_file": lambda: load(root / "full"),
            },
            args.io_repeats,
        )
        with torch.no_grad():
            reference = imodel(batch)
            exact = {
                "model_given": torch.equal(load(root / "small", model=model)(batch), reference),
                "from_backbone_file": torch.equal(load(root / "full")(batch), reference),
            }
        sizes = {
            "without_backbone": folder_bytes(root / "small"),
            "with_backbone": folder_bytes(root / "full"),
        }

    payload = {
        "setup": {
            "model": "torchvision resnet18, random init",
            "classes": args.classes,
            "image_size": args.size,
            "train_images": args.images,
            "batch_size": args.batch_size,
            "method": args.method,
            "n_features": args.n_features,
            "per_class": args.per_class,
            "repeats": args.repeats,
            "io_repeats": args.io_repeats,
            "convert_seconds": convert_seconds,
        },
        "inference_seconds": inference,
        "inference_ratio_of_medians": {
            "batch": inference["interpretable_batch"] / inference["original_batch"],
            "single_image": inference["interpretable_single"] / inference["original_single"],
        },
        "inference_ratio_paired_median": paired,
        "export_bytes": sizes,
        "save_seconds": {k: statistics.median(v) for k, v in save_times.items()},
        "load_seconds": load_medians,
        "exact_logits_after_load": exact,
    }
    path = write_result("export", payload)
    print(
        f"inference ratio (paired) batch {paired['batch']:.3f}, single "
        f"{paired['single_image']:.3f}; export "
        f"{sizes['without_backbone']['total']} B / {sizes['with_backbone']['total']} B with "
        f"backbone; load {load_medians}; exact {exact} -> {path}"
    )


if __name__ == "__main__":
    main()
