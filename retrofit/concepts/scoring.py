"""Scores that say how well each feature matches each concept over a probe set (tensors only).

Every scorer maps feature activations A (N, F) and a concept signal (N, V) to scores (F, V):
  wpmi         soft-WPMI (CLIP-Dissect): rank-weighted concept probability among the feature's
               top-activating images against the concept's probability over all images;
  correlation  Pearson correlation of activations with image–concept similarity;
  log_prob     Pearson correlation of activations with log p(concept | image), the softmax over
               the vocabulary that soft-WPMI uses: a concept counts where it beats the other
               concepts, so a word no image resembles cannot win on small wiggles of its
               similarity (it equals correlation with the image–concept PMI: log p(concept) is
               constant over images);
  spearman     the same on ranks (robust to the ReLU's many ties and to outliers);
  delta        Δ-contrast with concept labels: mean activation where the concept is present
               minus where it is absent, in units of the feature's mean height above its min.
`pair_scores` recomputes a score for chosen (feature, concept) pairs only, which is what the
permutation test needs: shuffle the images' activations, rescore, count how often chance
does as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retrofit.errors import ConfigError, DataError

METHODS = ("wpmi", "correlation", "log_prob", "spearman", "delta")
# Softmax over concepts of temperature·similarity (soft-WPMI and log_prob), and soft-WPMI's
# weight of the prior. CLIP-Dissect uses a = 10, λ = 1; with the first tiny CLIP, λ = 1
# over-rewarded rare distractors, and a = 30, λ = 0.5 named the most features correctly on the
# synthetic world's *val* split (the benchmark reports on the train split, and the reference
# values too).
WPMI_TEMPERATURE = 30.0
WPMI_LAMBDA = 0.5
_EPS = 1e-8
_FEATURE_CHUNK = 16  # features per chunk of the (k, F, V) gather in soft-WPMI


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not supported; choose one of {list(METHODS)}.")
    return method


def check_inputs(activations: torch.Tensor, signal: torch.Tensor, what: str = "signal") -> None:
    if activations.ndim != 2 or signal.ndim != 2:
        raise DataError(
            f"activations and the concept {what} must be 2-D (images × features, images × "
            f"concepts); got shapes {tuple(activations.shape)} and {tuple(signal.shape)}."
        )
    if activations.shape[0] != signal.shape[0]:
        raise DataError(
            f"The concept {what} has {signal.shape[0]} rows but there are "
            f"{activations.shape[0]} probe images; give one row per image, in the same order."
        )
    if activations.shape[0] < 2:
        raise DataError(f"Scoring needs at least 2 probe images, got {activations.shape[0]}.")
    if not torch.isfinite(activations).all():
        raise DataError("The feature activations contain NaN or infinite values.")


def rank_data(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N of each column, ties getting their average rank (like scipy's rankdata)."""
    n, m = x.shape
    values, order = x.sort(dim=0, stable=True)
    new_group = torch.ones_like(values, dtype=torch.bool)
    new_group[1:] = values[1:] != values[:-1]
    group = new_group.long().cumsum(dim=0) - 1 + torch.arange(m, device=x.device) * n
    positions = torch.arange(1, n + 1, device=x.device, dtype=x.dtype)[:, None].expand(n, m)
    sums = torch.zeros(n * m, device=x.device, dtype=x.dtype).index_add_(
        0, group.flatten(), positions.flatten()
    )
    counts = torch.zeros(n * m, device=x.device, dtype=x.dtype).index_add_(
        0, group.flatten(), torch.ones_like(positions).flatten()
    )
    ranks = torch.empty_like(x)
    ranks.scatter_(0, order, (sums / counts.clamp_min(1))[group])
    return ranks


def _standardise(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=0, keepdim=True)
    return x / x.norm(dim=0, keepdim=True).clamp_min(_EPS)


