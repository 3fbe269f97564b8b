"""Names under error control: the tests behind every name, the FDR procedure, the precision
estimate, and the encoder guard (retrofit.concepts.evidence, retrofit.concepts.guard)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from retrofit.concepts.evidence import (
    auc_p_values,
    check_embeddings,
    estimated_precision,
    fdr_accept,
    split_rows,
)
from retrofit.concepts.guard import is_synthetic_world, resolve_encoder
from retrofit.concepts.pairs import NAMED, name_pairs, pair_reliability
from retrofit.datasets import SyntheticConceptDataset
from retrofit.errors import ConfigError, DataError

CONCEPTS = ["red", "heart", "striped", "grass", "dotted", "sky"]


def test_benjamini_hochberg_by_hand() -> None:
    p = torch.tensor([0.01, 0.04, 0.03, 0.005, 0.5])
    accepted, q_values = fdr_accept(p, q=0.05)
    # sorted: 0.005, 0.01, 0.03, 0.04, 0.5 vs i*0.05/5 = 0.01, 0.02, 0.03, 0.04, 0.05
    assert accepted.tolist() == [True, True, True, True, False]
    assert torch.allclose(q_values[[3, 0]], torch.tensor([0.025, 0.025], dtype=torch.float64))
    strict, strict_q = fdr_accept(p, q=0.05, procedure="by")  # q / (1 + 1/2 + ... + 1/5)
    assert not strict.any() and bool((strict_q >= q_values).all())
    assert fdr_accept(p, q=0.06, procedure="by")[0].tolist() == [True, False, False, True, False]
    with pytest.raises(ConfigError, match="q must be a number in"):
        fdr_accept(p, q=1.5)
    with pytest.raises(ConfigError, match="procedure"):
        fdr_accept(p, procedure="holm")


def test_auc_p_values_and_the_precision_estimate() -> None:
    p = auc_p_values(
        torch.tensor([0.5, 0.6, 0.9]), torch.tensor([100] * 3), torch.tensor([400] * 3)
    )
    assert abs(float(p[0]) - 0.5) < 1e-9 and float(p[2]) < 1e-20 < float(p[1]) < 0.01
    generator = torch.Generator().manual_seed(0)
    true = torch.rand(80, generator=generator) * 1e-4
    null = torch.rand(120, generator=generator)
    all_p = torch.cat([true, null])
    accepted, _ = fdr_accept(all_p, q=0.05)
    estimate = estimated_precision(all_p, accepted)
    measured = float(accepted[:80].sum()) / float(accepted.sum())
    assert abs(estimate["estimated_precision"] - measured) <= 0.05
    assert abs(estimate["pi0"] - 0.6) < 0.15  # 120 of 200 hypotheses are null
    assert (
        estimated_precision(all_p, torch.zeros(200, dtype=torch.bool))["estimated_precision"]
        is None
    )


def test_the_split_is_stratified_seeded_and_refuses_too_few_images() -> None:
    labels = torch.arange(300) % 7
    naming, testing = split_rows(labels, seed=3)
    assert set(naming.tolist()).isdisjoint(testing.tolist())
    assert len(naming) + len(testing) == 300
    assert (torch.bincount(labels[testing]) - torch.bincount(labels[naming])).abs().max() <= 1
    assert torch.equal(split_rows(labels, seed=3)[1], testing)
    assert not torch.equal(split_rows(labels, seed=4)[1], testing)
    with pytest.raises(DataError, match="pass more probe images"):
        split_rows(torch.arange(12) % 2)


def _world(flip: float, n: int = 1800, seed: int = 0):
    """6 classes, class c shows concept c; feature c reads concept c (plus noise). The
    encoder's presence is the truth with a share `flip` of its bits flipped: a weak (0.1) or
    a blind (0.5) encoder."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 6
    truth = torch.rand(n, 6, generator=generator) < 0.2
    truth[torch.arange(n), labels] = True
    acts = truth.float() + 0.3 * torch.randn(n, 6, generator=generator)
    flips = torch.rand(n, 6, generator=generator) < flip
    presence = truth ^ flips
    weight = torch.zeros(6, 6)
    weight[torch.arange(6), torch.arange(6)] = 1.0
    weight[torch.arange(6), (torch.arange(6) + 1) % 6] = 1.0  # a feature of another concept
    return acts, labels, presence, weight


