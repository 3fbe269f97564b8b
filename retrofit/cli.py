"""The `retrofit` command: a thin layer over the Python API.

    retrofit demo                               offline demo on the synthetic concept world
    retrofit convert --model SPEC --train DATA --out DIR [...]
    retrofit explain DIR IMAGE... [--json]
    retrofit check DIR --data DATA [--min-fidelity X ...]    exit 1 when a threshold fails
    retrofit report DIR [--data DATA]           rebuild DIR/report.html
    retrofit reveal DIR --data DATA --out game.html    INV's reveal game for a person to play
    retrofit reveal-import answers.json [--game game.html]   labels by layer from the answers
    retrofit edit DIR --apply EDITS.json --out NEW [--train DATA] [--data DATA]
Bad input gets a one-line error and exit code 2.
Bad input gets a one-line error and exit code 2. An export whose base model would run code or
read files outside it is loaded only with --trust-remote-code. --out is replaced only when it
is a retrofit export (or empty), only with --overwrite, and only once the new export is complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from retrofit.concepts.evidence import reliability_sentences
from retrofit.errors import ConfigError, RetrofitError

DEMO_MODEL = "demo"
DEMO_SPEC = "retrofit:demo"  # portable: rebuilds the bundled demo CNN on any machine
# the bundled tiny CLIP with the curated vocabulary and the default scoring (log_prob), which
# names best with it (see benchmarks/results/concepts.json)
DEMO_CONCEPTS = {"encoder": "tiny", "vocabulary": "curated"}
CHECK_DATA_FILE = "report.json"


class UsageError(ConfigError):
    """A command-line argument is wrong."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def _build_model(
    spec_text: str, weights: str | None, num_classes: int | None = None
) -> tuple[Any, Any]:
    """(model, parsed spec or None) for a model spec; `demo` is the bundled demo classifier."""
    from retrofit.io.specs import build_model, load_weights, parse_spec

    if spec_text == DEMO_MODEL:
        from retrofit.datasets import load_demo_classifier

        model = load_demo_classifier()
        return (load_weights(model, weights) if weights else model).eval(), parse_spec(DEMO_SPEC)
    spec = parse_spec(spec_text)
    if num_classes is not None:
        spec.kwargs["num_classes"] = num_classes
    model = build_model(spec, pretrained=weights is None and num_classes is None)
    if weights is not None:
        load_weights(model, weights)
    return model.eval(), spec


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Fail before any work when --out cannot be written; nothing is deleted here (saving
    replaces an old export only once the new one is complete)."""
    from retrofit.export import check_save_target, recover_interrupted_save

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder path.")
    recover_interrupted_save(out.resolve())
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} is not empty; pass --overwrite to replace what is there.")
    check_save_target(out.resolve(), overwrite)


def _check_cache_dir(cache_dir: str | None) -> None:
    if cache_dir is not None and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise UsageError(f"--cache-dir {cache_dir} is a file; pass a folder (or a new path).")


def _loader(dataset: Any, batch_size: int = 64) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size)


def _print_headline(imodel: Any, report: Any | None) -> None:
    stats = imodel.stats.get("val") or imodel.stats.get("train", {})
    line = (
        f"{imodel.config.method}: {imodel.n_features} features, {imodel.config.per_class} per class | "
        f"accuracy {stats.get('accuracy', float('nan')):.3f} (original "
        f"{stats.get('original_accuracy', float('nan')):.3f}, agreement {stats.get('agreement', float('nan')):.3f})"
    )
    print(line)
    for sentence in reliability_sentences(imodel.naming_reliability):
        print(f"names: {sentence}")
    if report is not None:
        print(report.summary())


def _run_check(
    imodel: Any, dataset: Any, out: Path, args: argparse.Namespace, data_spec: str
) -> Any:
    import retrofit

    report = retrofit.check(
        imodel,
        _loader(dataset),
        reference=imodel.backbone,
        min_fidelity=args.min_fidelity,
        min_accuracy=args.min_accuracy,
        thresholds=(
            {"min_name_precision": args.min_name_precision}
            if args.min_name_precision is not None
            else {}
        ),
        max_pixel_images=args.max_pixel_images,
        progress=not args.quiet,
        **_consistency_options(args),
    )
    report.meta["data"] = data_spec
    report.to_json(out / "report.json")
    report.to_html(out / "report.html")
    return report


def _demo(args: argparse.Namespace) -> int:
    """Convert the bundled demo classifier on the synthetic concept world, fully offline."""
    import retrofit
    from retrofit.io.data_specs import open_data

    start = time.perf_counter()
    out = Path(args.out)
    _prepare_out(out, args.overwrite)
    _check_cache_dir(args.cache_dir)
    model, _ = _build_model(DEMO_MODEL, None)
    train = open_data(f"synthetic:train:{args.train_images}", None)
    imodel = retrofit.convert(
        model,
        _loader(train, 256),
        _loader(open_data(f"synthetic:val:{args.test_images}", None), 256),
        method=args.method,
        n_features=args.n_features,
        per_class=args.per_class,
        class_names=train.class_names,
        time_limit=args.time_limit,
        concepts=DEMO_CONCEPTS,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
        solver_log=args.solver_log,
    )
    imodel.save_pretrained(
        out, include_backbone=True, base_model=DEMO_SPEC, overwrite=args.overwrite
    )
    report = _run_check(
        imodel, open_data(f"synthetic:test:{args.test_images}", None), out, args, "synthetic:test"
    )
    print(imodel.format_global_explanation())
    _print_headline(imodel, report)
    print(
        f"demo finished in {time.perf_counter() - start:.0f} s; exported to {out}/ with report.html"
    )
    return 0


def _convert(args: argparse.Namespace) -> int:
    import retrofit
    from retrofit.io.data_specs import model_transform, open_data

    reweight = _reweight_options(args)
    out = Path(args.out)
    _prepare_out(out, args.overwrite)
    _check_cache_dir(args.cache_dir)
    model, spec = _build_model(args.model, args.weights, args.num_classes)
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
        _loader(train, args.batch_size),
        _loader(val, args.batch_size) if val is not None else None,
        config=config,
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
    _print_headline(imodel, None)
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
    defaults = vars(
        build_parser().parse_args(["convert", "--model", "m", "--train", "t", "--out", "o"])
    )
    given = {
        name: value
        for name, value in flags.items()
        if value is not None and value != defaults.get(name, _NOT_A_FLAG)
    }
    if args.concepts is None:
        given.pop("concepts", None)
    return given, config


_NOT_A_FLAG = object()


def _load(folder: str, trust_remote_code: bool = False) -> Any:
    import retrofit
    from retrofit.export import recover_interrupted_save

    recover_interrupted_save(Path(folder).resolve())
    if not Path(folder).is_dir():
        raise UsageError(f"{folder} is not a folder with an exported model.")
    return retrofit.load(folder, trust_remote_code=trust_remote_code)


def _transform_for(
    imodel: Any, folder: str, image_size: int | None, trust_remote_code: bool = False
) -> Any:
    """The preprocessing recorded for the export's base model, else a resize to its input size."""
    from retrofit.export import read_config
    from retrofit.io.data_specs import model_transform
    from retrofit.io.specs import ModelSpec
    from retrofit.io.trust import check_spec

    build = read_config(Path(folder))["base_model"].get("build")
    spec = ModelSpec.from_dict(build) if build else None
    if spec is not None:  # the preprocessing of a local HF folder is read from that folder
        check_spec(spec, trust_remote_code, pretrained=True, where=folder)
    size = image_size or (imodel.stats.get("input_size") or [None])[0]
    try:
        return model_transform(imodel.backbone, spec, size)
    except (KeyError, ValueError, OSError, TypeError) as error:
        if image_size:  # what the hint below offers: resize only
            return model_transform(imodel.backbone, None, image_size)
        raise UsageError(
            f"cannot build the preprocessing that {folder} records for {spec} "
            f"({' '.join(str(error).split())}); pass --image-size to resize only."
        ) from error


