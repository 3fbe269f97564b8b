"""imodel.explain: checked against a model whose bottleneck and head are set by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import retrofit
from retrofit.config import RetrofitConfig
from retrofit.extraction.hooks import LayerSpec
from retrofit.fitting.bottleneck import Bottleneck, FixedHead


class TinyBackbone(nn.Module):
    """Its 'images' are 4-vectors and its penultimate features are those vectors themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _hand_made(num_classes: int = 3) -> retrofit.InterpretableModel:
    bottleneck = Bottleneck(
        selected=torch.tensor([2, 0, 3]),
        mean=torch.tensor([1.0, 0.0, -1.0]),
        std=torch.tensor([2.0, 1.0, 0.5]),
        in_features=4,
    )
    weight = torch.tensor([[2.0, 2.0, 0.0], [0.0, 2.0, 2.0], [-2.0, 0.0, 2.0]])[:num_classes]
    bias = torch.tensor([0.5, 0.0, -0.5])[:num_classes]
    imodel = retrofit.InterpretableModel(
        TinyBackbone(),
        LayerSpec(heads=("fc",)),
        bottleneck,
        FixedHead(weight, bias),
        RetrofitConfig(n_features=3, per_class=2),
        class_names=["cat", "dog", "car"][:num_classes],
    ).eval()
    imodel.concepts = [[{"concept": "stripes", "score": 0.9}], [], [{"concept": "wheels"}]]
    return imodel


def test_the_numbers_match_a_hand_computation() -> None:
    imodel = _hand_made()
    # image 0: z = ((5-1)/2, (1-0)/1, (-2+1)/0.5) = (2, 1, -2)
    #   logits: cat 2*2 + 2*1 + 0.5 = 6.5, dog 2*1 + 2*(-2) = -2, car -2*2 + 2*(-2) - 0.5 = -8.5
    # image 1: z = (0, 0, 8): cat 0.5, dog 16, car 15.5
    images = torch.tensor([[1.0, 3.0, 5.0, -2.0], [0.0, 0.0, 1.0, 3.0]])
    first, second = imodel.explain(images)

    logits = torch.tensor([6.5, -2.0, -8.5])
    probabilities = torch.softmax(logits, dim=0)
    assert (first.predicted, first.class_name) == (0, "cat")
    assert first.probability == pytest.approx(float(probabilities[0]), rel=1e-5)
    assert first.logit == pytest.approx(6.5, abs=1e-5) and first.bias == 0.5
    assert [(f.feature, f.backbone_index, f.name) for f in first.features] == [
        (0, 2, "stripes"),
        (1, 0, "feature_0"),
    ]
    assert [f.activation for f in first.features] == pytest.approx([2.0, 1.0])
    assert [f.weight for f in first.features] == [2.0, 2.0]
    assert [f.contribution for f in first.features] == pytest.approx([4.0, 2.0])
    assert first.bias + sum(f.contribution for f in first.features) == pytest.approx(first.logit)

    assert (first.runner_up, first.runner_up_name) == (1, "dog")
    assert first.runner_up_probability == pytest.approx(float(probabilities[1]), rel=1e-5)
    assert first.runner_up_logit == pytest.approx(-2.0, abs=1e-5)
    assert [(f.feature, f.contribution) for f in first.runner_up_features] == [
        (1, pytest.approx(2.0)),
        (2, pytest.approx(-4.0)),
    ]
    assert [(f.name, f.contribution) for f in first.only_predicted] == [
        ("stripes", pytest.approx(4.0))
    ]
    assert [(f.name, f.weight, f.contribution) for f in first.only_runner_up] == [
        ("wheels", 2.0, pytest.approx(-4.0))
    ]

    assert (second.class_name, second.runner_up_name) == ("dog", "car")
    assert second.logit == pytest.approx(16.0) and second.runner_up_logit == pytest.approx(15.5)
    assert [f.name for f in second.only_predicted] == ["feature_0"]
    assert [f.name for f in second.only_runner_up] == ["stripes"]


def test_text_and_json_forms() -> None:
    explanation = _hand_made().explain(torch.tensor([[1.0, 3.0, 5.0, -2.0]]))[0]
    text = str(explanation)
    assert text.splitlines()[0].startswith("cat (p=")
    assert "+4.000  stripes" in text and "runner-up: dog" in text
    assert "only cat: stripes (+4.000)" in text and "only dog: wheels (-4.000)" in text
    data = json.loads(json.dumps(explanation.to_dict()))
    assert data["class_name"] == "cat" and data["features"][0]["contribution"] == pytest.approx(4)
    assert math.isclose(data["only_runner_up"][0]["activation"], -2.0, rel_tol=1e-6)


def test_a_single_class_has_no_runner_up() -> None:
    explanation = _hand_made(num_classes=1).explain(torch.tensor([[1.0, 3.0, 5.0, -2.0]]))[0]
    assert explanation.probability == 1.0 and explanation.runner_up is None
    assert "runner-up" not in str(explanation)


def test_bad_input_is_refused() -> None:
    with pytest.raises(retrofit.DataError, match="batch of images"):
        _hand_made().explain([1.0, 2.0])


def test_contributions_add_up_to_the_logits_of_a_converted_model() -> None:
    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, stride=2)
            self.fc = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    images = torch.rand(24, 3, 16, 16)
    labels = torch.arange(24) % 3
    imodel = retrofit.convert(
        SmallCNN().eval(),
        [(images, labels)],
        method="qsenn",
        n_features=6,
        per_class=2,
        rounds=1,
        epochs=1,
        progress=False,
    )
    with torch.no_grad():
        logits = imodel(images[:6])
    for row, explanation in zip(logits, imodel.explain(images[:6])):
        assert explanation.predicted == int(row.argmax())
        total = explanation.bias + sum(f.contribution for f in explanation.features)
        assert total == pytest.approx(float(row.max()), abs=1e-4)
    assert len(imodel.explain(images[0])) == 1, "an unbatched image is one explanation"
