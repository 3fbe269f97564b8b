"""Every check metric on small cases whose answer is known by hand or by construction."""

from __future__ import annotations

import json
import math

import pytest
import torch

from retrofit.check import metrics as M
from retrofit.check.concept_deletion import concept_deletion, removal_curves
from retrofit.check.fidelity import fidelity
from retrofit.check.report import (
    CheckFailedError,
    Report,
    evaluate_thresholds,
)
from retrofit.errors import ConfigError, RetrofitError


def _one_hot_maps(n: int, positions: list[list[int]], size: int = 4, peak: float = 60.0):
    """(n, len(positions[0]), size, size) maps that are `peak` at one position, 0 elsewhere."""
    k = len(positions[0])
    maps = torch.zeros(n, k, size * size)
    for i in range(n):
        for j, p in enumerate(positions[i]):
            maps[i, j, p] = peak
    return maps.view(n, k, size, size)


def test_features_used_and_per_class() -> None:
    weight = torch.tensor([[1.0, 0, 0, 2], [0, 0, 0, -1], [3, 0, 0, 0]])
    assert M.features_used(weight) == 2
    assert M.features_per_class(weight) == pytest.approx(4 / 3)


def test_diversity_of_disjoint_one_hot_maps_is_one_and_of_identical_maps_is_one_over_k() -> None:
    k = 5
    weight = torch.ones(1, k)
    predicted = torch.zeros(3, dtype=torch.long)
    disjoint = _one_hot_maps(3, [[0, 3, 6, 9, 12]] * 3)
    identical = _one_hot_maps(3, [[7] * k] * 3)
    assert M.diversity_at_k(disjoint, weight, predicted, k) == pytest.approx(1.0, abs=1e-6)
    assert M.diversity_at_k(identical, weight, predicted, k) == pytest.approx(1 / k, abs=1e-6)
    # SID is scale-invariant: tiny maps localise as well as large ones after rescaling
    assert M.sid_at_k(disjoint * 1e-3, weight, predicted, k) == pytest.approx(
        M.sid_at_k(disjoint, weight, predicted, k), abs=1e-6
    )


def test_diversity_uses_the_top_k_features_by_signed_weight_and_skips_small_classes() -> None:
    # class 0 uses features 0-4 (feature 5 has a negative weight); class 1 only two features
    weight = torch.tensor([[5.0, 4, 3, 2, 1, -9], [1, 1, 0, 0, 0, 0]])
    maps = _one_hot_maps(2, [[0, 1, 2, 3, 4, 0]] * 2)
    per_image = M.localisation_per_image(maps, weight, torch.tensor([0, 1]), k=5)
    assert per_image[0] == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(per_image[1])


def test_dependence_of_a_single_feature_is_one_and_of_m_equal_ones_is_one_over_m() -> None:
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    predicted = torch.zeros(2, dtype=torch.long)
    single = torch.tensor([[3.0, 0, 0, 0], [0, -2.0, 0, 0]])
    equal = torch.tensor([[1.0, 1, 1, 1], [2.0, -2, 2, -2]])
    assert M.dependence(single, weight, predicted) == pytest.approx(1.0)
    assert M.dependence(equal, weight, predicted) == pytest.approx(0.25)


def test_class_independence_of_class_specific_and_of_shared_features() -> None:
    labels = torch.arange(3).repeat_interleave(4)
    specific = torch.nn.functional.one_hot(labels, 3).float() * 2.0
    # each feature fires on one class only: its whole (min-shifted) mass sits on that class
    assert M.class_independence(specific, labels, 3) == pytest.approx(0.0)
    shared = torch.rand(12, 1, generator=torch.Generator().manual_seed(0)).repeat(1, 3)
    shared = torch.cat([shared[:4]] * 3)  # identical activations for every class
    assert M.class_independence(shared, labels, 3) == pytest.approx(1 - 1 / 3)


def test_overlap_coefficient_matches_the_closed_form_and_numerical_integration() -> None:
    # equal variances: OVL = 2 Φ(−|μ1 − μ2| / (2σ))
    d, sigma = 1.3, 0.7
    closed = 2 * 0.5 * (1 + math.erf(-d / (2 * sigma) / math.sqrt(2)))
    assert M.overlap_coefficient(0.0, sigma, d, sigma) == pytest.approx(closed, abs=1e-9)
    assert M.overlap_coefficient(1.0, 2.0, 1.0, 2.0) == pytest.approx(1.0)
    assert M.overlap_coefficient(0.0, 1.0, 40.0, 1.0) == pytest.approx(0.0, abs=1e-12)
    x = torch.linspace(-20, 20, 400_001, dtype=torch.double)
    pdf = lambda m, s: torch.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))  # noqa: E731
    numeric = float(torch.trapezoid(torch.minimum(pdf(0.0, 1.0), pdf(1.5, 2.5)), x))
    assert M.overlap_coefficient(0.0, 1.0, 1.5, 2.5) == pytest.approx(numeric, abs=1e-6)
    with pytest.raises(ConfigError):
        M.overlap_coefficient(0.0, 0.0, 1.0, 1.0)


