"""`retrofit edit`: apply an edits file to an export, save the result elsewhere, re-check it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from retrofit.cli.common import (
    CHECK_DATA_FILE,
    UsageError,
    add_check_options,
    add_mask_options,
    add_solver_log_option,
    add_trust_option,
    check_cache_dir,
    check_mask_paths,
    load_export,
    loader_of,
    positive_float,
    prepare_out,
    recorded_data,
    run_check,
    transform_for,
)


def run(args: argparse.Namespace) -> int:
    """Apply an edits file to an export, save the edited model to a new folder, re-check it."""
    check_mask_paths(args)
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
    prepare_out(out, args.overwrite)
    check_cache_dir(args.cache_dir)
    imodel = load_export(args.dir, args.trust_remote_code)
    check_fingerprint(document, head_fingerprint(imodel), args.apply)

    def dataset(spec: str) -> Any:
        synthetic = spec.startswith("synthetic")
        return open_data(
            spec,
            None if synthetic else transform_for(imodel, args.dir, None, args.trust_remote_code),
        )

    train = loader_of(dataset(args.train)) if args.train else None
    data = args.data
    previous = export / CHECK_DATA_FILE
    if data is None and previous.is_file():
        data = recorded_data(previous)
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
    prepare_out(out, args.overwrite)
    result.model.save_pretrained(
        out,
        include_backbone=(export / "backbone.safetensors").is_file(),
        base_model=build.get("spec"),
    )
    print(result.summary())
    if data:
        report = run_check(result.model, check_data, out, args, data)
        print(report.summary())
    print(f"edited model written to {out}/" + (" with report.html" if data else ""))
    return 0


def add(commands: Any) -> None:
    edit = commands.add_parser("edit", help="apply an edits file (from the report's editor)")
    edit.add_argument("dir", help="the export to edit (left untouched)")
    edit.add_argument("--apply", required=True, help="edits JSON file")
    edit.add_argument("--out", required=True, help="new folder for the edited export")
    edit.add_argument("--overwrite", action="store_true")
    edit.add_argument("--train", help="training data; needed for every edit but renames")
    edit.add_argument("--data", help="data to re-check on (default: the export's last check)")
    edit.add_argument("--time-limit", type=positive_float, help="seconds for the re-solve")
    add_solver_log_option(edit)
    edit.add_argument("--cache-dir", default=".retrofit_cache")
    add_check_options(edit)
    add_mask_options(edit)
    add_trust_option(edit)
    edit.set_defaults(run=run)
