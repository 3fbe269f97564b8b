"""What a real-size concept encoder costs next to the shipped tiny CLIP, on this machine's CPU.

Side by side in one process: the tiny CLIP (`load_encoder("tiny")`, 64 px) and open_clip's
ViT-B-32 architecture, randomly initialised (no weights are downloaded; the cost of a forward
pass does not depend on the weights' values), at its own 224 px preprocessing. For each:
  - seconds to build it and the resident memory it adds (VmRSS after - before);
  - seconds and peak memory per 1,000 images to embed synthetic 64 x 64 images
    (`embed_images`, no cache; ViT-B-32's preprocess resizes them to 224), after one
    untimed warm-up batch;
  - seconds to embed the curated vocabulary's prompts (`embed_concepts`, every template).
Peak memory is the Linux VmHWM of this process minus VmRSS at the stage's start: what the
stage allocated on top of what was resident. Before each stage, glibc's malloc_trim hands
freed memory back (else an earlier stage's freed pages would be reused unseen) and
/proc/self/clear_refs resets VmHWM. open_clip is imported before either encoder is built, so
neither's resident memory counts the import. Ratios are ViT-B-32 / tiny.

Run from the repository root (writes benchmarks/results/encoder_cost.json; --quick writes
encoder_cost_quick.json):
    python -m benchmarks.encoder_cost [--images 1000] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine, write_result
from retrofit.concepts import (
    ConceptEncoder,
    OpenCLIPEncoder,
    embed_concepts,
    embed_images,
    load_encoder,
)
from retrofit.concepts.vocabulary import Vocabulary, load_vocabulary
from retrofit.datasets import SyntheticConceptDataset

MEMORY_METHOD = "VmHWM - VmRSS at stage start (after malloc_trim(0), VmHWM reset by clear_refs)"
ENCODERS: dict[str, Callable[[], ConceptEncoder]] = {
    "tiny": lambda: load_encoder("tiny"),
    "ViT-B-32": lambda: OpenCLIPEncoder("ViT-B-32", None),
}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """fn's result, wall seconds, and its peak and kept memory (MB) above what was resident."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _status_mb("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, _status_mb("VmHWM") - base, _status_mb("VmRSS") - base


def built(build: Callable[[], ConceptEncoder], warm_up: torch.Tensor) -> dict[str, Any]:
    """The encoder, with what building it cost; warmed up (first-call allocations, kernels)."""
    encoder, seconds, _, resident = measured(build)
    encoder.encode_images(warm_up)
    encoder.encode_texts(["warm up"])
    return {
        "encoder": encoder,
        "spec": encoder.spec,
        "image_size": encoder.preprocess.image_size,
        "parameters": sum(p.numel() for p in encoder._module().parameters()),
        "build_seconds": seconds,
        "resident_mb": resident,
    }


def stages(
    encoder: ConceptEncoder, images: torch.Tensor, vocab: Vocabulary, batch: int
) -> dict[str, tuple[float, float]]:
    """(seconds, peak MB) of embedding the images and of embedding the vocabulary's prompts."""
    _, image_s, image_mb, _ = measured(
        lambda: embed_images(encoder, images, batch_size=batch, progress=False)
    )
    _, text_s, text_mb, _ = measured(
        lambda: embed_concepts(encoder, vocab.concepts, vocab.templates)
    )
    return {"image": (image_s, image_mb), "text": (text_s, text_mb)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="128 images")
    parser.add_argument("--batch-size", type=int, default=64, help="embed_images' default")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved; medians reported")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images = 128
    if args.threads:
        torch.set_num_threads(args.threads)
    importlib.import_module("open_clip")
    load_start = os.getloadavg()[0]
    measured_on = machine(["open_clip_torch"])
    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    data = SyntheticConceptDataset(args.images, n_classes=50, seed=0, image_size=64, split="test")
    images = torch.stack([data[i][0] for i in range(len(data))])
    vocab = load_vocabulary("curated")
    rows = {name: built(build, images[: args.batch_size]) for name, build in ENCODERS.items()}
    runs: dict[str, list[dict[str, tuple[float, float]]]] = {name: [] for name in rows}
    for _ in range(args.repeats):  # alternating, so drift on a shared CPU hits both alike
        for name, row in rows.items():
            runs[name].append(stages(row["encoder"], images, vocab, args.batch_size))
    for name, row in rows.items():
        del row["encoder"]
        image_s = [run["image"][0] * 1000 / len(images) for run in runs[name]]
        text_s = [run["text"][0] for run in runs[name]]
        row |= {
            "image_seconds_per_1000": statistics.median(image_s),
            "image_peak_mb": max(run["image"][1] for run in runs[name]),
            "text_seconds": statistics.median(text_s),
            "text_peak_mb": max(run["text"][1] for run in runs[name]),
            "image_seconds_per_1000_runs": image_s,
            "text_seconds_runs": text_s,
        }
    keys = ("resident_mb", "image_seconds_per_1000", "image_peak_mb", "text_seconds")
    ratio = {k: rows["ViT-B-32"][k] / rows["tiny"][k] for k in keys}
    payload = {
        "settings": vars(args)
        | {"image_size": 64, "prompts": len(vocab.concepts) * len(vocab.templates)},
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "commit": commit,
        "memory": MEMORY_METHOD,
        "encoders": rows,
        "ratio_vit_b_32_to_tiny": ratio,
    }
    path = write_result(
        "encoder_cost_quick" if args.quick else "encoder_cost", payload, measured_on
    )
    print(json.dumps({"encoders": rows, "ratio": ratio}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
