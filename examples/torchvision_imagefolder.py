"""Convert a torchvision ResNet-50 trained on your ImageFolder classes into an interpretable model.

    python examples/torchvision_imagefolder.py --train data/train --val data/val \
        --weights my_resnet50.safetensors --out resnet50-explained
    python examples/torchvision_imagefolder.py --tiny      # offline: random ResNet-18, synthetic images

`--weights` is a safetensors state dict of a ResNet-50 whose head matches your classes; without
it the ImageNet weights (IMAGENET1K_V2) are used, so the folders must be ImageNet classes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torchvision
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

import retrofit
from retrofit.datasets.folders import synthetic_image_folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", help="ImageFolder with the training images")
    parser.add_argument("--val", help="ImageFolder with validation images (optional)")
    parser.add_argument("--weights", help="safetensors state dict of your fine-tuned ResNet-50")
    parser.add_argument("--out", default="resnet50-explained")
    parser.add_argument("--method", default="qpm", choices=["qpm", "qsenn", "sparse"])
    parser.add_argument("--n-features", type=int, default=50)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument(
        "--epochs", type=int, help="bottleneck epochs (default: enough for 1,500 minibatches)"
    )
    parser.add_argument("--time-limit", type=float, help="seconds for the QPM head stage")
    parser.add_argument(
        "--tiny", action="store_true", help="offline: random ResNet-18 on synthetic images"
    )
    parser.add_argument(
        "--include-backbone", action="store_true", help="store the backbone weights too"
    )
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="retrofit-example-")
    if args.tiny:
        args.train = str(
            synthetic_image_folder(Path(workdir) / "train", n_images=120, n_classes=10)
        )
        args.n_features, args.per_class = 8, 2
        args.epochs, args.time_limit = args.epochs or 10, args.time_limit or 5
        model = torchvision.models.resnet18(num_classes=10)
        spec = "torchvision:resnet18"
        transform = transforms.ToTensor()
    else:
        if args.train is None:
            parser.error("--train is required (or use --tiny)")
        classes = ImageFolder(args.train).classes
        if args.weights:
            model = torchvision.models.resnet50(num_classes=len(classes))
            model.load_state_dict(load_file(args.weights))
            spec = None
        else:
            model = torchvision.models.resnet50(weights="IMAGENET1K_V2")
            spec = "torchvision:resnet50:IMAGENET1K_V2"
        transform = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()

    train = ImageFolder(args.train, transform=transform)
    val = ImageFolder(args.val, transform=transform) if args.val else None
    imodel = retrofit.convert(
        model.eval(),
        DataLoader(train, batch_size=32),
        DataLoader(val, batch_size=32) if val else None,
        method=args.method,
        n_features=args.n_features,
        per_class=args.per_class,
        epochs=args.epochs,
        time_limit=args.time_limit,
        class_names=train.classes if args.tiny or args.weights else None,
        base_model=spec,
        cache_dir=str(Path(workdir) / "cache"),
    )
    print(imodel.format_global_explanation())
    imodel.save_pretrained(args.out, include_backbone=bool(args.tiny) or args.include_backbone)
    print(f"saved the interpretable model to {args.out}/")


if __name__ == "__main__":
    main()
