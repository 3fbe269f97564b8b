"""Wall time of `retrofit demo` on this machine (target: under 3 minutes on a 2-core CPU).

Run: python -m benchmarks.demo   (writes benchmarks/results/demo.json)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

from benchmarks.common import write_result


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable,
            "-m",
            "retrofit.cli",
            "--quiet",
            "demo",
            "--out",
            f"{folder}/out",
            "--cache-dir",
            f"{folder}/cache",
        ]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
    headline = [
        line
        for line in result.stdout.splitlines()
        if line.startswith(("qpm:", "fidelity", "concepts"))
    ]
    path = write_result(
        "demo",
        {
            "command": "retrofit demo (cold cache)",
            "seconds": seconds,
            "target_seconds": 180,
            "headline": headline,
        },
    )
    print(f"demo took {seconds:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
