"""Naming features with concepts, end to end on a converted model of the synthetic world:
every scoring method, annotation alignment (Δ-contrast), align=True, and the errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.concepts import (
    ConceptSettings,
    align_features,
    apply_concepts,
    auc_scores,
    load_tiny_clip,
    name_features,
    parse_concepts,
)
from retrofit.datasets import COLOURS, SyntheticConceptDataset, load_demo_classifier
from retrofit.errors import ConfigError, DataError, ModelError

N_PROBE = 400
WORLD = {"n_classes": 50, "image_size": 64, "seed": 0}
COLOUR_IDS = [
    i for i, n in enumerate(SyntheticConceptDataset(1, **WORLD).concept_names) if n in COLOURS
]
# The world's own concepts plus curated distractors the world never shows.
VOCABULARY = [
    *SyntheticConceptDataset(1, **WORLD).concept_names,
    "black", "brown", "hexagon", "oval", "spotted", "wood", "wheel", "snow background",
]  # fmt: skip


class ColourNet(nn.Module):
    """A stand-in classifier whose penultimate features measure how much of each of the world's
    colours an image shows (used when the demo classifier's weights are not there)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.tensor(list(COLOURS.values())))
        self.fc = nn.Linear(len(COLOURS), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = (x[:, None] - self.prototypes[None, :, :, None, None]).norm(dim=2)
        return self.fc(torch.relu(1 - distance / 0.35).mean(dim=(2, 3)))


def _classifier() -> nn.Module:
    try:
        return load_demo_classifier()
    except ModelError:
        torch.manual_seed(0)
        return ColourNet(WORLD["n_classes"]).eval()


@pytest.fixture(scope="module")
def world() -> tuple[SyntheticConceptDataset, DataLoader]:
    data = SyntheticConceptDataset(N_PROBE, split="test", **WORLD)  # the tiny CLIP saw val
    images = torch.stack([data[i][0] for i in range(len(data))])
    return data, DataLoader(TensorDataset(images, data.labels), batch_size=100)


@pytest.fixture(scope="module")
def converted(world):
    _, loader = world
    model = _classifier()
    imodel = retrofit.convert(
        model,
        loader,
        method="sparse",  # deterministic: a time-limited MIP depends on the load
        n_features=8,
        per_class=3,
        finetune="none",
        linear_mix=True,
        progress=False,
    )
    features = retrofit.extract(model, loader, progress=False)
    return imodel, features


@pytest.fixture(scope="module")
def truth(world, converted) -> tuple[torch.Tensor, torch.Tensor]:
    """Each feature's ground-truth concept (highest AUC against concept presence) and that AUC."""
    data, _ = world
    imodel, features = converted
    auc = auc_scores(imodel.bottleneck.transform(features.features), data.concepts)
    best, index = auc.max(dim=1)
    return index, best


@pytest.fixture(scope="module")
def tiny():
    return load_tiny_clip()


def _agreement(imodel, truth, names: list[str], top: int = 1) -> float:
    index, best = truth
    clear = (best >= 0.8).nonzero().flatten().tolist()
    assert len(clear) >= 3, "too few features respond clearly to a planted concept"
    hits = [names[int(index[j])] in [c["concept"] for c in imodel.concepts[j][:top]] for j in clear]
    return sum(hits) / len(hits)


@pytest.mark.parametrize("method", ["wpmi", "correlation", "log_prob", "spearman"])
def test_clip_naming_finds_the_planted_concepts(method, world, converted, truth, tiny) -> None:
    data, loader = world
    imodel, _ = converted
    result = name_features(
        imodel,
        loader,
        concepts=VOCABULARY,
        encoder=tiny,
        method=method,
        top_k=3,
        n_permutations=20,
        progress=False,
    )
    assert len(imodel.concepts) == imodel.n_features
    for entries in imodel.concepts:
        assert len(entries) == 3
        assert {"concept", "score", "p_value", "method"} <= set(entries[0])
        assert entries[0]["method"] == method
        assert entries[0]["score"] >= entries[1]["score"] >= entries[2]["score"]
        assert 0 < entries[0]["p_value"] <= 1
    assert _agreement(imodel, truth, data.concept_names, top=3) >= 0.6
    index, best = truth
    colours = [
        j for j in range(imodel.n_features) if best[j] >= 0.9 and int(index[j]) in COLOUR_IDS
    ]
    # The tiny CLIP knows colours best: methods that read every probe image must name those
    # exactly. Soft-WPMI reads a feature's top images only, which show its class's other
    # concepts too (see the perfect-similarity rows of benchmarks/results/concepts.json).
    for j in colours if method != "wpmi" else []:
        assert imodel.concepts[j][0]["concept"] == data.concept_names[int(index[j])]
    assert result.scores.shape == (imodel.n_features, len(result.concepts))
    assert result.signal.shape == (N_PROBE, imodel.n_features)
    assert imodel.feature_name(0) == imodel.concepts[0][0]["concept"]


def test_naming_is_deterministic_and_reuses_features(world, converted, tiny) -> None:
    _, loader = world
    imodel, features = converted
    kwargs = {"concepts": VOCABULARY, "encoder": tiny, "n_permutations": 10, "progress": False}
    first = name_features(imodel, loader, **kwargs).names
    from_cache = name_features(imodel, features, images=loader, **kwargs).names
    assert first == from_cache


def test_concept_labels_name_features_by_delta_contrast(world, converted, truth) -> None:
    data, _ = world
    imodel, features = converted
    result = name_features(
        imodel,
        features,
        concepts=data.concept_names,
        concept_labels=data.concepts,
        n_permutations=50,
        progress=False,
    )
    assert result.method == "delta" and result.encoder is None
    assert _agreement(imodel, truth, data.concept_names, top=1) >= 0.75
    assert _agreement(imodel, truth, data.concept_names, top=3) >= 0.85
    assert all(entries[0]["p_value"] < 0.05 for entries in imodel.concepts)
    assert result.align is not None and result.align > 0


def test_align_makes_features_track_their_concepts(world, converted, tiny) -> None:
    _, loader = world
    imodel, features = converted
    result = name_features(
        imodel, features, images=loader, concepts=VOCABULARY, encoder=tiny, n_permutations=0,
        progress=False,
    )  # fmt: skip
    state = {k: v.clone() for k, v in imodel.bottleneck.state_dict().items()}
    try:
        report = align_features(
            imodel,
            features.features,
            result.signal,
            features.labels,
            epochs=15,
            lr=5e-3,
            max_accuracy_drop=0.02,
            progress=False,
        )
        assert report.accepted
        assert report.correlation_after.mean() > report.correlation_before.mean() + 0.01
        assert report.accuracy_after >= report.accuracy_before - 0.02
        assert set(report.to_dict()) >= {"correlation_before", "accuracy_after", "accepted"}
    finally:
        imodel.bottleneck.load_state_dict(state)


def test_align_needs_a_linear_mix(converted) -> None:
    imodel, features = converted
    plain = copy.deepcopy(imodel)
    plain.bottleneck.mix = None
    targets = torch.zeros(len(features), plain.n_features)
    with pytest.raises(ConfigError, match="linear_mix=True"):
        align_features(plain, features.features, targets, features.labels)


def test_apply_concepts_is_what_convert_calls(world, converted, tiny) -> None:
    data, loader = world
    imodel, features = converted
    report = apply_concepts(
        imodel,
        {"encoder": tiny, "vocabulary": VOCABULARY, "options": {"n_permutations": 5}},
        loader,
        features,
        progress=False,
    )
    assert report["naming"]["encoder"] == "open_clip:tiny"
    assert report["settings"]["vocabulary"] == VOCABULARY
    labelled = apply_concepts(
        imodel, (data.concepts, data.concept_names), loader, features, progress=False
    )
    assert labelled["naming"]["method"] == "delta"
    state = {k: v.clone() for k, v in imodel.bottleneck.state_dict().items()}
    try:
        aligned = apply_concepts(
            imodel,
            {"labels": data.concepts, "label_names": data.concept_names, "align": True,
             "max_accuracy_drop": 0.05, "options": {"n_permutations": 0}},
            loader,
            features,
            progress=False,
        )  # fmt: skip
        assert set(aligned["alignment"]) >= {"accuracy_before", "accuracy_after", "accepted"}
    finally:
        imodel.bottleneck.load_state_dict(state)
    assert parse_concepts(None) is None
    assert parse_concepts("tiny").encoder == "tiny"
    assert parse_concepts(["red", "blue"]).vocabulary == ["red", "blue"]
    assert parse_concepts("curated+general").vocabulary == "curated+general"
    assert parse_concepts(data.concepts).labels is data.concepts
    assert isinstance(parse_concepts(ConceptSettings(top_k=2)), ConceptSettings)
    with pytest.raises(ConfigError, match="Unknown concepts settings"):
        parse_concepts({"vocab": ["red"]})
    with pytest.raises(ConfigError):
        parse_concepts(3.5)


def test_bad_inputs_fail_with_clear_errors(world, converted, tiny) -> None:
    data, loader = world
    imodel, features = converted
    embeddings = torch.nn.functional.normalize(torch.randn(len(features), 64), dim=1)
    with pytest.raises(DataError, match="one row per probe image"):
        name_features(imodel, features, concept_labels=data.concepts[:10], progress=False)
    with pytest.raises(DataError, match="concept names"):
        name_features(
            imodel, features, concepts=["red"], concept_labels=data.concepts, progress=False
        )
    with pytest.raises(DataError, match="fewer than top_images"):
        name_features(
            imodel, features.subset(torch.arange(20)), image_embeddings=embeddings[:20],
            encoder=tiny, concepts=VOCABULARY, method="wpmi", top_images=50, progress=False,
        )  # fmt: skip
    with pytest.raises(DataError, match="one embedding per probe image"):
        name_features(
            imodel, features, image_embeddings=embeddings[:20], encoder=tiny, progress=False
        )
    with pytest.raises(ConfigError, match="top_k"):
        name_features(imodel, loader, concepts=["red", "blue"], encoder=tiny, top_k=5)
    with pytest.raises(ConfigError, match="empty"):
        name_features(imodel, loader, concepts=[], encoder=tiny)
    with pytest.raises(ConfigError, match="concept_labels"):
        name_features(imodel, loader, method="delta", encoder=tiny)
    shuffled = DataLoader(loader.dataset, batch_size=100, shuffle=True)
    with pytest.raises(DataError, match="shuffle"):
        name_features(
            imodel, features, images=shuffled, concepts=VOCABULARY, encoder=tiny, progress=False
        )


def test_scores_match_their_definitions() -> None:
    """Ranks, Spearman and AUC agree with scipy/sklearn; pair scores with the full matrices."""
    from scipy.stats import rankdata, spearmanr
    from sklearn.metrics import roc_auc_score

    from retrofit.concepts.scoring import PairScorer, rank_data, score_matrix

    generator = torch.Generator().manual_seed(0)
    ties = torch.randint(0, 5, (50, 3), generator=generator).float()
    assert torch.allclose(rank_data(ties), torch.from_numpy(rankdata(ties.numpy(), axis=0)).float())
    acts = torch.relu(torch.randn(200, 4, generator=generator))
    sims = torch.randn(200, 6, generator=generator)
    labels = torch.rand(200, 6, generator=generator) > 0.5
    rho = score_matrix("spearman", acts, sims)[1, 2]
    log_prob = score_matrix("correlation", acts, torch.log_softmax(30 * sims, dim=1))
    assert torch.allclose(score_matrix("log_prob", acts, sims, temperature=30), log_prob)
    assert abs(float(rho) - spearmanr(acts[:, 1], sims[:, 2])[0]) < 1e-5
    auc = auc_scores(acts, labels)[0, 1]
    assert abs(float(auc) - roc_auc_score(labels[:, 1].numpy(), acts[:, 0].numpy())) < 1e-6
    for method, signal in [
        ("wpmi", sims),
        ("correlation", sims),
        ("log_prob", sims),
        ("spearman", sims),
        ("delta", labels),
    ]:
        full = score_matrix(method, acts, signal, top_images=20)
        top = full.topk(2, dim=1).indices
        pairs = PairScorer(method, acts, signal, top, top_images=20)()
        assert torch.allclose(pairs, full.gather(1, top), atol=1e-5), method