@pytest.mark.parametrize("flip", [0.0, 0.1, 0.5])
def test_pair_names_are_true_or_abstain_whatever_the_encoder(flip) -> None:
    acts, labels, presence, weight = _world(flip)
    pairs = name_pairs(acts, labels, presence, CONCEPTS, weight)
    named = {key: pair for key, pair in pairs.items() if pair["status"] in NAMED}
    wrong = [key for key, pair in named.items() if pair["concept"] != CONCEPTS[key[1]]]
    assert not wrong
    for pair in named.values():
        assert pair["evidence"]["q_value"] <= 0.05
        assert pair["evidence"]["test_images"] == len(labels) // 2
    reliability = pair_reliability(pairs)
    if flip == 0.5:  # a blind encoder: its presence says nothing, so nothing is named
        assert not named and reliability["estimated_precision"] is None
    else:  # class c's own feature is named after c's concept; the other feature abstains
        assert {key for key in named} == {(c, c) for c in range(6)}
        assert reliability["estimated_precision"] >= 0.95
        assert all(pairs[(c, (c + 1) % 6)]["concept"] == "unexplained" for c in range(6))


def test_a_name_that_only_held_on_the_images_that_chose_it_is_rejected() -> None:
    """Feature 0 tracks 'red' on the naming half only: the held-out test rejects the name and
    keeps the evidence of why."""
    acts, labels, presence, weight = _world(0.0)
    naming, testing = split_rows(labels)
    acts = acts.clone()
    acts[testing, 0] = torch.randn(len(testing), generator=torch.Generator().manual_seed(1))
    pairs = name_pairs(acts, labels, presence, CONCEPTS, weight, split=(naming, testing))
    assert pairs[(0, 0)]["concept"] == "unexplained"
    assert pairs[(0, 0)]["rejected"] == "red"
    assert pairs[(0, 0)]["evidence"]["q_value"] > 0.05
    assert pairs[(1, 1)]["concept"] == "heart"


def test_embeddings_that_cannot_name_anything_are_refused() -> None:
    check_embeddings(torch.randn(10, 4), "enc")
    with pytest.raises(DataError, match="same embedding"):
        check_embeddings(torch.ones(10, 4), "enc")
    with pytest.raises(DataError, match="non-finite"):
        check_embeddings(torch.full((10, 4), float("nan")), "enc")


def test_the_tiny_clip_is_the_default_only_on_its_own_world() -> None:
    synthetic = SyntheticConceptDataset(8, n_classes=10, seed=0)
    photos = TensorDataset(torch.rand(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))
    assert is_synthetic_world(DataLoader(torch.utils.data.Subset(synthetic, [0, 1])))
    assert not is_synthetic_world(DataLoader(photos))
    assert resolve_encoder(None, DataLoader(synthetic)) == "tiny"
    with pytest.raises(ConfigError, match="open_clip:ViT-B-32"):
        resolve_encoder(None, DataLoader(photos))
    with pytest.warns(UserWarning, match="synthetic scenes only"):
        assert resolve_encoder("tiny", photos) == "tiny"
    assert resolve_encoder("hf:/some/dir", photos) == "hf:/some/dir"


def test_an_explanation_that_abstains_everywhere_has_no_precision_and_no_recall() -> None:
    from retrofit.check.truth import explanation_truth

    weight = torch.tensor([[1.0, 0], [0, 1]])
    names = {(0, 0): ("unexplained", "unexplained"), (1, 1): ("unexplained", "unexplained")}
    truth = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)
    result = explanation_truth(weight, names, truth, ["red", "star"], ["a", "b"])
    assert result["precision"] is None and result["recall"] == 0 and result["coverage"] == 0
