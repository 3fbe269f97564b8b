"""Convert a HuggingFace image classifier (AutoModelForImageClassification) into an interpretable one.

    python examples/hf_convert.py --model microsoft/resnet-50 --train data/train --out resnet50-explained
    python examples/hf_convert.py --model google/vit-base-patch16-224 --train data/train --out vit-explained
    python examples/hf_convert.py --tiny resnet     # offline: small random ResNetConfig
    python examples/hf_convert.py --tiny vit        # offline: small random ViTConfig

`--model` is a hub id or a local folder written by `save_pretrained`; the image processor that
comes with it prepares the images. The ImageFolder's classes must be the model's classes
(folder names sorted alphabetically give the label indices, as torchvision's ImageFolder does).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import transformers
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import retrofit
from retrofit.datasets.folders import synthetic_image_folder

TINY_CLASSES = 10


def tiny_model(arch: str, folder: Path) -> str:
    """Save a small randomly initialised model and its processor to `folder`; return the folder."""
    labels = {"id2label": {i: f"class_{i}" for i in range(TINY_CLASSES)}}
    if arch == "resnet":
        config = transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], **labels
        )
        model = transformers.ResNetForImageClassification(config)
        processor = transformers.ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=1.0)
    else:
        config = transformers.ViTConfig(
            image_size=64,
            patch_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            **labels,
        )
        model = transformers.ViTForImageClassification(config)
        processor = transformers.ViTImageProcessor(size={"height": 64, "width": 64})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="microsoft/resnet-50", help="hub id or local folder")
    parser.add_argument("--train", help="ImageFolder with the training images")
    parser.add_argument("--val", help="ImageFolder with validation images (optional)")
    parser.add_argument("--out", default="hf-explained")
    parser.add_argument("--method", default="qpm", choices=["qpm", "qsenn", "sparse"])
    parser.add_argument("--n-features", type=int, default=50)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument(
        "--epochs", type=int, help="bottleneck epochs (default: enough for 1,500 minibatches)"
    )
    parser.add_argument("--time-limit", type=float, help="seconds for the QPM head stage")
    parser.add_argument("--tiny", choices=["resnet", "vit"], help="offline: a small random model")
    parser.add_argument(
        "--include-backbone", action="store_true", help="store the backbone weights too"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="retrofit-example-"))
    if args.tiny:
        args.model = tiny_model(args.tiny, workdir / "model")
        args.train = str(
            synthetic_image_folder(workdir / "train", n_images=120, n_classes=TINY_CLASSES)
        )
        args.n_features, args.per_class = 8, 2
        args.epochs, args.time_limit = args.epochs or 10, args.time_limit or 5
    elif args.train is None:
        parser.error("--train is required (or use --tiny)")

    model = transformers.AutoModelForImageClassification.from_pretrained(args.model).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(args.model)

    def transform(image):
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    train = ImageFolder(args.train, transform=transform)
    val = ImageFolder(args.val, transform=transform) if args.val else None
    class_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    imodel = retrofit.convert(
        model,
        DataLoader(train, batch_size=32),
        DataLoader(val, batch_size=32) if val else None,
        method=args.method,
        n_features=args.n_features,
        per_class=args.per_class,
        epochs=args.epochs,
        time_limit=args.time_limit,
        class_names=class_names,
        base_model=f"hf:{args.model}",
        cache_dir=str(workdir / "cache"),
    )
    print(imodel.format_global_explanation())
    imodel.save_pretrained(args.out, include_backbone=bool(args.tiny) or args.include_backbone)
    print(f"saved the interpretable model to {args.out}/")


if __name__ == "__main__":
    main()