def _explain(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image, UnidentifiedImageError

    imodel = _load(args.dir, args.trust_remote_code)
    transform = _transform_for(imodel, args.dir, args.image_size, args.trust_remote_code)
    images = []
    for path in args.images:
        try:
            images.append(transform(Image.open(path).convert("RGB")))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise UsageError(f"cannot read image {path}: {error}") from error
    with torch.no_grad():
        explanations = imodel.explain(torch.stack(images))
    if args.json:
        print(
            json.dumps(
                [{"image": p, **e.to_dict()} for p, e in zip(args.images, explanations)], indent=1
            )
        )
    else:
        for path, explanation in zip(args.images, explanations):
            print(f"== {path}\n{explanation}\n")
    return 0


def _check(args: argparse.Namespace) -> int:
    from retrofit.io.data_specs import open_data

    imodel = _load(args.dir, args.trust_remote_code)
    synthetic = args.data.startswith("synthetic")
    dataset = open_data(
        args.data,
        None
        if synthetic
        else _transform_for(imodel, args.dir, args.image_size, args.trust_remote_code),
    )
    report = _run_check(imodel, dataset, Path(args.dir), args, args.data)
    print(report.summary())
    print(f"wrote {Path(args.dir) / 'report.html'}")
    return 0 if report.passed else 1


def _report(args: argparse.Namespace) -> int:
    data = args.data
    if data is None:
        previous = Path(args.dir) / CHECK_DATA_FILE
        if not previous.is_file():
            raise UsageError(
                f"{args.dir} has no earlier check; pass --data to say which data to check on."
            )
        data = _recorded_data(previous)
        if not data:
            raise UsageError(f"{previous} does not record its data; pass --data.")
        if not data.startswith("synthetic") and not args.trust_remote_code:
            raise UsageError(
                f"{previous} names the data {data!r:.100}, outside the export; pass --data to "
                "say which data to check on (or --trust-remote-code to use it)."
            )
    args.data = data
    return _check(args)


def _reveal(args: argparse.Namespace) -> int:
    from retrofit.inv.commands import make_reveal_game
    from retrofit.io.data_specs import open_data

    if args.encoder is not None and args.concepts is None:
        raise UsageError(
            f"--encoder {args.encoder} names the encoder of the automatic labels; pass "
            "--concepts (their vocabulary) too, or leave --encoder out."
        )
    imodel = _load(args.dir, args.trust_remote_code)
    synthetic = args.data.startswith("synthetic")
    transform = (
        None
        if synthetic
        else _transform_for(imodel, args.dir, args.image_size, args.trust_remote_code)
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


def _reveal_import(args: argparse.Namespace) -> int:
    from retrofit.inv.commands import import_reveal_answers

    result, out, html = import_reveal_answers(
        args.answers, args.game, args.out, args.html, args.encoder, args.overwrite
    )
    print(f"{len(result['labels'])} labelled cluster maps from {result['n_answers']} answers")
    print(f"wrote {out} and {html}")
    return 0


def _edit(args: argparse.Namespace) -> int:
    """Apply an edits file to an export, save the edited model to a new folder, re-check it."""
    import retrofit
    from retrofit.editing.apply import head_fingerprint
    from retrofit.editing.file import check_fingerprint, read_edits_file
    from retrofit.export import read_config
    from retrofit.io.data_specs import open_data
    from retrofit.solvers.quiet import solver_log_shown

    document = read_edits_file(args.apply)
    export, out = Path(args.dir), Path(args.out)
    if out.resolve() == export.resolve():
        raise UsageError(
            "--out is the export itself; write the edited model to a new folder, so the "
            "original stays untouched."
        )
    _prepare_out(out, args.overwrite)
    _check_cache_dir(args.cache_dir)
    imodel = _load(args.dir, args.trust_remote_code)
    check_fingerprint(document, head_fingerprint(imodel), args.apply)

    def dataset(spec: str) -> Any:
        synthetic = spec.startswith("synthetic")
        return open_data(
            spec,
            None if synthetic else _transform_for(imodel, args.dir, None, args.trust_remote_code),
        )

    train = _loader(dataset(args.train)) if args.train else None
    data = args.data
    previous = export / CHECK_DATA_FILE
    if data is None and previous.is_file():
        data = _recorded_data(previous)
    check_data = dataset(data) if data else None  # bad data fails before the work, not after
    with solver_log_shown(args.solver_log):
        result = retrofit.edit(
            imodel,
            document["edits"],
            loader=train,
            cache_dir=args.cache_dir,
            time_limit=args.time_limit,
            progress=not args.quiet,
        )
    build = read_config(export)["base_model"].get("build") or {}
    _prepare_out(out, args.overwrite)
    result.model.save_pretrained(
        out,
        include_backbone=(export / "backbone.safetensors").is_file(),
        base_model=build.get("spec"),
    )
    print(result.summary())
    if data:
        report = _run_check(result.model, check_data, out, args, data)
        print(report.summary())
    print(f"edited model written to {out}/" + (" with report.html" if data else ""))
    return 0


def _recorded_data(report_file: Path) -> str | None:
    """The data spec an earlier check recorded in report.json, if it is a bounded string."""
    from retrofit.io.files import read_json

    record = read_json(report_file)
    meta = record.get("meta") if isinstance(record, dict) else None
    data = meta.get("data") if isinstance(meta, dict) else None
    return data if isinstance(data, str) and 0 < len(data) <= 4096 else None


class _Registered:
    """argparse choices read from a registry when parsing, so a later registration counts."""

    def __init__(self, names: Any) -> None:
        self.names = names

    def __contains__(self, value: object) -> bool:
        return value in self.names()

    def __iter__(self) -> Any:
        return iter(self.names())


def _head_names() -> list[str]:
    from retrofit.methods.base import available_heads

    return available_heads()


def _consistency_options(args: argparse.Namespace) -> dict[str, Any]:
    """check() keywords for --consistency and its settings (none without the flag)."""
    given = [
        flag
        for flag, value in (
            ("--consistency-perturbation", args.consistency_perturbation),
            ("--consistency-images", args.consistency_images),
            ("--min-consistency", args.min_consistency),
            ("--max-consistency-flip-rate", args.max_consistency_flip_rate),
        )
        if value is not None
    ]
    if not args.consistency:
        if given:
            raise UsageError(f"{given[0]} needs --consistency (the check it sets up).")
        return {}
    settings = {"perturbation": args.consistency_perturbation or "pgd"}
    if args.consistency_images is not None:
        settings["max_images"] = args.consistency_images
    return {
        "consistency": settings,
        "min_consistency": args.min_consistency,
        "max_consistency_flip_rate": args.max_consistency_flip_rate,
    }


def _reweight_options(args: argparse.Namespace) -> dict[str, Any]:
    """convert() keywords for --reweight consistency and its settings."""
    if args.reweight is None:
        given = [f for f, v in (("--reweight-rounds", args.reweight_rounds),
                                ("--reweight-images", args.reweight_images),
                                ("--consistency-perturbation", args.consistency_perturbation))
                 if v is not None]  # fmt: skip
        if given:
            raise UsageError(f"{given[0]} needs --reweight consistency.")
        return {}
    options: dict[str, Any] = {
        "reweight": args.reweight,
        "reweight_consistency": {"perturbation": args.consistency_perturbation or "pgd"},
    }
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


def _add_perturbation_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consistency-perturbation",
        choices=["pgd", "swap"],
        help="background perturbation of the consistency score: adversarial (pgd, the "
        "default) or a swap with another image's clean background",
    )


def _add_check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-fidelity", type=float)
    parser.add_argument("--min-accuracy", type=float)
    parser.add_argument(
        "--min-name-precision",
        type=float,
        help="fail when naming's estimated precision (from its held-out tests) is lower",
    )
    parser.add_argument("--max-pixel-images", type=_positive_int, default=16)
    parser.add_argument("--image-size", type=_positive_int)
    parser.add_argument(
        "--consistency",
        action="store_true",
        help="also check explanation consistency under background perturbation",
    )
    _add_perturbation_option(parser)
    parser.add_argument("--consistency-images", type=_positive_int)
    parser.add_argument("--min-consistency", type=float)
    parser.add_argument("--max-consistency-flip-rate", type=float)


def _add_solver_log_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--solver-log",
        action="store_true",
        help="show the MIP solver's own log (CBC, HiGHS); by default one summary line per solve",
    )


