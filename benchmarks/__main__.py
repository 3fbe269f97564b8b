"""`python -m benchmarks all [--quick]`, `... status`, `... NAME [NAME ...]`: rerun benchmarks.

Each run is its own process (`python -m benchmarks.NAME ARGS`), one after another, so timings
never share the machine with another benchmark. Full runs write `benchmarks/results/`; quick
runs write a scratch folder (printed) and are a smoke test of every benchmark, not results.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.suite import BENCHMARKS, by_name, freshness


def _status() -> int:
    for benchmark in BENCHMARKS:
        for stem in benchmark.result_stems():
            print(f"{stem:34s} {freshness(benchmark, stem)}")
    return 0


def _run(names: list[str], quick: bool) -> int:
    known = by_name()
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if quick:
        env["RETROFIT_BENCHMARK_RESULTS"] = tempfile.mkdtemp(prefix="retrofit-quick-")
        print(f"quick tier: results go to {env['RETROFIT_BENCHMARK_RESULTS']}")
    failed = []
    for name in names:
        benchmark = known[name]
        runs = benchmark.quick if quick else benchmark.runs
        if not runs:
            print(f"{name}: no quick run (full run only)")
            continue
        for args in runs:
            command = [sys.executable, "-m", benchmark.module, *args]
            print("$", " ".join(command[1:]), flush=True)
            start = time.perf_counter()
            rc = subprocess.run(command, env=env).returncode
            print(f"{name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
            if rc != 0:
                failed.append(" ".join(command[2:]))
    if failed:
        print("failed:", *failed, sep="\n  ", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("what", nargs="+", help='"all", "status", or benchmark names')
    parser.add_argument("--quick", action="store_true", help="small runs into a scratch folder")
    args = parser.parse_args(argv)
    if args.what == ["status"]:
        return _status()
    names = [b.name for b in BENCHMARKS] if args.what == ["all"] else args.what
    return _run(names, args.quick)


if __name__ == "__main__":
    sys.exit(main())
