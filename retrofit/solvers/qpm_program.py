"""The QPM binary program, solved with python-mip (CBC by default, HiGHS or Gurobi on request).

maximise  sum_jc A_jc E_jc - sum_{(j,j') in P} Rt_jj' y_jj' + sum_j b_j s_j
s.t.      E_jc <= s_j,   sum_j s_j = n_f,   sum_j E_jc = per_class for every class c,
          y_jj' >= s_j + s_j' - 1,  y >= 0                  (linearises s_j s_j')
          class feature sets pairwise distinct               (added lazily, see below)

P holds the pairs with R >= tau and Rt = R / max_P R in (0, 1]. Uniqueness is added only for
pairs of classes that share a set in a solution: o_j >= E_jc + E_jc' - 1, sum_j o_j <=
per_class - 1 (the lower bounds on o are what make the cut bite); then the program is solved
again from the previous solution, repaired to be unique, until no two classes share a set.
o is continuous in [0, 1]: with binary E the constraints force o_j = 1 on shared features,
so binaries would add branching without changing the feasible set.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import mip
import numpy as np
import torch

from retrofit.config import RetrofitConfig
from retrofit.errors import DataError, InfeasibleSettingsError, SolverError
from retrofit.solvers.cliques import duplicate_class_pairs, make_unique
from retrofit.solvers.quiet import native_stdout_silenced

logger = logging.getLogger(__name__)

_SOLVER_NAMES = {"cbc": mip.CBC, "highs": mip.HIGHS, "gurobi": mip.GUROBI}
_SOLVER_HINTS = {
    "cbc": "reinstall python-mip with its CBC build (pip install --force-reinstall mip)",
    "highs": "install HiGHS for python-mip (pip install 'mip[highs]')",
    "gurobi": "install Gurobi with a licence and set GUROBI_HOME (or pip install gurobipy)",
}
DEFAULT_MAX_ROUNDS = 100


@dataclass
class ProgramResult:
    """A solution over the K candidate features; `selected` has exactly n_f True entries."""

    selected: torch.Tensor  # (K,) bool, s
    assignment: torch.Tensor  # (K, C) bool, E
    stats: dict[str, Any] = field(default_factory=dict)


def check_settings(n_classes: int, dim: int, n_features: int, per_class: int) -> None:
    """Fail before any work when no assignment can satisfy the settings."""
    if n_classes < 2:
        raise DataError(f"QPM needs labels of at least 2 classes, got {n_classes}.")
    if per_class > n_features:
        raise InfeasibleSettingsError(
            f"per_class={per_class} > n_features={n_features}: a class cannot use more features "
            "than are selected. Lower per_class or raise n_features."
        )
    if n_features > dim:
        raise InfeasibleSettingsError(
            f"n_features={n_features} > {dim}, the number of features available. Lower n_features."
        )
    combos = math.comb(n_features, per_class)
    if n_classes > combos:
        raise InfeasibleSettingsError(
            f"{n_classes} classes cannot have distinct sets of per_class={per_class} features out of "
            f"n_features={n_features} (only {combos} sets exist). Raise n_features or change per_class."
        )


def available_solvers() -> list[str]:
    """The values of `config.solver` that python-mip can load on this machine."""
    names = []
    for name in _SOLVER_NAMES:
        try:
            _new_model(name)
        except SolverError:
            continue
        names.append(name)
    return names


def penalty_pairs(
    redundancy: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, Rt) of the pairs P with R >= tau, Rt = R / max_P R; pairs with R = 0 dropped."""
    mask = (redundancy >= tau) & (redundancy > 0)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    weights = redundancy[rows, cols].to(torch.float64)
    if weights.numel():
        weights = weights / weights.max()
    return rows, cols, weights


