"""The QPM program re-solved under human edits: pinned and forbidden links, dropped features,
and a feature count per class.

maximise  sum_jc A_jc E_jc - sum_{(j,j') in P} Rt_jj' y_jj'
s.t.      E_jc <= s_j,   sum_j s_j = n_f,   sum_j E_jc = k_c for every class c,
          s_j = 1 (kept features),  s_j = 0 (dropped),  E_jc = 1 (pinned),  E_jc = 0 (forbidden),
          y_jj' >= s_j + s_j' - 1,   class feature sets pairwise distinct (added lazily)

over a pool of K features: the model's kept features plus replacement candidates. This is the
"assignment" form of retrofit.methods.qpm.program with per-class counts and fixed variables:
the projected form's value cuts assume one count for all classes and free links, so they do
not carry over. For a 0/1 selection each class's polytope (a box with fixed entries cut by one
cardinality row) still has 0/1 vertices, so E stays continuous until a uniqueness cut names
the class, exactly as in the unedited program.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import mip
import numpy as np
import torch

from retrofit.editing.parse import DEFAULT_EDIT_TIME_LIMIT, EditPlan, class_counts
from retrofit.errors import EditError, SolverError
from retrofit.extraction.featureset import FeatureSet
from retrofit.fitting.bottleneck import FixedHead, swap_channels
from retrofit.methods.base import shared_magnitude
from retrofit.methods.qpm.cliques import duplicate_class_pairs
from retrofit.methods.qpm.constants import class_correlation, redundancy
from retrofit.methods.qpm.program import (
    ProgramResult,
    _new_model,
    penalty_pairs,
    solve_outcome,
    summary_line,
)
from retrofit.solvers.quiet import progress_line, solver_log_wanted, solver_output

if TYPE_CHECKING:
    from retrofit.model.interpretable import InterpretableModel

logger = logging.getLogger(__name__)

MIN_REPLACEMENTS = 10  # replacement channels offered to the program per edit, at least
MAX_UNIQUENESS_ROUNDS = 50


def constrained_top(
    assoc: torch.Tensor,
    selected: torch.Tensor,
    counts: list[int],
    pinned: torch.Tensor,
    forbidden: torch.Tensor,
) -> torch.Tensor:
    """E (K x C bool): per class its pins, then its best allowed selected features up to k_c.

    The optimal E for a fixed selection when uniqueness does not bind; ties go to lower indices.
    """
    k, n_classes = (int(s) for s in assoc.shape)
    assignment = pinned.clone() & selected[:, None]
    for c in range(n_classes):
        room = counts[c] - int(assignment[:, c].sum())
        free = selected & ~forbidden[:, c] & ~assignment[:, c]
        order = torch.argsort(-assoc[:, c].masked_fill(~free, -torch.inf), stable=True)
        assignment[order[:room], c] = True
    return assignment


def solve_edited_program(
    assoc: torch.Tensor,
    redundancy: torch.Tensor,
    tau: float,
    *,
    n_features: int,
    counts: list[int],
    fixed_on: torch.Tensor,
    allowed: torch.Tensor,
    pinned: torch.Tensor,
    forbidden: torch.Tensor,
    solver: str = "cbc",
    time_limit: float = DEFAULT_EDIT_TIME_LIMIT,
    seed: int = 0,
    quiet: bool = True,
    solver_log: bool = False,
) -> ProgramResult:
    """Solve over a pool of K features: A (K x C), R (K x K upper triangle), masks of length K
    (fixed_on: must be selected, allowed: may be), K x C masks of pinned and forbidden links,
    and one count per class. Raises EditError when the edits leave no feasible assignment.
    Unless `quiet`, one summary line goes to stderr; the solver's own log only with
    `solver_log` (or inside retrofit.solvers.quiet.solver_log_shown)."""
    k, n_classes = (int(s) for s in assoc.shape)
    show_log = solver_log_wanted(solver_log)
    began = time.perf_counter()
    model = _new_model(solver)
    model.verbose = 1  # log level 0 crashes cbcbox's CBC; output is silenced below
    model.seed = int(seed)
    a = assoc.to(torch.float64).numpy()
    s = [
        model.add_var(var_type=mip.BINARY, lb=float(fixed_on[j]), ub=float(allowed[j]))
        for j in range(k)
    ]
    model += mip.xsum(s) == n_features
    rows, cols, weights = penalty_pairs(redundancy, tau)
    terms = []
    for i, j, w in zip(rows.tolist(), cols.tolist(), weights.tolist()):
        if allowed[i] and allowed[j] and not (fixed_on[i] and fixed_on[j]):
            y = model.add_var(lb=0.0, ub=1.0)
            model += y >= s[i] + s[j] - 1
            terms.append(-w * y)
    e: list[dict[int, mip.Var]] = []
    for c in range(n_classes):
        column = {
            j: model.add_var(lb=float(pinned[j, c]), ub=1.0)
            for j in range(k)
            if allowed[j] and not forbidden[j, c]
        }
        e.append(column)
        model += mip.xsum(column.values()) == counts[c]
        for j, var in column.items():
            model += var <= s[j]
            if a[j, c]:
                terms.append(float(a[j, c]) * var)
    with solver_output(show_log):  # HiGHS prints its banner here
        model.objective = mip.maximize(mip.xsum(terms))
    binary: set[int] = set()
    rounds = 0
    while True:
        remaining = time_limit - (time.perf_counter() - began)
        try:
            with solver_output(show_log):
                status = model.optimize(max_seconds=max(remaining, 1e-3))
        except Exception as exc:  # the solver libraries raise their own exception types
            raise SolverError(f"edit re-solve: solver {solver!r} failed: {exc}") from exc
        if status == mip.OptimizationStatus.INFEASIBLE:
            raise EditError(
                "the edits leave no assignment in which every class keeps its feature count "
                "with distinct feature sets; forbid or drop fewer, or change per_class counts."
            )
        if status not in (mip.OptimizationStatus.OPTIMAL, mip.OptimizationStatus.FEASIBLE):
            raise SolverError(
                f"edit re-solve: no assignment found within {time_limit:g} s (status "
                f"{status.name}); raise time_limit."
            )
        selected = torch.tensor(np.array([v.x for v in s]) > 0.5)
        assignment = constrained_top(assoc, selected, counts, pinned, forbidden)
        for c in binary:
            for j, var in e[c].items():
                assignment[j, c] = var.x > 0.5
        duplicates = duplicate_class_pairs(assignment)
        if not duplicates:
            break
        rounds += 1
        if rounds > MAX_UNIQUENESS_ROUNDS or time.perf_counter() - began >= time_limit:
            raise SolverError(
                f"edit re-solve: {len(duplicates)} class pairs still share a feature set after "
                f"{rounds - 1} uniqueness rounds; raise time_limit."
            )
        for c, c2 in duplicates:
            for cls in (c, c2):
                if cls not in binary:
                    binary.add(cls)
                    for var in e[cls].values():
                        var.var_type = mip.BINARY
            shared = []
            for j in set(e[c]) & set(e[c2]):
                o = model.add_var(lb=0.0, ub=1.0)
                model += o >= e[c][j] + e[c2][j] - 1
                shared.append(o)
            model += mip.xsum(shared) <= counts[c] - 1
    objective = float(model.objective_value)
    stats: dict[str, Any] = {
        **solve_outcome(status.name.lower(), objective, model.objective_bound),
        "objective": objective,
        "time": time.perf_counter() - began,
        "time_limit": time_limit,
        "time_limit_hit": status == mip.OptimizationStatus.FEASIBLE,
        "uniqueness_rounds": rounds,
        "n_pool": k,
    }
    logger.info("edit re-solve: %s in %.2fs", stats["status"], stats["time"])
    if not quiet:
        progress_line(summary_line(stats, "QPM edit re-solve"))
    return ProgramResult(selected=selected, assignment=assignment, stats=stats)


def resolve_edits(
    imodel: InterpretableModel, plan: EditPlan, train: FeatureSet, limit: float, progress: bool
) -> list[int]:
    """Re-solve QPM's assignment program under the plan, in place; the slots refilled."""
    x, y = train.features.float().cpu(), train.labels.cpu()
    n_f, n_classes = imodel.n_features, imodel.num_classes
    selected = imodel.bottleneck.selected.cpu()
    counts = class_counts(imodel, plan)
    kept = [j for j in range(n_f) if j not in plan.dropped]
    assoc_all = class_correlation(x, y, n_classes)
    channels = selected[kept].tolist()
    if plan.dropped:
        value = assoc_all.topk(min(max(counts), n_classes), dim=1).values.sum(dim=1)
        value[selected] = -math.inf
        n_new = min(int(x.shape[1]) - n_f, max(MIN_REPLACEMENTS, 4 * len(plan.dropped)))
        if n_new < len(plan.dropped):
            raise EditError(
                f"dropping {len(plan.dropped)} features needs as many unused backbone channels, "
                f"but only {int(x.shape[1]) - n_f} remain: drop fewer."
            )
        channels += torch.argsort(-value, stable=True)[:n_new].tolist()
    assoc = assoc_all[channels]
    k = len(channels)
    position = {j: p for p, j in enumerate(kept)}
    pinned = torch.zeros(k, n_classes, dtype=torch.bool)
    forbidden = torch.zeros(k, n_classes, dtype=torch.bool)
    for mask, links in ((pinned, plan.pinned), (forbidden, plan.forbidden)):
        for c, j in links:
            if j in position:
                mask[position[j], c] = True
    fixed_on = torch.zeros(k, dtype=torch.bool)
    fixed_on[: len(kept)] = True
    tau = imodel.stats.get("head", {}).get("tau")
    result = solve_edited_program(
        assoc,
        redundancy(assoc),
        math.inf if tau is None else float(tau),
        n_features=n_f,
        counts=counts,
        fixed_on=fixed_on,
        allowed=torch.ones(k, dtype=torch.bool),
        pinned=pinned,
        forbidden=forbidden,
        solver=imodel.config.solver,
        time_limit=limit,
        seed=imodel.config.seed,
        quiet=not progress,
    )
    new = torch.nonzero(result.selected[len(kept) :]).flatten() + len(kept)
    slot_to_pool = torch.zeros(n_f, dtype=torch.long)
    slot_to_pool[kept] = torch.arange(len(kept))
    swapped = sorted(plan.dropped)
    slot_to_pool[swapped] = new
    scale = shared_magnitude(imodel.head.weight) or 1.0
    weight = (scale * result.assignment[slot_to_pool].T.float()).contiguous()
    imodel.head = FixedHead(weight, imodel.head.bias.detach().cpu()).to(imodel.head.weight.device)
    swap_channels(imodel.bottleneck, swapped, [channels[int(p)] for p in new], x)
    imodel.stats.setdefault("edit_solves", []).append(result.stats)
    return swapped
