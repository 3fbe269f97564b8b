"""Repairing a background shortcut: counterfactual training data (each object on other
classes' clean backgrounds) for reweight="counterfactual", and the per-feature background
reliance that tells which features read the background (ALGORITHMS §12)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.check.reliance import RELIES, background_reliance
from retrofit.datasets.spurious import SpuriousBackgroundDataset
from retrofit.datasets.spurious_classifier import load_spurious_classifier, spurious_world_settings
from retrofit.errors import ConfigError, DataError
from retrofit.fitting.counterfactual import counterfactual_images

FAST = {"method": "qsenn", "n_features": 16, "per_class": 4, "progress": False, "seed": 0}


def _world(n: int, split: str, background: str) -> tuple[TensorDataset, torch.Tensor, Any]:
    world = spurious_world_settings()
    data = SpuriousBackgroundDataset(
        n,
        split=split,
        background=background,
        n_classes=world["n_classes"],
        image_size=world["image_size"],
        seed=0,
    )
    images = torch.stack([data[i][0] for i in range(n)])
    masks = torch.stack([data.mask(i) for i in range(n)])
    return TensorDataset(images, data.labels.clone()), masks, data


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    train, train_masks, _ = _world(400, "train", "spurious")
    test, test_masks, test_data = _world(160, "test", "shuffled")
    return {"train": train, "masks": train_masks, "test": test, "test_masks": test_masks,
            "test_data": test_data}  # fmt: skip


def _flips(model: torch.nn.Module, test: TensorDataset, masks: torch.Tensor) -> float:
    """Share of test images whose prediction changes when only their background is swapped
    for another test image's (with that image's object filled in)."""
    images, labels = test.tensors
    swapped, _ = counterfactual_images(images, labels, masks, 1, seed=1)
    with torch.no_grad():
        return float((model(images).argmax(1) != model(swapped).argmax(1)).float().mean())


def test_a_counterfactual_keeps_the_object_and_takes_another_class_background(world) -> None:
    images, labels = world["train"].tensors
    images, labels, masks = images[:40], labels[:40], world["masks"][:40]
    pasted, pasted_labels = counterfactual_images(images, labels, masks, copies=2, seed=0)
    assert pasted.shape == (80, *images.shape[1:]) and torch.equal(pasted_labels, labels.repeat(2))
    inside = masks.repeat(2, 1, 1)[:, None].expand_as(pasted)
    assert torch.equal(pasted[inside], images.repeat(2, 1, 1, 1)[inside])  # the object, untouched
    assert not torch.equal(pasted[~inside], images.repeat(2, 1, 1, 1)[~inside])  # a new background


def test_the_repair_makes_predictions_depend_less_on_the_background(world) -> None:
    model = load_spurious_classifier("spurious")
    loader = DataLoader(world["train"], batch_size=64)
    converted = retrofit.convert(model, loader, **FAST)
    repaired = retrofit.convert(
        model, loader, reweight="counterfactual", masks=world["masks"], reweight_images=400,
        reweight_copies=2, **FAST,
    )  # fmt: skip
    record = repaired.stats["history"]["counterfactual"]
    assert record["counterfactuals"] == 800 and record["refit"] == "head and bottleneck"
    assert _flips(repaired, world["test"], world["test_masks"]) < _flips(
        converted, world["test"], world["test_masks"]
    )


def test_bad_masks_and_missing_masks_are_refused_before_any_work(world) -> None:
    model = load_spurious_classifier("spurious")
    loader = DataLoader(world["train"], batch_size=64)
    settings = {**FAST, "reweight": "counterfactual", "reweight_images": 400}
    with pytest.raises(ConfigError, match="needs the objects: pass masks="):
        retrofit.convert(model, loader, **settings)
    with pytest.raises(DataError, match="masks cover 10 images but 400"):
        retrofit.convert(model, loader, masks=world["masks"][:10], **settings)
    empty = world["masks"].clone()
    empty[3] = False
    with pytest.raises(DataError, match="no object pixel .* image 3"):
        retrofit.convert(model, loader, masks=empty, **settings)
    full = world["masks"].clone()
    full[5] = True
    with pytest.raises(DataError, match="no background pixel .* image 5"):
        retrofit.convert(model, loader, masks=full, **settings)
    with pytest.raises(DataError, match="shape"):
        retrofit.convert(model, loader, masks=world["masks"][:, :8, :8], **settings)
    with pytest.raises(ConfigError, match="backgrounds= are used only"):
        retrofit.convert(model, loader, backgrounds=world["train"].tensors[0], **FAST)


def test_reliance_singles_out_a_shortcut_model_and_spares_the_control(world) -> None:
    images, labels = world["test"].tensors
    masks = world["test_masks"]
    scores = {}
    for kind in ("spurious", "control"):
        imodel = retrofit.convert(
            load_spurious_classifier(kind), DataLoader(world["train"], batch_size=64), **FAST
        )
        scores[kind] = background_reliance(imodel, images, labels, masks, seed=0)
    shortcut, control = scores["spurious"], scores["control"]
    assert min(shortcut["reliance"]) > max(control["reliance"])
    assert shortcut["suggested_edits"] and not control["suggested_edits"]
    first = shortcut["suggested_edits"][0]
    assert first["op"] == "drop" and first["feature"] == shortcut["ranking"][0]
    assert all(shortcut["reliance"][e["feature"]] > RELIES for e in shortcut["suggested_edits"])


def test_check_reports_reliance_with_masks_and_says_why_not_without(world, tmp_path) -> None:
    imodel = retrofit.convert(
        load_spurious_classifier("spurious"), DataLoader(world["train"], batch_size=64), **FAST
    )
    loader = DataLoader(world["test"], batch_size=64)
    quick = {"pixel_methods": (), "mas_pairs": 0, "top_images": 1, "progress": False}
    with_masks = retrofit.check(imodel, loader, masks=world["test_masks"], **quick)
    reliance = with_masks.results["background_reliance"]
    assert len(reliance["reliance"]) == imodel.n_features and reliance["n_images"] == 160
    assert reliance["n_background_features"] == len(reliance["suggested_edits"]) > 0
    html = with_masks.to_html(tmp_path / "report.html").read_text()
    assert "Background reliance per feature" in html and "reads the background" in html
    first = reliance["suggested_edits"][0]["feature"]
    assert f'data-feature="{first}"> drop</label><br><span class="suggested"' in html  # editor
    without = retrofit.check(imodel, loader, **quick)
    assert "needs masks=" in without.results["background_reliance"]["skipped"]
    failing = retrofit.check(
        imodel, loader, masks=world["test_masks"], thresholds={"max_background_features": 0},
        **quick,
    )  # fmt: skip
    assert not failing.passed


def test_the_backbone_repair_trains_a_copy_and_refits_the_head_on_its_features(world) -> None:
    model = load_spurious_classifier("spurious")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    repaired = retrofit.convert(
        model, DataLoader(world["train"], batch_size=64), reweight="counterfactual",
        masks=world["masks"], reweight_images=200, reweight_copies=1, finetune="backbone",
        backbone_epochs=1, backbone_lr=3e-3, **FAST,
    )  # fmt: skip
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # yours, untouched
    assert repaired.backbone is not model
    record = repaired.stats["history"]["counterfactual"]
    assert record["refit"] == "backbone" and len(record["history"]["backbone"]["loss"]) == 1
    assert "backbone" not in repaired.stats["history"]  # no fine-tuning on the shortcut's data
    images, _ = world["test"].tensors
    with torch.no_grad():  # the refitted head reads the fine-tuned backbone's features
        assert torch.isfinite(repaired(images[:8])).all()
