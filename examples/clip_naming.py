"""Name the features of a converted model with CLIP text concepts.

    python examples/clip_naming.py --encoder open_clip:ViT-B-32:laion2b_s34b_b79k --vocabulary curated+general
    python examples/clip_naming.py --encoder hf:openai/clip-vit-base-patch32
    python examples/clip_naming.py --tiny      # offline: the bundled tiny CLIP of the synthetic world

The model converted here is the bundled demo classifier on the synthetic concept world; with
your own model, pass `concepts=` to `retrofit.convert` the same way. Real CLIP weights are
fetched by open_clip / transformers (or give a local checkpoint: open_clip:ARCH:/path/file.safetensors,
hf:/local/folder).
"""

from __future__ import annotations

import argparse

from torch.utils.data import DataLoader

import retrofit
from retrofit.datasets import SyntheticConceptDataset, load_demo_classifier


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", default="open_clip:ViT-B-32:laion2b_s34b_b79k")
    parser.add_argument(
        "--vocabulary", default="curated+general", help="list name, or a text file of words"
    )
    parser.add_argument(
        "--method", default="correlation", choices=["wpmi", "correlation", "spearman"]
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument(
        "--tiny", action="store_true", help="offline: bundled tiny CLIP, fewer images"
    )
    args = parser.parse_args()
    if args.tiny:
        args.encoder, args.vocabulary, args.images = "tiny", "curated", 400

    train = SyntheticConceptDataset(args.images, split="train")
    imodel = retrofit.convert(
        load_demo_classifier(),
        DataLoader(train, batch_size=200),
        method="qpm",
        n_features=12 if args.tiny else 50,
        per_class=3 if args.tiny else 5,
        time_limit=10 if args.tiny else 120,
        class_names=train.class_names,
        concepts={"encoder": args.encoder, "vocabulary": args.vocabulary, "method": args.method},
        progress=not args.tiny,
    )
    for j in range(imodel.n_features):
        names = ", ".join(f"{c['concept']} ({c['score']:.2f})" for c in imodel.concepts[j][:3])
        print(f"feature {int(imodel.selected_features[j]):4d}: {names}")
    print()
    print(imodel.format_global_explanation())


if __name__ == "__main__":
    main()
