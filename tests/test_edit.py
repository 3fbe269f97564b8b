"""Human edits: every kind re-solved and respected exactly, conflicts caught early, exact reload."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import retrofit
from retrofit.editing.apply import head_fingerprint
from retrofit.errors import DataError, EditError
from tests.tiny import colour_coded_images

C = 6
N_F = 8
PER_CLASS = 3


class SmallCNN(nn.Module):
    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(width, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def world() -> tuple[nn.Module, torch.Tensor, torch.Tensor, retrofit.FeatureSet]:
    torch.manual_seed(0)
    images, labels = colour_coded_images(60, 16, C, bright=3)
    model = SmallCNN().eval()
    features = retrofit.extract(model, [(images, labels)], progress=False)
    return model, images, labels, features


_MODELS: dict[str, retrofit.InterpretableModel] = {}


def converted(world, method: str) -> retrofit.InterpretableModel:
    if method not in _MODELS:
        model, images, labels, _ = world
        _MODELS[method] = retrofit.convert(
            model,
            [(images, labels)],
            method=method,
            n_features=N_F,
            per_class=PER_CLASS,
            epochs=2,
            rounds=1,
            time_limit=20,
            qpm={"search_rounds": 5, "cut_rounds": 0},
            progress=False,
        )
    return _MODELS[method]


def _links(imodel: retrofit.InterpretableModel, c: int) -> list[int]:
    return torch.nonzero(imodel.head.weight[c]).flatten().tolist()


def _unused(imodel: retrofit.InterpretableModel, c: int) -> list[int]:
    return [j for j in range(imodel.n_features) if imodel.head.weight[c, j] == 0]


@pytest.mark.parametrize("method", ["qpm", "qsenn", "sparse"])
def test_every_edit_kind_is_respected_exactly(world, method: str) -> None:
    imodel = converted(world, method)
    weight_before = imodel.head.weight.clone()
    fingerprint = head_fingerprint(imodel)
    forbid_link = _links(imodel, 0)[0]
    drop = _links(imodel, 0)[1] if len(_links(imodel, 0)) > 1 else _links(imodel, 3)[0]
    pin = next(j for j in _unused(imodel, 1) if j != drop)
    keep = next(j for j in range(N_F) if j not in (drop, pin))
    edits = [
        {"op": "forbid", "class": 0, "feature": forbid_link},
        {"op": "pin", "class": imodel.class_names[1], "feature": pin},
        {"op": "drop", "feature": drop},
        {"op": "per_class", "class": 2, "count": 2},
        {"op": "rename", "feature": keep, "name": "stripes"},
        {"op": "rename", "class": 4, "feature": pin, "name": "grass, really"},
    ]
    result = imodel.edit(edits, world[3])
    edited = result.model
    w = edited.head.weight
    swapped = edited.bottleneck.selected != imodel.bottleneck.selected
    assert w[0, forbid_link] == 0 or bool(swapped[forbid_link])
    assert w[1, pin] != 0 and w[4, pin] != 0  # the pair rename keeps its link
    if method == "qpm":
        assert bool(swapped[drop]) and int(swapped.sum()) == 1  # only the dropped slot refilled
        assert edited.concepts[drop] == []
        assert (w != 0).sum(dim=1).tolist() == [PER_CLASS, PER_CLASS, 2] + [PER_CLASS] * 3
        sets = {frozenset(_links(edited, c)) for c in range(C)}
        assert len(sets) == C  # classes stay distinct
    else:
        assert not bool((w[:, drop] != 0).any())
        assert int((w[2] != 0).sum()) == 2
    if method == "qsenn":
        assert len(set(w[w != 0].abs().tolist())) == 1  # still ternary
    assert edited.feature_name(keep) == "stripes"
    assert edited.concepts[keep][0]["source"] == "human"
    assert edited.pair_name(4, pin) == "grass, really"
    # the original is untouched; the record names it
    assert torch.equal(imodel.head.weight, weight_before)
    assert head_fingerprint(imodel) == fingerprint
    assert imodel.edits == []
    record = edited.edits[-1]
    assert record["previous_fingerprint"] == fingerprint
    assert record["fingerprint"] == head_fingerprint(edited) != fingerprint
    assert [e["op"] for e in record["edits"]] == [e["op"] for e in edits]
    assert set(result.before["train"]) == {"accuracy", "fidelity"}
    assert 0.0 <= result.after["train"]["accuracy"] <= 1.0
    assert any(r.get("to") == "stripes" for r in result.diff["renamed"])
    removed = {(r["class"], r["feature"]) for r in result.diff["links_removed"]}
    assert (0, forbid_link) in removed
    added = {(r["class"], r["feature"]) for r in result.diff["links_added"]}
    assert (1, pin) in added
    assert result.seconds["total"] > 0


def test_drop_without_refill_keeps_the_slot_unused(world) -> None:
    imodel = converted(world, "qpm")
    j = _links(imodel, 0)[0]
    edited = imodel.edit([{"op": "drop", "feature": j, "refill": False}], world[3]).model
    assert torch.equal(edited.bottleneck.selected, imodel.bottleneck.selected)
    assert not bool((edited.head.weight[:, j] != 0).any())
    assert edited.edits[0]["edits"][0]["refill"] is False
    with pytest.raises(EditError, match="edit 1 \\(pin .* conflicts with edit 0 \\(drop"):
        imodel.edit(
            [
                {"op": "drop", "feature": j, "refill": False},
                {"op": "pin", "class": 1, "feature": j},
            ],
            world[3],
        )


def test_rename_only_needs_no_features(world) -> None:
    imodel = converted(world, "qpm")
    result = retrofit.edit(imodel, [{"op": "rename", "feature": 0, "name": "red"}])
    assert torch.equal(result.model.head.weight, imodel.head.weight)
    assert result.model.feature_name(0) == "red"
    assert result.diff["renamed"] == [{"feature": 0, "from": imodel.feature_name(0), "to": "red"}]


def test_conflicting_and_infeasible_edits_fail_before_solving(world) -> None:
    imodel = converted(world, "qpm")
    used = _links(imodel, 0)
    cases = [
        (
            [{"op": "pin", "class": 0, "feature": 5}, {"op": "forbid", "class": 0, "feature": 5}],
            "edit 1 (forbid class 'class_0' feature 5",
        ),
        (
            [{"op": "drop", "feature": 2}, {"op": "pin", "class": 1, "feature": 2}],
            "conflicts with edit 0 (drop",
        ),
        (
            [{"op": "pin", "class": 0, "feature": j} for j in range(PER_CLASS + 1)],
            "gets 4 pinned links",
        ),
        (
            [{"op": "forbid", "class": 3, "feature": j} for j in range(N_F - PER_CLASS + 1)],
            "class 'class_3' needs 3 features",
        ),
        (
            [{"op": "pin", "class": c, "feature": j} for c in (1, 2) for j in used],
            "the same features",
        ),
        (
            [
                {"op": "per_class", "class": 0, "count": 2},
                {"op": "per_class", "class": 0, "count": 1},
            ],
            "one per_class count",
        ),
    ]
    for edits, message in cases:
        with pytest.raises(EditError, match=message.replace("(", r"\(")):
            imodel.edit(edits, world[3])
    with pytest.raises(EditError, match=r"unknown class 'clas_1'.*Close matches: \['class_1'"):
        imodel.edit([{"op": "forbid", "class": "clas_1", "feature": 0}], world[3])
    with pytest.raises(EditError, match="unknown feature 'stripy'"):
        imodel.edit([{"op": "drop", "feature": "stripy"}], world[3])
    with pytest.raises(EditError, match="choose one of"):
        imodel.edit([{"op": "ban", "class": 0, "feature": 0}], world[3])
    with pytest.raises(EditError, match="misses"):
        imodel.edit([{"op": "pin", "class": 0}], world[3])
    with pytest.raises(EditError, match="needs a 'count'"):
        imodel.edit([{"op": "per_class", "class": 0, "count": 0}], world[3])
    with pytest.raises(EditError, match="pass features="):
        imodel.edit([{"op": "forbid", "class": 0, "feature": used[0]}])


def test_edited_export_reloads_with_equal_logits(world, tmp_path) -> None:
    model, images, _, features = world
    imodel = converted(world, "qpm")
    original = imodel.save_pretrained(tmp_path / "original")
    original_config = (original / "retrofit_config.json").read_bytes()
    edited = imodel.edit(
        [
            {"op": "forbid", "class": 0, "feature": _links(imodel, 0)[0]},
            {"op": "rename", "feature": 1, "name": "red blob"},
        ],
        features,
    ).model
    again = edited.edit([{"op": "per_class", "class": 5, "count": 2}], features).model
    folder = again.save_pretrained(tmp_path / "edited")
    loaded = retrofit.load(folder, model=model)
    with torch.no_grad():
        assert torch.equal(loaded(images), again(images))
    assert len(loaded.edits) == 2
    assert loaded.edits[1]["previous_fingerprint"] == loaded.edits[0]["fingerprint"]
    assert loaded.edits[0]["previous_fingerprint"] == head_fingerprint(imodel)
    assert head_fingerprint(loaded) == loaded.edits[1]["fingerprint"]
    card = (folder / "README.md").read_text()
    assert "## Human edits" in card and "red blob" in card and "per_class" in card
    assert (original / "retrofit_config.json").read_bytes() == original_config


def test_intervention_changes_the_prediction(world) -> None:
    _, images, _, _ = world
    imodel = converted(world, "qpm")
    plain = imodel.explain(images[:4])
    assert all(e.intervention is None for e in plain)
    top = plain[0]
    feature = top.features[0].feature
    result = imodel.explain(images[:4], intervene={feature: -100.0})
    first = result[0]
    assert first.intervention["original_predicted"] == top.predicted
    assert first.intervention["prediction_changed"] == (first.predicted != top.predicted)
    assert first.predicted != top.predicted  # a strongly negative feature of the winner flips it
    named = imodel.explain(images[:1], intervene={imodel.feature_name(feature): -100.0})
    assert named[0].predicted == first.predicted
    assert "intervention:" in str(first)
    with pytest.raises(EditError, match="unknown feature"):
        imodel.explain(images[:1], intervene={"nope": 1.0})
    with pytest.raises(DataError, match="must be a number"):
        imodel.explain(images[:1], intervene={0: "on"})
