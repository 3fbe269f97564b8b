"""`retrofit reveal` on a real export and `retrofit reveal-import` on its answers (and on bad
ones: exit code 2, a one-line error, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import retrofit
from retrofit.cli import main
from retrofit.io.specs import build_model
from retrofit.web.game import read_game_manifest
from tests.tiny import colour_coded_images

FACTORY_SOURCE = """
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean(dim=(2, 3)))


def build():
    return Net()
"""
CLASSES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def export_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inv_cli")
    factory = root / "net_factory.py"
    factory.write_text(FACTORY_SOURCE)
    spec = f"python:{factory}:build"
    torch.manual_seed(0)
    images, labels = colour_coded_images(30, 32, 3)
    imodel = retrofit.convert(
        build_model(spec).eval(),
        [(images, labels)],
        method="qsenn",
        n_features=6,
        per_class=2,
        epochs=2,
        rounds=1,
        progress=False,
    )
    imodel.class_names = list(CLASSES)
    folder = imodel.save_pretrained(root / "export", include_backbone=True, base_model=spec)
    data = root / "images"
    for i in range(6):
        (data / CLASSES[int(labels[i])]).mkdir(parents=True, exist_ok=True)
        array = (images[i].permute(1, 2, 0).numpy() * 255).astype("uint8")
        Image.fromarray(array).save(data / CLASSES[int(labels[i])] / f"{i}.png")
    return folder, data


def test_reveal_then_import(export_and_data: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    folder, data = export_and_data
    game = tmp_path / "game.html"
    args = ["--quiet", "reveal", str(folder), "--data", str(data), "--out", str(game)]
    args.append("--trust-remote-code")  # the export names a python: factory
    unnamed = ["--quiet", "reveal", str(folder), "--data", str(data), "--trust-remote-code"]
    unnamed += ["--out", str(tmp_path / "other.html"), "--images", "4", "--concepts", "curated"]
    assert main(unnamed) == 2, "these are not the synthetic world: the tiny CLIP is no default"
    assert "open_clip:ViT-B-32" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="synthetic scenes only"):
        assert main([*args, "--images", "4", "--concepts", "curated", "--encoder", "tiny"]) == 0
    summary = json.loads(game.with_suffix(".json").read_text())
    assert len(summary["auto_labels"]) == len(summary["maps"])
    assert set(summary["by_layer"]["classes"]) <= set(CLASSES)
    assert "Concepts by layer" in (tmp_path / "game-layers.html").read_text()
    assert summary["layers"] == ["backbone.stem", "backbone.body"]
    assert {"cluster_maps", "random", "gradcam"} <= set(summary["reveal"])
    manifest = read_game_manifest(game)
    assert manifest["classes"] == list(CLASSES) and manifest["maps"]
    assert main([*args, "--images", "4"]) == 2, "an existing game is not overwritten"
    assert "overwrite" in capsys.readouterr().err

    answers = [
        {
            **{k: m[k] for k in ("image", "layer", "depth")},
            "map": m["id"],
            "predicted": m["predicted_name"],
            "guess": m["predicted_name"],
            "step": 1,
            "text": "red patch",
        }
        for m in manifest["maps"]
    ]
    path = tmp_path / "answers.json"
    path.write_text(json.dumps({"answers": answers}))
    out = tmp_path / "labels.json"
    assert main(["reveal-import", str(path), "--game", str(game), "--out", str(out)]) == 0
    labels = json.loads(out.read_text())
    assert {entry["label"] for entry in labels["labels"]} <= {"red", "patch"}
    assert all(entry["score"] == pytest.approx(0.9) for entry in labels["labels"])


def test_reveal_import_bad_answers_exit_2_and_write_nothing(
    export_and_data: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    answers = tmp_path / "answers.csv"
    answers.write_text("map,image,text\n0:x:0,0,red\n")
    out = tmp_path / "labels.json"
    assert main(["reveal-import", str(answers), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retrofit: error:") and "lacks column" in err and "\n" not in err
    assert not out.exists() and not answers.with_suffix(".labels.html").exists()
    folder, data = export_and_data
    game = tmp_path / "game.html"
    code = main(
        [
            "--quiet",
            "reveal",
            str(folder),
            "--data",
            str(data),
            "--out",
            str(game),
            "--layers",
            "backbone.fc",
            "--trust-remote-code",
        ]
    )
    assert code == 2 and "no spatial grid" in capsys.readouterr().err
    assert not game.exists()