def pearson_scores(activations: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """(F, V) Pearson correlations between each activation column and each signal column."""
    return _standardise(activations.float()).T @ _standardise(signal.float())


def spearman_scores(activations: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """(F, V) Spearman rank correlations (Pearson on tie-averaged ranks)."""
    return pearson_scores(rank_data(activations.float()), rank_data(signal.float()))


def concept_probabilities(similarity: torch.Tensor, temperature: float) -> torch.Tensor:
    """p(concept | image): softmax over concepts of temperature · similarity."""
    return F.softmax(temperature * similarity.float(), dim=1)


def log_prob_scores(
    activations: torch.Tensor, similarity: torch.Tensor, temperature: float = WPMI_TEMPERATURE
) -> torch.Tensor:
    """(F, V) Pearson correlations of the activations with log p(concept | image)."""
    return pearson_scores(activations, F.log_softmax(temperature * similarity.float(), dim=1))


def _rank_weights(k: int, device: torch.device) -> torch.Tensor:
    """Linearly decreasing weights for the k top images (the top one counts most), summing to 1."""
    w = torch.linspace(1.0, 1.0 / k, k, device=device)
    return w / w.sum()


def _wpmi_from_top(
    probs: torch.Tensor, top: torch.Tensor, log_prior: torch.Tensor, lam: float
) -> torch.Tensor:
    """Scores (F, V) from p(concept | image) and each feature's top images `top` (k, F)."""
    weights = _rank_weights(top.shape[0], probs.device)
    out = []
    for start in range(0, top.shape[1], _FEATURE_CHUNK):
        chunk = probs[top[:, start : start + _FEATURE_CHUNK]]  # (k, f, V)
        conditional = torch.einsum("k,kfv->fv", weights, chunk)
        out.append(torch.log(conditional + _EPS) - lam * log_prior)
    return torch.cat(out)


def wpmi_scores(
    activations: torch.Tensor,
    similarity: torch.Tensor,
    top_images: int,
    temperature: float = WPMI_TEMPERATURE,
    lam: float = WPMI_LAMBDA,
) -> torch.Tensor:
    """(F, V) soft-WPMI: log p(v | top images of j) − λ·log p(v).

    p(v | image) is a softmax over concepts; p(v | top images) weights the feature's
    `top_images` most activating images by rank; p(v) averages p(v | image) over all images.
    Scores only compare within one setup (they shrink as the vocabulary grows).
    """
    check_top_images(top_images, activations.shape[0])
    probs = concept_probabilities(similarity, temperature)
    log_prior = torch.log(probs.mean(dim=0) + _EPS)
    top = activations.float().topk(top_images, dim=0).indices
    return _wpmi_from_top(probs, top, log_prior, lam)


def check_top_images(top_images: int, n: int) -> None:
    if isinstance(top_images, bool) or not isinstance(top_images, int) or top_images < 1:
        raise ConfigError(f"top_images must be a positive integer, got {top_images!r}.")
    if top_images > n:
        raise DataError(
            f"The probe set has {n} images, fewer than top_images={top_images} (the most "
            "activating images soft-WPMI reads per feature). Pass more probe images or lower "
            "top_images."
        )


def delta_scores(activations: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(F, K) Δ-contrast: mean(x_j | k present) − mean(x_j | k absent), over mean(x_j − min x_j).

    Concepts present in every image (or in none) get 0: there is nothing to contrast.
    """
    x = activations.float()
    present = labels.to(x.dtype)
    n_present = present.sum(dim=0)
    n_absent = present.shape[0] - n_present
    mean_in = (x.T @ present) / n_present.clamp_min(1)
    mean_out = (x.T @ (1 - present)) / n_absent.clamp_min(1)
    scale = (x - x.min(dim=0).values).mean(dim=0).clamp_min(_EPS)
    delta = (mean_in - mean_out) / scale[:, None]
    return torch.where((n_present > 0) & (n_absent > 0), delta, torch.zeros_like(delta))


def alignment(delta: torch.Tensor) -> float:
    """Q-SENN's Align: the mean over features of their best normalised Δ-contrast."""
    return float(delta.max(dim=1).values.mean())


def auc_scores(activations: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(F, K) ROC AUC of each feature's activations at telling images with concept k from those
    without (Mann–Whitney on tie-averaged ranks); 0.5 where a concept is always or never there."""
    ranks = rank_data(activations.float())
    present = labels.to(ranks.dtype)
    n_pos = present.sum(dim=0)
    n_neg = present.shape[0] - n_pos
    auc = (ranks.T @ present - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg).clamp_min(1)
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.full_like(auc, 0.5))


def score_matrix(
    method: str,
    activations: torch.Tensor,
    signal: torch.Tensor,
    *,
    top_images: int | None = None,
    temperature: float = WPMI_TEMPERATURE,
    lam: float = WPMI_LAMBDA,
) -> torch.Tensor:
    """(F, V) scores of `method`; `signal` is image–concept similarity, or labels for delta."""
    check_method(method)
    check_inputs(activations, signal, "labels" if method == "delta" else "similarity")
    if method == "wpmi":
        if top_images is None:
            raise ConfigError("soft-WPMI needs top_images.")
        return wpmi_scores(activations, signal, top_images, temperature, lam)
    if method == "correlation":
        return pearson_scores(activations, signal)
    if method == "log_prob":
        return log_prob_scores(activations, signal, temperature)
    if method == "spearman":
        return spearman_scores(activations, signal)
    return delta_scores(activations, signal)


class PairScorer:
    """Scores of fixed (feature, concept) pairs for many reorderings of the activations.

    `index` (F, k) holds, per feature, the concepts to score. Everything that does not depend
    on the activations' order (probabilities, ranks of the signal, standardised columns) is
    computed once, so each permutation costs O(N·F·k).
    """

    def __init__(
        self,
        method: str,
        activations: torch.Tensor,
        signal: torch.Tensor,
        index: torch.Tensor,
        *,
        top_images: int | None = None,
        temperature: float = WPMI_TEMPERATURE,
        lam: float = WPMI_LAMBDA,
    ) -> None:
        self.method = check_method(method)
        self.index = index
        self.lam = lam
        self.top_images = top_images
        f = activations.shape[1]
        if method == "log_prob":
            signal = F.log_softmax(temperature * signal.float(), dim=1)
        columns = signal[:, index.flatten()].float().view(signal.shape[0], f, -1)  # (N, F, k)
        if method == "wpmi":
            probs = concept_probabilities(signal, temperature)
            self.log_prior = torch.log(probs.mean(dim=0) + _EPS)[index]  # (F, k)
            self.columns = probs[:, index.flatten()].view(signal.shape[0], f, -1)
        elif method in ("correlation", "log_prob"):
            self.columns = _standardise(columns.reshape(signal.shape[0], -1)).view_as(columns)
        elif method == "spearman":
            ranks = rank_data(columns.reshape(signal.shape[0], -1))
            self.columns = _standardise(ranks).view_as(columns)
        else:
            self.columns = columns
        self.prepared = rank_data(activations.float()) if method == "spearman" else activations

    def __call__(self, order: torch.Tensor | None = None) -> torch.Tensor:
        """(F, k) scores with the activations' rows taken in `order` (None: as given)."""
        x = self.prepared if order is None else self.prepared[order]
        if self.method == "wpmi":
            top = x.float().topk(self.top_images, dim=0).indices  # (k_img, F)
            weights = _rank_weights(top.shape[0], x.device)
            gathered = self.columns[top, torch.arange(x.shape[1], device=x.device)]  # (k_img,F,k)
            conditional = torch.einsum("i,ifk->fk", weights, gathered)
            return torch.log(conditional + _EPS) - self.lam * self.log_prior
        if self.method in ("correlation", "log_prob", "spearman"):
            return torch.einsum("nf,nfk->fk", _standardise(x.float()), self.columns)
        present = self.columns
        xf = x.float()
        n_present = present.sum(dim=0)
        n_absent = present.shape[0] - n_present
        mean_in = torch.einsum("nf,nfk->fk", xf, present) / n_present.clamp_min(1)
        mean_out = torch.einsum("nf,nfk->fk", xf, 1 - present) / n_absent.clamp_min(1)
        scale = (xf - xf.min(dim=0).values).mean(dim=0).clamp_min(_EPS)
        delta = (mean_in - mean_out) / scale[:, None]
        return torch.where((n_present > 0) & (n_absent > 0), delta, torch.zeros_like(delta))


def permutation_p_values(scorer: PairScorer, n_permutations: int, seed: int) -> torch.Tensor:
    """(F, k) one-sided p-values: (1 + #{shuffled score ≥ observed}) / (1 + n_permutations).

    Shuffling the images' activations (seeded) breaks any link between a feature and the
    concepts while keeping both marginal distributions. The p-values are per pair, not
    corrected for having picked the best of V concepts.
    """
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int):
        raise ConfigError(f"n_permutations must be an integer, got {n_permutations!r}.")
    observed = scorer()
    if n_permutations <= 0:
        return torch.full_like(observed, float("nan"))
    generator = torch.Generator().manual_seed(seed)
    n = scorer.prepared.shape[0]
    exceed = torch.zeros_like(observed)
    for _ in range(n_permutations):
        order = torch.randperm(n, generator=generator).to(scorer.prepared.device)
        exceed += (scorer(order) >= observed - 1e-12).to(exceed.dtype)
    return (1 + exceed) / (1 + n_permutations)
