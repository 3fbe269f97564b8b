"""Hostile and odd files users hand the CLI: truncated images, weights that are not safetensors
or do not fit, a plain local transformers folder, names that would break the model card.
Every refusal is a RetrofitError (CLI: exit 2, one line on stderr)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from retrofit.cli import main
from retrofit.datasets.folders import BadImageError, write_image_folder
from retrofit.errors import DataError, UntrustedCodeError, WeightsFileError
from retrofit.io.data_specs import open_data
from tests.tiny import colour_coded_images

CONVERT = [
    "--quiet",
    "convert",
    "--model",
    "torchvision:resnet18",
    "--num-classes",
    "3",
    "--image-size",
    "32",
    "--n-features",
    "4",
    "--per-class",
    "2",
    "--finetune",
    "none",
    "--time-limit",
    "5",
    "--batch-size",
    "16",
]


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def folder_with_bad_images(tmp_path: Path) -> tuple[Path, list[Path]]:
    images, labels = colour_coded_images(24, 32, 3)
    root = write_image_folder(list(zip(images, labels)), tmp_path / "train", ["r", "g", "b"])
    first = sorted(root.glob("*/*.png"))
    png = first[0]
    _truncate(png)  # OSError: Truncated File Read / image file is truncated
    jpeg = first[1].with_suffix(".jpg")
    Image.open(first[1]).save(jpeg, quality=90)
    first[1].unlink()
    _truncate(jpeg, 0.4)
    garbage = first[2].with_suffix(".png")
    garbage.write_bytes(b"\x89PNG not really")  # UnidentifiedImageError
    return root, [png, jpeg, garbage]


# ------------------------------------------------------------------- item 1: bad image files


def test_a_truncated_image_is_named_in_one_line(folder_with_bad_images, tmp_path, capsys) -> None:
    root, bad = folder_with_bad_images
    argv = [*CONVERT, "--train", str(root), "--out", str(tmp_path / "out")]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    err = _one_line_error(capsys, argv)
    assert "is not a readable image" in err and "--skip-bad-images" in err
    assert any(str(path) in err for path in bad), err


def test_open_data_names_the_bad_file_and_can_skip_it(folder_with_bad_images, caplog) -> None:
    root, bad = folder_with_bad_images
    dataset = open_data(str(root), None)
    with pytest.raises(BadImageError, match="truncated|not a readable image") as caught:
        for index in range(len(dataset)):
            dataset[index]
    assert any(str(path) in str(caught.value) for path in bad)
    with caplog.at_level(logging.WARNING):
        skipping = open_data(str(root), None, skip_bad_images=True)
    assert sorted(skipping.skipped) == sorted(map(str, bad))
    assert len(skipping) == len(dataset) - 3 and len(skipping.targets) == len(skipping)
    assert "skipped 3 unreadable images" in caplog.text
    for index in range(len(skipping)):
        skipping[index]


def test_all_images_bad_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="none of its 1 images"):
        open_data(str(tmp_path), None, skip_bad_images=True)


def test_convert_skips_bad_images_and_counts_them(
    folder_with_bad_images, tmp_path, capsys, caplog
) -> None:
    root, _ = folder_with_bad_images
    argv = [*CONVERT, "--train", str(root), "--out", str(tmp_path / "out")]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--skip-bad-images"]
    with caplog.at_level(logging.WARNING):  # the CLI logs warnings to stderr, one line each
        assert main(argv) == 0, capsys.readouterr().err
    lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"skipped 3 unreadable images in {root}")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_user_dataset_with_a_truncated_file_is_a_data_error(folder_with_bad_images) -> None:
    from torchvision.datasets import ImageFolder

    from retrofit.extraction.loaders import as_batches, iterate

    root, bad = folder_with_bad_images
    with pytest.raises(DataError, match="cannot be read") as caught:
        for _ in iterate(as_batches(ImageFolder(str(root)), batch_size=8)):
            pass
    assert any(str(path) in str(caught.value) for path in bad)


# ------------------------------------------------------------------- item 2: --weights files


def test_weights_that_are_not_safetensors(tmp_path: Path, capsys) -> None:
    text = tmp_path / "weights.safetensors"
    text.write_text("this is a text file, not a safetensors file\n" * 10)
    argv = [*CONVERT, "--train", "synthetic:train:8", "--out", str(tmp_path / "out")]
    err = _one_line_error(capsys, [*argv, "--weights", str(text)])
    assert str(text) in err and "not a readable safetensors file" in err
    err = _one_line_error(capsys, [*argv, "--weights", str(tmp_path)])
    assert "is a folder" in err


def test_weights_whose_keys_do_not_fit_name_them(tmp_path: Path, capsys) -> None:
    import torchvision

    from retrofit.io.specs import load_weights

    state = torchvision.models.resnet18(num_classes=3).state_dict()
    wrong = tmp_path / "wrong.safetensors"
    save_file(
        {("module." + k if k.startswith("layer1") else k): v for k, v in state.items()}, wrong
    )
    argv = [*CONVERT, "--train", "synthetic:train:8", "--out", str(tmp_path / "out")]
    err = _one_line_error(capsys, [*argv, "--weights", str(wrong)])
    assert str(wrong) in err and "missing" in err and "unexpected" in err
    assert "layer1.0.bn1.bias" in err and "module.layer1.0.bn1.bias" in err
    prefixed = tmp_path / "prefixed.safetensors"
    save_file({"module." + k: v for k, v in state.items()}, prefixed)
    with pytest.raises(WeightsFileError, match="starts with 'module.'"):
        load_weights(torchvision.models.resnet18(num_classes=3), str(prefixed))
    wide = tmp_path / "wide.safetensors"
    save_file(torchvision.models.resnet18(num_classes=5).state_dict(), wide)
    with pytest.raises(WeightsFileError, match="of another shape 2 .*--num-classes"):
        load_weights(torchvision.models.resnet18(num_classes=3), str(wide))
    good = tmp_path / "good.safetensors"
    save_file(state, good)
    model = load_weights(torchvision.models.resnet18(num_classes=3), str(good))
    assert torch.equal(model.fc.weight, state["fc.weight"])


# ----------------------------------------------------- item 3: a plain local transformers folder


def _tiny_hf_folder(path: Path) -> Path:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=3,
    )
    torch.manual_seed(0)
    ResNetForImageClassification(config).eval().save_pretrained(path)
    return path


def _hf_spec(folder: Path):
    from retrofit.io.specs import parse_spec

    return parse_spec(f"hf:{folder}")


def test_a_plain_local_transformers_folder_needs_no_trust(tmp_path: Path) -> None:
    from retrofit.io.trust import check_spec

    folder = _tiny_hf_folder(tmp_path / "hf")
    assert (folder / "model.safetensors").is_file()
    check_spec(_hf_spec(folder), False, pretrained=True, where="export")


@pytest.mark.parametrize(
    "poison,reason",
    [
        (lambda f: (f / "modeling_evil.py").write_text("import os\n"), "Python file"),
        (
            lambda f: (f / "config.json").write_text(
                json.dumps({**json.loads((f / "config.json").read_text()), "auto_map": {}})
            ),
            "auto_map",
        ),
        (lambda f: torch.save({"x": torch.zeros(1)}, f / "pytorch_model.bin"), "pickle"),
        (lambda f: (f / "model.safetensors").unlink(), "safetensors"),
        (lambda f: (f / "config.json").unlink(), "config.json"),
    ],
)
def test_a_local_folder_that_could_run_code_still_needs_trust(tmp_path, poison, reason) -> None:
    from retrofit.io.trust import check_spec

    folder = _tiny_hf_folder(tmp_path / "hf")
    poison(folder)
    with pytest.raises(UntrustedCodeError, match=reason):
        check_spec(_hf_spec(folder), False, pretrained=True, where="export")
    check_spec(_hf_spec(folder), True, pretrained=True, where="export")


def test_explain_an_export_of_a_local_transformers_folder(tmp_path: Path, capsys) -> None:
    import retrofit
    from retrofit.io.specs import build_model

    folder = _tiny_hf_folder(tmp_path / "hf")
    model = build_model(f"hf:{folder}").eval()
    images = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(24) % 3
    imodel = retrofit.convert(
        model, [(images, labels)], method="sparse", n_features=4, per_class=2, progress=False
    )
    export = imodel.save_pretrained(tmp_path / "export", base_model=f"hf:{folder}")
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    assert main(["explain", str(export), str(image), "--image-size", "32"]) == 0, (
        capsys.readouterr().err
    )
    assert "==" in capsys.readouterr().out
    (folder / "modeling_evil.py").write_text("raise SystemExit('ran')\n")
    err = _one_line_error(capsys, ["explain", str(export), str(image)])
    assert "--trust-remote-code" in err and "modeling_evil.py" in err


# ------------------------------------------------------------------- item 4: the model card


def test_model_card_escapes_names_and_says_when_trust_is_needed(tmp_path: Path) -> None:
    import retrofit

    factory = tmp_path / "factory.py"
    factory.write_text(
        "from torch import nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(8, 3))\n"
    )
    from retrofit.io.specs import build_model

    spec = f"python:{factory}:build"
    model = build_model(spec).eval()
    images, labels = colour_coded_images(24, 16, 3)
    names = ["<script>alert(1)</script>", "a|b", "**x**"]
    imodel = retrofit.convert(
        model,
        [(images, labels)],
        method="sparse",
        n_features=4,
        per_class=2,
        class_names=names,
        progress=False,
    )
    imodel.concepts[0] = [{"concept": "<img src=x onerror=alert(1)>", "score": 1.0}]
    card_dir = imodel.save_pretrained(tmp_path / "export", include_backbone=True, base_model=spec)
    card = (card_dir / "README.md").read_text()
    assert "<script>" not in card and "&lt;script&gt;" in card
    assert "<img" not in card and "&lt;img" in card
    assert "| a\\|b |" in card and "\\*\\*x\\*\\*" in card and "| **x** |" not in card
    assert "trust_remote_code=True" in card


def test_model_card_without_code_needs_no_trust(tmp_path: Path) -> None:
    from retrofit.export.model_card import loading_needs_trust

    assert not loading_needs_trust({"build": {"family": "bundled", "name": "demo"}}, {})
    assert not loading_needs_trust(
        {"build": {"family": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 3}}},
        {"backbone.safetensors": {}},
    )
    assert loading_needs_trust(
        {"build": {"family": "generic", "name": "f.py", "factory": "build"}},
        {"backbone.safetensors": {}},
    )
