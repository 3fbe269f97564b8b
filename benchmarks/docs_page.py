"""MkDocs hook: the benchmark page's tables, generated from `benchmarks/results/*.json`.

`docs/benchmarks.md` holds the prose and a marker; this fills the marker with one table of
every results file (what it measures, the commit and command it records, whether it is still
current for the code it measures) and one table of each file's figures. A results file no
benchmark claims fails the build, so a new result cannot hide from the page.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# MkDocs loads a hook by its path, so the repository root may not be importable yet
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.suite import BENCHMARKS, COMMITTED_RESULTS, freshness  # noqa: E402

MARKER = "<!-- benchmark-results -->"
MAX_ROWS = 60


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())


def render(results: Path = COMMITTED_RESULTS) -> str:
    claimed = {stem: b for b in BENCHMARKS for stem in b.result_stems()}
    unclaimed = sorted(p.stem for p in results.glob("*.json") if p.stem not in claimed)
    if unclaimed:
        raise ValueError(f"results files no benchmark in benchmarks/suite.py claims: {unclaimed}")
    rows = ["| results file | measures | commit | state | command |", "|---|---|---|---|---|"]
    sections = []
    for stem, benchmark in claimed.items():
        path = results / f"{stem}.json"
        if not path.is_file():
            rows.append(f"| `{stem}` | {benchmark.summary} | — | missing | — |")
            continue
        data = json.loads(path.read_text())
        commit = str(data.get("commit") or "—")[:12]
        command = data.get("command") or f"python -m {benchmark.module}"
        state = freshness(benchmark, stem, results)
        rows.append(
            f"| [`{stem}`](#{stem}) | {benchmark.summary} | `{commit}` | {state} | `{command}` |"
        )
        sections.append(_figures(stem, data))
    return "\n".join(rows) + "\n\n" + "\n\n".join(sections) + "\n"


def _figures(stem: str, data: dict[str, Any]) -> str:
    leaves = [
        (path, value)
        for path, value in _leaves(data)
        if path.split(".")[0] not in {"machine", "commit", "command"}
    ]
    lines = [f"### {stem}", "", "| figure | value |", "|---|---|"]
    lines += [f"| `{path}` | {_cell(value)} |" for path, value in leaves[:MAX_ROWS]]
    if len(leaves) > MAX_ROWS:
        lines.append(f"| … | {len(leaves) - MAX_ROWS} more in `benchmarks/results/{stem}.json` |")
    return "\n".join(lines)


def _leaves(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            out += _leaves(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = []
        for index, item in enumerate(value):
            out += _leaves(item, f"{prefix}[{index}]")
        return out
    return [(prefix, value)]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, list):
        shown = ", ".join(_cell(v) for v in value[:8])
        text = f"[{shown}{', …' if len(value) > 8 else ''}]"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")
