"""Head method 'qpm': Quadratic Programming Enhanced Model (ICLR 2025), a binary class-feature
assignment chosen by a mixed-integer program.

Pipeline: feature-class correlations A, candidate pre-selection, redundancy R among the
candidates, clique threshold tau with its clique, a swap local search from the clique and a
greedy unique assignment as warm start, the program (see retrofit.methods.qpm.program), then
a binary head: logit_c = sum over the class's features of the standardised feature, no bias.
Pearson correlation does not change under standardisation, so A is computed from the raw
features in chunks (no N x D standardised copy); the same pass gives mu and sigma of the
selected features.

Options read from `config.qpm` (retrofit.settings.QPMSettings) and `config.head`:
  candidates (int): features the program may choose from (default: 8 * n_features, raised
      towards 2 * C but to no more than 12 * n_features, at most D); D or more disables the
      pre-selection.
  duplicate_cut (float, 0.95): candidates whose cosine with a kept one exceeds this are skipped.
  locality (bool, False): add the locality bias b_j (needs the spatial `maps`).
  max_rounds (int, 100): cap on the lazy uniqueness rounds.
  search_rounds (int, 200): kicks of the iterated local search that builds the warm start.
  cut_rounds (int, 50), cuts_per_round (int, 500): the root loop of clique / stable-set cuts
      (0 rounds disables it; it may use up to 40 % of time_limit).
  formulation (str, "projected"): one value per class bounded by exact cuts; "assignment"
      keeps a variable per feature and class (see retrofit.methods.qpm.program).
  concept_prior (float, 0.5): weight of the class–concept prior (`prior`, from the concept
      basis: +1 where a class shows a concept feature's concept, −1 where it does not) added to
      the class–feature correlations A; 0 ignores the prior.
"""

from __future__ import annotations

import logging
import time

import torch

from retrofit.config import RetrofitConfig
from retrofit.errors import ConfigError, DataError, FeatureError
from retrofit.methods.base import HeadResult, register_head
from retrofit.methods.prior import check_prior, concept_prior_weight
from retrofit.methods.qpm.cliques import clique_threshold, greedy_assignment, perturbed_search
from retrofit.methods.qpm.constants import (
    correlation_with_moments,
    kth_largest,
    locality_bias,
    redundancy,
    rows_within,
    select_candidates,
)
from retrofit.methods.qpm.edit import resolve_edits
from retrofit.methods.qpm.program import (
    DEFAULT_TIME_LIMIT,
    check_settings,
    penalty_matrix,
    solve_program,
)
from retrofit.solvers.deadline import Deadline
from retrofit.solvers.stats import MIN_STD

logger = logging.getLogger(__name__)

DEFAULT_SEARCH_ROUNDS = 200
# the pass that computes A may take this share of time_limit; past it, rows are subsampled
CONSTANTS_SHARE = 0.4
# the clique and the iterated local search may use this share of the time the constants leave
WARM_START_SHARE = 0.3


