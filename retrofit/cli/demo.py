"""`retrofit demo`: convert the bundled demo classifier on the synthetic world, offline."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from retrofit.cli.common import (
    DEMO_CONCEPTS,
    DEMO_MODEL,
    DEMO_SPEC,
    add_check_options,
    add_solver_log_option,
    build_model_from_spec,
    check_cache_dir,
    loader_of,
    positive_float,
    positive_int,
    prepare_out,
    print_headline,
    run_check,
)


def run(args: argparse.Namespace) -> int:
    """Convert the bundled demo classifier on the synthetic concept world, fully offline."""
    import retrofit
    from retrofit.io.data_specs import open_data

    start = time.perf_counter()
    out = Path(args.out)
    prepare_out(out, args.overwrite)
    check_cache_dir(args.cache_dir)
    model, _ = build_model_from_spec(DEMO_MODEL, None)
    train = open_data(f"synthetic:train:{args.train_images}", None)
    imodel = retrofit.convert(
        model,
        loader_of(train, 256),
        loader_of(open_data(f"synthetic:val:{args.test_images}", None), 256),
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
    report = run_check(
        imodel,
        open_data(f"synthetic:test:{args.test_images}", None),
        out,
        args,
        "synthetic:test",
    )
    print(imodel.format_global_explanation())
    print_headline(imodel, report)
    print(
        f"demo finished in {time.perf_counter() - start:.0f} s; exported to {out}/ with report.html"
    )
    return 0


def add(commands: Any) -> None:
    demo = commands.add_parser("demo", help="offline demo on the synthetic concept world")
    demo.add_argument("--out", default="retrofit-demo")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo export")
    demo.add_argument("--method", default="qpm", choices=["qpm", "qsenn", "sparse"])
    demo.add_argument("--n-features", type=positive_int, default=50)
    demo.add_argument("--per-class", type=positive_int, default=5)
    demo.add_argument("--train-images", type=positive_int, default=5000)
    demo.add_argument("--test-images", type=positive_int, default=1000)
    demo.add_argument("--time-limit", type=positive_float, default=30.0)
    demo.add_argument("--cache-dir", default=".retrofit_cache")
    add_solver_log_option(demo)
    add_check_options(demo)
    demo.set_defaults(run=run)
