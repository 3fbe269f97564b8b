"""`retrofit check` and `retrofit report`: the checks of an export and its HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from retrofit.cli.common import (
    CHECK_DATA_FILE,
    UsageError,
    add_check_options,
    add_mask_options,
    add_trust_option,
    check_mask_paths,
    load_export,
    recorded_data,
    run_check,
    transform_for,
)


def run(args: argparse.Namespace) -> int:
    check_mask_paths(args)
    from retrofit.io.data_specs import open_data

    imodel = load_export(args.dir, args.trust_remote_code)
    synthetic = args.data.startswith("synthetic")
    dataset = open_data(
        args.data,
        None
        if synthetic
        else transform_for(imodel, args.dir, args.image_size, args.trust_remote_code),
    )
    report = run_check(imodel, dataset, Path(args.dir), args, args.data)
    print(report.summary())
    print(f"wrote {Path(args.dir) / 'report.html'}")
    return 0 if report.passed else 1


def run_report(args: argparse.Namespace) -> int:
    check_mask_paths(args)
    data = args.data
    if data is None:
        previous = Path(args.dir) / CHECK_DATA_FILE
        if not previous.is_file():
            raise UsageError(
                f"{args.dir} has no earlier check; pass --data to say which data to check on."
            )
        data = recorded_data(previous)
        if not data:
            raise UsageError(f"{previous} does not record its data; pass --data.")
        if not data.startswith("synthetic") and not args.trust_remote_code:
            raise UsageError(
                f"{previous} names the data {data!r:.100}, outside the export; pass --data to "
                "say which data to check on (or --trust-remote-code to use it)."
            )
    args.data = data
    return run(args)


def add(commands: Any) -> None:
    check = commands.add_parser("check", help="faithfulness checks and the HTML report")
    check.add_argument("dir")
    check.add_argument("--data", required=True)
    add_check_options(check)
    add_mask_options(check)
    add_trust_option(check)
    check.set_defaults(run=run)

    report = commands.add_parser("report", help="rebuild DIR/report.html")
    report.add_argument("dir")
    report.add_argument("--data")
    add_check_options(report)
    add_mask_options(report)
    add_trust_option(report)
    report.set_defaults(run=run_report)