@register_head("qpm", resolve_edits=resolve_edits, refills_dropped=True)
def fit_qpm(
    features: torch.Tensor,
    labels: torch.Tensor,
    config: RetrofitConfig,
    maps: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
) -> HeadResult:
    """Select `n_features` features and give every class `per_class` of them, all classes distinct.

    `selected` is ordered by each feature's total correlation with the classes it serves
    (sum_c A_jc E_jc, descending; ties by feature index), so the first features matter most.
    `config.time_limit` (None: DEFAULT_TIME_LIMIT) bounds the whole fit: the constants (from
    evenly spaced rows when one pass over all of them would take more than CONSTANTS_SHARE of
    the limit; `constants_rows` says how many), then
    the warm start (at most WARM_START_SHARE of what is left), the cuts, the solves and the
    uniqueness rounds share one deadline; stats record the seconds of every stage.
    """
    began = time.perf_counter()
    limit = DEFAULT_TIME_LIMIT if config.time_limit is None else float(config.time_limit)
    deadline = Deadline.after(limit)
    n_classes = _validate(features, labels, config, maps, prior)
    dim = int(features.shape[1])
    check_settings(n_classes, dim, config.n_features, config.per_class)

    constant_rows = rows_within(features, deadline.share(CONSTANTS_SHARE).remaining(), n_classes)
    constants = correlation_with_moments(features, labels, n_classes, rows=constant_rows)
    assoc_all = constants.assoc
    if prior is not None:
        weight = concept_prior_weight(config)
        assoc_all = assoc_all + weight * prior.to(assoc_all.device, assoc_all.dtype)
    candidates = select_candidates(
        assoc_all,
        config.n_features,
        config.per_class,
        n_candidates=config.qpm.candidates,
        duplicate_cut=config.qpm.duplicate_cut,
    )
    assoc = assoc_all[candidates]
    redund = redundancy(assoc)
    bias = locality_bias(maps)[candidates] if config.qpm.locality else None
    stage_times = {
        "constants_time": time.perf_counter() - began,
        "constants_rows": len(features) if constant_rows is None else len(constant_rows),
    }

    warm_began = time.perf_counter()
    warm_deadline = deadline.share(WARM_START_SHARE)
    tau, clique = clique_threshold(
        redund,
        config.n_features,
        kth_largest(assoc, config.per_class),
        deadline=warm_deadline,
    )
    search: dict = {}
    start = perturbed_search(
        assoc,
        penalty_matrix(redund, tau),
        clique,
        config.per_class,
        bias,
        rounds=config.qpm.search_rounds,
        seed=int(config.seed),
        deadline=warm_deadline,
        record=search,
    )
    start_selected = torch.zeros(len(candidates), dtype=torch.bool)
    start_selected[start] = True
    start_assignment = greedy_assignment(assoc, start, config.per_class)
    stage_times["warm_start_time"] = time.perf_counter() - warm_began
    stage_times["warm_start_budget"] = max(0.0, warm_deadline.end - warm_began)
    solve_began = time.perf_counter()
    result = solve_program(
        assoc,
        redund,
        tau,
        config,
        start_selected=start_selected,
        start_assignment=start_assignment,
        bias=bias,
        deadline=deadline,
    )
    stage_times["program_time"] = time.perf_counter() - solve_began

    local = torch.nonzero(result.selected).flatten()
    contribution = (assoc[local] * result.assignment[local]).sum(dim=1)
    # local is ascending, so a stable sort keeps ties in feature-index order
    order = torch.argsort(-contribution, stable=True)
    local = local[order]
    selected = candidates[local]
    assignment = result.assignment[local].T.contiguous().to(torch.int8)
    # the constants' pass measured every column: no second pass over N rows
    mean = constants.mean[selected].float()
    std = constants.std[selected].float().clamp_min(MIN_STD)
    stats = {
        **result.stats,
        **search,
        **stage_times,
        "head_time": time.perf_counter() - began,
        "head_time_limit": limit,
        "n_classes": n_classes,
        "locality": bias is not None,
    }
    return HeadResult(
        selected=selected,
        weight=assignment.to(torch.float32),
        bias=torch.zeros(n_classes, dtype=torch.float32),
        mean=mean,
        std=std,
        assignment=assignment,
        scale=1.0,
        stats=stats,
    )


def _validate(
    features: torch.Tensor,
    labels: torch.Tensor,
    config: RetrofitConfig,
    maps: torch.Tensor | None,
    prior: torch.Tensor | None,
) -> int:
    """Check shapes, labels and options; return the number of classes."""
    if features.ndim != 2 or not features.is_floating_point():
        raise FeatureError(
            f"features must be a float (N, D) tensor, got {features.dtype} {tuple(features.shape)}."
        )
    n = int(features.shape[0])
    if labels.ndim != 1 or labels.shape[0] != n or labels.is_floating_point():
        raise DataError(
            f"labels must be an integer (N,) tensor with N={n}, got {labels.dtype} {tuple(labels.shape)}."
        )
    if n == 0:
        raise DataError("QPM needs at least one training image.")
    if int(labels.min()) < 0:
        raise DataError("labels must be class indices >= 0.")
    n_classes = int(labels.max()) + 1
    if config.class_names is not None:
        if n_classes > len(config.class_names):
            raise DataError(
                f"label {n_classes - 1} found but only {len(config.class_names)} class_names given."
            )
        n_classes = len(config.class_names)
    check_prior(prior, int(features.shape[1]), n_classes)
    concept_prior_weight(config)
    if config.qpm.locality:
        if maps is None:
            raise ConfigError(
                "qpm.locality=True needs the spatial feature maps; extract them or drop the option."
            )
        if maps.ndim != 4 or tuple(maps.shape[:2]) != tuple(features.shape):
            raise FeatureError(
                f"maps must be (N, D, H, W) = ({n}, {features.shape[1]}, H, W), got {tuple(maps.shape)}."
            )
    return n_classes
