"""The repair from the command line: --masks DIR (mask images matched to the ImageFolder's images
by name) for `retrofit convert --reweight counterfactual` and `retrofit check`, and the one-line
errors when masks are missing or do not match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from retrofit.cli import main
from retrofit.datasets.folders import to_pil
from retrofit.datasets.spurious import SpuriousBackgroundDataset
from retrofit.datasets.spurious_classifier import spurious_world_settings

FACTORY = """
from retrofit.datasets.spurious_classifier import load_spurious_classifier


def build():
    return load_spurious_classifier("spurious")
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("repair_cli")
    world = spurious_world_settings()
    data = SpuriousBackgroundDataset(
        96, split="train", background="spurious", n_classes=world["n_classes"],
        image_size=world["image_size"], seed=0,
    )  # fmt: skip
    for index in range(len(data)):
        image, label = data[index]
        name = f"{int(label)}_{data.class_names[int(label)]}"  # folders sort in class order
        for kind, picture in (
            ("train", to_pil(image)),
            ("masks", Image.fromarray(data.mask(index).numpy().astype("uint8") * 255)),
        ):
            (root / kind / name).mkdir(parents=True, exist_ok=True)
            picture.save(root / kind / name / f"{index:04d}.png")
    (root / "factory.py").write_text(FACTORY)
    return {"root": root, "train": root / "train", "masks": root / "masks"}


def _convert(folders: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--quiet", "convert", "--model", f"python:{folders['root'] / 'factory.py'}:build",
        "--train", str(folders["train"]), "--out", str(out), "--method", "qsenn",
        "--n-features", "16", "--per-class", "4", "--image-size", "32", "--finetune", "none",
        "--include-backbone", *extra,
    ]  # fmt: skip


def test_convert_repairs_with_a_mask_folder_and_check_reports_reliance(folders, tmp_path) -> None:
    out = tmp_path / "repaired"
    args = _convert(folders, out, "--reweight", "counterfactual", "--masks", str(folders["masks"]))
    assert main([*args, "--reweight-images", "96", "--reweight-copies", "1"]) == 0
    config = json.loads((out / "retrofit_config.json").read_text())["config"]
    assert config["reweight"] == "counterfactual" and config["reweight_copies"] == 1
    check = ["--quiet", "check", str(out), "--data", str(folders["train"]), "--image-size", "32"]
    check.append("--trust-remote-code")  # the export names the python: factory above
    code = main([*check, "--masks", str(folders["masks"]), "--max-pixel-images", "2"])
    assert code in (0, 1)  # thresholds may fail; the report is what is checked
    reliance = json.loads((out / "report.json").read_text())["background_reliance"]
    assert len(reliance["reliance"]) == 16 and reliance["n_images"] == 96


def test_missing_or_mismatched_masks_get_one_line(folders, tmp_path, capsys) -> None:
    out = tmp_path / "never"
    assert main(_convert(folders, out, "--reweight", "counterfactual")) == 2
    assert "needs the objects: pass --masks DIR" in capsys.readouterr().err
    partial = tmp_path / "partial"
    for path in sorted(folders["masks"].rglob("*.png"))[1:]:
        target = partial / path.relative_to(folders["masks"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    args = _convert(folders, out, "--reweight", "counterfactual", "--masks", str(partial))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "has no mask for 1 of the 96 images" in err and len(err.strip().splitlines()) == 1
    assert main(_convert(folders, out, "--masks", str(folders["masks"]))) == 2
    assert "needs --reweight (consistency or counterfactual)" in capsys.readouterr().err
    assert not out.exists()