def penalty_matrix(redundancy: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric K x K matrix of the penalty weights Rt on P (0 elsewhere)."""
    rows, cols, weights = penalty_pairs(redundancy, tau)
    matrix = torch.zeros(redundancy.shape, dtype=torch.float64)
    matrix[rows, cols] = weights
    return matrix + matrix.T


def program_objective(
    assoc: torch.Tensor,
    redundancy: torch.Tensor,
    tau: float,
    selected: torch.Tensor,
    assignment: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> float:
    """Objective of a 0/1 solution (s, E), evaluated exactly as the program scores it."""
    rows, cols, weights = penalty_pairs(redundancy, tau)
    s = selected.to(torch.float64)
    value = float((assoc.to(torch.float64) * assignment.to(torch.float64)).sum())
    value -= float((weights * s[rows] * s[cols]).sum())
    if bias is not None:
        value += float((bias.to(torch.float64) * s).sum())
    return value


def solve_program(
    assoc: torch.Tensor,
    redundancy: torch.Tensor,
    tau: float,
    config: RetrofitConfig,
    *,
    start_selected: torch.Tensor,
    start_assignment: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> ProgramResult:
    """Solve the program over K candidates with A (K x C), upper-triangular R (K x K) and tau.

    The start (s, E) must be feasible and unique (e.g. the clique and its greedy assignment);
    it is the MIP start and the fallback when the solver finds nothing better in time.
    `config.time_limit` bounds the total solver time over all uniqueness rounds.
    """
    k, n_classes = (int(s) for s in assoc.shape)
    n_features, per_class = config.n_features, config.per_class
    check_settings(n_classes, k, n_features, per_class)
    start_selected = start_selected.to(torch.bool)
    start_assignment = start_assignment.to(torch.bool)
    _check_start(start_selected, start_assignment, n_features, per_class)

    built = time.perf_counter()
    program = _Program(assoc, redundancy, tau, config, bias)
    stats: dict[str, Any] = {
        "solver": config.solver,
        "tau": float(tau),
        "n_candidates": k,
        "n_pairs": program.n_pairs,
        "start_objective": program_objective(
            assoc, redundancy, tau, start_selected, start_assignment, bias
        ),
        "build_time": time.perf_counter() - built,
    }

    def score(selected: torch.Tensor, assignment: torch.Tensor) -> float:
        return program_objective(assoc, redundancy, tau, selected, assignment, bias)

    max_rounds = int(config.extra.get("max_rounds", DEFAULT_MAX_ROUNDS))
    best_s, best_e = start_selected, start_assignment
    rounds = 0
    spent = 0.0
    limit_hit = False
    status = mip.OptimizationStatus.OTHER
    while True:
        remaining = None if config.time_limit is None else config.time_limit - spent
        program.set_start(best_s, best_e)
        began = time.perf_counter()
        status = program.optimize(remaining)
        spent += time.perf_counter() - began
        if status == mip.OptimizationStatus.NO_SOLUTION_FOUND:
            warnings.warn(
                "QPM: the solver found no solution within the time limit; returning its start "
                "(the greedy clique warm start, or the previous round's solution made unique). "
                "Raise time_limit for a better head.",
                RuntimeWarning,
                stacklevel=2,
            )
            limit_hit = True
            break
        if status not in (mip.OptimizationStatus.OPTIMAL, mip.OptimizationStatus.FEASIBLE):
            raise SolverError(
                f"QPM: solver {config.solver!r} ended with status {status.name}; the program is "
                "feasible by construction, so this is a solver failure. Try another solver."
            )
        s_val, e_val = program.solution()
        limit_hit = status == mip.OptimizationStatus.FEASIBLE
        duplicates = duplicate_class_pairs(e_val)
        if duplicates:
            e_val = make_unique(e_val, assoc, torch.nonzero(s_val).flatten())
        # a solver that dropped the start may stop on a worse incumbent; never return less
        if score(s_val, e_val) >= score(best_s, best_e):
            best_s, best_e = s_val, e_val
        if not duplicates:
            break
        out_of_time = config.time_limit is not None and spent >= config.time_limit
        if limit_hit or out_of_time or rounds >= max_rounds:
            warnings.warn(
                f"QPM: {len(duplicates)} pairs of classes still shared a feature set when the "
                f"{'time limit' if limit_hit or out_of_time else 'round limit'} stopped the "
                "uniqueness rounds; they were separated by greedy swaps.",
                RuntimeWarning,
                stacklevel=2,
            )
            break
        rounds += 1
        logger.info(
            "QPM uniqueness round %d: %d class pairs share a feature set", rounds, len(duplicates)
        )
        for c, c2 in duplicates:
            program.add_uniqueness_cut(c, c2)

    if limit_hit and status == mip.OptimizationStatus.FEASIBLE:
        warnings.warn(
            f"QPM: the time limit ({config.time_limit} s) stopped the solver before optimality; "
            "returning the best feasible assignment found (see stats['gap']).",
            RuntimeWarning,
            stacklevel=2,
        )
    objective = score(best_s, best_e)
    bound = program.bound(status)
    stats.update(
        status=status.name.lower(),
        objective=objective,
        bound=bound,
        gap=None if bound is None else max(0.0, bound - objective) / max(abs(objective), 1e-10),
        time=spent,
        time_limit_hit=limit_hit,
        uniqueness_rounds=rounds,
        n_variables=program.model.num_cols,
        n_binaries=program.model.num_int,
        n_constraints=program.model.num_rows,
    )
    logger.info(
        "QPM program: status=%s objective=%.4f bound=%s time=%.1fs rounds=%d",
        stats["status"],
        objective,
        bound,
        spent,
        rounds,
    )
    return ProgramResult(selected=best_s, assignment=best_e, stats=stats)


class _Program:
    """The python-mip model and its variables; the only place numpy meets the solver."""

    def __init__(
        self,
        assoc: torch.Tensor,
        redundancy: torch.Tensor,
        tau: float,
        config: RetrofitConfig,
        bias: torch.Tensor | None,
    ) -> None:
        k, n_classes = (int(s) for s in assoc.shape)
        self.config = config
        self.model = _new_model(config.solver)
        model = self.model
        model.verbose = 1  # log level 0 crashes cbcbox's CBC; output is silenced in optimize()
        model.seed = int(config.seed)
        if config.threads is not None:
            model.threads = int(config.threads)
        if config.mip_gap is not None:
            model.max_mip_gap = float(config.mip_gap)

        a = assoc.to(torch.float64).numpy()
        rows, cols, weights = penalty_pairs(redundancy, tau)
        self.pairs = list(zip(rows.tolist(), cols.tolist()))
        self.n_pairs = len(self.pairs)
        self.s = [model.add_var(var_type=mip.BINARY) for _ in range(k)]
        self.e = [[model.add_var(var_type=mip.BINARY) for _ in range(n_classes)] for _ in range(k)]
        self.y = [model.add_var(lb=0.0, ub=1.0) for _ in self.pairs]

        terms = [a[j, c] * self.e[j][c] for j in range(k) for c in range(n_classes) if a[j, c] != 0]
        terms += [-w * y for w, y in zip(weights.numpy(), self.y)]
        if bias is not None:
            b = bias.to(torch.float64).numpy()
            terms += [b[j] * self.s[j] for j in range(k) if b[j] != 0]
        model.objective = mip.maximize(mip.xsum(terms))

        model += mip.xsum(self.s) == config.n_features
        for c in range(n_classes):
            model += mip.xsum(self.e[j][c] for j in range(k)) == config.per_class
        for j in range(k):
            for c in range(n_classes):
                model += self.e[j][c] <= self.s[j]
        for (i, j), y in zip(self.pairs, self.y):
            model += y >= self.s[i] + self.s[j] - 1

    def add_uniqueness_cut(self, c: int, c2: int) -> None:
        """Classes c and c2 may share at most per_class - 1 features."""
        shared = [self.model.add_var(lb=0.0, ub=1.0) for _ in self.s]
        for j, o in enumerate(shared):
            self.model += o >= self.e[j][c] + self.e[j][c2] - 1
        self.model += mip.xsum(shared) <= self.config.per_class - 1

    def set_start(self, selected: torch.Tensor, assignment: torch.Tensor) -> None:
        on = torch.nonzero(selected).flatten().tolist()
        start = [(self.s[j], 1.0) for j in on]
        start += [(self.e[j][c], 1.0) for j, c in torch.nonzero(assignment).tolist()]
        chosen = set(on)
        start += [(y, 1.0) for (i, j), y in zip(self.pairs, self.y) if i in chosen and j in chosen]
        self.model.start = start

    def optimize(self, remaining: float | None) -> mip.OptimizationStatus:
        seconds = mip.INF if remaining is None else max(remaining, 1e-3)
        try:
            with native_stdout_silenced(not self.config.progress):
                return self.model.optimize(max_seconds=seconds)
        except Exception as exc:  # the solver libraries raise their own exception types
            raise SolverError(f"QPM: solver {self.config.solver!r} failed: {exc}") from exc

    def solution(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.tensor(np.array([v.x for v in self.s], dtype=np.float64) > 0.5)
        e = torch.tensor(np.array([[v.x for v in row] for row in self.e], dtype=np.float64) > 0.5)
        return s, e

    def bound(self, status: mip.OptimizationStatus) -> float | None:
        if status not in (mip.OptimizationStatus.OPTIMAL, mip.OptimizationStatus.FEASIBLE):
            return None
        value = self.model.objective_bound
        return None if value is None or not math.isfinite(value) else float(value)


def _new_model(solver: str) -> mip.Model:
    if solver not in _SOLVER_NAMES:
        raise SolverError(f"Unknown solver {solver!r}; choose one of {sorted(_SOLVER_NAMES)}.")
    try:
        return mip.Model(sense=mip.MAXIMIZE, solver_name=_SOLVER_NAMES[solver])
    except Exception as exc:  # python-mip raises whatever its library loader raises
        raise SolverError(
            f"The MIP solver {solver!r} is not available through python-mip ({exc}). "
            f"To use it, {_SOLVER_HINTS[solver]}; or set solver='cbc', which python-mip ships."
        ) from exc


def _check_start(
    selected: torch.Tensor, assignment: torch.Tensor, n_features: int, per_class: int
) -> None:
    if int(selected.sum()) != n_features:
        raise ValueError(f"start selects {int(selected.sum())} features, expected {n_features}.")
    if not bool((assignment.sum(dim=0) == per_class).all()):
        raise ValueError(f"start must give every class exactly {per_class} features.")
    if bool((assignment & ~selected[:, None]).any()):
        raise ValueError("start assigns a feature that it does not select.")
    if duplicate_class_pairs(assignment):
        raise ValueError(
            "start gives two classes the same feature set; pass it through make_unique."
        )