def _add_trust_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the export's base model spec to run code or read files outside the export",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrofit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="offline demo on the synthetic concept world")
    demo.add_argument("--out", default="retrofit-demo")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo export")
    demo.add_argument("--method", default="qpm", choices=["qpm", "qsenn", "sparse"])
    demo.add_argument("--n-features", type=_positive_int, default=50)
    demo.add_argument("--per-class", type=_positive_int, default=5)
    demo.add_argument("--train-images", type=_positive_int, default=5000)
    demo.add_argument("--test-images", type=_positive_int, default=1000)
    demo.add_argument("--time-limit", type=_positive_float, default=30.0)
    demo.add_argument("--cache-dir", default=".retrofit_cache")
    _add_solver_log_option(demo)
    _add_check_options(demo)
    demo.set_defaults(run=_demo)

    convert = commands.add_parser("convert", help="convert a model into an interpretable one")
    convert.add_argument(
        "--model", required=True, help="torchvision:NAME[:WEIGHTS], timm:NAME, hf:ID, ..."
    )
    convert.add_argument("--weights", help="safetensors state dict to load into the model")
    convert.add_argument(
        "--num-classes", type=_positive_int, help="head width of --weights (torchvision, timm)"
    )
    convert.add_argument(
        "--train", required=True, help="ImageFolder dir, synthetic[:SPLIT[:N]], hf:NAME"
    )
    convert.add_argument("--val")
    convert.add_argument("--out", required=True)
    convert.add_argument("--overwrite", action="store_true")
    convert.add_argument("--method", default="qpm", choices=_Registered(_head_names))
    convert.add_argument("--n-features", type=_positive_int, default=50)
    convert.add_argument("--per-class", type=_positive_int, default=5)
    convert.add_argument(
        "--finetune", default="bottleneck", choices=["bottleneck", "none", "backbone"]
    )
    convert.add_argument("--solver", default="cbc", choices=["cbc", "highs", "gurobi"])
    _add_solver_log_option(convert)
    convert.add_argument(
        "--config",
        help="settings as JSON (RetrofitConfig fields, e.g. qpm, head, dense, bottleneck, flint, "
        "as RetrofitConfig.save_pretrained writes them); flags given on the command line win",
    )
    convert.add_argument(
        "--concepts", help="name features: tiny, open_clip:ARCH:TAG, hf:ID or a vocabulary file"
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
        "--time-limit", type=_positive_float, help="seconds for the QPM solver (default 600)"
    )
    convert.add_argument("--seed", type=int, default=0)
    convert.add_argument("--batch-size", type=_positive_int, default=64)
    convert.add_argument("--image-size", type=_positive_int, default=224)
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
        choices=["consistency"],
        help="refit with more weight on images whose explanation changes with the background",
    )
    convert.add_argument("--reweight-rounds", type=_positive_int)
    convert.add_argument("--reweight-images", type=_positive_int)
    _add_perturbation_option(convert)
    convert.set_defaults(run=_convert)

    explain = commands.add_parser("explain", help="explain the predictions for images")
    explain.add_argument("dir")
    explain.add_argument("images", nargs="+")
    explain.add_argument("--json", action="store_true")
    explain.add_argument("--image-size", type=_positive_int)
    _add_trust_option(explain)
    explain.set_defaults(run=_explain)

    check = commands.add_parser("check", help="faithfulness checks and the HTML report")
    check.add_argument("dir")
    check.add_argument("--data", required=True)
    _add_check_options(check)
    _add_trust_option(check)
    check.set_defaults(run=_check)

    report = commands.add_parser("report", help="rebuild DIR/report.html")
    report.add_argument("dir")
    report.add_argument("--data")
    _add_check_options(report)
    _add_trust_option(report)
    report.set_defaults(run=_report)

    reveal = commands.add_parser("reveal", help="INV cluster maps as a reveal game page")
    reveal.add_argument("dir")
    reveal.add_argument("--data", required=True)
    reveal.add_argument("--out", required=True, help="the game page (.html); a .json summary too")
    reveal.add_argument("--images", type=_positive_int, default=16)
    reveal.add_argument("--layers", nargs="+", help="module names (default: the last stages)")
    reveal.add_argument("--max-maps", type=_positive_int)
    reveal.add_argument("--seed", type=int, default=0)
    reveal.add_argument("--image-size", type=_positive_int)
    reveal.add_argument("--concepts", help="vocabulary for automatic labels (e.g. curated)")
    reveal.add_argument(
        "--encoder", help="concept encoder spec (default: the tiny CLIP, synthetic data only)"
    )
    reveal.add_argument("--overwrite", action="store_true")
    _add_trust_option(reveal)
    reveal.set_defaults(run=_reveal)

    reveal_import = commands.add_parser("reveal-import", help="labels from reveal-game answers")
    reveal_import.add_argument("answers", help="answers.json or answers.csv from the game")
    reveal_import.add_argument("--game", help="the game page played (checks the maps)")
    reveal_import.add_argument("--out", help="labels JSON (default: ANSWERS.labels.json)")
    reveal_import.add_argument("--html", help="report page (default: ANSWERS.labels.html)")
    reveal_import.add_argument("--encoder", help="text encoder spec (default: the tiny CLIP)")
    reveal_import.add_argument("--overwrite", action="store_true")
    reveal_import.set_defaults(run=_reveal_import)
    edit = commands.add_parser("edit", help="apply an edits file (from the report's editor)")
    edit.add_argument("dir", help="the export to edit (left untouched)")
    edit.add_argument("--apply", required=True, help="edits JSON file")
    edit.add_argument("--out", required=True, help="new folder for the edited export")
    edit.add_argument("--overwrite", action="store_true")
    edit.add_argument("--train", help="training data; needed for every edit but renames")
    edit.add_argument("--data", help="data to re-check on (default: the export's last check)")
    edit.add_argument("--time-limit", type=_positive_float, help="seconds for the re-solve")
    _add_solver_log_option(edit)
    edit.add_argument("--cache-dir", default=".retrofit_cache")
    _add_check_options(edit)
    _add_trust_option(edit)
    edit.set_defaults(run=_edit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except RetrofitError as error:
        print(f"retrofit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "retrofit: interrupted; run the same command again to resume from the cache",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
