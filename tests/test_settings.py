"""Typed stage settings and their one message shape (retrofit.validation, retrofit.settings)."""

from __future__ import annotations

import math

import pytest

from retrofit.errors import ConfigError
from retrofit.settings import (
    BottleneckSettings,
    DenseSettings,
    HeadSettings,
    QPMSettings,
    split_legacy_extra,
)
from retrofit.validation import Interval, Options, check_param


@pytest.mark.parametrize(
    ("interval", "inside", "outside"),
    [
        (Interval(int, 1, None), [1, 7, 10**9], [0, -1, 1.0, True, "2", None]),
        (Interval(float, 0, 1, closed="right"), [1, 0.5, 1e-9], [0, 0.0, 1.01, math.nan]),
        (Interval(float, 0, None), [0, 2.5, 3], [-0.1, math.inf, math.nan, False]),
    ],
)
def test_intervals_accept_what_they_say(interval, inside, outside):
    assert all(interval.accepts(v) for v in inside)
    assert not any(interval.accepts(v) for v in outside)


def test_one_message_shape_names_parameter_bound_and_value():
    with pytest.raises(
        ConfigError, match=r"qpm\.candidates must be an integer in \[1, inf\) or None, got 0\."
    ):
        QPMSettings(candidates=0)
    with pytest.raises(
        ConfigError, match=r"qpm\.duplicate_cut must be a number in \(0, 1\], got 1\.5\."
    ):
        QPMSettings(duplicate_cut=1.5)
    with pytest.raises(ConfigError, match=r"one of \['projected', 'assignment'\], got 'dual'"):
        QPMSettings(formulation="dual")
    with pytest.raises(ConfigError, match=r"dense\.l2 must be a number in \[0, inf\)"):
        DenseSettings(l2=-1)
    with pytest.raises(ConfigError, match=r"qpm\.locality must be one of \[True, False\], got 1"):
        QPMSettings(locality=1)
    check_param("x", "a", Options("a", "b"))  # accepted: no error


def test_parse_refuses_unknown_keys_with_the_close_match():
    with pytest.raises(ConfigError, match=r"'cut_round' \(did you mean 'cut_rounds'\?\)"):
        QPMSettings.parse({"cut_round": 3})
    with pytest.raises(ConfigError, match="must be a dict of BottleneckSettings"):
        BottleneckSettings.parse([1])
    parsed = QPMSettings.parse({"cut_rounds": 0, "formulation": "assignment"})
    assert (parsed.cut_rounds, parsed.formulation, parsed.max_rounds) == (0, "assignment", 100)
    assert HeadSettings.parse(None) == HeadSettings()
    assert QPMSettings.parse(parsed) is parsed


def test_every_legacy_extra_key_finds_its_typed_home():
    grouped = split_legacy_extra(
        {
            "candidates": 40,
            "dense_l2": 0.5,
            "diversity_beta": 0.0,
            "concept_prior": 1.0,
            "concept_min_separability": 0.8,  # retired by issue 30: ignored
        }
    )
    assert grouped == {
        "qpm": {"candidates": 40},
        "dense": {"l2": 0.5},
        "bottleneck": {"diversity_beta": 0.0},
        "head": {"concept_prior": 1.0},
    }
    with pytest.raises(ConfigError, match=r"'dense_l3' \(did you mean 'dense_l2'\?\)"):
        split_legacy_extra({"dense_l3": 1})


def test_the_config_holds_typed_stage_settings_and_takes_dicts():
    from retrofit.config import RetrofitConfig
    from retrofit.settings import BottleneckSettings, DenseSettings, HeadSettings, QPMSettings

    config = RetrofitConfig(qpm={"candidates": 80}, dense=DenseSettings(l2=0.5))
    assert isinstance(config.qpm, QPMSettings) and config.qpm.candidates == 80
    assert config.dense.l2 == 0.5
    assert isinstance(config.head, HeadSettings) and isinstance(
        config.bottleneck, BottleneckSettings
    )
    data = config.to_dict()
    assert data["qpm"]["candidates"] == 80 and "extra" not in data
    assert RetrofitConfig.from_dict(data) == config
    with pytest.raises(ConfigError, match=r"'canddates' \(did you mean 'candidates'\?\)"):
        RetrofitConfig(qpm={"canddates": 3})
    with pytest.raises(ConfigError, match=r"head\.concept_prior must be"):
        RetrofitConfig(head={"concept_prior": -1})


def test_old_extra_keys_are_read_into_the_typed_settings():
    import warnings

    from retrofit.config import RetrofitConfig

    with pytest.warns(DeprecationWarning, match="qpm=.*search_rounds"):
        config = RetrofitConfig(extra={"search_rounds": 7, "dense_l2": 0.01, "concept_prior": 0})
    assert (config.qpm.search_rounds, config.dense.l2, config.head.concept_prior) == (7, 0.01, 0)
    stored = {**RetrofitConfig().to_dict(), "extra": {"class_diversity": 0.3}}
    for key in ("qpm", "head", "dense", "bottleneck"):
        del stored[key]  # what an export written before typed settings holds
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading an old export says nothing
        loaded = RetrofitConfig.from_dict(stored)
    assert loaded.bottleneck.class_diversity == 0.3
    with pytest.raises(ConfigError, match=r"'dense_l' \(did you mean 'dense_l2'\?\)"):
        RetrofitConfig.from_dict({"extra": {"dense_l": 1.0}})
    assert (
        RetrofitConfig.from_dict({"extra": {"concept_min_separability": 0.2}}) == RetrofitConfig()
    )
