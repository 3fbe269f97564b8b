"""Extraction overhead: retrofit.extract against a bare `model(x)` loop on the same batches.

Run: python benchmarks/extract.py   (writes benchmarks/results/extract.json)
The figure of merit is the ratio of median wall times measured side by side in one process.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from benchmarks.common import interleaved_medians, write_result


def models(num_classes: int) -> dict[str, torch.nn.Module]:
    return {
        "torchvision_resnet18": torchvision.models.resnet18(num_classes=num_classes),
        "torchvision_vit_small": torchvision.models.VisionTransformer(
            image_size=128,
            patch_size=16,
            num_layers=6,
            num_heads=6,
            hidden_dim=384,
            mlp_dim=1536,
            num_classes=num_classes,
        ),
    }


def bare_loop(model: torch.nn.Module, loader: DataLoader) -> None:
    with torch.no_grad():
        for images, _ in loader:
            model(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.rand(args.images, 3, args.size, args.size)
    labels = torch.randint(0, 10, (args.images,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=args.batch_size)
    results = {}
    for name, model in models(10).items():
        model.eval()
        with tempfile.TemporaryDirectory() as cache_root:
            cached_dir = f"{cache_root}/warm"
            retrofit.extract(model, loader, with_maps=True, cache_dir=cached_dir, progress=False)
            variants = {
                "bare_forward": lambda m=model: bare_loop(m, loader),
                "extract_pooled": lambda m=model: retrofit.extract(m, loader, progress=False),
                "extract_with_maps": lambda m=model: retrofit.extract(
                    m, loader, with_maps=True, progress=False
                ),
                "extract_to_new_cache": lambda m=model, d=cache_root: retrofit.extract(
                    m, loader, with_maps=True, cache_dir=tempfile.mkdtemp(dir=d), progress=False
                ),
                "extract_cache_hit": lambda m=model, d=cached_dir: retrofit.extract(
                    m, loader, with_maps=True, cache_dir=d, progress=False
                ),
            }
            medians = interleaved_medians(variants, args.repeats)
        bare = medians["bare_forward"]
        results[name] = {
            "seconds": medians,
            "ratio_to_bare_forward": {
                k: v / bare for k, v in medians.items() if k != "bare_forward"
            },
        }
        print(name, {k: round(v, 3) for k, v in results[name]["ratio_to_bare_forward"].items()})
    path = write_result(
        "extract",
        {
            "settings": vars(args),
            "target": "extract_pooled / bare_forward <= 1.05",
            "results": results,
        },
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
