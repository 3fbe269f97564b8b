"""Quiet, honest output: the MIP solver's own log stays off the terminal unless asked for,
every solve says in one line what it proved, stats never report a placeholder as a figure,
and check() says which part it has finished."""

from __future__ import annotations

import re

import mip
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.cli import build_parser
from retrofit.config import RetrofitConfig
from retrofit.errors import ConfigError
from retrofit.methods.qpm.cliques import greedy_assignment
from retrofit.methods.qpm.edit import solve_edited_program
from retrofit.methods.qpm.program import (
    available_solvers,
    solve_outcome,
    solve_program,
    summary_line,
)
from tests.tiny import SmallCNN, colour_coded_images

# what CBC's and HiGHS's logs contain (and retrofit's own lines never do)
SOLVER_TEXT = (
    "Cbc",
    "CBC",
    "Welcome to the CBC",
    "Objective value",
    "LP relaxation",
    "Clp",
    "HiGHS",
    "Coefficient ranges",
)
FAST = {"method": "qpm", "n_features": 6, "per_class": 2, "epochs": 1, "time_limit": 5.0}
SOLVERS = [s for s in ("cbc", "highs") if s in available_solvers()]


def solver_text(text: str) -> list[str]:
    return [marker for marker in SOLVER_TEXT if marker in text]


def summary_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("QPM")]


@pytest.fixture(scope="module")
def colour_loader() -> DataLoader:
    images, labels = colour_coded_images(60, 16, 3)
    return DataLoader(TensorDataset(images, labels), batch_size=30)


