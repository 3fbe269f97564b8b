"""The `retrofit` command: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from retrofit.errors import RetrofitError


def _demo(args: argparse.Namespace) -> int:
    """Convert the bundled demo classifier on the synthetic concept world, fully offline."""
    from torch.utils.data import DataLoader

    import retrofit
    from retrofit.datasets import SyntheticConceptDataset, demo_world_settings, load_demo_classifier

    start = time.perf_counter()
    settings = demo_world_settings()
    world = {
        "n_classes": settings["n_classes"],
        "image_size": settings["image_size"],
        "seed": settings["seed"],
    }
    train = SyntheticConceptDataset(args.train_images, split="train", **world)
    test = SyntheticConceptDataset(args.test_images, split="test", **world)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    imodel = retrofit.convert(
        load_demo_classifier(),
        DataLoader(train, batch_size=128),
        DataLoader(test, batch_size=128),
        method=args.method,
        n_features=args.n_features,
        per_class=args.per_class,
        class_names=train.class_names,
        time_limit=args.time_limit,
        cache_dir=str(out / "cache"),
        progress=not args.quiet,
    )
    summary = {
        "method": args.method,
        "train": imodel.stats["train"],
        "test": imodel.stats["val"],
        "selected_features": imodel.selected_features.tolist(),
        "global_explanation": imodel.global_explanation(),
        "seconds": time.perf_counter() - start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(imodel.format_global_explanation())
    test_stats = imodel.stats["val"]
    print(
        f"\n{args.method}: {imodel.n_features} features, {args.per_class} per class | test accuracy "
        f"{test_stats['accuracy']:.3f} (original {test_stats['original_accuracy']:.3f}, agreement "
        f"{test_stats['agreement']:.3f}) | {summary['seconds']:.0f} s | wrote {out / 'summary.json'}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retrofit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="offline demo on the synthetic concept world")
    demo.add_argument("--out", default="retrofit-demo")
    demo.add_argument("--method", default="qpm", choices=["qpm", "qsenn", "sparse", "dense"])
    demo.add_argument("--n-features", type=int, default=50)
    demo.add_argument("--per-class", type=int, default=5)
    demo.add_argument("--train-images", type=int, default=5000)
    demo.add_argument("--test-images", type=int, default=1000)
    demo.add_argument("--time-limit", type=float, default=60.0)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except RetrofitError as error:
        print(f"retrofit: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
