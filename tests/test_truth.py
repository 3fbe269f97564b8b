"""Class-conditional pair names, concept features and the truth of an explanation: planted
features with known meanings, hand-built heads, and the check on the synthetic world."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import retrofit
from benchmarks.encoders import NoisyEncoder
from retrofit.check.html import render_report
from retrofit.check.truth import class_truth_from_labels, explanation_truth, model_names
from retrofit.concepts.basis import fit_concept_basis, fold_bottleneck
from retrofit.concepts.encoders import load_tiny_clip
from retrofit.concepts.naming import name_features
from retrofit.concepts.pairs import (
    PairSettings,
    auc_matrix,
    distinct_concepts,
    name_pairs,
    presence_from_similarity,
    separability,
)
from retrofit.concepts.scoring import auc_scores
from retrofit.datasets import SyntheticConceptDataset, load_demo_classifier
from retrofit.errors import ConfigError, DataError

CONCEPTS = ["red", "heart", "striped", "grass"]


def _planted(n: int = 900, seed: int = 0):
    """3 classes: class 0 shows red, class 1 heart, class 2 striped; every concept also appears
    at random (p = 0.3) anywhere. Feature 0 is polysemantic (red + heart), feature 1 reads
    striped, feature 2 is noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    presence = torch.rand(n, 4, generator=g) < 0.3
    for c in range(3):
        presence[labels == c, c] = True
    noise = 0.1 * torch.randn(n, 3, generator=g)
    acts = torch.stack(
        [
            presence[:, 0].float() + presence[:, 1].float(),
            presence[:, 2].float(),
            torch.zeros(n),
        ],
        dim=1,
    )
    acts = acts + noise
    weight = torch.tensor([[1.0, 0, 1], [1, 0, 0], [0, 1, 1]])
    return acts, labels, presence, weight


def test_a_polysemantic_feature_gets_a_different_name_for_each_class() -> None:
    acts, labels, presence, weight = _planted()
    pairs = name_pairs(acts, labels, presence, CONCEPTS, weight)
    assert pairs[(0, 0)]["concept"] == "red" and pairs[(0, 0)]["status"] == "explained"
    assert pairs[(1, 0)]["concept"] == "heart"
    assert pairs[(2, 1)]["concept"] == "striped"
    # the noise feature explains nothing: it says so instead of naming a class concept
    assert pairs[(0, 2)]["status"] == "unexplained"
    assert pairs[(2, 2)]["concept"] == "unexplained"
    assert pairs[(0, 0)]["auc"] >= 0.75


def test_grounding_is_measured_outside_the_class() -> None:
    """A feature that only fires on class 0 tracks no concept: every concept of class 0 is
    present in all its images, so an AUC over all images would ground each of them."""
    acts, labels, presence, weight = _planted()
    detector = (labels == 0).float()[:, None] + 0.01 * torch.randn(len(labels), 1)
    pairs = name_pairs(detector, labels, presence, CONCEPTS, weight[:, :1])
    assert pairs[(0, 0)]["status"] == "unexplained"
    everywhere = auc_matrix(detector, presence)
    assert float(everywhere[0, 0]) > 0.75  # the naive test would have called it "red"


def test_features_of_one_class_get_distinct_names_when_grounded() -> None:
    acts, labels, presence, _ = _planted()
    both = torch.stack([acts[:, 0], acts[:, 0] + 0.05 * torch.randn(len(acts))], dim=1)
    weight = torch.tensor([[1.0, 1.0], [0, 0], [0, 0]])
    presence[labels == 0, 1] = True  # class 0 shows red and heart
    pairs = name_pairs(both, labels, presence, CONCEPTS, weight)
    assert {pairs[(0, 0)]["concept"], pairs[(0, 1)]["concept"]} == {"red", "heart"}


def test_pair_naming_rejects_inconsistent_inputs() -> None:
    acts, labels, presence, weight = _planted()
    with pytest.raises(DataError, match="concept presence"):
        name_pairs(acts, labels, presence[:10], CONCEPTS, weight)
    with pytest.raises(DataError, match="concept names"):
        name_pairs(acts, labels, presence, CONCEPTS[:2], weight)
    with pytest.raises(DataError, match="labels must lie"):
        name_pairs(acts, labels + 5, presence, CONCEPTS, weight)
    with pytest.raises(ConfigError, match="min_auc"):
        PairSettings(min_auc=1.5)


