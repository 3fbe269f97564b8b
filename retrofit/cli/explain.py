"""`retrofit explain`: why the exported model predicts what it does for some images."""

from __future__ import annotations

import argparse
import json
from typing import Any

from retrofit.cli.common import (
    UsageError,
    add_trust_option,
    load_export,
    positive_int,
    transform_for,
)


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image, UnidentifiedImageError

    imodel = load_export(args.dir, args.trust_remote_code)
    transform = transform_for(imodel, args.dir, args.image_size, args.trust_remote_code)
    images = []
    for path in args.images:
        try:
            images.append(transform(Image.open(path).convert("RGB")))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise UsageError(f"cannot read image {path}: {error}") from error
    with torch.no_grad():
        explanations = imodel.explain(torch.stack(images))
    if args.json:
        print(
            json.dumps(
                [{"image": p, **e.to_dict()} for p, e in zip(args.images, explanations)],
                indent=1,
            )
        )
    else:
        for path, explanation in zip(args.images, explanations):
            print(f"== {path}\n{explanation}\n")
    return 0


def add(commands: Any) -> None:
    explain = commands.add_parser("explain", help="explain the predictions for images")
    explain.add_argument("dir")
    explain.add_argument("images", nargs="+")
    explain.add_argument("--json", action="store_true")
    explain.add_argument("--image-size", type=positive_int)
    add_trust_option(explain)
    explain.set_defaults(run=run)
