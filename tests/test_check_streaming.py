"""check() keeps per-image results, not (N, C) logits: the streamed numbers equal in-memory ones."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.check import CheckConfig, register_metric, unregister_metric
from retrofit.check import attribute_metrics as AM
from retrofit.check import concept_deletion as deletion_module
from retrofit.check.concept_deletion import (
    area,
    concept_deletion,
    contribution_order,
    deletion_rows,
    random_orders,
    removal_curves,
)
from retrofit.check.fidelity import fidelity
from retrofit.check.html import render_report
from retrofit.check.rows import GrowingRows
from retrofit.errors import ConfigError
from tests.tiny import SmallCNN, colour_coded_images

CLASSES = 6
CHECK = {"pixel_methods": (), "mas_pairs": 0, "top_images": 2, "progress": False}


def in_memory_deletion(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, seed: int):
    """Concept deletion on all images at once, from the module's building blocks."""
    logits = z @ weight.T + bias
    predicted = logits.argmax(dim=1)
    ordered = contribution_order(z * weight[predicted])
    shuffled = random_orders(len(z), z.shape[1], seed)
    curves = {
        "deletion": removal_curves(z, weight, bias, ordered, predicted),
        "deletion_random": removal_curves(z, weight, bias, shuffled, predicted),
        "insertion": removal_curves(z, weight, bias, ordered, predicted, insertion=True),
        "insertion_random": removal_curves(z, weight, bias, shuffled, predicted, insertion=True),
    }
    assigned = weight[predicted] != 0
    after = (z * ~assigned) @ weight.T + bias
    drop = (logits - after).gather(1, predicted[:, None])
    kept = F.softmax(after, dim=1).gather(1, predicted[:, None])
    probability_drop = F.softmax(logits, dim=1).gather(1, predicted[:, None]) - kept
    return {
        "areas": {name: float(area(c).mean()) for name, c in curves.items()},
        "curves": {name: c.mean(dim=0) for name, c in curves.items()},
        "mean_assigned_features": float(assigned.sum(dim=1).float().mean()),
        "logit_drop_assigned": float(drop[:, 0].mean()),
        "probability_drop_assigned": float(probability_drop[:, 0].mean()),
    }


def assert_same_deletion(streamed: dict, direct: dict) -> None:
    for name, value in direct["areas"].items():
        kind, _, random = name.partition("_")
        assert streamed[f"{kind}_auc" + (f"_{random}" if random else "")] == value, name
    for key in ("mean_assigned_features", "logit_drop_assigned", "probability_drop_assigned"):
        assert streamed[key] == direct[key], key
    for name, curve in direct["curves"].items():  # summed in float64 here, float32 there
        torch.testing.assert_close(torch.tensor(streamed["curves"][name]), curve, rtol=0, atol=1e-6)


def test_concept_deletion_over_chunks_equals_the_in_memory_computation(monkeypatch) -> None:
    monkeypatch.setattr(deletion_module, "_PART", 200)  # four parts of blocks of 64 images
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(700, 12, generator=generator).relu()
    weight = torch.randn(40, 12, generator=generator) * (
        torch.rand(40, 12, generator=generator) < 0.3
    )
    bias = torch.randn(40, generator=generator)
    streamed = concept_deletion(z, weight, bias, seed=5)
    assert (streamed["n_images"], streamed["n_total"]) == (700, 700)
    assert_same_deletion(streamed, in_memory_deletion(z, weight, bias, seed=5))
    assert concept_deletion(z, weight, bias, seed=5, max_images=700) == streamed

    capped = concept_deletion(z, weight, bias, seed=5, max_images=300)
    rows = deletion_rows(700, 300, 5)
    assert (capped["n_images"], capped["n_total"]) == (300, 700)
    assert len(set(rows.tolist())) == 300 and torch.equal(rows, rows.sort().values)
    assert_same_deletion(capped, in_memory_deletion(z[rows], weight, bias, seed=5))
    assert not torch.equal(rows, deletion_rows(700, 300, 6))  # the subset follows the seed
    with pytest.raises(ConfigError, match="max_images"):
        concept_deletion(z, weight, bias, max_images=0)


@pytest.fixture(scope="module")
def converted():
    images, labels = colour_coded_images(60, 16, CLASSES, bright=3)
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)  # 8 batches, the last short
    torch.manual_seed(0)
    model = SmallCNN(CLASSES).eval()
    imodel = retrofit.convert(
        model, loader, finetune="none", progress=False, n_features=4, per_class=2
    )
    return imodel, model, loader


