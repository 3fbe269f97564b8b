"""Name every selected feature of an InterpretableModel after the concepts it tracks.

Two sources of concepts:
  - a CLIP-style encoder and a vocabulary: image–concept similarity over probe images, scored
    against the feature's activations (correlation with log p(concept | image) by default,
    Pearson or Spearman correlation with the similarity, soft-WPMI);
  - per-image concept labels (annotations): Δ-contrast, no encoder needed.
The top-k concepts of each feature go into `imodel.concepts[j]` as dicts
{"concept", "score", "p_value", "method"}; the p-value comes from a seeded permutation test.
`apply_concepts` is the one call `convert(..., concepts=...)` makes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from retrofit.concepts.encoders import (
    ConceptEncoder,
    embed_batch,
    embed_concepts,
    embed_images,
    load_encoder,
)
from retrofit.concepts.evidence import (
    DEFAULT_Q,
    DEFAULT_TEST_SHARE,
    auc_p_values,
    average_ranks,
    check_embeddings,
    check_procedure,
    check_q,
    correlation_p_values,
    encoder_fit,
    estimated_precision,
    fdr_accept,
    null_prompts,
    split_rows,
)
from retrofit.concepts.guard import resolve_encoder
from retrofit.concepts.pairs import (
    PairSettings,
    auc_matrix,
    name_pairs,
    pair_reliability,
    presence_from_similarity,
    shown_concepts,
)
from retrofit.concepts.scoring import (
    WPMI_LAMBDA,
    WPMI_TEMPERATURE,
    PairScorer,
    alignment,
    check_method,
    check_top_images,
    permutation_p_values,
    score_matrix,
)
from retrofit.concepts.settings import parse_concepts
from retrofit.concepts.vocabulary import Vocabulary, filter_vocabulary, load_vocabulary
from retrofit.errors import ConfigError, DataError
from retrofit.extraction.featureset import FeatureSet
from retrofit.extraction.loaders import as_batches, dataset_length, iterate

logger = logging.getLogger(__name__)

MAX_TOP_IMAGES = 100  # CLIP-Dissect's k
# Correlation with log p(concept | image) reads every probe image, not only a feature's top
# ones (whose images, for a feature tuned to a class, show all of its concepts at once), and
# named the synthetic world's features best, with and without 1,500 distractor words
# (benchmarks/results/concepts.json).
DEFAULT_METHOD = "log_prob"


@dataclass
class NamingResult:
    """Everything naming computed; `names` is what was written into `imodel.concepts`.

    `signal` (N, F) is each feature's best concept over the probe images (its similarity
    column, or its label column for Δ-contrast): the target `align_features` trains towards.
    """

    method: str
    concepts: list[str]
    scores: torch.Tensor
    top: torch.Tensor
    names: list[list[dict[str, Any]]]
    signal: torch.Tensor
    removed: dict[str, str] = field(default_factory=dict)
    encoder: str | None = None
    align: float | None = None
    pairs: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    reliability: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (for model stats, exports and reports)."""
        statuses = [pair["status"] for pair in self.pairs.values()]
        return {
            "method": self.method,
            "encoder": self.encoder,
            "n_concepts": len(self.concepts),
            "removed": dict(self.removed),
            "align": self.align,
            "names": self.names,
            "pairs": {status: statuses.count(status) for status in sorted(set(statuses))},
            "reliability": self.reliability,
        }


