"""`retrofit convert`: a model spec and data in, an interpretable export out."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from retrofit.cli.common import (
    DEMO_MODEL,
    Registered,
    UsageError,
    add_mask_options,
    add_perturbation_option,
    add_solver_log_option,
    build_model_from_spec,
    check_cache_dir,
    check_mask_paths,
    loader_of,
    mask_arguments,
    positive_float,
    positive_int,
    prepare_out,
    print_headline,
)


def run(args: argparse.Namespace) -> int:
    check_mask_paths(args)
    import retrofit
    from retrofit.io.data_specs import model_transform, open_data

    reweight = _reweight_options(args)
    out = Path(args.out)
    prepare_out(out, args.overwrite)
    check_cache_dir(args.cache_dir)
    model, spec = build_model_from_spec(args.model, args.weights, args.num_classes)
    transform = None if args.model == DEMO_MODEL else model_transform(model, spec, args.image_size)
    train = open_data(args.train, transform, args.skip_bad_images)
    val = open_data(args.val, transform, args.skip_bad_images) if args.val else None
    flags = {
        "method": args.method,
        "n_features": args.n_features,
        "per_class": args.per_class,
        "finetune": args.finetune,
        "solver": args.solver,
        "time_limit": args.time_limit,
        "seed": args.seed,
        "concepts": _concepts_option(args),
        "cache_dir": args.cache_dir,
        "solver_log": args.solver_log,
        **reweight,
    }
    settings, config = _settings_file(args, flags)
    imodel = retrofit.convert(
        model,
        loader_of(train, args.batch_size),
        loader_of(val, args.batch_size) if val is not None else None,
        config=config,
        **mask_arguments(args, train, transform),
        class_names=getattr(train, "classes", None) or getattr(train, "class_names", None),
        base_model=str(spec) if spec is not None else None,
        progress=not args.quiet,
        **settings,
    )
    imodel.save_pretrained(
        out,
        include_backbone=args.include_backbone or spec is None or args.weights is not None,
        overwrite=args.overwrite,
    )
    print(imodel.format_global_explanation())
    print_headline(imodel, None)
    print(f"exported to {out}/")
    return 0


def _settings_file(args: argparse.Namespace, flags: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """--config FILE: the file's settings (a RetrofitConfig JSON, as save_pretrained writes, or
    an export's config) under the flags given on the command line; flags left at their default
    do not override the file. Without --config every flag is a setting."""
    if not args.config:
        return flags, None
    from retrofit.config import RetrofitConfig

    config = RetrofitConfig.from_pretrained(args.config)
    parser = argparse.ArgumentParser()
    add(parser.add_subparsers())
    defaults = vars(parser.parse_args(["convert", "--model", "m", "--train", "t", "--out", "o"]))
    given = {
        name: value
        for name, value in flags.items()
        if value is not None and value != defaults.get(name, _NOT_A_FLAG)
    }
    if args.concepts is None:
        given.pop("concepts", None)
    return given, config


_NOT_A_FLAG = object()


def _head_names() -> list[str]:
    from retrofit.methods.base import available_heads

    return available_heads()


def _reweight_options(args: argparse.Namespace) -> dict[str, Any]:
    """convert() keywords for --reweight consistency and its settings."""
    if args.reweight is None:
        given = [f for f, v in (("--reweight-rounds", args.reweight_rounds),
                                ("--reweight-images", args.reweight_images),
                                ("--reweight-copies", args.reweight_copies),
                                ("--masks", args.masks), ("--backgrounds", args.backgrounds),
                                ("--consistency-perturbation", args.consistency_perturbation))
                 if v is not None]  # fmt: skip
        if given:
            value = getattr(args, given[0].removeprefix("--").replace("-", "_"))
            raise UsageError(
                f"{given[0]} {value} needs --reweight (consistency or counterfactual)."
            )
        return {}
    if args.reweight == "counterfactual" and args.masks is None:
        raise UsageError(
            "--reweight counterfactual pastes each training object onto other backgrounds and "
            "needs the objects: pass --masks DIR (one mask image per training image, same names)."
        )
    options: dict[str, Any] = {
        "reweight": args.reweight,
        "reweight_consistency": {"perturbation": args.consistency_perturbation or "pgd"},
    }
    if args.reweight_copies is not None:
        options["reweight_copies"] = args.reweight_copies
    if args.reweight_rounds is not None:
        options["reweight_rounds"] = args.reweight_rounds
    if args.reweight_images is not None:
        options["reweight_images"] = args.reweight_images
    return options


def _concepts_option(args: argparse.Namespace) -> Any:
    """`--concepts` (an encoder spec or a vocabulary), with `--concept-encoder` and `--names-q`
    folded in as concept settings when given."""
    if args.concept_encoder is None and args.names_q is None:
        return args.concepts
    settings: dict[str, Any] = {}
    if args.concept_encoder is not None:
        settings["encoder"] = args.concept_encoder
    if args.concepts is not None:
        settings["vocabulary"] = args.concepts
    if args.names_q is not None:
        settings["q"] = args.names_q
    return settings


def add(commands: Any) -> None:
    convert = commands.add_parser("convert", help="convert a model into an interpretable one")
    convert.add_argument(
        "--model",
        required=True,
        help="torchvision:NAME[:WEIGHTS], timm:NAME, hf:ID, ...",
    )
    convert.add_argument("--weights", help="safetensors state dict to load into the model")
    convert.add_argument(
        "--num-classes",
        type=positive_int,
        help="head width of --weights (torchvision, timm)",
    )
    convert.add_argument(
        "--train", required=True, help="ImageFolder dir, synthetic[:SPLIT[:N]], hf:NAME"
    )
    convert.add_argument("--val")
    convert.add_argument("--out", required=True)
    convert.add_argument("--overwrite", action="store_true")
    convert.add_argument("--method", default="qpm", choices=Registered(_head_names))
    convert.add_argument("--n-features", type=positive_int, default=50)
    convert.add_argument("--per-class", type=positive_int, default=5)
    convert.add_argument(
        "--finetune", default="bottleneck", choices=["bottleneck", "none", "backbone"]
    )
    convert.add_argument("--solver", default="cbc", choices=["cbc", "highs", "gurobi"])
    add_solver_log_option(convert)
    convert.add_argument(
        "--config",
        help="settings as JSON (RetrofitConfig fields, e.g. qpm, head, dense, bottleneck, flint, "
        "as RetrofitConfig.save_pretrained writes them); flags given on the command line win",
    )
    convert.add_argument(
        "--concepts",
        help="name features: tiny, open_clip:ARCH:TAG, hf:ID or a vocabulary file",
    )
    convert.add_argument(
        "--concept-encoder",
        help="the CLIP that names features (open_clip:ARCH:/weights.safetensors, hf:DIR; "
        "tiny only for the synthetic world), with --concepts a vocabulary",
    )
    convert.add_argument(
        "--names-q",
        type=float,
        help="false-discovery rate names are accepted under (default 0.05)",
    )
    convert.add_argument(
        "--time-limit",
        type=positive_float,
        help="seconds for the QPM solver (default 600)",
    )
    convert.add_argument("--seed", type=int, default=0)
    convert.add_argument("--batch-size", type=positive_int, default=64)
    convert.add_argument("--image-size", type=positive_int, default=224)
    convert.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out unreadable (truncated, corrupt) images of ImageFolder data, counting "
        "them in one line; each image is decoded once up front",
    )
    convert.add_argument("--include-backbone", action="store_true")
    convert.add_argument("--cache-dir", default=".retrofit_cache")
    convert.add_argument(
        "--reweight",
        choices=["consistency", "counterfactual"],
        help="consistency: refit with more weight on images whose explanation changes with the "
        "background; counterfactual: refit on each object pasted onto other classes' "
        "backgrounds (needs --masks)",
    )
    convert.add_argument("--reweight-rounds", type=positive_int)
    convert.add_argument("--reweight-images", type=positive_int)
    convert.add_argument(
        "--reweight-copies", type=positive_int, help="counterfactuals per image (default 2)"
    )
    add_mask_options(convert)
    add_perturbation_option(convert)
    convert.set_defaults(run=run)
