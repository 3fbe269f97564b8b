"""What naming with a real CLIP costs on this machine: open_clip's ViT-B-32 architecture
(randomly initialised: no weights can be downloaded here, and weights do not change the cost)
beside the shipped tiny CLIP, side by side in one run.

Per encoder: seconds per 1,000 images to embed synthetic 64-px scenes (resized by the encoder's
own preprocessing, 224 px for ViT-B-32), the peak resident memory the process reached after
building it and embedding (ru_maxrss, so an upper bound that includes what ran before), and the
seconds to embed the curated vocabulary's prompts plus the 64 null prompts naming adds.

    python -m benchmarks.encoder_cost [--images 1000] [--quick]
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import torch

from benchmarks.common import commit, machine, write_result
from retrofit.concepts.encoders import OpenCLIPEncoder, embed_concepts, load_encoder
from retrofit.concepts.evidence import null_prompts
from retrofit.concepts.vocabulary import load_vocabulary
from retrofit.datasets import SyntheticConceptDataset


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(encoder: Any, images: torch.Tensor) -> dict[str, float]:
    vocab = load_vocabulary("curated")
    encoder.encode_images(images[:8])  # warm-up
    start = time.perf_counter()
    encoder.encode_images(images)
    image_seconds = time.perf_counter() - start
    start = time.perf_counter()
    embed_concepts(encoder, vocab.concepts, vocab.templates)
    embed_concepts(encoder, null_prompts(vocab.concepts), vocab.templates)
    return {
        "seconds_per_1000_images": round(image_seconds * 1000 / len(images), 2),
        "text_seconds": round(time.perf_counter() - start, 2),
        "texts": (len(vocab.concepts) + 64) * len(vocab.templates),
        "peak_rss_mb": round(_peak_mb(), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="128 images")
    args = parser.parse_args(argv)
    n = 128 if args.quick else args.images
    measured_on = machine(["open_clip_torch"])
    data = SyntheticConceptDataset(n, n_classes=50, seed=0, split="test")
    images = torch.stack([data[i][0] for i in range(n)])
    torch.manual_seed(0)
    rows = {"tiny": measure(load_encoder("tiny"), images)}
    rows["ViT-B-32"] = measure(OpenCLIPEncoder("ViT-B-32", None, batch_size=64), images)
    ratio = {
        key: round(rows["ViT-B-32"][key] / max(rows["tiny"][key], 1e-9), 1)
        for key in ("seconds_per_1000_images", "text_seconds")
    }
    result = {
        "settings": {**vars(args), "images_measured": n, "threads": torch.get_num_threads()},
        "commit": commit(),
        "memory": "peak resident set (ru_maxrss) of the process after each encoder, MB",
        "encoders": rows,
        "vit_over_tiny": ratio,
    }
    write_result("encoder_cost", result, measured_on)
    print(result)


if __name__ == "__main__":
    main()
