"""What the commands share: argument types, model and data loading, the check, output."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from retrofit.concepts.evidence import reliability_sentences
from retrofit.errors import ConfigError

DEMO_MODEL = "demo"
DEMO_SPEC = "retrofit:demo"  # portable: rebuilds the bundled demo CNN on any machine
# the bundled tiny CLIP with the curated vocabulary and the default scoring (log_prob), which
# names best with it (see benchmarks/results/concepts.json)
DEMO_CONCEPTS = {"encoder": "tiny", "vocabulary": "curated"}
CHECK_DATA_FILE = "report.json"


class UsageError(ConfigError):
    """A command-line argument is wrong."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def build_model_from_spec(
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


def prepare_out(out: Path, overwrite: bool) -> None:
    """Fail before any work when --out cannot be written; nothing is deleted here (saving
    replaces an old export only once the new one is complete)."""
    from retrofit.export import check_save_target, recover_interrupted_save

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder path.")
    recover_interrupted_save(out.resolve())
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} is not empty; pass --overwrite to replace what is there.")
    check_save_target(out.resolve(), overwrite)


def check_cache_dir(cache_dir: str | None) -> None:
    if cache_dir is not None and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise UsageError(f"--cache-dir {cache_dir} is a file; pass a folder (or a new path).")


def loader_of(dataset: Any, batch_size: int = 64) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size)


def print_headline(imodel: Any, report: Any | None) -> None:
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


def run_check(
    imodel: Any, dataset: Any, out: Path, args: argparse.Namespace, data_spec: str
) -> Any:
    import retrofit

    report = retrofit.check(
        imodel,
        loader_of(dataset),
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
        **consistency_options(args),
        **mask_arguments(args, dataset, getattr(dataset, "transform", None)),
    )
    report.meta["data"] = data_spec
    report.to_json(out / "report.json")
    report.to_html(out / "report.html")
    return report


def load_export(folder: str, trust_remote_code: bool = False) -> Any:
    import retrofit
    from retrofit.export import recover_interrupted_save

    recover_interrupted_save(Path(folder).resolve())
    if not Path(folder).is_dir():
        raise UsageError(f"{folder} is not a folder with an exported model.")
    return retrofit.load(folder, trust_remote_code=trust_remote_code)


def transform_for(
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


def recorded_data(report_file: Path) -> str | None:
    """The data spec an earlier check recorded in report.json, if it is a bounded string."""
    from retrofit.io.files import read_json

    record = read_json(report_file)
    meta = record.get("meta") if isinstance(record, dict) else None
    data = meta.get("data") if isinstance(meta, dict) else None
    return data if isinstance(data, str) and 0 < len(data) <= 4096 else None


class Registered:
    """argparse choices read from a registry when parsing, so a later registration counts."""

    def __init__(self, names: Any) -> None:
        self.names = names

    def __contains__(self, value: object) -> bool:
        return value in self.names()

    def __iter__(self) -> Any:
        return iter(self.names())


def consistency_options(args: argparse.Namespace) -> dict[str, Any]:
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


def add_perturbation_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consistency-perturbation",
        choices=["pgd", "swap"],
        help="background perturbation of the consistency score: adversarial (pgd, the "
        "default) or a swap with another image's clean background",
    )


def add_check_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-fidelity", type=float)
    parser.add_argument("--min-accuracy", type=float)
    parser.add_argument(
        "--min-name-precision",
        type=float,
        help="fail when naming's estimated precision (from its held-out tests) is lower",
    )
    parser.add_argument("--max-pixel-images", type=positive_int, default=16)
    parser.add_argument("--image-size", type=positive_int)
    parser.add_argument(
        "--consistency",
        action="store_true",
        help="also check explanation consistency under background perturbation",
    )
    add_perturbation_option(parser)
    parser.add_argument("--consistency-images", type=positive_int)
    parser.add_argument("--min-consistency", type=float)
    parser.add_argument("--max-consistency-flip-rate", type=float)


def add_solver_log_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--solver-log",
        action="store_true",
        help="show the MIP solver's own log (CBC, HiGHS); by default one summary line per solve",
    )


def add_trust_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the export's base model spec to run code or read files outside the export",
    )


def add_mask_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--masks",
        help="folder of object masks, one per image with the same relative path and name "
        "(non-zero pixels: the object)",
    )
    parser.add_argument(
        "--backgrounds", help="ImageFolder of object-free images for the background swaps"
    )


def check_mask_paths(args: argparse.Namespace) -> None:
    """--masks and --backgrounds name folders: say so before any work, naming the path."""
    for flag in ("masks", "backgrounds"):
        value = getattr(args, flag, None)
        if value is not None and not Path(value).is_dir():
            raise UsageError(f"--{flag} {value} is not a folder; pass a folder of images.")


def mask_arguments(args: argparse.Namespace, dataset: Any, transform: Any) -> dict[str, Any]:
    """masks= and backgrounds= for convert() or check() from --masks and --backgrounds."""
    from retrofit.io.data_specs import open_data
    from retrofit.io.mask_folders import folder_masks

    options: dict[str, Any] = {}
    masks, backgrounds = getattr(args, "masks", None), getattr(args, "backgrounds", None)
    if masks is not None:
        options["masks"] = folder_masks(dataset, masks, transform)
    if backgrounds is not None:
        if masks is None:
            raise UsageError(
                f"--backgrounds {args.backgrounds} are swapped in behind the objects: pass "
                "--masks too."
            )
        options["backgrounds"] = open_data(backgrounds, transform)
    return options