def test_presence_threshold_splits_two_groups() -> None:
    sim = torch.cat([torch.full((50, 1), 0.1), torch.full((30, 1), 0.3)]) + 0.01 * torch.randn(
        80, 1
    )
    present = presence_from_similarity(sim)
    assert present[:50].sum() == 0 and present[50:].all()


def test_concepts_the_images_cannot_tell_apart_are_merged() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(200, generator=g) < 0.4
    b = a.clone()
    b[:3] = ~b[:3]  # nearly the same images as a
    c = torch.rand(200, generator=g) < 0.4
    presence = torch.stack([a, b, c], dim=1)
    keep = distinct_concepts(presence, torch.tensor([0.5, 0.9, 0.7]))
    assert keep.tolist() == [1, 2]  # b is better shown than a; c is its own concept
    sim = presence.float() + 0.05 * torch.randn(200, 3, generator=g)
    assert bool((separability(sim, presence) > 0.9).all())


def test_truth_metric_counts_by_hand() -> None:
    weight = torch.tensor([[1.0, 1, 1, 0], [0, 1, 0, 1]])
    truth = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    names = {
        (0, 0): ("red", "explained"),  # correct
        (0, 1): ("red", "duplicate"),  # correct, not distinct
        (0, 2): ("unexplained", "unexplained"),  # abstained
        (1, 1): ("heart", "explained"),  # wrong: heart is class 0's
        (1, 3): ("grass", "explained"),  # correct
    }
    result = explanation_truth(weight, names, truth, CONCEPTS, ["a", "b"])
    assert result["precision"] == pytest.approx(3 / 4)
    assert result["recall"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert result["distinct"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert result["coverage"] == pytest.approx(4 / 5)
    # grounding: a correct name whose feature does not respond to the concept does not count
    acts = torch.randn(40, 4)
    labels = torch.zeros(40, 4, dtype=torch.bool)
    labels[:20, 0] = True
    acts[:20, 0] += 5  # feature 0 reads red; feature 1 does not
    labels[::2, 3] = True
    acts[::2, 3] += 5
    grounded = explanation_truth(
        weight, names, truth, CONCEPTS, ["a", "b"], activations=acts, concept_labels=labels
    )
    assert grounded["precision"] == pytest.approx(2 / 4)


def test_truth_metric_rejects_bad_ground_truth() -> None:
    weight = torch.ones(2, 2)
    names = {(0, 0): ("red", "explained")}
    with pytest.raises(DataError, match="class–concept matrix"):
        explanation_truth(weight, names, torch.ones(3, 4, dtype=torch.bool), CONCEPTS, ["a", "b"])
    with pytest.raises(DataError, match="None of the explanation's concept names"):
        explanation_truth(
            weight, {(0, 0): ("zebra", "explained")}, torch.ones(2, 4, dtype=torch.bool),
            CONCEPTS, ["a", "b"],
        )  # fmt: skip
    with pytest.raises(DataError, match="one row per image"):
        class_truth_from_labels(torch.ones(5, 4), torch.zeros(6), 2)


def test_concept_basis_detects_planted_concepts_and_folds_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    presence = torch.rand(600, 4, generator=g) < 0.4
    mixing = torch.randn(4, 12, generator=g)
    features = presence.float() @ mixing + 0.1 * torch.randn(600, 12, generator=g)
    presence[:, 3] = torch.rand(600, generator=g) < 0.5  # a concept the features never show
    basis = fit_concept_basis(features, presence, CONCEPTS)
    assert basis.names == CONCEPTS[:3]
    assert all(float(a) > 0.9 for a in basis.auc)
    extended = basis.extend(features)
    assert extended.shape == (600, 15)
    from retrofit.fitting.bottleneck import Bottleneck

    selected = torch.tensor([1, 12, 14])  # a channel and two concept features
    mean, std = extended[:, selected].mean(0), extended[:, selected].std(0)
    ext_bottleneck = Bottleneck(selected, mean, std, 15, linear_mix=False)
    folded = fold_bottleneck(ext_bottleneck, basis, 12)
    assert torch.allclose(folded(features), ext_bottleneck(extended), atol=1e-4)
    assert int(folded.selected.max()) < 12


def test_a_probe_of_a_word_the_images_never_show_is_dropped_as_a_proxy() -> None:
    """Pseudo-presence that is a real concept plus noise (CLIP's "horn" on dark backgrounds)
    trains a probe of the real concept; it must not enter the basis as a second copy."""
    g = torch.Generator().manual_seed(1)
    presence = torch.rand(800, 4, generator=g) < 0.4
    mixing = torch.randn(4, 12, generator=g)
    features = presence.float() @ mixing + 0.1 * torch.randn(800, 12, generator=g)
    noise = torch.rand(800, generator=g) < 0.25
    presence[:, 3] = presence[:, 0] | noise  # "proxy": concept 0, plus noise the features lack
    basis = fit_concept_basis(features, presence, CONCEPTS)
    assert CONCEPTS[3] not in basis.names
    assert basis.proxies == {CONCEPTS[3]: CONCEPTS[0]}
    assert basis.names == CONCEPTS[:3]
    assert basis.summary()["proxies"] == {CONCEPTS[3]: CONCEPTS[0]}


def _convert_with_labelled_concepts(train: SyntheticConceptDataset, **settings):
    """The demo classifier, QPM with 30 features, concepts from the world's labels."""
    return retrofit.convert(
        load_demo_classifier(), DataLoader(train, batch_size=250), method="qpm", n_features=30,
        per_class=3, time_limit=3, threads=1, epochs=1, progress=False,
        concepts={"labels": train.concepts, "label_names": train.concept_names},
        class_names=train.class_names, **settings,
    )  # fmt: skip


def test_labelled_concept_features_keep_their_meaning_and_their_channels_are_not_offered() -> None:
    """With concept labels the retention term is on by default (the labels are what the user
    annotated) and channels a labelled concept covers are not offered to the head."""
    world = {"n_classes": 50, "image_size": 64, "seed": 0}
    imodel = _convert_with_labelled_concepts(SyntheticConceptDataset(500, split="train", **world))
    history = imodel.stats["history"]["bottleneck"]
    assert history["retention"] == [1.0] and history["class_diversity"] == [1.0]
    basis = imodel.stats["concept_basis"]
    assert basis["covered_channels"] > 0
    assert len(basis["concepts"]) < 30  # so channels were offered beside the concepts


def test_consistency_reweighting_refits_on_the_concept_features() -> None:
    """A reweighting round offers the head what convert offered it (concept features and the
    uncovered channels), so the refitted features still track their labelled concepts."""
    world = {"n_classes": 50, "image_size": 64, "seed": 0}
    train = SyntheticConceptDataset(400, split="train", **world)
    imodel = _convert_with_labelled_concepts(
        train, reweight="consistency", reweight_rounds=1, reweight_images=16,
        reweight_consistency={"steps": 1, "batch_size": 16},
    )  # fmt: skip
    refit = imodel.stats["history"]["reweight"]["rounds"][0]["history"]
    assert refit["retention"] == [1.0] and refit["class_diversity"] == [1.0]
    with torch.no_grad():
        features = imodel.concept_activations(torch.stack([train[i][0] for i in range(len(train))]))
    best = auc_scores(features, train.concepts).max(dim=1).values
    assert int((best >= 0.95).sum()) >= 10, best


def tensors_of(data: SyntheticConceptDataset, n: int) -> torch.Tensor:
    return torch.stack([data[i][0] for i in range(n)])


def test_truth_check_on_the_synthetic_world(tmp_path) -> None:
    """check() reads the world's concept labels itself and reports pair and global truth;
    without ground truth it says why it skipped."""
    world = {"n_classes": 50, "image_size": 64, "seed": 0}
    train = SyntheticConceptDataset(500, split="train", **world)
    test = SyntheticConceptDataset(150, split="test", **world)
    model = load_demo_classifier()
    imodel = retrofit.convert(
        model, DataLoader(train, batch_size=250), method="qpm", n_features=12, per_class=2,
        time_limit=3, threads=1, epochs=1, concepts={"encoder": "tiny", "vocabulary": "curated"},
        progress=False, class_names=train.class_names,
    )  # fmt: skip
    assert imodel.pair_concepts, "convert with concepts names the class-feature pairs"
    history = imodel.stats["history"]["bottleneck"]
    assert history["retention"] == [1.0] and history["class_diversity"] == [1.0]
    basis = imodel.stats["concept_basis"]
    assert basis["covered_channels"] >= 0
    # every selected concept feature is held to its probe, and only the words the images show
    # (the demo world's own concepts) got a probe
    assert 0 < basis["retained_features"] <= 12
    assert set(basis["concepts"]) <= set(train.concept_names), basis["concepts"]
    text = imodel.format_global_explanation()
    abstained = sum(pair["status"] == "unexplained" for pair in imodel.pair_concepts.values())
    assert "+unexplained" not in text
    assert (abstained > 0) == ("unexplained feature" in text)
    table = imodel.global_explanation()
    first = next(iter(table.values()))[0]
    assert {"name", "feature_name", "pair"} <= set(first)
    report = retrofit.check(
        imodel, DataLoader(test, batch_size=100), pixel_methods=(), max_pixel_images=0,
        top_images=0, progress=False, min_truth_precision=0.0,
    )  # fmt: skip
    truth = report.results["truth"]
    assert truth["pair"]["grounded"] and truth["pair"]["pairs"] == 100
    for c in (0, 7):  # the class truth is the world's class signature, not any frequent concept
        signature = torch.nonzero(test.class_signatures[c]).flatten().tolist()
        assert truth["pair"]["per_class"][c]["truth"] == [test.concept_names[k] for k in signature]
    assert 0 <= truth["pair"]["precision"] <= 1
    assert report.passed
    assert "Truth of the explanation" in render_report(report)
    # every name is a tested claim: its evidence is in the pairs, the report and the explanation
    reliability = imodel.naming_reliability
    assert reliability["q"] == 0.05 and reliability["images"] == {"naming": 250, "testing": 250}
    assert 0.9 <= reliability["estimated_precision"] <= 1
    assert reliability["vocabulary"]["shown"] >= 10
    assert reliability["encoder_fit"]["class_accuracy"] > 2 * reliability["encoder_fit"]["chance"]
    named = [p for p in imodel.pair_concepts.values() if p["status"] in ("explained", "duplicate")]
    assert named and all(p["evidence"]["q_value"] <= 0.05 for p in named)
    assert report.results["names"]["estimated_precision"] == reliability["estimated_precision"]
    assert "How sure the names are" in render_report(report)
    strict = retrofit.check(
        imodel, DataLoader(test, batch_size=100), pixel_methods=(), max_pixel_images=0,
        top_images=0, progress=False, thresholds={"min_name_precision": 0.999999},
    )  # fmt: skip
    assert strict.passed == (reliability["estimated_precision"] >= 0.999999)
    explanation = imodel.explain(tensors_of(test, 2))[0]
    assert explanation.name_precision == reliability["estimated_precision"]
    tested = [f for f in explanation.features if f.evidence is not None]
    assert tested and all("q_value" in f.evidence for f in tested)
    assert "estimated precision" in str(explanation)
    imodel.save_pretrained(tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text()
    assert "## How sure the names are" in card and "held-out q" in card
    loaded = retrofit.load(tmp_path / "export", model=model)
    assert loaded.naming_reliability == reliability
    assert loaded.name_evidence(*next(iter(imodel.pair_concepts))) is not None

    tensors = tensors_of(test, 20)
    bare = retrofit.check(
        imodel,
        DataLoader(torch.utils.data.TensorDataset(tensors, test.labels[:20]), batch_size=20),
        pixel_methods=(), max_pixel_images=0, top_images=0, progress=False,
    )  # fmt: skip
    assert "skipped" in bare.results["truth"]
    names = model_names(imodel)
    assert len(names) == 100
    _names_with_weak_and_blind_encoders(imodel, train)


def _names_with_weak_and_blind_encoders(imodel, train: SyntheticConceptDataset) -> None:
    """The tiny CLIP's image embeddings degraded by seeded noise: a weak encoder names fewer
    pairs, each still a concept of its class; a blind one sees no word and names nothing."""
    tiny = load_tiny_clip()
    loader = DataLoader(train, batch_size=250)
    counts = {}
    for sigma in (0.0, 1.0, 100.0):
        result = name_features(
            imodel, loader, encoder=NoisyEncoder(tiny, sigma), concepts="curated", progress=False
        )
        named = {k: p for k, p in result.pairs.items() if p["status"] in ("explained", "duplicate")}
        counts[sigma] = len(named)
        for (c, _), pair in named.items():
            assert pair["evidence"]["q_value"] <= 0.05
            column = train.concept_names.index(pair["concept"])
            assert bool(train.class_signatures[c, column]), (sigma, c, pair["concept"])
        if sigma == 100.0:
            assert result.reliability["vocabulary"]["shown"] == 0
            assert result.reliability["estimated_precision"] is None
    assert counts[0.0] >= counts[1.0] > 0 == counts[100.0]
