"""The head's candidates beside the concept basis: covered channels, the class–concept prior,
the words that get a probe, and the features retention holds."""

from __future__ import annotations

import pytest
import torch

from retrofit.concepts.coverage import (
    COVERAGE_BLOCK,
    coverage,
    head_candidates,
    widen_bottleneck,
)
from retrofit.concepts.naming import parse_concepts
from retrofit.concepts.pairs import shown_concepts
from retrofit.config import RetrofitConfig
from retrofit.errors import ConfigError, FeatureError
from retrofit.fitting.bottleneck import Bottleneck
from retrofit.fitting.layer_fit import retained_features
from retrofit.methods.base import fit_head, get_head, register_head, unregister_head


def _world(n: int = 800, seed: int = 0):
    """4 classes; class c < 3 always shows concept c (others at random); channel 1 copies
    concept 0, channels 0 and 2 are noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(n // 4)
    presence = torch.rand(n, 3, generator=g) < 0.2
    for c in range(3):
        presence[labels == c, c] = True
    features = torch.randn(n, 3, generator=g)
    features[:, 1] = presence[:, 0].float() + 0.3 * torch.randn(n, generator=g)
    return features, presence, labels


def test_a_channel_that_copies_a_concept_is_not_offered_beside_it() -> None:
    features, presence, labels = _world()
    candidates = head_candidates(features, presence, labels, 4, channels=True, n_features=4)
    assert candidates.columns.tolist() == [0, 2, 3, 4, 5]
    assert candidates.covered == 1
    expected = -torch.ones(3, 4)
    expected[torch.arange(3), torch.arange(3)] = 1
    assert torch.equal(candidates.prior[2:], expected)
    assert not candidates.prior[:2].any()


def test_covered_channels_return_last_when_the_head_needs_them() -> None:
    features, presence, labels = _world()
    candidates = head_candidates(features, presence, labels, 4, channels=True, n_features=6)
    assert candidates.columns.tolist() == [0, 1, 2, 3, 4, 5]
    assert candidates.covered == 0
    assert torch.equal(candidates.prior[1], -torch.ones(4))
    assert not candidates.prior[[0, 2]].any()


def test_without_channels_only_the_concept_features_are_offered() -> None:
    features, presence, labels = _world()
    candidates = head_candidates(features, presence, labels, 4, channels=False, n_features=3)
    assert candidates.columns.tolist() == [3, 4, 5]


@pytest.mark.parametrize("linear_mix", [True, False])
def test_a_widened_bottleneck_computes_the_same_features(linear_mix: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g)
    columns = torch.tensor([0, 2, 5])
    narrow = Bottleneck(
        torch.tensor([2, 0]),
        torch.randn(2, generator=g),
        torch.rand(2, generator=g) + 0.5,
        3,
        linear_mix=linear_mix,
    )
    if linear_mix:
        with torch.no_grad():
            narrow.mix.copy_(torch.randn(2, 3, generator=g))
    wide = widen_bottleneck(narrow, columns, 6)
    assert wide.selected.tolist() == [5, 0]
    assert torch.allclose(wide(x), narrow(x[:, columns]), atol=1e-5)


def _qpm_config(**head) -> RetrofitConfig:
    return RetrofitConfig(
        n_features=6, per_class=2, progress=False, seed=0, threads=1, time_limit=20, head=head
    )


def _planted(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(5).repeat_interleave(60)
    proto = torch.randn(5, 12, generator=g) * (torch.rand(5, 12, generator=g) < 0.4)
    return 2.0 * proto[labels] + torch.randn(len(labels), 12, generator=g), labels


def test_the_prior_moves_qpm_towards_the_feature_whose_concept_the_class_shows() -> None:
    features, labels = _planted()
    plain = get_head("qpm")(features, labels, _qpm_config())
    c = 0
    given = set(plain.selected[plain.assignment[c] != 0].tolist())
    assoc = torch.stack(
        [torch.corrcoef(torch.stack([f, (labels == c).float()]))[0, 1] for f in features.T]
    )
    unused = [j for j in torch.argsort(-assoc).tolist() if j not in given]
    preferred, avoided = unused[0], sorted(given)[0]
    prior = torch.zeros(12, 5)
    prior[preferred, c], prior[avoided, c] = 1.0, -1.0
    nudged = get_head("qpm")(features, labels, _qpm_config(concept_prior=1.0), prior=prior)
    now = set(nudged.selected[nudged.assignment[c] != 0].tolist())
    assert preferred in now and avoided not in now
    ignored = get_head("qpm")(features, labels, _qpm_config(concept_prior=0), prior=prior)
    assert torch.equal(ignored.assignment, plain.assignment)
    assert torch.equal(ignored.selected, plain.selected)


def test_a_bad_prior_or_weight_is_refused() -> None:
    features, labels = _planted()
    with pytest.raises(FeatureError, match="prior must be"):
        get_head("qpm")(features, labels, _qpm_config(), prior=torch.zeros(11, 5))
    with pytest.raises(ConfigError, match="concept_prior"):
        get_head("qpm")(features, labels, _qpm_config(concept_prior=-1), prior=torch.zeros(12, 5))


def test_the_prior_reaches_only_methods_that_take_it() -> None:
    features, labels = _planted()
    seen: list[object] = []

    def with_prior(features, labels, config, maps=None, logits=None, prior=None):
        seen.append(prior)
        return get_head("qpm")(features, labels, config)

    def without_prior(features, labels, config, maps=None, logits=None):
        seen.append("called")
        return get_head("qpm")(features, labels, config)

    prior = torch.zeros(12, 5)
    try:
        register_head("takes_prior")(with_prior)
        register_head("older_plugin")(without_prior)
        fit_head("takes_prior", features, labels, _qpm_config(), prior=prior)
        fit_head("older_plugin", features, labels, _qpm_config(), prior=prior)
    finally:
        unregister_head("takes_prior")
        unregister_head("older_plugin")
    assert seen[0] is prior and seen[1] == "called"


def test_coverage_of_a_wide_layer_is_measured_block_by_block() -> None:
    g = torch.Generator().manual_seed(2)
    presence = torch.rand(400, 2, generator=g) < 0.5
    features = torch.randn(400, COVERAGE_BLOCK + 44, generator=g)
    features[:, COVERAGE_BLOCK + 20] = presence[:, 1].float() + 0.2 * torch.randn(400, generator=g)
    best = coverage(features, presence)
    assert best.shape == (COVERAGE_BLOCK + 44,)
    assert torch.nonzero(best >= 0.75).flatten().tolist() == [COVERAGE_BLOCK + 20]


def test_retention_holds_every_selected_concept_feature_and_no_channel() -> None:
    selected = torch.tensor([1, 4, 5, 6])  # a channel, then three concept features
    assert retained_features(selected, 4).tolist() == [False, True, True, True]


def test_only_words_that_beat_the_encoders_null_get_a_probe() -> None:
    """A shown concept's similarity is bimodal; an absent word's is noise like the encoder's
    similarity to concept-free prompts. The rule reads the encoder's own null, so scaling every
    similarity (another encoder's range) changes nothing."""
    generator = torch.Generator().manual_seed(0)
    shown = (torch.rand(2000, generator=generator) < 0.3).float()
    similarity = torch.stack(
        [
            shown + 0.1 * torch.randn(2000, generator=generator),
            torch.randn(2000, generator=generator),
        ],
        dim=1,
    )
    null = torch.randn(2000, 32, generator=generator)
    for scale in (1.0, 0.01):
        keep, test, presence = shown_concepts(scale * similarity, scale * null)
        assert keep.tolist() == [0]
        assert float(test.p_values[0]) < 1e-6 < 0.05 < float(test.p_values[1])
        assert presence.shape == (2000, 2)


@pytest.mark.parametrize("value", [1.0, 0.0, -0.1, "0.05", True])
def test_a_bad_false_discovery_rate_is_refused(value) -> None:
    with pytest.raises(ConfigError, match="q must be a number in"):
        parse_concepts({"labels": torch.ones(4, 2), "label_names": ["red", "star"], "q": value})


def test_a_blind_encoder_shows_no_word_and_the_head_falls_back_to_channels(caplog) -> None:
    """An encoder that sees nothing on the images (the tiny CLIP drowned in noise) gets no
    concept feature, and says so in one log line."""
    from torch.utils.data import DataLoader

    from benchmarks.encoders import NoisyEncoder
    from retrofit.concepts.basis import concept_presence
    from retrofit.concepts.encoders import load_tiny_clip
    from retrofit.datasets import SyntheticConceptDataset

    data = SyntheticConceptDataset(300, n_classes=10, seed=0)
    for sigma, blind in ((0.0, False), (8.0, True)):
        settings = parse_concepts(
            {"encoder": NoisyEncoder(load_tiny_clip(), sigma), "vocabulary": "curated"}
        )
        with caplog.at_level("WARNING", logger="retrofit.concepts.basis"):
            names, presence, _ = concept_presence(
                settings, DataLoader(data, batch_size=100), data.labels, cache_dir=None,
                batch_size=100, progress=False,
            )  # fmt: skip
        assert (names == []) == blind and presence.shape == (300, len(names))
        assert ("no word of the vocabulary is detectably shown" in caplog.text) == blind
