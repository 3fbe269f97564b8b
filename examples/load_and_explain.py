"""Load an exported interpretable model and explain its prediction for an image.

    python examples/load_and_explain.py explained/ photo.jpg
    python examples/load_and_explain.py --tiny      # offline: export a small demo conversion first

The backbone is rebuilt from the spec in the export (or read from backbone.safetensors);
nothing is unpickled.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

import retrofit
from retrofit.datasets import SyntheticConceptDataset, load_demo_classifier
from retrofit.datasets.folders import to_pil


def tiny_export(folder: Path) -> tuple[Path, Path]:
    """Convert the demo classifier on a few synthetic images, export it, and save one image."""
    train = SyntheticConceptDataset(300, split="train")
    imodel = retrofit.convert(
        load_demo_classifier(),
        DataLoader(train, batch_size=100),
        method="qpm",
        n_features=12,
        per_class=3,
        time_limit=10,
        epochs=5,
        progress=False,
    )
    imodel.save_pretrained(
        folder / "export",
        include_backbone=True,
        base_model="retrofit:demo",  # portable: rebuilds the bundled demo CNN anywhere
    )
    image_path = folder / "image.png"
    to_pil(SyntheticConceptDataset(1, split="test")[0][0]).save(image_path)
    return folder / "export", image_path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("export", nargs="?", help="folder written by save_pretrained")
    parser.add_argument("image", nargs="?", help="an image file")
    parser.add_argument(
        "--image-size", type=int, help="resize to this size (default: the training size)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="offline: make a small export first")
    args = parser.parse_args()
    if args.tiny:
        args.export, args.image = tiny_export(Path(tempfile.mkdtemp(prefix="retrofit-example-")))
    elif not (args.export and args.image):
        parser.error("give an export folder and an image (or --tiny)")

    imodel = retrofit.load(args.export)
    size = args.image_size or imodel.stats["input_size"][0]
    image = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])(
        Image.open(args.image).convert("RGB")
    )
    with torch.no_grad():
        explanation = imodel.explain(image.unsqueeze(0))[0]
    print(json.dumps(explanation.to_dict(), indent=1) if args.json else explanation)


if __name__ == "__main__":
    main()