def tiny_program(n: int = 12, classes: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    assoc = torch.rand(n, classes, generator=generator, dtype=torch.float64)
    redundancy = torch.triu(torch.rand(n, n, generator=generator, dtype=torch.float64), 1)
    start = torch.arange(6)
    selected = torch.zeros(n, dtype=torch.bool)
    selected[start] = True
    return assoc, redundancy, selected, greedy_assignment(assoc, start, 2)


@pytest.mark.parametrize("solver", SOLVERS)
def test_default_convert_prints_one_summary_and_no_solver_log(capfd, colour_loader, solver):
    torch.manual_seed(0)
    imodel = retrofit.convert(SmallCNN(3).eval(), colour_loader, solver=solver, **FAST)
    out, err = capfd.readouterr()
    assert solver_text(out + err) == [], (out + err)[-2000:]
    lines = summary_lines(err)
    assert len(lines) == 1, err
    stats = imodel.stats["head"]
    assert stats["status"] == "optimal" and stats["bound"] is not None
    assert re.fullmatch(r"QPM: proven optimal \(objective [0-9.e+-]+\) in [0-9.]+ s", lines[0])
    assert not summary_lines(out)  # progress goes to stderr, stdout stays the program's own


@pytest.mark.parametrize("solver", SOLVERS)
def test_solver_log_true_lets_the_solver_log_through(capfd, colour_loader, solver):
    torch.manual_seed(0)
    retrofit.convert(SmallCNN(3).eval(), colour_loader, solver=solver, solver_log=True, **FAST)
    out, err = capfd.readouterr()
    expected = "Cbc" if solver == "cbc" else "HiGHS"
    assert expected in out + err
    assert len(summary_lines(err)) == 1


def test_the_program_is_silent_without_progress_and_says_one_line_with_it(capfd):
    assoc, redundancy, selected, assignment = tiny_program()
    for progress in (True, False):
        config = RetrofitConfig(n_features=6, per_class=2, progress=progress, time_limit=5.0)
        result = solve_program(
            assoc,
            redundancy,
            0.5,
            config,
            start_selected=selected,
            start_assignment=assignment,
        )
        out, err = capfd.readouterr()
        assert solver_text(out + err) == [] and out == ""
        assert summary_lines(err) == ([summary_line(result.stats)] if progress else [])


def test_a_placeholder_bound_is_no_bound_and_proves_nothing():
    for raw in (1e50, -1e50, float("inf"), float("nan"), None):
        outcome = solve_outcome("optimal", 3.9, raw)
        assert outcome == {"status": "feasible", "bound": None, "gap": None}, raw
    assert solve_outcome("optimal", 4.0, 4.0) == {"status": "optimal", "bound": 4.0, "gap": 0.0}
    feasible = solve_outcome("feasible", 4.0, 5.0)
    assert feasible["status"] == "feasible" and feasible["gap"] == pytest.approx(0.25)


def test_cbc_reporting_1e50_as_its_bound_reaches_stats_as_none(monkeypatch, capfd):
    """CBC says 'Optimal solution found' beside 'Objective value: 1e+50' when the LP under the
    incumbent's cutoff is infeasible; the stats must not turn that into a bound or a gap."""
    monkeypatch.setattr(mip.Model, "objective_bound", property(lambda self: 1e50))
    assoc, redundancy, selected, assignment = tiny_program(seed=1)
    config = RetrofitConfig(n_features=6, per_class=2, time_limit=5.0)
    stats = solve_program(
        assoc, redundancy, 0.5, config, start_selected=selected, start_assignment=assignment
    ).stats
    assert stats["bound"] is None and stats["gap"] is None
    assert stats["status"] != "optimal"
    (line,) = summary_lines(capfd.readouterr().err)
    assert "no bound known" in line and "1e+50" not in line
    assert not line.startswith("QPM: proven optimal")


def test_summary_lines_say_what_was_proven():
    base = {"objective": 10.0, "start_objective": 9.0, "time": 30.2, "time_limit": 30.0}
    limited = {**base, "status": "feasible", "gap": 0.189, "time_limit_hit": True}
    assert summary_line(limited) == (
        "QPM: stopped at the 30 s time limit, best assignment within 18.9 % of the bound"
    )
    kept = {**limited, "objective": 9.0, "time": 5.0, "gap": None}
    assert summary_line(kept) == (
        "QPM: the warm start was kept (the solver found nothing better in 5.0 s), no bound known"
    )
    assert summary_line({**base, "status": "optimal", "gap": 0.0, "time": 3.14}) == (
        "QPM: proven optimal (objective 10) in 3.1 s"
    )


def test_the_edit_resolve_says_one_line_and_keeps_the_solver_quiet(capfd):
    assoc, redundancy, _, _ = tiny_program(n=10, classes=3)
    k, classes = assoc.shape
    masks = {
        "fixed_on": torch.zeros(k, dtype=torch.bool),
        "allowed": torch.ones(k, dtype=torch.bool),
        "pinned": torch.zeros(k, classes, dtype=torch.bool),
        "forbidden": torch.zeros(k, classes, dtype=torch.bool),
    }
    result = solve_edited_program(
        assoc, redundancy, 0.5, n_features=4, counts=[2] * classes, quiet=False, **masks
    )
    out, err = capfd.readouterr()
    assert solver_text(out + err) == []
    assert summary_lines(err) == [summary_line(result.stats, "QPM edit re-solve")]
    assert result.stats["status"] == "optimal" and result.stats["bound"] is not None
    solve_edited_program(
        assoc, redundancy, 0.5, n_features=4, counts=[2] * classes, solver_log=True, **masks
    )
    out, err = capfd.readouterr()
    assert "Cbc" in out + err and summary_lines(err) == []


def test_solver_log_is_a_typed_setting_that_old_configs_do_without():
    assert RetrofitConfig().solver_log is False
    data = RetrofitConfig(solver_log=True).to_dict()
    assert data["solver_log"] is True and RetrofitConfig.from_dict(data).solver_log is True
    del data["solver_log"]
    assert RetrofitConfig.from_dict(data).solver_log is False
    with pytest.raises(ConfigError, match="solver_log"):
        RetrofitConfig(solver_log="yes")


@pytest.mark.parametrize(
    "argv",
    [
        ["demo"],
        ["convert", "--model", "demo", "--train", "synthetic", "--out", "o"],
        ["edit", "export", "--apply", "edits.json", "--out", "o"],
    ],
)
def test_commands_that_solve_take_solver_log(argv):
    parser = build_parser()
    assert parser.parse_args(argv).solver_log is False
    assert parser.parse_args([*argv, "--solver-log"]).solver_log is True


def test_check_prints_one_line_per_part_with_progress_and_nothing_without(capfd, colour_loader):
    torch.manual_seed(0)
    model = SmallCNN(3).eval()
    imodel = retrofit.convert(model, colour_loader, progress=False, **FAST)
    capfd.readouterr()
    options = {"pixel_methods": (), "mas_pairs": 0, "top_images": 2}
    retrofit.check(imodel, colour_loader, reference=model, progress=True, **options)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("check: ") and "|" not in line]
    names = [line.split(" ... ")[0].removeprefix("check: ") for line in lines]
    assert {"fidelity", "concept deletion", "interpretability metrics and truth"} <= set(names)
    assert all(re.fullmatch(r"check: .+ \.\.\. done in [0-9.]+ s", line) for line in lines)
    assert len(names) == len(set(names))  # one line per part
    retrofit.check(imodel, colour_loader, reference=model, progress=False, **options)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