def check_with_probe(imodel, model, loader, **options):
    """check() with a registered metric that keeps what it was handed."""
    seen = {}

    @register_metric("probe")
    def probe(inputs):
        seen["inputs"] = inputs
        seen["chunks"] = list(inputs.logit_chunks(7))
        return {"rows": len(inputs.z)}

    try:
        report = retrofit.check(imodel, loader, reference=model, **CHECK, **options)
    finally:
        unregister_metric("probe")
    return report, seen["inputs"], seen["chunks"]


def test_streamed_check_equals_the_in_memory_computation(converted, caplog) -> None:
    imodel, model, loader = converted
    report, inputs, chunks = check_with_probe(imodel, model, loader)
    with torch.no_grad():
        logits = torch.cat([imodel(x) for x, _ in loader])
        reference_logits = torch.cat([model(x) for x, _ in loader])
    labels = torch.cat([y for _, y in loader])

    expected = fidelity(logits, labels, reference_logits)
    expected.update(
        {f"fidelity@{k}": AM.fidelity_at_k(logits, reference_logits, k) for k in (1, 5)}
    )
    assert report.fidelity == expected
    assert expected["n_reference_mistakes"] and expected["fidelity@5"] > expected["fidelity@1"]

    torch.testing.assert_close(inputs.logits, logits)
    torch.testing.assert_close(torch.cat([c for _, c in chunks]), inputs.logits, rtol=0, atol=0)
    assert [start for start, _ in chunks] == list(range(0, 60, 7))
    torch.testing.assert_close(inputs.reference_logits, reference_logits)
    assert torch.equal(inputs.reference_predicted, reference_logits.argmax(dim=1))
    assert inputs.reference_logits_note is None
    with pytest.raises(AttributeError, match="read-only"):
        inputs.z = None

    weight, bias = imodel.head.weight.detach(), imodel.head.bias.detach()
    assert_same_deletion(
        report.concept_deletion, in_memory_deletion(inputs.z, weight, bias, seed=0)
    )
    assert report.meta["deletion_images"] == 60 and report.meta["deletion_images_cap"] == 10_000

    with caplog.at_level(logging.INFO, logger="retrofit.check.reference_pass"):
        _, small, _ = check_with_probe(
            imodel, model, loader, reference_logits_budget_mb=1e-3, deletion_images=25
        )
    assert (
        small.reference_logits is None
        and "reference_logits_budget_mb" in small.reference_logits_note
    )
    assert "reference_logits_budget_mb" in caplog.text
    assert torch.equal(small.reference_predicted, inputs.reference_predicted)


def test_a_capped_check_measures_a_recorded_seeded_subset(converted) -> None:
    imodel, model, loader = converted
    report = retrofit.check(imodel, loader, reference=model, deletion_images=25, **CHECK)
    deletion = report.concept_deletion
    assert (deletion["n_images"], deletion["n_total"]) == (25, 60)
    assert report.meta["deletion_images"] == 25 and report.meta["deletion_images_cap"] == 25
    assert "(on 25 of 60 images)" in report.summary()
    assert "random 25 of the 60 images" in render_report(report)
    with torch.no_grad():
        z = torch.cat([imodel.concept_activations(x) for x, _ in loader])
    weight, bias = imodel.head.weight.detach(), imodel.head.bias.detach()
    direct = in_memory_deletion(z[deletion_rows(60, 25, 0)], weight, bias, seed=0)
    assert deletion["deletion_auc"] == pytest.approx(direct["areas"]["deletion"], abs=1e-6)
    every = retrofit.check(imodel, loader, reference=model, deletion_images=None, **CHECK)
    assert every.concept_deletion["n_images"] == 60 and every.meta["deletion_images_cap"] is None
    assert " of 60 images" not in every.summary()


def test_bad_budgets_are_config_errors() -> None:
    for options, name in (
        ({"deletion_images": 0}, "deletion_images"),
        ({"deletion_images": 2.5}, "deletion_images"),
        ({"reference_logits_budget_mb": -1}, "reference_logits_budget_mb"),
        ({"reference_logits_budget_mb": float("inf")}, "reference_logits_budget_mb"),
    ):
        with pytest.raises(ConfigError, match=name):
            CheckConfig(**options)


def test_growing_rows_hold_what_was_appended_whatever_the_first_size() -> None:
    batches = [torch.randn(n, 3) for n in (2, 5, 1, 8, 3)]
    for capacity in (None, 3, 19, 100):
        rows = GrowingRows(capacity)
        for batch in batches:
            rows.append(batch)
        assert len(rows) == 19 and torch.equal(rows.tensor(), torch.cat(batches))
    assert len(GrowingRows(10).tensor()) == 0
