"""The reveal game in a real headless Chromium: a scripted person plays every map to the last
step, the page's saved answers import, and labels come out."""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

import pytest
import torch
from torch import nn

from retrofit.inv import cluster_maps, layer_explanation, read_answers
from retrofit.inv.commands import import_reveal_answers
from retrofit.web.game import read_game_manifest, write_reveal_game
from retrofit.web.layers_report import layer_explanation_section, write_layer_report
from tests.test_report_browser import CHROMIUM, PROBE, _chromium, _console, _Resources
from tests.tiny import colour_coded_images

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (apt-get install -y chromium); CI installs it",
)
CLASSES = ["red thing", "green thing", "blue thing"]
# the scripted person: first tries to answer without choosing a class (refused), then per map
# reveals every step, guesses the class (wrong on the second map) and types what they see
PLAYER = """<script>window.addEventListener("load", () => {
  document.getElementById("seen").value = "too early";
  document.getElementById("answer").click();
  const texts = ["red", "stripes", "red", "stripes"];
  game.maps.forEach((map, i) => {
    for (let s = 0; s < 5; s++) document.getElementById("reveal").click();
    document.getElementById("guess").value = i === 1 ? "%s" : map.predicted_name;
    document.getElementById("seen").value = texts[i %% texts.length];
    document.getElementById("answer").click();
  });
  document.body.dataset.played = "yes";
});</script>"""


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 3),
    ).eval()


def _download(dom: str, link: str) -> str:
    href = re.search(rf'id="{link}"[^>]*href="([^"]*)"', dom) or re.search(
        rf'href="([^"]*)"[^>]*id="{link}"', dom
    )
    assert href, f"no {link} link in the page"
    data = href.group(1).replace("&amp;", "&")
    assert data.startswith("data:")
    return urllib.parse.unquote(data.split(",", 1)[1])


def test_a_person_plays_the_game_and_the_answers_import(tmp_path: Path) -> None:
    images, _ = colour_coded_images(4, 16, 3)
    result = cluster_maps(tiny_cnn(), images, class_names=CLASSES, progress=False)
    game = write_reveal_game(result, tmp_path / "game.html", max_maps=4)
    page = game.read_text()
    assert "http://" not in page and "https://" not in page, "the page must be self-contained"
    manifest = read_game_manifest(game)
    n_maps = len(manifest["maps"])
    assert 2 <= n_maps <= 4
    wrong = next(c for c in CLASSES if c != manifest["maps"][1]["predicted_name"])
    played = tmp_path / "played.html"
    played.write_text(page.replace("</body>", PLAYER % wrong + "</body>"))

    run = _chromium(tmp_path, played.as_uri(), "--dump-dom")
    assert _console(run.stderr) == []
    dom = run.stdout
    assert 'data-played="yes"' in dom
    assert re.search(r'<div id="play"[^>]*hidden', dom) and not re.search(
        r'<div id="done"[^>]*hidden', dom
    )
    answers_json = tmp_path / "answers.json"
    answers_json.write_text(_download(dom, "download-json"))
    answers_csv = tmp_path / "answers.csv"
    answers_csv.write_text(_download(dom, "download-csv"))

    answers = read_answers(answers_json)
    assert len(answers) == n_maps == len(read_answers(answers_csv, manifest))
    assert all(a["step"] == 5 for a in answers)
    assert [a["correct"] for a in answers] == [i != 1 for i in range(n_maps)]

    labels, out, html = import_reveal_answers(answers_json, game=game)
    assert out.is_file() and html.is_file()
    assert {entry["label"] for entry in labels["labels"]} <= {"red", "stripe"}
    scores = sorted(entry["score"] for entry in labels["labels"])
    assert scores[0] == pytest.approx(0.5 * 0.25)  # the wrong guess at the last step
    assert scores[-1] == pytest.approx(0.5)  # right guesses at the last step
    assert json.loads(out.read_text())["by_layer"]["layers"] == sorted(
        {m["layer"] for m in manifest["maps"]}, key=result.layers.index
    )


def test_the_layer_report_is_self_contained_and_every_map_image_shows(tmp_path: Path) -> None:
    images, _ = colour_coded_images(3, 16, 3)
    result = cluster_maps(tiny_cnn(), images, class_names=CLASSES, progress=False)
    records = [
        {
            "image": m.image,
            "layer": m.layer,
            "depth": m.depth,
            "predicted": result.class_name(int(result.predictions[m.image])),
            "label": f"concept {m.rank}",
            "score": m.weight,
        }
        for m in result.maps
    ]
    section = layer_explanation_section(layer_explanation(records), result, sample_images=2)
    path = write_layer_report(tmp_path / "layers.html", section)
    text = path.read_text()
    parser = _Resources()
    parser.feed(text)
    assert [u for u in parser.urls if not u.startswith("data:image/")] == []
    shown = len([m for m in result.maps if m.image in sorted({m.image for m in result.maps})[:2]])
    assert text.count("<img ") == shown > 0
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"))
    console = _console(_chromium(tmp_path, probed.as_uri(), "--dump-dom").stderr)
    assert not [line for line in console if "ok image" not in line]
    assert len(console) == shown