def test_contrastiveness_of_bimodal_activations_is_near_one_and_seeded() -> None:
    generator = torch.Generator().manual_seed(1)
    on_off = torch.cat(
        [
            torch.randn(200, 2, generator=generator) * 0.1,
            5 + torch.randn(200, 2, generator=generator) * 0.1,
        ]
    )
    blob = torch.randn(400, 2, generator=generator)
    high = M.contrastiveness(on_off, seed=0)
    assert high > 0.99
    assert M.contrastiveness(blob, seed=0) < 0.7
    assert M.contrastiveness(on_off, seed=0) == high
    assert M.contrastiveness(torch.ones(10, 1)) == pytest.approx(0.0)


def test_structural_grounding_is_one_when_the_head_mirrors_the_attributes() -> None:
    attributes = torch.tensor([[1.0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1]])
    assert M.structural_grounding(attributes.clone(), attributes) == pytest.approx(1.0)
    own_feature = torch.eye(4)  # no two classes share a feature: no structure at all
    assert M.structural_grounding(own_feature, attributes) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="4 rows"):
        M.structural_grounding(own_feature, attributes[:3])


def test_correlation_of_orthogonal_and_duplicated_features() -> None:
    orthogonal = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    assert M.correlation(orthogonal) == pytest.approx(0.0)
    duplicated = torch.tensor([[1.0, 1.0, 0], [2, 2, 0], [0, 0, 3]])
    # features 0 and 1 are identical (cosine 1); feature 2 is orthogonal to both (0)
    assert M.correlation(duplicated) == pytest.approx(2 / 3)


def test_conciseness_counts_features_above_one_over_tau() -> None:
    weight = torch.ones(1, 4)
    z = torch.tensor([[1.0, 0.6, 0.3, -1.0]])  # relevance 1, 0.6, 0.3, -1
    cns = M.conciseness(z, weight, torch.zeros(1, dtype=torch.long))
    # 1/τ for τ = 1.5, 2, 2.5, 3, 4, 5 is 0.67, 0.5, 0.4, 0.33, 0.25, 0.2
    assert cns == {"1.5": 1.0, "2": 2.0, "2.5": 2.0, "3": 2.0, "4": 3.0, "5": 3.0}


def test_mass_inside_counts_positive_attribution_only() -> None:
    attribution = torch.tensor([[[3.0, 1.0], [-5.0, 0.0]], [[0.0, 0.0], [0.0, -1.0]]])
    masks = torch.tensor([[[True, False], [True, False]]] * 2)
    inside = M.mass_inside(attribution, masks)
    assert inside[0] == pytest.approx(0.75)
    assert math.isnan(inside[1])


def test_fidelity_counts_agreement_on_the_reference_mistakes() -> None:
    labels = torch.tensor([0, 1, 2, 0])
    reference = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2]), 3).float()
    ours = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 0]), 3).float()
    result = fidelity(ours, labels, reference)
    assert result["accuracy"] == 0.5 and result["reference_accuracy"] == 0.5
    assert result["agreement"] == 0.5 and result["accuracy_drop"] == 0.0
    # the reference errs on images 2 (says 1) and 3 (says 2); we repeat only the first
    assert result["n_reference_mistakes"] == 2
    assert result["agreement_on_reference_mistakes"] == 0.5
    alone = fidelity(ours, labels)
    assert alone["agreement"] is None and alone["accuracy"] == 0.5


