"""Head method 'qsenn': Q-SENN's ternary head (ALGORITHMS §2-3) with a bottleneck fine-tuned on the cache."""

from __future__ import annotations

import logging

import torch

from retrofit.config import RetrofitConfig
from retrofit.extraction.streaming import Standardised, column_stats
from retrofit.fitting.bottleneck import (
    CONCEPT_RETENTION,
    Bottleneck,
    FixedHead,
    finetune_bottleneck,
    retention_default,
)
from retrofit.methods.base import HeadResult, linear_accuracy, register_head
from retrofit.methods.prior import penalty_factors
from retrofit.methods.qsenn.quantize import quantise_head
from retrofit.solvers.elastic_net import check_inputs, fit_elastic_net, lambda_max, select_features

logger = logging.getLogger(__name__)

SELECTION_ALPHA = 0.8
PATH_ALPHA = 0.99
PATH_EPSILON = 1e-3  # the smallest non-zero λ of the path is ε·λ_max
LR_DECAY = 0.9  # per round, as in the reference


@register_head("qsenn", shared_magnitude=True)
def fit_qsenn(
    features: torch.Tensor,
    labels: torch.Tensor,
    config: RetrofitConfig,
    maps: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
) -> HeadResult:
    """Select n_features, then per round: fit, quantise to {−a, 0, a}, ramp the bias, fine-tune.

    Round r (config.rounds rounds, one when finetune="none"): compute the bottleneck's outputs
    (round 1: the standardised selected features), solve the α = 0.99 elastic net on them at
    the path's smallest non-zero λ (ε·λ_max; the solution is unique, so it is solved directly,
    warm-started from the previous round), quantise with per_class·C non-zeros (`balanced`:
    per_class per class), ramp the bias, then train the bottleneck against that fixed head
    (lr × 0.9^r). The outputs are not re-standardised between rounds: without a linear mix the
    normalisation is all the bottleneck learns, and resetting it would undo the fine-tuning.
    The returned head is the last round's; result.bottleneck is the bottleneck trained against it,
    and mean/std are its normalisation (exact for the HeadResult formula unless
    config.linear_mix). `logits` (the original model's) enable config.distill; `maps` enable
    the Feature Diversity Loss. The features are only read in row chunks (standardised on the
    fly, see retrofit.extraction.streaming), so a memory-mapped cache is never copied whole.
    A class–concept `prior` (D, C) (retrofit.methods.prior) scales the L1 penalty of the
    selection (per column: its most favourable class) and of every round's fit (per weight);
    the quantiser keeps the largest |w| / factor; and the features whose concept a class shows
    are held to it while the bottleneck trains (config.bottleneck.concept_retention, on when concepts
    are named), since cross-entropy alone moves them onto whatever separates the classes.
    """
    mean, std = column_stats(features)
    z, y, c = check_inputs(
        Standardised(features, mean, std),
        labels,
        len(config.class_names) if config.class_names else None,
    )
    factors = penalty_factors(prior, config, int(features.shape[1]), c)
    x = features  # read in chunks by the bottleneck, in whatever dtype the cache holds
    selected, selection = select_features(
        z,
        y,
        config.n_features,
        alpha=SELECTION_ALPHA,
        num_classes=c,
        penalty=None if factors is None else factors.min(dim=0).values,
        progress=config.progress,
    )
    factors = None if factors is None else factors[:, selected.cpu()]
    # features the prior says a class shows keep meaning their concept (as layer_fit holds them)
    retain = None if prior is None else (prior[selected.cpu()] > 0).any(dim=1)
    retention = CONCEPT_RETENTION if retain is None else retention_default(config)
    bottleneck = Bottleneck(
        selected, mean[selected], std[selected], x.shape[1], linear_mix=config.linear_mix
    ).to(x.device)
    tune = config.finetune != "none" and config.epochs != 0
    rounds = config.rounds if config.finetune != "none" else 1
    warm_w = warm_b = None
    history = []
    for r in range(rounds):
        zs = bottleneck.transform(x)
        lam = PATH_EPSILON * lambda_max(zs, y, PATH_ALPHA, num_classes=c, penalty=factors)
        point = fit_elastic_net(
            zs, y, lam, PATH_ALPHA, num_classes=c, weight=warm_w, bias=warm_b, penalty=factors
        )
        warm_w, warm_b = point.weight, point.bias
        assignment, scale, bias = quantise_head(
            point.weight, point.bias, config.per_class, config.balanced, factors
        )
        head = FixedHead(scale * assignment.float(), bias)
        record = {
            "lambda": lam,
            "nnz_before_quantisation": point.nnz,
            "objective": point.objective,
            "accuracy_continuous": linear_accuracy(zs, point.weight, point.bias, y),
            "accuracy_quantised": linear_accuracy(zs, head.weight, head.bias, y),
        }
        if tune:
            trained = finetune_bottleneck(
                bottleneck,
                head,
                x,
                y,
                config,
                logits=logits,
                maps=maps,
                lr=config.lr * LR_DECAY**r,
                retain=retain,
                retention=retention,
            )
            record["accuracy_finetuned"] = trained["accuracy"][-1]
            record["finetune"] = trained
        history.append(record)
        logger.info(
            "qsenn round %d: continuous %.4f, quantised %.4f, fine-tuned %s",
            r + 1,
            record["accuracy_continuous"],
            record["accuracy_quantised"],
            record.get("accuracy_finetuned", "-"),
        )
    bottleneck.eval()
    return HeadResult(
        selected=selected,
        weight=head.weight.clone(),
        bias=head.bias.clone(),
        mean=bottleneck.mean.detach().clone(),
        std=bottleneck.std.detach().clone(),
        assignment=assignment,
        scale=scale,
        stats={
            "method": "qsenn",
            "selection_entry_lambda": selection["entry_lambda"],
            "rounds": history,
            "nnz": int((assignment != 0).sum().item()),
            "in_features": x.shape[1],
        },
        bottleneck=bottleneck,
    )
