"""Cost of retrofit.check per part, relative to one forward pass over the same images.

Run: python -m benchmarks.check   (writes benchmarks/results/check.json)
Model: the shipped demo classifier on the synthetic concept world when its weights exist;
otherwise the same DemoCNN architecture with a seeded random initialisation (the result says
which). The interpretable model is converted with QPM on a separate training split; the check
runs on `--images` test images with the default settings (Grad-CAM, IG, neuron IG on
`max_pixel_images` images, masks and the class-attribute matrix given).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from benchmarks.common import timed, write_result
from retrofit.check import check
from retrofit.datasets import DemoCNN, SyntheticConceptDataset, load_demo_classifier
from retrofit.errors import ModelError


def demo_model() -> tuple[torch.nn.Module, str]:
    try:
        return load_demo_classifier(), "demo classifier (trained, shipped weights)"
    except ModelError:
        torch.manual_seed(0)
        return DemoCNN().eval(), "DemoCNN with seeded random weights (demo weights not shipped yet)"


def rendered(dataset: SyntheticConceptDataset) -> TensorDataset:
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return TensorDataset(images, dataset.labels.clone())


def forward_pass(model: torch.nn.Module, loader: DataLoader) -> None:
    with torch.no_grad():
        for images, _ in loader:
            model(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-pixel-images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, model_note = demo_model()
    train = SyntheticConceptDataset(args.train_images, split="train")
    test = SyntheticConceptDataset(args.images, split="test")
    train_loader = DataLoader(rendered(train), batch_size=args.batch_size)
    loader = DataLoader(rendered(test), batch_size=args.batch_size)

    start = time.perf_counter()
    imodel = retrofit.convert(
        model,
        train_loader,
        method="qpm",
        n_features=50,
        per_class=5,
        finetune="bottleneck",
        time_limit=60,
        progress=False,
    )
    convert_seconds = time.perf_counter() - start

    forward = statistics.median(
        timed(lambda: forward_pass(model, loader)) for _ in range(args.repeats)
    )
    start = time.perf_counter()
    report = check(
        imodel,
        loader,
        reference=model,
        masks=test.masks,
        attributes=test.class_signatures,
        max_pixel_images=args.max_pixel_images,
        progress=False,
    )
    check_seconds = time.perf_counter() - start
    html_seconds = timed(lambda: report.to_html("/tmp/retrofit-benchmark-check.html"))

    parts = dict(report.meta["timings"])
    parts["html"] = html_seconds
    write_result(
        "check",
        {
            "model": model_note,
            "settings": {
                "images": args.images,
                "image_size": test.image_size,
                "classes": test.world.n_classes,
                "batch_size": args.batch_size,
                "max_pixel_images": args.max_pixel_images,
                "n_features": imodel.n_features,
                "per_class": 5,
                **report.meta["settings"],
            },
            "note": (
                "forward = median of one no-grad pass of the original model over all images; "
                "check parts from Report.meta['timings'] of one check() run; pixel.* parts run "
                "on max_pixel_images images only, feature_maps is the Grad-CAM of the report's "
                "feature cards and explanations."
            ),
            "seconds": {
                "convert": convert_seconds,
                "forward": forward,
                "check_total": check_seconds,
                **{f"check.{k}": v for k, v in parts.items()},
            },
            "ratio_to_forward": {
                "check_total": check_seconds / forward,
                **{k: v / forward for k, v in parts.items()},
            },
            "report": {
                "accuracy": report.fidelity["accuracy"],
                "agreement": report.fidelity["agreement"],
                "concept_deletion_auc_gain": report.concept_deletion["deletion_auc_gain"],
                "diversity@5": report.metrics["diversity@5"],
            },
        },
    )
    print(report.summary())


if __name__ == "__main__":
    main()
