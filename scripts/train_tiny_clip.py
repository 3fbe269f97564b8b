"""Train the tiny CLIP shipped in retrofit/weights/ (tiny_clip.safetensors + tiny_clip.json).

It gives the synthetic concept world a concept encoder without any download: open_clip's own
`CLIP` model code in a small custom config (a small image tower, a 2-layer text transformer),
open_clip's `SimpleTokenizer` (its BPE vocabulary ships inside the open_clip package), trained on
rendered scenes of many concept worlds and texts describing them:
  - the full caption ("a red striped circle and a blue dotted star on a grass background"),
  - or one or two of the image's concepts in a prompt template ("a photo of red striped"),
  - every world concept alone, in each batch;
  - texts that match no image: curated concepts the world lacks, even-indexed general-list
    words and the other single-token words of the BPE vocabulary, so words the captions never
    use stay off the images. The odd-indexed general words (and every word sharing a token
    with one) stay unseen, for the benchmark's distractors.
A text matches every image that shows all of its concepts; the loss is SigLIP's sigmoid loss
over every image-text pair, since an image with three objects matches many texts at once.

The scenes come from `--worlds` worlds of other seeds than any benchmark world (the val split),
so the CLIP cannot learn one world's class ties (every triangle one of a few colours) in place
of the concepts themselves; it is tested on the benchmark worlds' test splits.

Seeded end to end (on a GPU, bf16 kernels are not bit-reproducible). `--steps` fixes the run;
`--time-budget` instead times the first steps and sets `--steps` to fit (the JSON records the
steps, so the run can be repeated). The shipped weights took 7 minutes on one H200 GPU, with
five other runs beside them; on a CPU expect hours. Run from the repository root (a GPU is
used when there is one):
    python scripts/train_tiny_clip.py
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import multiprocessing
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
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
from retrofit.io.files import atomic_save_safetensors, atomic_write_bytes  # noqa: E402

logger = logging.getLogger("train_tiny_clip")

WEIGHTS_DIR = ROOT / "retrofit" / "weights"
CONTEXT_LENGTH = 28  # the longest caption is 23 BPE tokens
MEAN_STD = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
TEXT_CFG = {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 64, "heads": 2,
            "layers": 2, "mlp_ratio": 2.0}  # fmt: skip
# open_clip's ModifiedResNet (`layers` as a list). Trained for 3,863 steps of 512 scenes of 32
# worlds (7 minutes on one GPU) it separates every concept of the test worlds (AUC >= 0.996);
# after 940 steps of 256 scenes of one world (15 minutes on a CPU) shapes stayed at 0.58-0.95.
# Wider (16) or at 96-128 px it did no better for its CPU cost; a 4-layer ViT on 8-pixel
# patches reached 0.86.
VISION_CFG = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 12, "head_width": 32}
# Group order in which a one- or two-concept text names its concepts ("red striped circle").
GROUP_ORDER = ("colour", "texture", "shape", "background")
CAPTION_SHARE = 0.25  # texts that are the full caption; the rest name one or two concepts
# The benchmark worlds (n_classes, seed): the demo world and benchmarks/weights/world2, world3;
# and one larger world. The CLIP never trains on them.
TEST_WORLDS = ((50, 0), (20, 1), (30, 7), (80, 3))
FIRST_TRAINING_SEED = 1000


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
    dataset: MixedWorlds,
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
    index: torch.Tensor, train: MixedWorlds, context: dict, rng: random.Random
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
    sets = [list(c) for c in asserted] + [[k] for k in range(len(names))]
    required = torch.zeros(len(sets), len(names))
    for t, chosen in enumerate(sets):
        required[t, chosen] = 1.0
    shown = train.concepts[index].float() @ required.T
    match = torch.cat([(shown == required.sum(1)).float(), torch.zeros(len(index), len(negs))], 1)
    return list(texts) + concept_prompts(names, rng) + negs, match


@dataclass
class MixedWorlds:
    """Scenes of many concept worlds side by side: same vocabulary, different class signatures.

    One world's classes tie concepts together (every triangle of the demo world is one of a few
    colours), and a CLIP trained on it learns those ties instead of the shapes: on the demo
    world's own test split its shape AUC was 0.85-0.95, on worlds of other seeds 0.58-0.81.
    Drawing the training scenes from many worlds breaks the ties, as a real CLIP's data does.
    """

    parts: list[SyntheticConceptDataset]

    @property
    def world(self):
        return self.parts[0].world

    @property
    def concept_names(self) -> list[str]:
        return self.parts[0].concept_names

    @cached_property
    def concepts(self) -> torch.Tensor:
        return torch.cat([p.concepts for p in self.parts])

    @cached_property
    def captions(self) -> list[str]:
        return [c for p in self.parts for c in p.captions]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)


def training_worlds(n_worlds: int, n_images: int, image_size: int, seed: int) -> MixedWorlds:
    """The val split of `n_worlds` worlds of 10-80 classes with seeds from
    FIRST_TRAINING_SEED + seed on: no test world, and no split the benchmark probes."""
    rng = random.Random(f"tiny-clip-worlds/{seed}")
    parts = []
    for k in range(n_worlds):
        world = concept_world(10 + int(rng.random() * 71), FIRST_TRAINING_SEED + seed + k)
        share = n_images // n_worlds + (k < n_images % n_worlds)
        parts.append(
            SyntheticConceptDataset(share, image_size=image_size, split="val", world=world)
        )
    return MixedWorlds(parts)


def _render_range(dataset: SyntheticConceptDataset, start: int, stop: int) -> torch.Tensor:
    torch.set_num_threads(1)
    return torch.stack([(dataset[i][0] * 255 + 0.5).to(torch.uint8) for i in range(start, stop)])


def render(dataset: SyntheticConceptDataset | MixedWorlds, workers: int = 1) -> torch.Tensor:
    """Every scene as uint8 pixels, in chunks over `workers` processes (scenes are pure
    functions of their index, so the result does not depend on the split into chunks)."""
    parts = dataset.parts if isinstance(dataset, MixedWorlds) else [dataset]
    jobs = [(p, s, min(s + 500, len(p))) for p in parts for s in range(0, len(p), 500)]
    if workers <= 1:
        return torch.cat([_render_range(*job) for job in jobs])
    # Spawned, not forked: a forked child of a process with a torch thread pool can hang.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return torch.cat(list(pool.map(_render_range, *zip(*jobs))))


@torch.no_grad()
def encode_images(model, images: torch.Tensor, preprocess: Preprocess, device) -> torch.Tensor:
    """Unit-norm embeddings of uint8 scenes, in batches, on the CPU."""
    out = [
        F.normalize(model.encode_image(preprocess(x.to(device).float() / 255)), dim=-1).float()
        for x in images.split(256)
    ]
    return torch.cat(out).cpu()


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], device) -> torch.Tensor:
    """Unit-norm embeddings of texts, in batches, on the CPU."""
    out = [
        F.normalize(model.encode_text(tokenizer(texts[s : s + 256]).to(device)), dim=-1).float()
        for s in range(0, len(texts), 256)
    ]
    return torch.cat(out).cpu()


@torch.no_grad()
def evaluate(
    model, tokenizer, dataset: SyntheticConceptDataset, images: torch.Tensor, preprocess, device
) -> dict:
    """Caption retrieval both ways and per-concept AUC of image-concept similarity."""
    model.eval()
    img = encode_images(model, images, preprocess, device)
    captions = dataset.captions
    sims = img @ encode_texts(model, tokenizer, captions, device).T
    ids = {caption: k for k, caption in enumerate(dict.fromkeys(captions))}
    caption_id = torch.tensor([ids[c] for c in captions])
    same = caption_id[:, None] == caption_id[None]
    i2t = same[torch.arange(len(captions)), sims.argmax(dim=1)].float().mean()
    t2i = same[sims.argmax(dim=0), torch.arange(len(captions))].float().mean()
    names = dataset.concept_names
    prompts = [t.format(n) for n in names for t in DEFAULT_TEMPLATES]
    concept = encode_texts(model, tokenizer, prompts, device)
    concept = F.normalize(concept.view(len(names), len(DEFAULT_TEMPLATES), -1).mean(1), dim=-1)
    aucs = auc_scores(img @ concept.T, dataset.concepts).diagonal().tolist()
    cosine = concept @ concept.T - 2 * torch.eye(len(names))
    shapes = [a for k, a in zip(dataset.world.concept_group_index, aucs) if k == 0]
    return {
        "test_images": len(captions),
        "image_to_caption_top1": round(float(i2t), 4),
        "caption_to_image_top1": round(float(t2i), 4),
        "concept_auc_mean": round(sum(aucs) / len(aucs), 4),
        "concept_auc_min": round(min(aucs), 4),
        "shape_auc_min": round(min(shapes), 4),
        "concept_auc": {n: round(a, 4) for n, a in zip(names, aucs)},
        "concept_text_cosine_max": round(float(cosine.max()), 4),
    }


def held_out_metrics(model, tokenizer, args, preprocess, device) -> dict:
    """Test metrics on every test world: the demo world first."""
    per_world = {}
    for n_classes, seed in TEST_WORLDS:
        world = concept_world(n_classes, seed)
        test = SyntheticConceptDataset(
            args.test_images, image_size=args.image_size, split="test", world=world
        )
        images = render(test, args.workers)
        per_world[f"{n_classes} classes, seed {seed}"] = evaluate(
            model, tokenizer, test, images, preprocess, device
        )
    summary = {
        "worst_world_concept_auc_min": min(m["concept_auc_min"] for m in per_world.values()),
        "worst_world_shape_auc_min": min(m["shape_auc_min"] for m in per_world.values()),
        "concept_auc_mean": round(
            sum(m["concept_auc_mean"] for m in per_world.values()) / len(per_world), 4
        ),
    }
    return {**summary, "per_world": per_world}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=64, help="the worlds' scene size")
    parser.add_argument("--input-size", type=int, default=64, help="the CLIP's input size")
    parser.add_argument(
        "--vision", type=json.loads, default=VISION_CFG, help="open_clip vision_cfg"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worlds", type=int, default=32, help="training worlds")
    parser.add_argument("--train-images", type=int, default=120_000)
    parser.add_argument("--test-images", type=int, default=1_000)
    parser.add_argument("--steps", type=int, default=3863, help="optimiser steps")
    parser.add_argument("--time-budget", type=float, help="seconds of training; sets --steps")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--negatives", type=int, default=64, help="no-match texts per batch")
    parser.add_argument("--lr", type=float, default=2e-3)
    # One thread: on a shared 2-core machine a second one made each step ~5x slower.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="processes rendering scenes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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


class CachedTokenizer:
    """The tokenizer with a memory: batches repeat the same captions and prompts, and
    tokenising them again each step kept a GPU waiting on the CPU."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.rows = tokenizer, {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self.rows]
        if new:
            self.rows.update(zip(new, self.tokenizer(new)))
        return torch.stack([self.rows[t] for t in texts])


