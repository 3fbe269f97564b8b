"""`retrofit reveal` and `retrofit reveal-import`: INV's reveal game and its answers."""

from __future__ import annotations

import argparse
from typing import Any

from retrofit.cli.common import (
    UsageError,
    add_trust_option,
    load_export,
    positive_int,
    transform_for,
)


def run(args: argparse.Namespace) -> int:
    from retrofit.inv.commands import make_reveal_game
    from retrofit.io.data_specs import open_data

    if args.encoder is not None and args.concepts is None:
        raise UsageError(
            f"--encoder {args.encoder} names the encoder of the automatic labels; pass "
            "--concepts (their vocabulary) too, or leave --encoder out."
        )
    imodel = load_export(args.dir, args.trust_remote_code)
    synthetic = args.data.startswith("synthetic")
    transform = (
        None
        if synthetic
        else transform_for(imodel, args.dir, args.image_size, args.trust_remote_code)
    )
    game, summary = make_reveal_game(
        imodel,
        open_data(args.data, transform),
        args.out,
        transform=transform,
        images=args.images,
        layers=args.layers,
        max_maps=args.max_maps,
        seed=args.seed,
        concepts=args.concepts,
        encoder=args.encoder,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote {game} (open it in a browser) and {summary}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from retrofit.inv.commands import import_reveal_answers

    result, out, html = import_reveal_answers(
        args.answers, args.game, args.out, args.html, args.encoder, args.overwrite
    )
    print(f"{len(result['labels'])} labelled cluster maps from {result['n_answers']} answers")
    print(f"wrote {out} and {html}")
    return 0


def add(commands: Any) -> None:
    reveal = commands.add_parser("reveal", help="INV cluster maps as a reveal game page")
    reveal.add_argument("dir")
    reveal.add_argument("--data", required=True)
    reveal.add_argument("--out", required=True, help="the game page (.html); a .json summary too")
    reveal.add_argument("--images", type=positive_int, default=16)
    reveal.add_argument("--layers", nargs="+", help="module names (default: the last stages)")
    reveal.add_argument("--max-maps", type=positive_int)
    reveal.add_argument("--seed", type=int, default=0)
    reveal.add_argument("--image-size", type=positive_int)
    reveal.add_argument("--concepts", help="vocabulary for automatic labels (e.g. curated)")
    reveal.add_argument(
        "--encoder",
        help="concept encoder spec (default: the tiny CLIP, synthetic data only)",
    )
    reveal.add_argument("--overwrite", action="store_true")
    add_trust_option(reveal)
    reveal.set_defaults(run=run)

    reveal_import = commands.add_parser("reveal-import", help="labels from reveal-game answers")
    reveal_import.add_argument("answers", help="answers.json or answers.csv from the game")
    reveal_import.add_argument("--game", help="the game page played (checks the maps)")
    reveal_import.add_argument("--out", help="labels JSON (default: ANSWERS.labels.json)")
    reveal_import.add_argument("--html", help="report page (default: ANSWERS.labels.html)")
    reveal_import.add_argument("--encoder", help="text encoder spec (default: the tiny CLIP)")
    reveal_import.add_argument("--overwrite", action="store_true")
    reveal_import.set_defaults(run=run_import)
