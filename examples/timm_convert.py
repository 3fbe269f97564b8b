"""Convert a timm model into an interpretable one.

    python examples/timm_convert.py --model resnet50.a1_in1k --train data/train --out timm-explained
    python examples/timm_convert.py --tiny     # offline: a random timm resnet18 on synthetic images

Use `--checkpoint file.safetensors` for your own fine-tuned weights (`--num-classes` to match).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import timm
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import retrofit
from retrofit.datasets.folders import synthetic_image_folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet50.a1_in1k")
    parser.add_argument("--checkpoint", help="safetensors weights of your fine-tuned model")
    parser.add_argument("--num-classes", type=int, help="head width of --checkpoint")
    parser.add_argument("--train", help="ImageFolder with the training images")
    parser.add_argument("--val", help="ImageFolder with validation images (optional)")
    parser.add_argument("--out", default="timm-explained")
    parser.add_argument("--method", default="qpm", choices=["qpm", "qsenn", "sparse"])
    parser.add_argument("--n-features", type=int, default=50)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument(
        "--epochs", type=int, help="bottleneck epochs (default: enough for 1,500 minibatches)"
    )
    parser.add_argument("--time-limit", type=float, help="seconds for the QPM head stage")
    parser.add_argument(
        "--tiny", action="store_true", help="offline: a random resnet18 on synthetic images"
    )
    parser.add_argument(
        "--include-backbone", action="store_true", help="store the backbone weights too"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="retrofit-example-"))
    if args.tiny:
        args.train = str(synthetic_image_folder(workdir / "train", n_images=120, n_classes=10))
        args.model, args.num_classes, args.n_features, args.per_class = "resnet18", 10, 8, 2
        args.epochs, args.time_limit = args.epochs or 10, args.time_limit or 5
        model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    elif args.train is None:
        parser.error("--train is required (or use --tiny)")
    else:
        extra = {"num_classes": args.num_classes} if args.num_classes else {}
        model = timm.create_model(
            args.model,
            pretrained=not args.checkpoint,
            checkpoint_path=args.checkpoint or "",
            **extra,
        )
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
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
        class_names=train.classes if args.tiny or args.checkpoint else None,
        base_model=f"timm:{args.model}",
        cache_dir=str(workdir / "cache"),
    )
    print(imodel.format_global_explanation())
    imodel.save_pretrained(args.out, include_backbone=bool(args.tiny) or args.include_backbone)
    print(f"saved the interpretable model to {args.out}/")


if __name__ == "__main__":
    main()
