"""The command line: every command end to end (in process), and bad input -> exit 2, one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retrofit.cli import main
from retrofit.datasets import SyntheticConceptDataset
from retrofit.datasets.folders import to_pil

SMALL = ["--n-features", "12", "--per-class", "3"]


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "demo"
    cache = out.parent / "cache"
    code = main(
        [
            "--quiet",
            "demo",
            "--out",
            str(out),
            "--cache-dir",
            str(cache),
            "--train-images",
            "400",
            "--test-images",
            "100",
            "--time-limit",
            "10",
            "--max-pixel-images",
            "4",
            *SMALL,
        ]
    )
    assert code == 0
    return out


def test_demo_exports_a_model_and_a_report(
    demo_export: Path, capsys: pytest.CaptureFixture
) -> None:
    for name in (
        "model.safetensors",
        "backbone.safetensors",
        "retrofit_config.json",
        "README.md",
        "report.html",
    ):
        assert (demo_export / name).is_file(), name
    config = json.loads((demo_export / "retrofit_config.json").read_text())
    assert len(config["class_names"]) == 50 and len(config["features"]) == 12


def _image(tmp_path: Path) -> Path:
    image, _ = SyntheticConceptDataset(1, split="test")[0]
    path = tmp_path / "image.png"
    to_pil(image).save(path)
    return path


def test_explain_prints_and_writes_json(
    demo_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = _image(tmp_path)
    assert main(["explain", str(demo_export), str(image)]) == 0
    assert "class_" in capsys.readouterr().out
    assert main(["explain", str(demo_export), str(image), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed[0]["image"] == str(image) and "features" in parsed[0]


def test_check_passes_fails_on_thresholds_and_report_rebuilds(demo_export: Path) -> None:
    common = ["--max-pixel-images", "2"]
    assert main(["--quiet", "check", str(demo_export), "--data", "synthetic:test:60", *common]) == 0
    assert (
        main(
            [
                "--quiet",
                "check",
                str(demo_export),
                "--data",
                "synthetic:test:60",
                "--min-accuracy",
                "1.01",
                *common,
                *["--consistency", "--consistency-perturbation", "swap"],
                *["--consistency-images", "8", "--max-consistency-flip-rate", "1"],
            ]
        )
        == 1
    )
    consistency = json.loads((demo_export / "report.json").read_text())["consistency"]
    assert consistency["interpretable"]["perturbation"] == "background swap (diffuse-filled)"
    (demo_export / "report.html").unlink()
    assert main(["--quiet", "report", str(demo_export), *common]) == 0
    assert (demo_export / "report.html").is_file()


def test_convert_a_torchvision_model_on_an_image_folder(tmp_path: Path) -> None:
    from retrofit.datasets.folders import synthetic_image_folder

    train = synthetic_image_folder(tmp_path / "train", n_images=60, n_classes=10, image_size=32)
    out = tmp_path / "out"
    args = [
        "--quiet",
        "convert",
        "--model",
        "torchvision:resnet18",
        "--num-classes",
        "10",
        "--train",
        str(train),
        "--out",
        str(out),
        "--image-size",
        "32",
        "--n-features",
        "8",
        "--per-class",
        "2",
        "--finetune",
        "none",
        "--time-limit",
        "5",
        "--include-backbone",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(args) == 0
    assert (out / "model.safetensors").is_file()
    assert main(args) == 2, "a non-empty output folder needs --overwrite"
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["convert", "--model", "nonsense", "--train", "synthetic", "--out", "x"],
            "Cannot parse model spec",
        ),
        (
            ["convert", "--model", "demo", "--train", "/no/such/folder", "--out", "{tmp}/o"],
            "is not a folder",
        ),
        (["explain", "/no/such/export", "a.png"], "is not a folder"),
        (["check", "/no/such/export", "--data", "synthetic"], "is not a folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unreadable_image_and_bad_numbers(demo_export: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    assert main(["explain", str(demo_export), str(broken)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--n-features", "-3"])
    assert exit_info.value.code == 2


def test_installed_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "retrofit.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "convert" in result.stdout


def test_convert_reads_typed_settings_from_a_config_file(tmp_path: Path, capsys) -> None:
    """--config: every typed setting reaches the conversion; flags given on the command line
    win over the file; a misspelt setting is one line and exit 2."""
    from retrofit.config import RetrofitConfig
    from retrofit.datasets.folders import synthetic_image_folder
    from retrofit.export import read_config

    train = synthetic_image_folder(tmp_path / "train", n_images=40, n_classes=10, image_size=32)
    settings = RetrofitConfig(
        method="sparse", n_features=6, per_class=2, dense={"l2": 0.02}, qpm={"candidates": 30}
    ).save_pretrained(tmp_path / "settings")
    base = ["--quiet", "convert", "--model", "torchvision:resnet18", "--num-classes", "10"]
    base += ["--train", str(train), "--image-size", "32", "--finetune", "none"]
    base += ["--config", str(settings), "--cache-dir", str(tmp_path / "cache")]
    assert main([*base, "--out", str(tmp_path / "a"), "--per-class", "3"]) == 0
    stored = read_config(tmp_path / "a")["config"]
    assert (stored["method"], stored["n_features"], stored["per_class"]) == ("sparse", 6, 3)
    assert stored["dense"] == {"l2": 0.02} and stored["qpm"]["candidates"] == 30
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "sparse", "qpm": {"canddates": 3}}))
    capsys.readouterr()
    argv = [*base[:-4], "--config", str(bad), "--out", str(tmp_path / "b")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean 'candidates'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b" / "model.safetensors").exists()
