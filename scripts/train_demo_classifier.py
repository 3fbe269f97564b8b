"""Train the demo CNN on the synthetic concept world and write its weights into the package.

The demo model gives examples, tests and `retrofit demo` a real trained classifier without any
download. It is trained on 128k freshly rendered images of the world (50 classes, 64x64,
seed 0), each seen once, with SGD + one-cycle schedule under bfloat16 autocast on CPU, seeded
end to end, in about ten minutes on one busy core (one torch thread: on a shared two-core
machine a second thread made training several times slower, not faster).

Regenerate from the repository root (overwrites the two files atomically):

    python scripts/train_demo_classifier.py

which writes `retrofit/weights/demo_cnn.safetensors` (float32 state dict) and
`retrofit/weights/demo_cnn.json` (world parameters, architecture, training settings, measured
test accuracy, this command). Use `--out-dir` to write elsewhere. Results are reproducible for
the same seed, thread count and torch version.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from retrofit.datasets.demo import REGENERATE_COMMAND, SETTINGS_NAME, WEIGHTS_NAME, DemoCNN
from retrofit.datasets.synthetic import SyntheticConceptDataset, concept_world

logger = logging.getLogger("train_demo_classifier")

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "retrofit" / "weights"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-classes", type=int, default=50)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="world seed and training seed")
    p.add_argument("--train-images", type=int, default=128_000, help="fresh images, seen once")
    p.add_argument("--test-images", type=int, default=5_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate")
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--feature-dim", type=int, default=160)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; on a shared 2-core machine one thread trains faster than two",
    )
    p.add_argument(
        "--no-bf16",
        dest="bf16",
        action="store_false",
        help="train in float32 instead of bfloat16 autocast (slower on CPU)",
    )
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


@torch.no_grad()
def evaluate(model: DemoCNN, dataset: SyntheticConceptDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on `dataset`."""
    model.eval()
    correct = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        correct += int((model(images).argmax(1) == labels).sum())
    return correct / len(dataset)


def atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; package data must be readable by all
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()

    world = concept_world(args.n_classes, args.seed)
    train = SyntheticConceptDataset(
        args.train_images, image_size=args.image_size, split="train", world=world
    )
    test = SyntheticConceptDataset(
        args.test_images, image_size=args.image_size, split="test", world=world
    )
    logger.info("scenes drawn in %.1fs", time.perf_counter() - start)

    model = DemoCNN(args.n_classes, width=args.width, feature_dim=args.feature_dim)
    model = model.to(memory_format=torch.channels_last)
    loader = DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    steps = len(loader)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.15
    )
    model.train()
    for step, (images, labels) in enumerate(loader, 1):
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps:
            logger.info(
                "step %d/%d loss %.3f lr %.3f (%.0fs)",
                step,
                steps,
                loss.item(),
                schedule.get_last_lr()[0],
                time.perf_counter() - start,
            )
    train_seconds = time.perf_counter() - start
    accuracy = evaluate(model, test)
    logger.info(
        "test accuracy %.4f on %d images, trained in %.0fs", accuracy, len(test), train_seconds
    )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    atomic_write(args.out_dir / WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
    settings = {
        "n_classes": args.n_classes,
        "image_size": args.image_size,
        "seed": args.seed,
        "input": "float32 CHW in [0, 1], no normalisation",
        "architecture": {"name": "DemoCNN", "width": args.width, "feature_dim": args.feature_dim},
        "test_accuracy": round(accuracy, 4),
        "test_images": args.test_images,
        "train_images": args.train_images,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "threads": args.threads,
        "bf16": args.bf16,
        "train_seconds": round(train_seconds, 1),
        "torch_version": torch.__version__,
        "class_names": world.class_names,
        "command": " ".join([REGENERATE_COMMAND, *(argv if argv is not None else sys.argv[1:])]),
    }

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(settings, f, indent=2)
            f.write("\n")

    atomic_write(args.out_dir / SETTINGS_NAME, write_json)
    logger.info("wrote %s and %s", args.out_dir / WEIGHTS_NAME, args.out_dir / SETTINGS_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