class Trainer:
    """Seeded shuffled batches, each with its texts and the sigmoid loss."""

    def __init__(self, model, tokenizer, data: MixedWorlds, images: torch.Tensor, args) -> None:
        groups = data.world.concept_group_index
        group_names = ("shape", "colour", "texture", "background")
        self.context = {
            "groups": groups,
            "order": sorted(
                range(data.world.n_concepts),
                key=lambda k: (GROUP_ORDER.index(group_names[groups[k]]), k),
            ),
            "negatives": negative_pool(data.concept_names, tokenizer),
            "n_negatives": args.negatives,
        }
        self.model, self.data, self.args = model, data, args
        self.tokenizer = CachedTokenizer(tokenizer)
        self.images = images.to(args.device)
        self.preprocess = Preprocess(args.input_size, *MEAN_STD, "bilinear")
        self.generator = torch.Generator().manual_seed(args.seed)
        self.rng = random.Random(f"tiny-clip/{args.seed}")
        self.order = torch.empty(0, dtype=torch.long)

    def next_index(self) -> torch.Tensor:
        """The next batch of a stream of shuffled epochs."""
        if len(self.order) < self.args.batch_size:
            self.order = torch.cat(
                [self.order, torch.randperm(len(self.data), generator=self.generator)]
            )
        index, self.order = self.order[: self.args.batch_size], self.order[self.args.batch_size :]
        return index

    def step(self, optimiser, schedule) -> float:
        device = self.args.device
        index = self.next_index()
        texts, match = batch_texts(index, self.data, self.context, self.rng)
        with torch.autocast("cuda", torch.bfloat16, enabled=device.startswith("cuda")):
            pixels = self.preprocess(self.images[index.to(device)].float() / 255)
            img = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
            tokens = self.tokenizer(texts).to(device)
            txt = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        loss = sigmoid_loss(self.model, img, txt, match.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        return float(loss.detach())

    def run(self, steps: int) -> None:
        optimiser, schedule = make_optimiser(self.model, self.args.lr, steps)
        self.model.train()
        start, losses = time.perf_counter(), []
        for step in range(steps):
            losses.append(self.step(optimiser, schedule))
            if (step + 1) % 100 == 0 or step + 1 == steps:
                logger.info(
                    "step %d/%d loss %.4f (%.0f s)",
                    step + 1,
                    steps,
                    sum(losses) / len(losses),
                    time.perf_counter() - start,
                )
                losses = []


def steps_for_budget(trainer: Trainer, budget: float) -> int:
    """Steps that fit `budget` seconds, timed on 20 throw-away steps of a model copy."""
    probe = copy.deepcopy(trainer)
    optimiser, schedule = make_optimiser(probe.model, probe.args.lr, 10_000)
    probe.step(optimiser, schedule)
    start = time.perf_counter()
    for _ in range(20):
        probe.step(optimiser, schedule)
    return max(1, int(budget / ((time.perf_counter() - start) / 20)))


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
        "preprocess": Preprocess(args.input_size, *MEAN_STD, "bilinear").to_dict(),
        "training": {
            "worlds": f"{args.worlds} worlds of 10-80 classes, seeds "
            f"{FIRST_TRAINING_SEED + args.seed}-{FIRST_TRAINING_SEED + args.seed + args.worlds - 1}",
            "split": "val",
            "image_size": args.image_size,
            "train_images": args.train_images,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "loss": "sigmoid (SigLIP) over every image-text pair",
            "texts_per_batch": "one per image (caption or 1-2 of its concepts), each world "
            "concept alone, and the no-match texts",
            "negatives_per_batch": args.negatives,
            "negative_texts": "curated concepts absent from the world, even-indexed "
            "general_words.txt entries and single-token words of the BPE vocabulary, sharing no "
            "token with a world concept (none holds a token of an odd-indexed general word)",
            "lr": args.lr,
            "device": torch.device(args.device).type,
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
    start = time.perf_counter()
    data = training_worlds(args.worlds, args.train_images, args.image_size, args.seed)
    images = render(data, args.workers)
    logger.info("rendered %d images of %d worlds", len(data), args.worlds)
    tokenizer = open_clip.SimpleTokenizer(context_length=CONTEXT_LENGTH)
    model_config = {
        "embed_dim": 64,
        "vision_cfg": {**args.vision, "image_size": args.input_size},
        "text_cfg": TEXT_CFG,
        "init_logit_scale": math.log(10),
        "init_logit_bias": -2.0,
    }
    model = build_open_clip(model_config).to(args.device)
    trainer = Trainer(model, tokenizer, data, images, args)
    if args.time_budget:
        args.steps = steps_for_budget(trainer, args.time_budget)
        logger.info("%d steps fit %.0f s", args.steps, args.time_budget)
    trainer.run(args.steps)
    metrics = held_out_metrics(model, tokenizer, args, trainer.preprocess, args.device)
    seconds = time.perf_counter() - start
    logger.info("test metrics %s, %.0f s in all", json.dumps(metrics), seconds)
    save(model.cpu(), model_config, metrics, seconds, args)


if __name__ == "__main__":
    main()
