"""Train the tiny CLIP shipped in retrofit/weights/ (tiny_clip.safetensors + tiny_clip.json).

It gives the synthetic concept world a concept encoder without any download: open_clip's own
`CLIP` model code in a small custom config (a ModifiedResNet image tower, a 2-layer text
transformer), open_clip's `SimpleTokenizer` (its BPE vocabulary ships inside the open_clip
package), trained on rendered images of the demo world's val split (the benchmark probes the
train split) and texts describing them:
  - the full caption ("a red striped circle and a blue dotted star on a grass background"),
  - or one or two of the image's concepts in a prompt template ("a photo of red striped"),
  - every world concept alone, in each batch;
  - texts that match no image: curated concepts the world lacks, even-indexed general-list
    words and the other single-token words of the BPE vocabulary, so words the captions never
    use stay off the images. The odd-indexed general words (and every word sharing a token
    with one) stay unseen, for the benchmark's distractors.
A text matches every image that shows all of its concepts; the loss is SigLIP's sigmoid loss
over every image-text pair, since an image with three objects matches many texts at once.

Seeded end to end, on one CPU thread: about 10-15 minutes wall clock on a shared 2-core
machine. Run from the repository root:
    python scripts/train_tiny_clip.py
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrofit.concepts.encoders import (  # noqa: E402
    TINY_CLIP_COMMAND,
    TINY_CLIP_SETTINGS,
    TINY_CLIP_WEIGHTS,
    Preprocess,
    build_open_clip,
)
from retrofit.concepts.scoring import auc_scores  # noqa: E402
from retrofit.concepts.vocabulary import (  # noqa: E402
    DEFAULT_TEMPLATES,
    curated_concepts,
    general_words,
)
from retrofit.datasets import SyntheticConceptDataset, concept_world  # noqa: E402
from retrofit.safe_io import atomic_save_safetensors, atomic_write_bytes  # noqa: E402

logger = logging.getLogger("train_tiny_clip")

WEIGHTS_DIR = ROOT / "retrofit" / "weights"
CONTEXT_LENGTH = 28  # the longest caption is 23 BPE tokens
PREPROCESS = Preprocess(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")
TEXT_CFG = {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 64, "heads": 2,
            "layers": 2, "mlp_ratio": 2.0}  # fmt: skip
# open_clip's ModifiedResNet (`layers` as a list): with the same loss it told shapes apart
# better than a 3-layer ViT on 8-pixel patches (test AUC 0.85-1.0 against 0.81-0.87).
VISION_CFG = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 12, "head_width": 32}
# Group order in which a one- or two-concept text names its concepts ("red striped circle").
GROUP_ORDER = ("colour", "texture", "shape", "background")
CAPTION_SHARE = 0.25  # texts that are the full caption; the rest name one or two concepts


def _unrelated(word: str, tokens: set[str]) -> bool:
    return not any(t in word or word in t for t in tokens)


def negative_pool(concept_names: list[str], tokenizer) -> list[str]:
    """Texts that match no image: the curated concepts the world does not have, the
    even-indexed general words, and every other single-token word of the BPE vocabulary
    (letters only, 3+ characters), all sharing no token with a world concept.

    The vocabulary's words teach the text tower that text it was not taught describes none of
    these images, as a real CLIP knows of its many words; without them an unseen word's
    embedding is a random direction that tracks some feature by chance. Words holding a token
    of an odd-indexed general word are left out: those stay unseen, for the benchmark's
    distractors.
    """
    tokens = {t for name in concept_names for t in name.split()}
    held_out = {i for w in general_words()[1::2] for i in tokenizer.encode(w)}
    curated = [c for c in curated_concepts() if c not in concept_names]
    words = [w for w in general_words()[0::2] if _unrelated(w, tokens)]
    vocabulary = [
        piece[: -len("</w>")]
        for piece, index in tokenizer.encoder.items()
        if piece.endswith("</w>") and index not in held_out
    ]
    singles = [
        w
        for w in vocabulary
        if len(w) >= 3 and w.isalpha() and w.islower() and _unrelated(w, tokens)
        and not held_out & set(tokenizer.encode(w))
    ]  # fmt: skip
    return list(dict.fromkeys(curated + words + singles))


def texts_for(
    index: int,
    dataset: SyntheticConceptDataset,
    order: list[int],
    rng: random.Random,
    groups: list[int],
) -> tuple[str, frozenset[int]]:
    """One training text for image `index` and the concepts it asserts.

    A short text's first concept comes from a group drawn uniformly among the image's groups,
    so each group (not each concept occurrence) gets the same share of single-concept prompts:
    otherwise the three objects' shapes, colours and textures outnumber the one background.
    """
    present = dataset.concepts[index].nonzero().flatten().tolist()
    if rng.random() < CAPTION_SHARE:
        return dataset.captions[index], frozenset(present)
    by_group = sorted({groups[c] for c in present})
    group = by_group[int(rng.random() * len(by_group))]
    pool = [c for c in present if groups[c] == group]
    first = pool[int(rng.random() * len(pool))]
    rest = [c for c in present if c != first]
    chosen = (
        [first] if rng.random() < 0.7 or not rest else [first, rest[int(rng.random() * len(rest))]]
    )
    chosen.sort(key=order.index)
    phrase = " ".join(dataset.concept_names[c] for c in chosen)
    template = DEFAULT_TEMPLATES[int(rng.random() * len(DEFAULT_TEMPLATES))]
    return template.format(phrase), frozenset(chosen)


def sigmoid_loss(model, img: torch.Tensor, txt: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise loss: every (image, text) pair is its own yes/no question. With a
    softmax over texts (multi-positive InfoNCE) an image of three objects matches many texts at
    once, and "striped", "dotted" and "checkered" stayed near-duplicates (test AUC ~0.7)."""
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T + model.logit_bias
    return F.binary_cross_entropy_with_logits(logits, match, reduction="sum") / img.shape[0]