def test_removal_curves_are_exact_for_a_linear_head() -> None:
    z = torch.tensor([[2.0, 1.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bias = torch.tensor([0.0, 0.5])
    order = torch.tensor([[0, 1]])
    target = torch.tensor([0])
    softmax = lambda a, b: math.exp(a) / (math.exp(a) + math.exp(b))  # noqa: E731
    deletion = removal_curves(z, weight, bias, order, target)[0]
    assert deletion.tolist() == pytest.approx(
        [softmax(2, 1.5), softmax(0, 1.5), softmax(0, 0.5)], abs=1e-6
    )
    insertion = removal_curves(z, weight, bias, order, target, insertion=True)[0]
    assert insertion.tolist() == pytest.approx(
        [softmax(0, 0.5), softmax(2, 0.5), softmax(2, 1.5)], abs=1e-6
    )


def test_a_true_explanation_beats_a_shuffled_one_on_concept_deletion() -> None:
    generator = torch.Generator().manual_seed(0)
    n, n_f, c = 200, 12, 4
    z = torch.randn(n, n_f, generator=generator).abs()
    weight = torch.zeros(c, n_f)
    for k in range(c):  # each class reads three features with decreasing weights
        weight[k, 3 * k : 3 * k + 3] = torch.tensor([3.0, 2.0, 1.0])
    bias = torch.zeros(c)
    true = concept_deletion(z, weight, bias, seed=0)
    shuffled_scores = (z * weight[(z @ weight.T).argmax(dim=1)])[
        :, torch.randperm(n_f, generator=generator)
    ]
    lying = concept_deletion(z, weight, bias, explanation=shuffled_scores, seed=0)
    assert true["deletion_auc"] < lying["deletion_auc"]
    assert true["deletion_auc"] < true["deletion_auc_random"]
    assert true["insertion_auc"] > true["insertion_auc_random"]
    assert true["deletion_auc_gain"] > 0 and true["insertion_auc_gain"] > 0
    # removing the class's assigned features drops its logit by exactly their contribution
    predicted = (z @ weight.T).argmax(dim=1)
    exact = (z * weight[predicted]).sum(dim=1).mean()
    assert true["logit_drop_assigned"] == pytest.approx(float(exact), rel=1e-5)
    assert true["logit_drop_assigned"] > true["logit_drop_random"]
    assert len(true["curves"]["deletion"]) == n_f + 1
    assert concept_deletion(z, weight, bias, seed=0) == true  # seeded


def _report(results: dict, **limits: float) -> Report:
    return Report(results, evaluate_thresholds(results, limits))


def test_thresholds_pass_fail_and_raise_naming_each_failure() -> None:
    results = {
        "fidelity": {"agreement": 0.8, "accuracy": 0.9, "accuracy_drop": 0.02},
        "pixel": {
            "class": {
                "random": {"deletion_auc": 0.5},
                "gradcam": {"deletion_auc_gain": 0.1},
                "ig": {"deletion_auc_gain": -0.05},
            }
        },
        "metrics": {"dependence": float("nan")},
    }
    report = _report(
        results,
        min_fidelity=0.9,
        min_accuracy=0.85,
        min_pixel_deletion_gain=0.0,
        max_dependence=0.5,
    )
    assert not report.passed
    failed = {(t.name, t.metric) for t in report.failures}
    assert failed == {
        ("min_fidelity", "fidelity.agreement"),
        ("min_pixel_deletion_gain", "pixel.class.ig.deletion_auc_gain"),
        ("max_dependence", "metrics.dependence"),  # NaN: not measured counts as a failure
    }
    with pytest.raises(CheckFailedError) as info:
        report.raise_for_thresholds()
    assert isinstance(info.value, RetrofitError)
    message = str(info.value)
    assert "min_fidelity" in message and "min_pixel_deletion_gain" in message
    assert "min_accuracy" not in message
    assert _report(results, min_accuracy=0.85).passed
    with pytest.raises(ConfigError, match="Unknown thresholds"):
        evaluate_thresholds(results, {"min_fidelty": 0.9})
    with pytest.raises(ConfigError, match="finite number"):
        evaluate_thresholds(results, {"min_fidelity": float("nan")})


def test_report_json_is_strict_and_summary_names_the_verdict(tmp_path) -> None:
    results = {
        "meta": {"n_images": 3, "n_classes": 2, "n_features": 4},
        "fidelity": {"accuracy": 1.0, "agreement": float("nan")},
        "metrics": {"dependence": 0.5, "conciseness": {"1.5": 1.0}},
    }
    report = _report(results, min_accuracy=0.5)
    path = report.to_json(tmp_path / "sub" / "report.json")
    data = json.loads(path.read_text())  # strict: no NaN tokens
    assert data["passed"] is True and data["fidelity"]["agreement"] is None
    assert data["thresholds"][0]["name"] == "min_accuracy"
    summary = report.summary()
    assert summary.startswith("retrofit check: PASSED") and "min_accuracy" in summary
    unchecked = _report(results).summary()
    assert unchecked.startswith("retrofit check: measured only: no threshold was set")
    assert "PASSED" not in unchecked
