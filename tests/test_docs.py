"""The README stays short, the docs site builds with warnings as errors, benchmarks are honest."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import retrofit
from benchmarks import common, docs_page, suite

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_its_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert "## Two commands on a fresh machine" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(
        r"```bash\n(python3 -m venv .venv && .venv/bin/pip install -q .*)\n```", readme
    )
    assert command is not None
    assert command.group(1) in ci


def test_every_public_name_is_in_the_api_reference() -> None:
    reference = (ROOT / "docs" / "reference.md").read_text()
    missing = [
        n for n in retrofit.__all__ if n != "__version__" and f"::: retrofit.{n}\n" not in reference
    ]
    assert missing == []


@pytest.mark.slow
def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    reference = (site / "reference" / "index.html").read_text()
    assert "retrofit.convert" in reference and "RetrofitConfig" in reference
    benchmarks = (site / "benchmarks" / "index.html").read_text()
    assert benchmarks.count("<table") >= len(list((ROOT / "benchmarks" / "results").glob("*.json")))


def test_every_results_file_is_claimed_by_a_benchmark_that_exists() -> None:
    modules = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    claimed = {stem for b in suite.BENCHMARKS for stem in b.result_stems()}
    assert {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json")} <= claimed
    assert {b.name for b in suite.BENCHMARKS} <= modules


def test_the_page_refuses_an_unclaimed_results_file(tmp_path: Path) -> None:
    (tmp_path / "mystery.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="mystery"):
        docs_page.render(tmp_path)


def test_a_results_file_without_a_commit_is_stale_and_with_head_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suite, "COMMITTED_RESULTS", tmp_path)
    bench = suite.Benchmark("probe", stages=("retrofit/fitting/convert.py",))
    (tmp_path / "probe.json").write_text(json.dumps({"figure": 1.0}))
    assert suite.freshness(bench, "probe").startswith("stale")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    (tmp_path / "probe.json").write_text(json.dumps({"commit": head + "+dirty"}))
    # stages are compared between commits: uncommitted edits never count
    assert suite.freshness(bench, "probe") == "current"
    assert suite.freshness(bench, "absent") == "missing"


def test_results_record_their_commit_and_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    path = common.write_result("probe", {"settings": {"n": 3}, "figure": 0.5})
    written = json.loads(path.read_text())
    assert written["figure"] == 0.5 and written["settings"] == {"n": 3}
    assert "commit" in written and written["command"].startswith("python -m")
    assert written["machine"]["cpu_count"] >= 1


def test_benchmark_runner_names_what_it_knows() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "no_such_benchmark"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "no_such_benchmark" in run.stderr and "heads" in run.stderr
    status = subprocess.run(
        [sys.executable, "-m", "benchmarks", "status"], cwd=ROOT, capture_output=True, text=True
    )
    assert status.returncode == 0
    assert all(stem in status.stdout for b in suite.BENCHMARKS for stem in b.result_stems())
