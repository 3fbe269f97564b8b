"""Train the two spurious-background CNNs and write their weights into the package.

`spurious`: trained on scenes whose background is the class's own with probability 0.9, so the
background is a shortcut. `control`: the same architecture and schedule on shuffled backgrounds,
where only the object's shape predicts the class. Both see the same number of freshly rendered
32x32 images once (SGD + one-cycle, one torch thread, seeded), a few minutes of CPU in all.

Regenerate from the repository root (overwrites the files atomically):

    python scripts/train_spurious_classifier.py

which writes `retrofit/weights/spurious_cnn_{spurious,control}.safetensors` and
`retrofit/weights/spurious_cnn.json` (world, architecture, training settings and the measured
accuracies of both models on aligned and shuffled test backgrounds).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from retrofit.datasets.demo import DemoCNN
from retrofit.datasets.spurious import SpuriousBackgroundDataset
from retrofit.datasets.spurious_classifier import (
    KINDS,
    REGENERATE_COMMAND,
    SETTINGS_NAME,
    weights_name,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo_classifier import atomic_write  # noqa: E402

logger = logging.getLogger("train_spurious_classifier")

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "retrofit" / "weights"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-classes", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="world seed and training seed")
    p.add_argument("--correlation", type=float, default=0.9, help="spurious split only")
    p.add_argument("--train-images", type=int, default=40_000, help="fresh images, seen once")
    p.add_argument("--test-images", type=int, default=2_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


@torch.no_grad()
def accuracies(model: DemoCNN, dataset: SpuriousBackgroundDataset) -> dict[str, float]:
    """Accuracy overall, on aligned and on misaligned backgrounds, and over the worst group
    (class x aligned)."""
    model.eval()
    predicted = torch.cat([model(x).argmax(1) for x, _ in DataLoader(dataset, batch_size=256)])
    correct = (predicted == dataset.labels).float()
    groups = [
        correct[(dataset.labels == c) & (dataset.aligned == a)]
        for c in range(dataset.n_classes)
        for a in (True, False)
    ]
    return {
        "accuracy": float(correct.mean()),
        "aligned": float(correct[dataset.aligned].mean()),
        "misaligned": float(correct[~dataset.aligned].mean()),
        "worst_group": min(float(g.mean()) for g in groups if len(g)),
    }


def train(args: argparse.Namespace, kind: str) -> tuple[DemoCNN, float]:
    torch.manual_seed(args.seed)
    data = SpuriousBackgroundDataset(
        args.train_images,
        n_classes=args.n_classes,
        image_size=args.image_size,
        seed=args.seed,
        split="train",
        background="spurious" if kind == "spurious" else "shuffled",
        correlation=args.correlation,
    )
    model = DemoCNN(args.n_classes, width=args.width, feature_dim=args.feature_dim)
    loader = DataLoader(
        data,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=len(loader), pct_start=0.15
    )
    start = time.perf_counter()
    model.train()
    for step, (images, labels) in enumerate(loader, 1):
        loss = torch.nn.functional.cross_entropy(model(images), labels, label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == len(loader):
            logger.info("%s step %d/%d loss %.3f", kind, step, len(loader), loss.item())
    return model.eval(), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    tests = {
        mode: SpuriousBackgroundDataset(
            args.test_images,
            n_classes=args.n_classes,
            image_size=args.image_size,
            seed=args.seed,
            split="test",
            background=mode,
            correlation=args.correlation,
        )
        for mode in ("spurious", "shuffled")
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    measured = {}
    for kind in KINDS:
        model, seconds = train(args, kind)
        measured[kind] = {
            "train_seconds": round(seconds, 1),
            **{f"test_{mode}": accuracies(model, data) for mode, data in tests.items()},
        }
        logger.info("%s: %s", kind, measured[kind])
        state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
        atomic_write(args.out_dir / weights_name(kind), lambda tmp, s=state: save_file(s, tmp))
    settings = {
        "n_classes": args.n_classes,
        "image_size": args.image_size,
        "seed": args.seed,
        "correlation": args.correlation,
        "input": "float32 CHW in [0, 1], no normalisation",
        "architecture": {"name": "DemoCNN", "width": args.width, "feature_dim": args.feature_dim},
        "train_images": args.train_images,
        "test_images": args.test_images,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "threads": args.threads,
        "torch_version": torch.__version__,
        "models": measured,
        "command": " ".join([REGENERATE_COMMAND, *(argv if argv is not None else sys.argv[1:])]),
    }

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(settings, f, indent=2)
            f.write("\n")

    atomic_write(args.out_dir / SETTINGS_NAME, write_json)
    logger.info("wrote the weights and %s to %s", SETTINGS_NAME, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
