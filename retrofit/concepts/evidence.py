"""Names as tested claims (ALGORITHMS §11): held-out tests, false-discovery-rate control, and an
estimate of how many shown names are true, none of which depends on how good the encoder is.

A name is chosen on one part of the probe images and tested on the other (choosing and testing
on the same images makes every p-value optimistic). Names are accepted by Benjamini–Hochberg
(or the stricter Benjamini–Yekutieli) over every candidate, so the expected share of wrong
names among those shown is at most `q` by construction; Storey's π̂0 then estimates the share
actually shown, with no ground truth. Whether a word is shown on the images at all is judged
against the encoder's own null: its similarity to prompts that carry no concept.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from retrofit.errors import ConfigError, DataError

DEFAULT_Q = 0.05
PROCEDURES = ("bh", "by")
DEFAULT_TEST_SHARE = 0.5  # share of the probe images that only test names
MIN_TEST_IMAGES = 10  # fewest images on each side of the split
STOREY_LAMBDA = 0.5
NULL_PROMPTS = 64  # concept-free prompts that give the encoder's null


def check_q(q: object, name: str = "q") -> float:
    """`q` as a float in (0, 1), else a ConfigError naming the bound and the value."""
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 1:
        raise ConfigError(f"{name} must be a number in (0, 1) (a false-discovery rate), got {q!r}.")
    return float(q)


def check_procedure(procedure: object) -> str:
    if procedure not in PROCEDURES:
        raise ConfigError(f"procedure must be one of {list(PROCEDURES)}, got {procedure!r}.")
    return str(procedure)


def _normal_sf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(z / math.sqrt(2.0))


def auc_p_values(
    auc: torch.Tensor, n_pos: torch.Tensor, n_neg: torch.Tensor, null: float = 0.5
) -> torch.Tensor:
    """One-sided p-values of AUC > `null` (the Mann–Whitney test's normal approximation, with
    the Hanley–McNeil variance at the null). NaN AUCs get p = 1."""
    auc, n1, n0 = auc.double(), n_pos.double(), n_neg.double()
    q1, q2 = null / (2 - null), 2 * null**2 / (1 + null)
    var = (null * (1 - null) + (n1 - 1) * (q1 - null**2) + (n0 - 1) * (q2 - null**2)) / (
        n1 * n0
    ).clamp_min(1)
    p = _normal_sf((auc - null) / var.clamp_min(1e-300).sqrt())
    return torch.where(torch.isnan(p) | (n1 < 1) | (n0 < 1), torch.ones_like(p), p)


def correlation_p_values(rho: torch.Tensor, n: int) -> torch.Tensor:
    """One-sided p-values of a rank correlation > 0 (Fisher's z, n − 3 degrees of freedom)."""
    rho = torch.nan_to_num(rho.double(), nan=0.0).clamp(-0.999999, 0.999999)
    return _normal_sf(torch.atanh(rho) * math.sqrt(max(n - 3, 1)))


def proportion_p_values(
    hits_in: torch.Tensor,
    n_in: torch.Tensor,
    hits_out: torch.Tensor,
    n_out: torch.Tensor,
    margin: float = 0.0,
) -> torch.Tensor:
    """One-sided p-values that a share inside a group exceeds the share outside it by more
    than `margin` ("class c shows concept v clearly more often than other classes"): the
    Agresti–Caffo interval's Wald test (one success and one failure added to each group, so
    a share of 0 or 1 still has a spread)."""
    n1, n0 = n_in.double() + 2, n_out.double() + 2
    p1, p0 = (hits_in.double() + 1) / n1, (hits_out.double() + 1) / n0
    se = (p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0).sqrt()
    return _normal_sf((p1 - p0 - margin) / se)


def fdr_accept(
    p_values: torch.Tensor, q: float = DEFAULT_Q, procedure: str = "bh"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted, q-values) of the step-up procedure over all `p_values`: Benjamini–Hochberg,
    or Benjamini–Yekutieli ("by": q / Σ 1/i, valid under any dependence). A pair's q-value is
    the smallest q at which it is accepted."""
    check_q(q)
    check_procedure(procedure)
    p = torch.nan_to_num(p_values.double().flatten(), nan=1.0)
    m = p.numel()
    if m == 0:
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.float64)
    scale = sum(1.0 / i for i in range(1, m + 1)) if procedure == "by" else 1.0
    order = torch.argsort(p, stable=True)
    ranked = p[order] * m * scale / torch.arange(1, m + 1, dtype=torch.float64)
    monotone = torch.flip(torch.cummin(torch.flip(ranked, [0]), 0).values, [0]).clamp(max=1.0)
    q_values = torch.empty_like(p)
    q_values[order] = monotone
    return q_values <= q, q_values


def estimated_precision(p_values: torch.Tensor, accepted: torch.Tensor) -> dict[str, float | None]:
    """Storey's estimate of the share of accepted names that are true, from the p-values alone:
    π̂0 = #{p > λ} / ((1 − λ)·m), FDR̂ = π̂0·m·t / #{p ≤ t} at the accepting threshold t."""
    p = torch.nan_to_num(p_values.double().flatten(), nan=1.0)
    m, named = p.numel(), int(accepted.sum())
    if m == 0 or named == 0:
        return {"estimated_precision": None, "pi0": None}
    pi0 = min(1.0, float((p > STOREY_LAMBDA).sum()) / ((1 - STOREY_LAMBDA) * m))
    t = float(p[accepted.flatten()].max())
    fdr = min(1.0, pi0 * m * t / max(1, int((p <= t).sum())))
    return {"estimated_precision": round(1.0 - fdr, 4), "pi0": round(pi0, 4)}


def split_rows(
    labels: torch.Tensor, test_share: float = DEFAULT_TEST_SHARE, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(naming rows, testing rows): a seeded split stratified by class. The rows are shuffled,
    grouped by class, and every row whose running share crosses a multiple of `test_share`
    tests, so each class (and the classes with a single image, together) is split in that
    proportion. Too few images for a split is a DataError."""
    if not 0 < test_share < 1:
        raise ConfigError(f"test_share must be in (0, 1), got {test_share!r}.")
    labels = labels.long().cpu()
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(labels), generator=generator)
    counts = torch.bincount(labels[shuffled]) if len(labels) else torch.zeros(0, dtype=torch.long)
    by_class = shuffled[torch.argsort(labels[shuffled], stable=True)]
    # classes of one image go last, so they alternate between the two sides together
    singles = torch.isin(labels[by_class], torch.nonzero(counts == 1).flatten())
    ordered = torch.cat([by_class[~singles], by_class[singles]])
    position = torch.arange(1, len(ordered) + 1, dtype=torch.float64)
    tests = torch.floor(position * test_share) > torch.floor((position - 1) * test_share)
    a, b = ordered[~tests].sort().values, ordered[tests].sort().values
    if min(len(a), len(b)) < MIN_TEST_IMAGES:
        raise DataError(
            f"Names are chosen on some probe images and tested on others, and {len(labels)} "
            f"images leave {len(a)} to choose and {len(b)} to test (at least {MIN_TEST_IMAGES} "
            "each are needed): pass more probe images."
        )
    return a, b


def null_prompts(words: Sequence[str], n: int = NULL_PROMPTS, seed: int = 0) -> list[str]:
    """Prompts that name no concept: each a word of the vocabulary with its letters shuffled
    (same length and letters, so the text tower sees the same kind of input)."""
    rng = random.Random(f"null-prompts/{seed}")
    pool = [w for w in words if len(w.replace(" ", "")) >= 3] or list(words)
    out: list[str] = []
    for i in range(n):
        letters = list(pool[i % len(pool)].replace(" ", ""))
        rng.shuffle(letters)
        out.append("".join(letters))
    return out


@dataclass(frozen=True)
class ShownWords:
    """Which words the images detectably show: their index, p-value and the null they beat."""

    index: torch.Tensor  # (S,) long, increasing
    p_values: torch.Tensor  # (V,)
    statistic: torch.Tensor  # (V,) separability of each word's similarity column
    null_mean: float
    null_std: float

    def summary(self, words: Sequence[str]) -> dict[str, object]:
        return {
            "words": len(words),
            "shown": len(self.index),
            "share": round(len(self.index) / max(1, len(words)), 4),
            "null_separability": [round(self.null_mean, 4), round(self.null_std, 4)],
        }


def shown_words(
    statistic: torch.Tensor,
    null_statistic: torch.Tensor,
    q: float = DEFAULT_Q,
    procedure: str = "bh",
    sampling_std: float = 0.0,
) -> ShownWords:
    """Words whose statistic (the separability of their similarity column) clearly exceeds the
    encoder's null on these images, under FDR control across the vocabulary. The null is the
    same statistic for concept-free prompts, fitted by a normal; a new draw from it is judged
    with Student's t (its predictive distribution), so a word needs more than the null's
    spread. No bar is tied to one encoder: a CLIP whose columns are rarely bimodal has a null
    that is rarely bimodal too. The null prompts share much of their text direction, so their
    spread can understate how much one column's statistic varies with the images drawn;
    `sampling_std` (that variation for a unimodal column of as many images) is added to it."""
    from scipy import stats

    null = null_statistic.double()
    if null.numel() < 3:
        raise ConfigError("The encoder's null needs at least 3 concept-free prompts.")
    mean = float(null.mean())
    std = max(math.hypot(float(null.std()), sampling_std), 1e-6)
    z = (statistic.double() - mean) / (std * math.sqrt(1 + 1 / null.numel()))
    p = torch.from_numpy(stats.t.sf(z.numpy(), df=null.numel() - 1))
    accepted, _ = fdr_accept(p, q, procedure)
    return ShownWords(torch.nonzero(accepted).flatten(), p, statistic, mean, std)


def check_embeddings(embeddings: torch.Tensor, spec: str | None) -> None:
    """Embeddings that cannot name anything (NaN, or one for every image) are a clear error."""
    name = spec or "the concept encoder"
    if not bool(torch.isfinite(embeddings).all()):
        raise DataError(
            f"{name} produced non-finite image embeddings; check the encoder's weights."
        )
    if len(embeddings) > 1 and float(embeddings.float().std(dim=0).max()) < 1e-6:
        raise DataError(
            f"{name} gives every probe image the same embedding, so it cannot tell concepts "
            "apart on these images; pass an encoder that fits the data."
        )


def encoder_fit(
    embeddings: torch.Tensor, labels: torch.Tensor, naming: torch.Tensor, testing: torch.Tensor
) -> dict[str, float]:
    """Does the encoder see these images? Held-out accuracy of the nearest class centroid of
    its image embeddings (centroids from the naming rows, accuracy on the testing rows)
    against chance (the largest class's share of the testing rows)."""
    emb = torch.nn.functional.normalize(embeddings.float(), dim=1)
    labels = labels.long().cpu()
    classes = torch.unique(labels)
    onehot = (labels[naming][:, None] == classes[None]).float()
    centroids = torch.nn.functional.normalize(onehot.T @ emb[naming], dim=1)
    predicted = classes[(emb[testing] @ centroids.T).argmax(dim=1)]
    truth = labels[testing]
    chance = float(torch.bincount(truth).max()) / max(1, len(truth))
    return {
        "class_accuracy": round(float((predicted == truth).float().mean()), 4),
        "chance": round(chance, 4),
    }


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Column-wise ranks with ties averaged (so constant features get AUC 0.5)."""
    out = torch.empty_like(x)
    for j in range(x.shape[1]):
        values, inverse, counts = torch.unique(x[:, j], return_inverse=True, return_counts=True)
        ends = torch.cumsum(counts, 0).double()
        average = ends - (counts.double() - 1) / 2
        out[:, j] = average[inverse]
    return out


def reliability_sentences(reliability: dict | None) -> list[str]:
    """The evidence summary of a naming (NamingResult.reliability) in plain sentences, for
    model cards, reports and text explanations; empty when nothing was named."""
    if not reliability:
        return []
    out = []
    part = reliability.get("pairs") or reliability.get("features") or {}
    images = reliability.get("images") or {}
    if part:
        estimate = part.get("estimated_precision")
        out.append(
            f"{part.get('named', 0)} of {part.get('tested', 0)} candidate names held on "
            f"{images.get('testing', '?')} held-out images (false-discovery rate "
            f"q = {reliability.get('q')}, {str(reliability.get('procedure', 'bh')).upper()}); "
            + (
                f"estimated precision {estimate:.2f} (Storey's estimate, no ground truth)."
                if isinstance(estimate, (int, float))
                else "no name held, so there is no precision to estimate."
            )
        )
    words = reliability.get("vocabulary")
    if words:
        out.append(
            f"The encoder detectably shows {words['shown']} of the {words['words']} vocabulary "
            f"words on these images ({100 * words['share']:.0f} %)."
        )
    fit = reliability.get("encoder_fit")
    if fit:
        out.append(
            f"Its image embeddings tell the classes apart with held-out accuracy "
            f"{fit['class_accuracy']:.2f} (chance {fit['chance']:.2f})."
        )
    return out
