"""Train the tiny CLIP shipped in retrofit/weights/ (tiny_clip.safetensors + tiny_clip.json).

It gives the synthetic concept world a concept encoder without any download: open_clip's own
`CLIP` model code in a small custom config, open_clip's `SimpleTokenizer` (its BPE vocabulary
ships inside the open_clip package), trained contrastively on rendered images of the demo
world and texts describing them:
  - the full caption ("a red striped circle and a blue dotted star on a grass background"),
  - or one or two of the image's concepts in a prompt template ("a photo of red striped").
A text matches every image that shows all of its concepts, so the loss is a multi-positive
InfoNCE in both directions. Each batch also carries texts that match no image (curated
concepts the world lacks, and the even-indexed general-list words), so words the synthetic
captions never use do not land on the images by chance; the odd-indexed general words stay
unseen, for the benchmark's distractors.

Seeded end to end, on one CPU thread: about 9 minutes wall clock on a busy shared 2-core
machine (a fraction of that on an idle one). Run from the repository root:
    python scripts/train_tiny_clip.py
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrofit.cache import atomic_save_safetensors, atomic_write_bytes  # noqa: E402
from retrofit.concepts.encoders import (  # noqa: E402
    TINY_CLIP_SETTINGS,
    TINY_CLIP_WEIGHTS,
    Preprocess,
    build_open_clip,
)
from retrofit.concepts.vocabulary import (  # noqa: E402
    DEFAULT_TEMPLATES,
    curated_concepts,
    general_words,
)
from retrofit.datasets import SyntheticConceptDataset, concept_world  # noqa: E402

logger = logging.getLogger("train_tiny_clip")

WEIGHTS_DIR = ROOT / "retrofit" / "weights"
CONTEXT_LENGTH = 28  # the longest caption is 23 BPE tokens
PREPROCESS = Preprocess(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")
TEXT_CFG = {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 64, "heads": 2,
            "layers": 2, "mlp_ratio": 2.0}  # fmt: skip
VISION_CFG = {"image_size": 64, "patch_size": 8, "width": 64, "layers": 3, "head_width": 32,
              "mlp_ratio": 2.0}  # fmt: skip
HARD_GROUPS = (0, 2)  # shape and texture, in ConceptWorld.concept_group_index
# Group order in which a one- or two-concept text names its concepts ("red striped circle").
GROUP_ORDER = ("colour", "texture", "shape", "background")


def negative_pool(concept_names: list[str]) -> list[str]:
    """Texts that match no image: the curated concepts the world does not have, and the
    even-indexed general words sharing no token with a world concept (the odd-indexed ones
    stay unseen, for the benchmark's distractors)."""
    tokens = {t for name in concept_names for t in name.split()}
    curated = [c for c in curated_concepts() if c not in concept_names]
    words = [w for w in general_words()[0::2] if not any(t in w or w in t for t in tokens)]
    return list(dict.fromkeys(curated + words))


def texts_for(
    index: int,
    dataset: SyntheticConceptDataset,
    order: list[int],
    rng: random.Random,
    groups: list[int],
) -> tuple[str, frozenset[int]]:
    """One training text for image `index` and the concepts it asserts.

    The first concept of a short text is a shape or texture two times in three: colours and
    backgrounds are learnt quickly, shapes and textures need the extra signal.
    """
    present = dataset.concepts[index].nonzero().flatten().tolist()
    if rng.random() < 0.35:
        return dataset.captions[index], frozenset(present)
    hard = [c for c in present if groups[c] in HARD_GROUPS]
    pool = hard if hard and rng.random() < 2 / 3 else present
    first = pool[int(rng.random() * len(pool))]
    rest = [c for c in present if c != first]
    chosen = (
        [first] if rng.random() < 0.7 or not rest else [first, rest[int(rng.random() * len(rest))]]
    )
    chosen.sort(key=order.index)
    phrase = " ".join(dataset.concept_names[c] for c in chosen)
    template = DEFAULT_TEMPLATES[int(rng.random() * len(DEFAULT_TEMPLATES))]
    return template.format(phrase), frozenset(chosen)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    target = target / target.sum(dim=1, keepdim=True)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def render(dataset: SyntheticConceptDataset) -> torch.Tensor:
    return torch.stack([(dataset[i][0] * 255 + 0.5).to(torch.uint8) for i in range(len(dataset))])


@torch.no_grad()
def evaluate(model, tokenizer, dataset: SyntheticConceptDataset, images: torch.Tensor) -> dict:
    """Caption retrieval both ways and per-concept AUC of image-concept similarity."""
    model.eval()
    pixels = PREPROCESS(images.float() / 255)
    img = torch.cat([F.normalize(model.encode_image(p), dim=-1) for p in pixels.split(256)])
    captions = dataset.captions
    txt = torch.cat(
        [
            F.normalize(model.encode_text(tokenizer(captions[s : s + 256])), dim=-1)
            for s in range(0, len(captions), 256)
        ]
    )
    sims = img @ txt.T
    same = torch.tensor([[a == b for b in captions] for a in captions])
    i2t = same[torch.arange(len(captions)), sims.argmax(dim=1)].float().mean()
    t2i = same[sims.argmax(dim=0), torch.arange(len(captions))].float().mean()
    names = dataset.concept_names
    prompts = [t.format(n) for n in names for t in DEFAULT_TEMPLATES]
    concept = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
    concept = F.normalize(concept.view(len(names), len(DEFAULT_TEMPLATES), -1).mean(1), dim=-1)
    scores = img @ concept.T
    aucs = []
    for k in range(len(names)):
        pos, neg = scores[dataset.concepts[:, k], k], scores[~dataset.concepts[:, k], k]
        aucs.append(float((pos[:, None] > neg[None, :]).float().mean()))
    return {
        "test_images": len(captions),
        "image_to_caption_top1": round(float(i2t), 4),
        "caption_to_image_top1": round(float(t2i), 4),
        "concept_auc_mean": round(sum(aucs) / len(aucs), 4),
        "concept_auc_min": round(min(aucs), 4),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-classes", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--test-images", type=int, default=1_000)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--negatives", type=int, default=64, help="no-match texts per batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    # One thread: on a shared 2-core machine a second one made each step ~5x slower.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args()

    import open_clip

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    world = concept_world(args.n_classes, args.seed)
    train = SyntheticConceptDataset(
        args.train_images, image_size=args.image_size, split="train", world=world
    )
    test = SyntheticConceptDataset(
        args.test_images, image_size=args.image_size, split="test", world=world
    )
    start = time.perf_counter()
    train_images, test_images = render(train), render(test)
    logger.info("rendered %d + %d images", len(train), len(test))
    tokenizer = open_clip.SimpleTokenizer(context_length=CONTEXT_LENGTH)
    model_config = {"embed_dim": 64, "vision_cfg": VISION_CFG, "text_cfg": TEXT_CFG}
    model = build_open_clip(model_config)
    groups = world.concept_group_index
    order = sorted(range(world.n_concepts), key=lambda k: (GROUP_ORDER.index(
        ("shape", "colour", "texture", "background")[groups[k]]), k))  # fmt: skip
    negatives = negative_pool(world.concept_names)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
        lr=args.lr,
    )
    steps_per_epoch = (len(train) + args.batch_size - 1) // args.batch_size
    total = args.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=args.lr, total_steps=total, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(args.seed)
    rng = random.Random(f"tiny-clip/{args.seed}")
    concepts = train.concepts
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            index = perm[step * args.batch_size : (step + 1) * args.batch_size]
            texts, asserted = zip(*(texts_for(int(i), train, order, rng, groups) for i in index))
            negs = [
                DEFAULT_TEMPLATES[int(rng.random() * len(DEFAULT_TEMPLATES))].format(
                    negatives[int(rng.random() * len(negatives))]
                )
                for _ in range(args.negatives)
            ]
            match = torch.zeros(len(index), len(texts) + len(negs))
            present = concepts[index]
            for t, chosen in enumerate(asserted):
                match[:, t] = present[:, list(chosen)].all(dim=1).float()
            pixels = PREPROCESS(train_images[index].float() / 255)
            img = F.normalize(model.encode_image(pixels), dim=-1)
            txt = F.normalize(model.encode_text(tokenizer(list(texts) + negs)), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
            loss = 0.5 * (
                soft_cross_entropy(logits, match)
                + soft_cross_entropy(logits[:, : len(texts)].T, match[:, : len(texts)].T)
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
        logger.info(
            "epoch %d/%d loss %.4f (%.0f s)",
            epoch + 1,
            args.epochs,
            sum(losses) / len(losses),
            time.perf_counter() - start,
        )
    metrics = evaluate(model, tokenizer, test, test_images)
    seconds = time.perf_counter() - start
    logger.info("test metrics %s, %.0f s in all", metrics, seconds)

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    args.output.mkdir(parents=True, exist_ok=True)
    weights = args.output / TINY_CLIP_WEIGHTS
    atomic_save_safetensors(state, weights, {"format": "pt", "producer": "train_tiny_clip.py"})
    settings = {
        "model": model_config,
        "tokenizer": {"type": "open_clip.SimpleTokenizer", "context_length": CONTEXT_LENGTH},
        "preprocess": PREPROCESS.to_dict(),
        "world": {"n_classes": args.n_classes, "image_size": args.image_size, "seed": args.seed},
        "training": {
            "train_images": args.train_images,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "negatives_per_batch": args.negatives,
            "negative_texts": "curated concepts absent from the world, and even-indexed "
            "general_words.txt entries sharing no token with a world concept",
            "lr": args.lr,
            "threads": args.threads,
            "seed": args.seed,
            "templates": list(DEFAULT_TEMPLATES),
            "seconds": round(seconds, 1),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
        },
        "weights": {
            "dtype": "float16",
            "parameters": sum(v.numel() for v in state.values()),
            "bytes": weights.stat().st_size,
        },
        "metrics": metrics,
        "command": "python scripts/train_tiny_clip.py",
    }
    atomic_write_bytes(
        args.output / TINY_CLIP_SETTINGS, (json.dumps(settings, indent=2) + "\n").encode()
    )
    logger.info("wrote %s (%.1f MB)", weights, weights.stat().st_size / 1e6)


if __name__ == "__main__":
    main()