def concept_prompts(names: list[str], rng: random.Random) -> list[str]:
    """Every world concept alone, in a random template: each batch asks about each concept."""
    return [DEFAULT_TEMPLATES[int(rng.random() * len(DEFAULT_TEMPLATES))].format(n) for n in names]


def batch_texts(
    index: torch.Tensor, train: SyntheticConceptDataset, context: dict, rng: random.Random
) -> tuple[list[str], torch.Tensor]:
    """A batch's texts (one per image, every concept alone, then no-match texts) and which
    images each one matches: those showing all the concepts it names."""
    texts, asserted = zip(
        *(texts_for(int(i), train, context["order"], rng, context["groups"]) for i in index)
    )
    names = train.concept_names
    negatives = context["negatives"]
    negs = [
        DEFAULT_TEMPLATES[int(rng.random() * len(DEFAULT_TEMPLATES))].format(
            negatives[int(rng.random() * len(negatives))]
        )
        for _ in range(context["n_negatives"])
    ]
    present = train.concepts[index]
    sets = [list(c) for c in asserted] + [[k] for k in range(len(names))]
    match = torch.zeros(len(index), len(sets) + len(negs))
    for t, chosen in enumerate(sets):
        match[:, t] = present[:, chosen].all(dim=1).float()
    return list(texts) + concept_prompts(names, rng) + negs, match


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
    aucs = auc_scores(scores, dataset.concepts).diagonal().tolist()
    cosine = concept @ concept.T - 2 * torch.eye(len(names))
    return {
        "test_images": len(captions),
        "image_to_caption_top1": round(float(i2t), 4),
        "caption_to_image_top1": round(float(t2i), 4),
        "concept_auc_mean": round(sum(aucs) / len(aucs), 4),
        "concept_auc_min": round(min(aucs), 4),
        "concept_auc": {n: round(a, 4) for n, a in zip(names, aucs)},
        "concept_text_cosine_max": round(float(cosine.max()), 4),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-classes", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=15_000)
    parser.add_argument("--test-images", type=int, default=1_000)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--negatives", type=int, default=64, help="no-match texts per batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    # One thread: on a shared 2-core machine a second one made each step ~5x slower.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=WEIGHTS_DIR)
    return parser.parse_args()


def make_optimiser(model, lr: float, total_steps: int) -> tuple:
    """AdamW without decay on norms, biases, embeddings and temperatures; one-cycle schedule."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}], lr=lr
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=total_steps, pct_start=0.1
    )
    return optimiser, schedule


def train(model, tokenizer, data: SyntheticConceptDataset, images: torch.Tensor, args) -> None:
    """Seeded epochs of shuffled batches, each with its texts and the sigmoid loss."""
    groups = data.world.concept_group_index
    group_names = ("shape", "colour", "texture", "background")
    context = {
        "groups": groups,
        "order": sorted(
            range(data.world.n_concepts),
            key=lambda k: (GROUP_ORDER.index(group_names[groups[k]]), k),
        ),
        "negatives": negative_pool(data.concept_names, tokenizer),
        "n_negatives": args.negatives,
    }
    steps = (len(data) + args.batch_size - 1) // args.batch_size
    optimiser, schedule = make_optimiser(model, args.lr, args.epochs * steps)
    generator = torch.Generator().manual_seed(args.seed)
    rng = random.Random(f"tiny-clip/{args.seed}")
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(data), generator=generator)
        losses = []
        for step in range(steps):
            index = perm[step * args.batch_size : (step + 1) * args.batch_size]
            texts, match = batch_texts(index, data, context, rng)
            img = F.normalize(model.encode_image(PREPROCESS(images[index].float() / 255)), dim=-1)
            txt = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
            loss = sigmoid_loss(model, img, txt, match)
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


def save(model, model_config: dict, metrics: dict, seconds: float, args) -> None:
    """Float16 weights (integer buffers kept) and the JSON that rebuilds and describes them."""
    import open_clip

    state = {
        k: (v.to(torch.float16) if v.is_floating_point() else v).detach().contiguous()
        for k, v in model.state_dict().items()
    }
    args.output.mkdir(parents=True, exist_ok=True)
    weights = args.output / TINY_CLIP_WEIGHTS
    atomic_save_safetensors(state, weights, {"format": "pt", "producer": "train_tiny_clip.py"})
    settings = {
        "model": model_config,
        "tokenizer": {"type": "open_clip.SimpleTokenizer", "context_length": CONTEXT_LENGTH},
        "preprocess": PREPROCESS.to_dict(),
        "world": {"n_classes": args.n_classes, "image_size": args.image_size, "seed": args.seed},
        "training": {
            "split": "val",
            "train_images": args.train_images,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "loss": "sigmoid (SigLIP) over every image-text pair",
            "texts_per_batch": "one per image (caption or 1-2 of its concepts), each world "
            "concept alone, and the no-match texts",
            "negatives_per_batch": args.negatives,
            "negative_texts": "curated concepts absent from the world, even-indexed "
            "general_words.txt entries and single-token words of the BPE vocabulary, sharing no "
            "token with a world concept (none holds a token of an odd-indexed general word)",
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
        "command": TINY_CLIP_COMMAND,
    }
    atomic_write_bytes(
        args.output / TINY_CLIP_SETTINGS, (json.dumps(settings, indent=2) + "\n").encode()
    )
    logger.info("wrote %s (%.1f MB)", weights, weights.stat().st_size / 1e6)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args()
    import open_clip

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    world = concept_world(args.n_classes, args.seed)
    # The val split: the benchmark probes the train split, which this CLIP then never sees.
    data = SyntheticConceptDataset(
        args.train_images, image_size=args.image_size, split="val", world=world
    )
    test = SyntheticConceptDataset(
        args.test_images, image_size=args.image_size, split="test", world=world
    )
    start = time.perf_counter()
    images, test_images = render(data), render(test)
    logger.info("rendered %d + %d images", len(data), len(test))
    tokenizer = open_clip.SimpleTokenizer(context_length=CONTEXT_LENGTH)
    model_config = {
        "embed_dim": 64,
        "vision_cfg": VISION_CFG,
        "text_cfg": TEXT_CFG,
        "init_logit_scale": math.log(10),
        "init_logit_bias": -2.0,
    }
    model = build_open_clip(model_config)
    train(model, tokenizer, data, images, args)
    metrics = evaluate(model, tokenizer, test, test_images)
    seconds = time.perf_counter() - start
    logger.info("test metrics %s, %.0f s in all", metrics, seconds)
    save(model, model_config, metrics, seconds, args)


if __name__ == "__main__":
    main()
