"""The `retrofit` command: a thin layer over the Python API.

    retrofit demo                               offline demo on the synthetic concept world
    retrofit convert --model SPEC --train DATA --out DIR [...]
    retrofit explain DIR IMAGE... [--json]
    retrofit check DIR --data DATA [--min-fidelity X ...]    exit 1 when a threshold fails
    retrofit report DIR [--data DATA]           rebuild DIR/report.html
    retrofit reveal DIR --data DATA --out game.html    INV's reveal game for a person to play
    retrofit reveal-import answers.json [--game game.html]   labels by layer from the answers
    retrofit edit DIR --apply EDITS.json --out NEW [--train DATA] [--data DATA]
Bad input gets a one-line error and exit code 2. An export whose base model would run code or
read files outside it is loaded only with --trust-remote-code. --out is replaced only when it
is a retrofit export (or empty), only with --overwrite, and only once the new export is complete.
"""

from __future__ import annotations

import argparse
import logging
import sys

from retrofit.cli import check, convert, demo, edit, explain, reveal
from retrofit.cli.common import DEMO_SPEC, UsageError
from retrofit.errors import RetrofitError

# one module per command, in the order `retrofit --help` lists them
COMMANDS = (demo, convert, explain, check, reveal, edit)
__all__ = ["DEMO_SPEC", "UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrofit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    for command in COMMANDS:
        command.add(commands)
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