def default_top_images(n: int) -> int:
    """CLIP-Dissect's 100 top images, fewer for small probe sets (5 % of them, at least 5)."""
    return max(1, min(n, MAX_TOP_IMAGES, max(5, n // 20)))


def _check_top_k(top_k: int, n_concepts: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}.")
    if top_k > n_concepts:
        raise ConfigError(
            f"top_k={top_k} is larger than the {n_concepts} concepts left to score; lower top_k "
            "or pass a larger vocabulary."
        )


@torch.no_grad()
def _activations(features: torch.Tensor, imodel: Any) -> torch.Tensor:
    device = imodel.bottleneck.mean.device
    return imodel.bottleneck.transform(features.to(device)).float().cpu()


@torch.no_grad()
def _probe_pass(
    imodel: Any,
    data: Any,
    encoder: ConceptEncoder | None,
    *,
    input_mean: Sequence[float] | None,
    input_std: Sequence[float] | None,
    cache_dir: str | os.PathLike | None,
    batch_size: int,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One pass over the images: feature activations, embeddings (when `encoder`) and labels,
    so both always come from the same images in the same order."""
    from tqdm.auto import tqdm

    device = imodel.bottleneck.mean.device
    acts, embs, labels = [], [], []
    with tqdm(
        total=dataset_length(data), unit="img", desc="concept probe", disable=not progress
    ) as bar:
        for images, batch_labels in iterate(as_batches(data, batch_size=batch_size)):
            acts.append(imodel.concept_activations(images.to(device)).float().cpu())
            if encoder is not None:
                embs.append(
                    embed_batch(
                        encoder,
                        images,
                        batch_labels,
                        input_mean=input_mean,
                        input_std=input_std,
                        cache_dir=cache_dir,
                    )
                )
            labels.append(batch_labels)
            bar.update(len(batch_labels))
    if not labels:
        raise DataError("The probe data yielded no images; check that it is not empty.")
    return (
        torch.cat(acts),
        torch.cat(embs) if embs else None,
        torch.cat(labels),
    )


def _label_names(concepts: Any, k: int) -> list[str]:
    if concepts is None:
        return [f"concept_{i}" for i in range(k)]
    names = list(concepts.concepts) if isinstance(concepts, Vocabulary) else concepts
    if isinstance(names, (str, os.PathLike)) or not isinstance(names, Sequence):
        raise ConfigError(
            "With concept_labels, pass concepts= the list of their K names (one per column)."
        )
    names = [str(n) for n in names]
    if len(names) != k:
        raise DataError(
            f"concept_labels has {k} columns but {len(names)} concept names were given; pass "
            "one name per column."
        )
    return names


def _check_labels(labels: Any, n: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 2 or labels.shape[0] != n:
        raise DataError(
            f"concept_labels must be (N, K) with one row per probe image (N = {n}), got shape "
            f"{tuple(labels.shape)}."
        )
    if labels.dtype != torch.bool:
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise DataError("concept_labels must be boolean or 0/1 (concept present or absent).")
        labels = labels.bool()
    return labels


def name_features(
    imodel: Any,
    probe: Any,
    images: Any | None = None,
    *,
    concepts: Vocabulary | Sequence[str] | str | os.PathLike | None = None,
    encoder: ConceptEncoder | str | None = None,
    concept_labels: torch.Tensor | None = None,
    image_embeddings: torch.Tensor | None = None,
    method: str | None = None,
    top_k: int = 5,
    top_images: int | None = None,
    temperature: float = WPMI_TEMPERATURE,
    lam: float = WPMI_LAMBDA,
    n_permutations: int = 100,
    filters: bool = True,
    class_names: Sequence[str] | None = None,
    min_image_similarity: float | None = None,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    pairs: PairSettings | bool = True,
    q: float = DEFAULT_Q,
    procedure: str = "bh",
    test_share: float = DEFAULT_TEST_SHARE,
) -> NamingResult:
    """Fill `imodel.concepts` with each feature's top-k concepts, scores and p-values, and
    `imodel.pair_concepts` with class-conditional names (retrofit.concepts.pairs) when the
    probe's classes are known (`pairs=False` skips them; PairSettings tunes them).

    `probe` is a loader/Dataset of images (activations and embeddings in one pass), or a
    FeatureSet / (N, D) tensor of the backbone's pooled features; then `images` (a loader or
    tensor of the same images, same order) or `image_embeddings` feed the encoder. With
    `concept_labels` (N, K) the method is Δ-contrast and `concepts` names the K columns;
    otherwise `concepts` is the vocabulary (default: the curated lists) and `encoder` the
    CLIP (default: the shipped tiny CLIP of the synthetic world). `method`: "log_prob"
    (default, see DEFAULT_METHOD), "correlation", "wpmi", "spearman", or "delta" (the default
    with labels); log_prob and soft-WPMI take p(concept | image) as a softmax with
    `temperature`; soft-WPMI reads each feature's `top_images` (default: 5 % of the probe,
    5 to 100) and weighs the prior by `lam`. `class_names` feed the
    class-name filter (default: none; the synthetic world's class names are made of its
    concepts, so filtering against them would drop every true concept).

    Every shown name is a tested claim (retrofit.concepts.evidence): names are chosen on a
    seeded `1 - test_share` of the probe images (stratified by class), tested on the rest, and
    accepted under false-discovery-rate control at `q` (`procedure` "bh" or the stricter
    "by"); the others read "unexplained". Only words the images detectably show (against the
    encoder's similarity to concept-free prompts) may name a pair. `result.reliability` holds
    the evidence summary: the estimated precision of what is shown, the share of the
    vocabulary shown, and how well the encoder separates the classes.
    """
    check_q(q)
    check_procedure(procedure)
    method = check_method(method or ("delta" if concept_labels is not None else DEFAULT_METHOD))
    if (method == "delta") != (concept_labels is not None):
        raise ConfigError(
            "method='delta' needs concept_labels (N, K), and concept_labels need method='delta'."
        )
    vocab = load_vocabulary(concepts) if method != "delta" else None
    if vocab is not None:
        _check_top_k(top_k, len(vocab))
    needs_encoder = method != "delta" and image_embeddings is None
    if needs_encoder:
        encoder = resolve_encoder(encoder, images if images is not None else probe)
    enc = load_encoder(encoder) if needs_encoder or (encoder is not None) else None
    probe_labels: torch.Tensor | None = None
    if isinstance(probe, FeatureSet):
        activations = _activations(probe.features, imodel)
        probe_labels = probe.labels
    elif isinstance(probe, torch.Tensor):
        if probe.ndim != 2:
            raise DataError(
                f"A tensor probe must be pooled features (N, D), got shape {tuple(probe.shape)}; "
                "pass images through a DataLoader instead."
            )
        activations = _activations(probe, imodel)
    else:
        if images is not None:
            raise ConfigError("Pass images= only with a FeatureSet or feature-tensor probe.")
        activations, image_embeddings_pass, probe_labels = _probe_pass(
            imodel,
            probe,
            enc if needs_encoder else None,
            input_mean=input_mean,
            input_std=input_std,
            cache_dir=cache_dir,
            batch_size=batch_size,
            progress=progress,
        )
        if needs_encoder:
            image_embeddings = image_embeddings_pass
    n = activations.shape[0]
    if n < 2:
        raise DataError(f"Naming needs at least 2 probe images, got {n}.")
    removed: dict[str, str] = {}
    if method == "delta":
        signal = _check_labels(concept_labels, n)
        names = _label_names(concepts, signal.shape[1])
    else:
        if image_embeddings is None:
            if images is None:
                raise ConfigError(
                    "A feature probe needs images= (a loader or tensor of the same images, same "
                    "order) or image_embeddings= for the concept encoder."
                )
            image_embeddings, image_labels = embed_images(
                enc,
                images,
                input_mean=input_mean,
                input_std=input_std,
                cache_dir=cache_dir,
                batch_size=batch_size,
                progress=progress,
            )
            if (
                probe_labels is not None
                and not isinstance(images, torch.Tensor)
                and not torch.equal(image_labels, probe_labels.cpu())
            ):
                raise DataError(
                    "The images' labels differ from the features' labels: the loader's order "
                    "changed between passes (shuffle=True?). Pass a loader with shuffle=False."
                )
        if image_embeddings.ndim != 2 or image_embeddings.shape[0] != n:
            raise DataError(
                f"There are {n} probe feature rows but image embeddings of shape "
                f"{tuple(image_embeddings.shape)}; give one embedding per probe image."
            )
        if enc is None:
            raise ConfigError("image_embeddings need encoder= the encoder that produced them.")
        text = embed_concepts(enc, vocab.concepts, vocab.templates, cache_dir=cache_dir)
        if filters:
            class_emb = None
            if class_names:
                class_emb = embed_concepts(
                    enc,
                    [" ".join(c.replace("_", " ").split()) for c in class_names],
                    vocab.templates,
                    cache_dir=cache_dir,
                )
            kept = filter_vocabulary(
                vocab,
                text_embeddings=text,
                class_names=class_names,
                class_embeddings=class_emb,
                image_embeddings=image_embeddings,
                min_image_similarity=min_image_similarity,
            )
            vocab, text, removed = kept.vocabulary, text[kept.index], kept.removed
        check_embeddings(image_embeddings, enc.spec)
        signal = image_embeddings.float() @ text.T
        null = embed_concepts(
            enc, null_prompts(vocab.concepts), vocab.templates, cache_dir=cache_dir
        )
        null_signal = image_embeddings.float() @ null.T
        names = list(vocab.concepts)
    _check_top_k(top_k, len(names))
    split_labels = probe_labels if probe_labels is not None else torch.zeros(n, dtype=torch.long)
    naming_rows, testing_rows = split_rows(split_labels.cpu(), test_share, seed)
    if method == "wpmi":
        # as many top images as the whole probe would give: the naming half holds them
        top_images = (
            min(default_top_images(n), len(naming_rows)) if top_images is None else top_images
        )
        check_top_images(top_images, len(naming_rows))
    options = {"top_images": top_images, "temperature": temperature, "lam": lam}
    chosen_acts, chosen_signal = activations[naming_rows], signal[naming_rows]
    scores = score_matrix(method, chosen_acts, chosen_signal, **options)
    top = scores.topk(top_k, dim=1).indices
    scorer = PairScorer(method, chosen_acts, chosen_signal, top, **options)
    p_values = permutation_p_values(scorer, n_permutations, seed)
    table = [
        [
            {
                "concept": names[int(v)],
                "score": float(scores[j, v]),
                "p_value": float(p_values[j, r]),
                "method": method,
            }
            for r, v in enumerate(top[j].tolist())
        ]
        for j in range(scores.shape[0])
    ]
    if len(imodel.concepts) != len(table):
        raise ConfigError(
            f"The model has {len(imodel.concepts)} feature slots but {len(table)} features were "
            "named; was the bottleneck changed after conversion?"
        )
    features_test = test_global_names(
        table, activations[testing_rows], signal[testing_rows], top[:, 0], method, q, procedure
    )
    imodel.concepts[:] = table
    logger.info("named %d features with %s over %d concepts", len(table), method, len(names))
    shown = None
    if method == "delta":
        presence, keep = signal.bool(), torch.arange(len(names))
    else:
        keep, shown, presence = shown_concepts(
            chosen_signal, null_signal[naming_rows], q, procedure
        )
        presence = presence_from_similarity(signal)
        if not len(keep):
            logger.warning(
                "none of the %d words is detectably shown on these images (against the "
                "encoder's null): every pair is left unexplained",
                len(names),
            )
    pair_names: dict[tuple[int, int], dict[str, Any]] = {}
    if pairs is not False and probe_labels is not None:
        settings = (
            pairs
            if isinstance(pairs, PairSettings)
            else PairSettings(q=q, procedure=procedure, test_share=test_share, seed=seed)
        )
        keep = _without_proxies(keep, names, imodel)
        pair_names = name_pairs(
            activations,
            probe_labels,
            presence[:, keep],
            [names[int(k)] for k in keep],
            imodel.head.weight,
            feature_names=[row[0]["concept"] for row in table],
            settings=settings,
            split=(naming_rows, testing_rows),
        )
        imodel.pair_concepts = pair_names
    reliability = {
        "q": q,
        "procedure": procedure,
        "images": {"naming": len(naming_rows), "testing": len(testing_rows)},
        "features": features_test,
        "pairs": pair_reliability(pair_names) if pair_names else None,
        "vocabulary": shown.summary(names) if shown is not None else None,
        "encoder_fit": (
            encoder_fit(image_embeddings, probe_labels, naming_rows, testing_rows)
            if shown is not None and probe_labels is not None
            else None
        ),
    }
    headline = reliability["pairs"] or features_test
    reliability["estimated_precision"] = headline.get("estimated_precision")
    _log_reliability(reliability, enc.spec if enc is not None else None)
    return NamingResult(
        method=method,
        concepts=names,
        scores=scores,
        top=top,
        names=table,
        signal=signal[:, top[:, 0]].float(),
        removed=removed,
        encoder=enc.spec if enc is not None else None,
        align=alignment(scores) if method == "delta" else None,
        pairs=pair_names,
        reliability=reliability,
    )


def test_global_names(
    table: list[list[dict[str, Any]]],
    activations: torch.Tensor,
    signal: torch.Tensor,
    best: torch.Tensor,
    method: str,
    q: float,
    procedure: str,
) -> dict[str, Any]:
    """Test each feature's global name (its best concept, chosen on the naming images) on the
    testing images and accept names under FDR control; marks `table[j][0]` with its evidence
    and `accepted`. The test: AUC of the feature against the label's presence (delta), else
    Spearman correlation with the concept's similarity column."""
    x, columns = activations.float(), signal[:, best].float()
    n = x.shape[0]
    if method == "delta":
        statistic = torch.nan_to_num(
            torch.diagonal(auc_matrix(x, columns.bool())).double(), nan=0.5
        )
        n_pos = columns.bool().sum(dim=0)
        p = auc_p_values(statistic, n_pos, n - n_pos)
        kind = "held_out_auc"
    else:
        rx, ry = average_ranks(x.double()), average_ranks(columns.double())
        rx, ry = rx - rx.mean(dim=0), ry - ry.mean(dim=0)
        statistic = (rx * ry).sum(dim=0) / (rx.norm(dim=0) * ry.norm(dim=0)).clamp_min(1e-12)
        p = correlation_p_values(statistic, n)
        kind = "held_out_spearman"
    accepted, q_values = fdr_accept(p, q, procedure)
    for j, row in enumerate(table):
        row[0]["held_out"] = {
            kind: round(float(statistic[j]), 4),
            "p_value": float(p[j]),
            "q_value": float(q_values[j]),
            "test_images": n,
        }
        row[0]["accepted"] = bool(accepted[j])
    return {"tested": len(table), "named": int(accepted.sum()), **estimated_precision(p, accepted)}


def _log_reliability(reliability: dict[str, Any], spec: str | None) -> None:
    """One honest line: how many names held on fresh images, and how sure they are."""
    part = reliability["pairs"] or reliability["features"]
    estimate = part.get("estimated_precision")
    words = reliability.get("vocabulary")
    fit = reliability.get("encoder_fit")
    logger.info(
        "names: %d of %d held on %d held-out images (q = %g)%s%s%s",
        part["named"],
        part["tested"],
        reliability["images"]["testing"],
        reliability["q"],
        f", estimated precision {estimate:.2f}" if estimate is not None else "",
        f"; {words['shown']} of {words['words']} words shown" if words else "",
        (
            f"; {spec} separates the classes {fit['class_accuracy']:.2f} (chance {fit['chance']:.2f})"
            if fit
            else ""
        ),
    )
    if fit and words and not words["shown"] and fit["class_accuracy"] <= 2 * fit["chance"]:
        logger.warning(
            "%s sees nothing on these images (no word shown, classes barely separated): pass "
            "an encoder that fits the data; every feature is left unexplained",
            spec,
        )


def _without_proxies(keep: torch.Tensor, names: list[str], imodel: Any) -> torch.Tensor:
    """Concepts a pair may be named by, less those the concept basis found to be another
    concept's proxy (their pseudo-presence is that concept plus noise: naming by them is wrong)."""
    basis = (getattr(imodel, "stats", None) or {}).get("concept_basis") or {}
    proxies = set(basis.get("proxies") or ())
    return keep[torch.tensor([names[int(k)] not in proxies for k in keep], dtype=torch.bool)]


def apply_concepts(
    imodel: Any,
    concepts: Any,
    loader: Any,
    features: FeatureSet | None = None,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    progress: bool = True,
    image_embeddings: torch.Tensor | None = None,
) -> dict[str, Any] | None:
    """Name (and with align=True, align) the features of a freshly converted model.

    `loader` is the training loader and `features` its FeatureSet from extraction (same
    order), so the backbone does not run again; `image_embeddings` of those images, when
    already computed, spare the encoder a pass. Returns a JSON-able report for imodel.stats.
    """
    from retrofit.concepts.align import align_features

    settings = parse_concepts(concepts)
    if settings is None:
        return None
    common: dict[str, Any] = {
        "top_k": settings.top_k,
        "q": settings.q,
        "procedure": settings.procedure,
        "seed": seed,
        "cache_dir": cache_dir,
        "batch_size": batch_size,
        "progress": progress,
        **settings.options,
    }
    probe = features if features is not None else loader
    if settings.labels is not None:
        result = name_features(
            imodel,
            probe,
            concepts=settings.label_names,
            concept_labels=settings.labels,
            method="delta",
            **common,
        )
    else:
        reuse = image_embeddings is not None and features is not None
        result = name_features(
            imodel,
            probe,
            images=loader if features is not None and not reuse else None,
            image_embeddings=image_embeddings if reuse else None,
            concepts=settings.vocabulary,
            encoder=resolve_encoder(settings.encoder, loader) if reuse else settings.encoder,
            method=settings.method,
            input_mean=settings.input_mean,
            input_std=settings.input_std,
            **common,
        )
    report = {"naming": result.to_dict(), "settings": settings.to_dict()}
    if settings.align:
        if features is None:
            raise ConfigError("align=True needs the extracted features (pass features=).")
        alignment_report = align_features(
            imodel,
            features.features,
            result.signal,
            features.labels,
            max_accuracy_drop=settings.max_accuracy_drop,
            seed=seed,
            progress=progress,
        )
        report["alignment"] = alignment_report.to_dict()
    return report
