"""INV's human-label side: the scoring formula, text clustering, merging, bad answers files, and
the global explanation by layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from retrofit.errors import ConfigError, RetrofitError
from retrofit.inv.answers import (
    AnswersError,
    answer_score,
    cluster_texts,
    content_words,
    merge_same_labels,
    read_answers,
    score_answers,
)
from retrofit.inv.commands import import_reveal_answers
from retrofit.inv.explanation import depth_slope, layer_explanation

MAPS = [
    {"id": "0:layer3:0", "image": 0, "layer": "layer3", "depth": 0},
    {"id": "0:layer3:1", "image": 0, "layer": "layer3", "depth": 0},
    {"id": "1:layer4:0", "image": 1, "layer": "layer4", "depth": 1},
]


def answer(map_index: int, text: str, step: int, correct: bool = True) -> dict:
    m = MAPS[map_index]
    return {
        "map": m["id"],
        "image": m["image"],
        "layer": m["layer"],
        "depth": m["depth"],
        "predicted": "cat",
        "guess": "cat" if correct else "dog",
        "correct": correct,
        "step": step,
        "text": text,
    }


def write_answers(path: Path, answers: list[dict], maps: list[dict] = MAPS) -> Path:
    path.write_text(
        json.dumps({"format": "retrofit-reveal-answers", "maps": maps, "answers": answers})
    )
    return path


def test_score_is_frequency_times_step_discount_with_wrong_guesses_quartered() -> None:
    # 3 of 4 answers give the label, at steps 1, 2, 3 (mean 2), all guesses right
    assert answer_score([1, 2, 3], [True] * 3, 4) == pytest.approx(0.75 * (1 - 0.1 * 2))
    # a wrong guess counts a quarter
    assert answer_score([0], [False], 1) == pytest.approx(0.25)
    assert answer_score([0, 0], [True, False], 2) == pytest.approx((1 + 0.25) / 2)
    assert answer_score([5], [True], 1) == pytest.approx(0.5)


def test_text_clusters_follow_the_embedding_directions() -> None:
    generator = torch.Generator().manual_seed(0)
    directions = torch.eye(8)[:3]
    truth = np.repeat(np.arange(3), 5)
    points = directions[truth] + 0.1 * torch.randn(15, 8, generator=generator)
    labels = cluster_texts(torch.nn.functional.normalize(points, dim=1))
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)


def test_content_words_drop_stopwords_and_lemmatise() -> None:
    assert content_words("I see some red Circles and stripes") == ["red", "circle", "stripe"]


def test_answers_become_labels_per_map(tmp_path: Path) -> None:
    answers = [
        answer(0, "red", 1),
        answer(0, "red", 3),
        answer(0, "stripes", 0, correct=False),
        answer(1, "stripes", 2),
        answer(2, "red", 0),
        answer(2, "red", 4, correct=False),
    ]
    scored = score_answers(read_answers(write_answers(tmp_path / "a.json", answers)))
    by_map = {tuple(entry["maps"]): entry for entry in scored["labels"]}
    assert by_map[("0:layer3:0",)]["label"] == "red"
    assert by_map[("0:layer3:0",)]["score"] == pytest.approx(2 / 3 * (1 - 0.1 * 2))
    assert by_map[("0:layer3:0",)]["scores"]["stripe"] == pytest.approx(0.25 / 3)
    assert by_map[("0:layer3:1",)]["label"] == "stripe"
    assert by_map[("1:layer4:0",)]["score"] == pytest.approx((1 + 0.6 * 0.25) / 2)
    assert {c["label"] for c in scored["text_clusters"]} == {"red", "stripe"}


def test_same_label_maps_of_one_image_and_layer_merge() -> None:
    entries = [
        {
            "maps": [m["id"]],
            **{k: m[k] for k in ("image", "layer", "depth")},
            "label": "red",
            "score": s,
            "n_answers": 2,
            "predicted": "cat",
        }
        for m, s in zip(MAPS, (0.4, 0.7, 0.9))
    ]
    merged = merge_same_labels(entries)
    assert len(merged) == 2
    assert merged[0]["maps"] == ["0:layer3:0", "0:layer3:1"] and merged[0]["score"] == 0.7
    assert merged[0]["n_answers"] == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ('{"answers": []}', "has no answers"),
        ('{"rows": []}', "no 'answers' list"),
        ("not json", "neither CSV"),
    ],
)
def test_bad_answers_files_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "answers.json"
    path.write_text(content)
    with pytest.raises(AnswersError, match=message):
        read_answers(path)


def test_missing_columns_unknown_maps_and_bad_steps(tmp_path: Path) -> None:
    csv_path = tmp_path / "answers.csv"
    csv_path.write_text(
        "map,image,layer,depth,predicted,step,text\n0:layer3:0,0,layer3,0,cat,1,red\n"
    )
    with pytest.raises(AnswersError, match="guess"):
        read_answers(csv_path)
    stranger = {**answer(0, "red", 1), "map": "7:layer3:0", "image": 7}
    with pytest.raises(AnswersError, match="not in the game"):
        read_answers(write_answers(tmp_path / "u.json", [stranger]))
    with pytest.raises(AnswersError, match="step 9"):
        read_answers(write_answers(tmp_path / "s.json", [answer(0, "red", 9)]))
    with pytest.raises(AnswersError, match="every 'text' is empty"):
        score_answers(read_answers(write_answers(tmp_path / "e.json", [answer(0, "", 1)])))


def test_import_writes_nothing_on_bad_input_and_keeps_existing_files(tmp_path: Path) -> None:
    out, html = tmp_path / "labels.json", tmp_path / "labels.html"
    bad = tmp_path / "bad.json"
    bad.write_text('{"answers": []}')
    with pytest.raises(RetrofitError):
        import_reveal_answers(bad, out=out, html=html)
    assert not out.exists() and not html.exists()
    good = write_answers(tmp_path / "good.json", [answer(0, "red", 0), answer(2, "red", 1)])
    result, _, _ = import_reveal_answers(good, out=out, html=html)
    assert json.loads(out.read_text())["by_layer"] == result["by_layer"]
    assert "Concepts by layer" in html.read_text()
    before = out.read_text()
    with pytest.raises(ConfigError, match="overwrite"):
        import_reveal_answers(good, out=out, html=html)
    with pytest.raises(RetrofitError):
        import_reveal_answers(bad, out=out, html=html, overwrite=True)
    assert out.read_text() == before


def test_layer_explanation_averages_over_a_class_and_reports_the_depth_trend() -> None:
    records = [
        {"image": 0, "layer": "a", "depth": 0, "predicted": "cat", "label": "red", "score": 0.8},
        {"image": 1, "layer": "b", "depth": 1, "predicted": "cat", "label": "red", "score": 0.4},
        {"image": 0, "layer": "c", "depth": 2, "predicted": "cat", "label": "ear", "score": 0.6},
        {"image": 1, "layer": "c", "depth": 2, "predicted": "cat", "label": "ear", "score": 1.0},
        {"image": 2, "layer": "a", "depth": 0, "predicted": "dog", "label": "tail", "score": 0.5},
    ]
    explanation = layer_explanation(records)
    assert explanation["layers"] == ["a", "b", "c"]
    cat = {row["label"]: row for row in explanation["classes"]["cat"]["labels"]}
    assert explanation["classes"]["cat"]["n_images"] == 2
    assert cat["red"]["by_layer"] == pytest.approx([0.4, 0.2, 0.0])
    assert cat["ear"]["by_layer"] == pytest.approx([0.0, 0.0, 0.8])
    assert cat["ear"]["slope"] > 0 > cat["red"]["slope"]
    assert explanation["classes"]["cat"]["labels"][0]["label"] == "ear"
    assert depth_slope([0.2, 0.4, 0.6]) == pytest.approx(0.2)
    assert depth_slope([0.5]) == 0.0
