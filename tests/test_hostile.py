"""Hostile exports: every broken or malicious file gives a RetrofitError (CLI: exit 2, one line),
and nothing outside the export folder is read or executed without trust_remote_code=True."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import retrofit
from retrofit.cli import main
from retrofit.errors import RetrofitError, UntrustedCodeError
from retrofit.export.write import file_info
from retrofit.model.interpretable import load
from tests.tiny import colour_coded_images

C = 3

# records every file opened while `_RECORDING` is set (a real audit hook, not a mock)
_RECORDING: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if _RECORDING and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _RECORDING[-1].append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@contextlib.contextmanager
def opened_files() -> Iterator[list[str]]:
    paths: list[str] = []
    _RECORDING.append(paths)
    try:
        yield paths
    finally:
        _RECORDING.pop()


FACTORY = """
import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


def build():
    return SmallCNN()
"""


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return colour_coded_images(24, 16, C)


@pytest.fixture(scope="module")
def exported(data, tmp_path_factory) -> tuple[nn.Module, retrofit.InterpretableModel, Path]:
    from retrofit.io.specs import build_model

    root = tmp_path_factory.mktemp("hostile")
    (root / "factory.py").write_text(FACTORY)
    spec = f"python:{root / 'factory.py'}:build"
    model = build_model(spec).eval()
    imodel = retrofit.convert(
        model,
        [data],
        method="qsenn",
        n_features=4,
        per_class=2,
        epochs=1,
        rounds=1,
        linear_mix=False,
        progress=False,
    )
    imodel.pair_concepts[(0, 1)] = {"concept": "red here"}
    folder = imodel.save_pretrained(root / "export", include_backbone=True, base_model=spec)
    return model, imodel, folder


@pytest.fixture
def victim(exported, tmp_path) -> Path:
    """A fresh copy of the export inside tmp_path/home, next to a secret it must not read."""
    (tmp_path / "secret.txt").write_text("do not read")
    return Path(shutil.copytree(exported[2], tmp_path / "home" / "export"))


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "retrofit_config.json").read_text())


def _write_config(folder: Path, config: Any, raw: str | None = None) -> None:
    text = raw if raw is not None else json.dumps(config)
    (folder / "retrofit_config.json").write_bytes(text.encode("utf-8", "surrogateescape"))


def _edit(folder: Path, edit) -> None:
    config = _config(folder)
    edit(config)
    _write_config(folder, config)


def _assert_refused_inside(folder: Path, error: type = RetrofitError, **kwargs) -> str:
    """Loading fails with `error`, having opened no file outside the export folder."""
    inside = str(folder.resolve())
    with opened_files() as paths, pytest.raises(error) as caught:
        load(folder, **kwargs)
    outside = [
        p
        for p in paths
        if not os.path.abspath(p).startswith(inside)
        and "site-packages" not in p
        and not p.startswith(("/usr", "/proc", "/dev", "/sys"))
    ]
    assert not outside, f"opened outside the export: {outside}"
    return str(caught.value)


# ------------------------------------------------------------------------ consent before code


def _set_build(folder: Path, **build: Any) -> None:
    base = {"spec": "", "weights": None, "revision": None, "factory": None, "kwargs": {}}
    _edit(folder, lambda c: c["base_model"].update(build={**base, "arch_config": None, **build}))


def test_a_python_spec_is_never_run_without_consent(victim, tmp_path, monkeypatch) -> None:
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "def build():\n    raise SystemExit('factory called')\n"
    )
    for name in (str(tmp_path / "evil.py"), "../../evil.py", "evil.py"):
        _set_build(victim, family="generic", name=name, factory="build")
        monkeypatch.chdir(tmp_path)
        message = _assert_refused_inside(victim, UntrustedCodeError)
        assert "trust_remote_code=True" in message and "evil.py" in message
        assert not marker.exists(), f"{name} was executed"
    err = _cli_error(["explain", str(victim), str(tmp_path / "evil.py")])
    assert "--trust-remote-code" in err and not marker.exists()
    with pytest.raises(SystemExit, match="factory called"):
        load(victim, trust_remote_code=True)
    assert marker.read_text() == "ran", "with consent the factory file does run"


@pytest.mark.parametrize(
    "build,reason",
    [
        (
            {"family": "timm", "name": "resnet18", "kwargs": {"checkpoint_path": "/etc/passwd"}},
            "checkpoint_path",
        ),
        (
            {
                "family": "timm",
                "name": "resnet18",
                "kwargs": {"pretrained_cfg_overlay": {"file": "x"}},
            },
            "pretrained_cfg_overlay",
        ),
        ({"family": "timm", "name": "local-dir:/etc"}, "local folder"),
        ({"family": "transformers", "name": "/etc"}, "local model folder"),
        ({"family": "transformers", "name": "../../secret"}, "local model folder"),
        (
            {
                "family": "transformers",
                "name": "org/model",
                "arch_config": {"model_type": "vit", "auto_map": {}},
            },
            "custom code",
        ),
        (
            {
                "family": "open_clip",
                "name": "ViT-B-32",
                "weights": "/etc/passwd",
                "kwargs": {"num_classes": 3, "embed_dim": 8},
            },
            "checkpoint file",
        ),
        (
            {
                "family": "torchvision",
                "name": "resnet18",
                "kwargs": {"weights": "x", "num_classes": 3},
            },
            "weights",
        ),
    ],
)
def test_specs_that_read_files_or_run_code_need_consent(victim, build, reason) -> None:
    _set_build(victim, **build)
    _edit(victim, lambda c: c["files"].pop("backbone.safetensors"))  # weights from the spec
    message = _assert_refused_inside(victim, UntrustedCodeError)
    assert reason in message and "trust_remote_code=True" in message


@pytest.mark.parametrize(
    "build",
    [
        {"family": "timm", "name": "resnet18", "kwargs": {"num_classes": "3"}},
        {"family": "timm", "name": "resnet18", "kwargs": {"img_size": [10**9, 3]}},
        {"family": "timm", "name": "resnet18", "kwargs": ["num_classes"]},
        {"family": "timm", "name": "resnet18", "kwargs": "num_classes=3"},
        {
            "family": "open_clip",
            "name": "x",
            "kwargs": {"num_classes": 3, "embed_dim": 8, "logit_scale": -1},
        },
        {"family": "torchvision", "name": "../resnet18"},
        {"family": "torchvision", "name": "resnet18", "weights": "NOT/A/TAG"},
        {"family": "torchvision", "name": "no_such_net"},
        {"family": "bundled", "name": "nope"},
        {"family": "martian", "name": "x"},
        {"family": "generic", "name": "x.py", "factory": "not an identifier"},
    ],
)
def test_malformed_build_specs_are_schema_errors_even_when_trusted(victim, build) -> None:
    _set_build(victim, **build)
    _assert_refused_inside(victim, retrofit.ExportError, trust_remote_code=True)


def test_registry_names_never_count_as_paths_but_local_files_do(tmp_path, monkeypatch) -> None:
    from retrofit.io.specs import parse_spec
    from retrofit.io.trust import check_spec

    monkeypatch.chdir(tmp_path)
    for name in ("resnet18", "laion2b", "org"):
        (tmp_path / name).mkdir()
    check_spec(parse_spec("torchvision:resnet18:IMAGENET1K_V1"), False, True, "here")
    check_spec(parse_spec("timm:hf-hub:timm/resnet18.a1_in1k"), False, True, "here")
    check_spec(parse_spec("hf:google/vit-base-patch16-224"), False, True, "here")
    clip = parse_spec("open_clip:ViT-B-32:laion2b")
    clip.kwargs = {"num_classes": 3, "embed_dim": 8}
    for spec in (clip, parse_spec("hf:org")):  # these would read the local folder
        with pytest.raises(UntrustedCodeError):
            check_spec(spec, False, True, "here")
        check_spec(spec, True, True, "here")


def test_the_demo_spec_is_portable(tmp_path) -> None:
    from retrofit.io.specs import build_model, describe_model, parse_spec

    spec = parse_spec("retrofit:demo")
    model = build_model(spec)
    assert str(describe_model(model, "retrofit:demo")) == "retrofit:demo"
    assert model.fc.out_features == 50


# ---------------------------------------------------------------------- paths and structure


def test_files_outside_the_export_are_never_opened(victim, tmp_path) -> None:
    info = {"bytes": 11, "sha256": "0" * 64}
    for name in ("../../secret.txt", str(tmp_path / "secret.txt"), "sub/../../x", "..", ""):
        _edit(victim, lambda c, n=name: c["files"].update({n: info}))
        assert "plain files inside" in _assert_refused_inside(victim)
        _edit(victim, lambda c, n=name: c["files"].pop(n))
    (victim / "backbone.safetensors").unlink()
    os.symlink(tmp_path / "secret.txt", victim / "backbone.safetensors")
    _edit(victim, lambda c: c["files"].update({"backbone.safetensors": info}))
    assert "symlink that leaves" in _assert_refused_inside(victim)


def test_a_symlinked_config_or_tensor_file_is_refused(victim, tmp_path) -> None:
    for name in ("retrofit_config.json", "model.safetensors"):
        moved = tmp_path / f"moved-{name}"
        shutil.copy(victim / name, moved)
        (victim / name).unlink()
        os.symlink(moved, victim / name)
        assert "symlink that leaves" in _assert_refused_inside(victim)
        (victim / name).unlink()
        shutil.copy(moved, victim / name)


@pytest.mark.parametrize(
    "raw,message",
    [
        ("[" * 100_000 + "]" * 100_000, "deep"),
        ('{"a":' * 60 + "1" + "}" * 60, "deeper than"),
        ('{"schema_version": NaN}', "not valid JSON"),
        ('{"schema_version": 2' + ', "x": 1' * 10 + "}", "required key"),
        ("1" * 5000, "not valid JSON"),
        ('"\udcff"', "not valid JSON"),
    ],
)
def test_pathological_json(victim, raw, message, exported) -> None:
    _write_config(victim, None, raw)
    with pytest.raises(RetrofitError, match=message):
        load(victim, model=exported[0])


def test_a_huge_config_is_refused_before_parsing(victim, exported) -> None:
    with open(victim / "retrofit_config.json", "wb") as handle:
        handle.truncate(65 << 20)
    with pytest.raises(retrofit.ExportSchemaError, match="more than"):
        load(victim, model=exported[0])


def _rewrite_tensors(folder: Path, edit) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    info = file_info(folder / "model.safetensors")
    _edit(folder, lambda c: c["files"].update({"model.safetensors": info}))


@pytest.mark.parametrize(
    "name,value",
    [
        ("bottleneck.mean", float("nan")),
        ("bottleneck.log_std", float("inf")),
        ("bottleneck.log_std", 1000.0),
        ("head.bias", float("-inf")),
        ("head.scale", float("nan")),
    ],
)
def test_non_finite_tensors_are_refused(victim, exported, name, value) -> None:
    def poison(tensors):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = value

    _rewrite_tensors(victim, poison)
    with pytest.raises(retrofit.ExportSchemaError, match=name):
        load(victim, model=exported[0])


# ------------------------------------------------------------------------------ fuzzing


HOSTILE_VALUES = [None, True, -1, 10**30, 1.5, "x" * 70_000, "", [], {}, [[1]], {"a": {"b": []}}]


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path into a JSON value, taking only the first item of each list."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list) and value:
        yield from _paths(value[0], (*prefix, 0))


def _replace(config: Any, path: tuple, value: Any) -> Any:
    config = copy.deepcopy(config)
    if not path:
        return value
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return config


def test_fuzzing_every_config_field_gives_a_retrofit_error_or_the_same_model(
    victim, exported, data
) -> None:
    model, imodel, _ = exported
    original = _config(victim)
    with torch.no_grad():
        expected = imodel(data[0][:4])
    paths = list(_paths(original))
    assert len(paths) > 60
    loaded_fine = 0
    for path in paths:
        for value in HOSTILE_VALUES:
            _write_config(victim, _replace(original, path, value))
            try:
                loaded = load(victim, model=model)
            except RetrofitError:
                continue
            except Exception as error:  # noqa: BLE001 - the point of the test
                pytest.fail(f"config{list(path)} = {value!r:.40}: {type(error).__name__}: {error}")
            with torch.no_grad():
                try:
                    logits = loaded(data[0][:4])
                except Exception as error:  # noqa: BLE001 - the point of the test
                    pytest.fail(f"config{list(path)} = {value!r:.40} loads but fails: {error}")
            assert torch.equal(logits, expected), f"config{list(path)} = {value!r:.40}"
            loaded_fine += 1
    assert loaded_fine > 0, "free-form fields (stats, versions) may hold anything"


def _header(folder: Path) -> tuple[dict[str, Any], bytes]:
    raw = (folder / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _write_raw(folder: Path, header: Any, body: bytes, length: int | None = None) -> None:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    raw = struct.pack("<Q", len(text) if length is None else length) + text + body
    (folder / "model.safetensors").write_bytes(raw)
    info = file_info(folder / "model.safetensors")
    _edit(folder, lambda c: c["files"].update({"model.safetensors": info}))


def test_fuzzing_the_safetensors_header(victim, exported) -> None:
    header, body = _header(victim)
    name = "head.bias"
    cases: list[tuple[Any, bytes, int | None]] = [
        (header, body, 1 << 62),
        (header, body, len(json.dumps(header)) + 10),
        (b"\xff\xfe not json", body, None),
        (b"[1, 2]", body, None),
        (header, body[:-4], None),
        (header, body + b"\0" * 8, None),
        ({**header, "__metadata__": {"format": 5}}, body, None),
    ]
    for field, values in {
        "dtype": ["F99", None, 3, "I8"],
        "shape": [[-1], [1 << 50], "3", [[3]], [3, 3, 3, 3, 3, 3, 3, 3, 3]],
        "data_offsets": [[0], [5, 1], [-4, 8], "0,12", [0, 1 << 60]],
    }.items():
        for value in values:
            entry = {**header[name], field: value}
            cases.append(({**header, name: entry}, body, None))
    cases.append(({**header, "extra": header[name]}, body, None))
    cases.append(({k: v for k, v in header.items() if k != name}, body, None))
    for hostile, raw_body, length in cases:
        _write_raw(victim, hostile, raw_body, length)
        with pytest.raises(retrofit.ExportError):
            load(victim, model=exported[0])


# ------------------------------------------------------------------------------ the CLI


def _cli_error(argv: list[str]) -> str:
    capture = __import__("io").StringIO()
    with contextlib.redirect_stderr(capture):
        code = main(argv)
    err = capture.getvalue().strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["stats"].update(input_size="224"),
        lambda c: c["stats"].update(input_size=[10**9]),
        lambda c: c["base_model"]["layer"].update(heads=None),
        lambda c: c["base_model"]["layer"].update(heads=[["fc"]]),
        lambda c: c["base_model"].update(build=[1, 2]),
        lambda c: c["files"].update({"../secret.txt": {"bytes": 1, "sha256": "0" * 64}}),
        lambda c: c.update(pairs=[{"class": 99, "feature": 0, "concept": "x"}]),
        lambda c: c.update(pairs=[{"class": 0, "feature": 0}]),
    ],
)
def test_cli_on_a_hostile_export_is_one_line_and_exit_2(victim, tmp_path, edit, data) -> None:
    from retrofit.datasets.folders import to_pil

    image = tmp_path / "image.png"
    to_pil(data[0][0]).save(image)
    trusted = ["explain", str(victim), str(image), "--trust-remote-code"]
    with contextlib.redirect_stdout(__import__("io").StringIO()):
        assert main(trusted) == 0, "the unedited export works from the CLI"
    _edit(victim, edit)
    _cli_error(trusted)
    _cli_error(["check", str(victim), "--data", "synthetic:test:4", "--trust-remote-code"])


def test_a_decompression_bomb_image_is_one_line_and_exit_2(victim, tmp_path, monkeypatch) -> None:
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (64, 64)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: a "bomb"
    err = _cli_error(["explain", str(victim), str(bomb), "--trust-remote-code"])
    assert "cannot read image" in err and "decompression bomb" in err


def test_names_from_an_export_are_escaped_in_the_html_report(
    victim, exported, data, tmp_path
) -> None:
    script = "<script>alert(1)</script>"

    def inject(config):
        config["class_names"][0] = script
        config["features"][0]["concepts"] = [{"concept": script}]

    _edit(victim, inject)
    imodel = load(victim, model=exported[0])
    assert imodel.class_names[0] == script and imodel.feature_name(0) == script
    report = retrofit.check(
        imodel, [data], max_pixel_images=2, ig_steps=2, curve_steps=2, perturb_samples=2
    )
    page = report.to_html(tmp_path / "report.html").read_text()
    assert "alert(1)" in page and script not in page


def test_report_does_not_read_data_an_export_names(victim, tmp_path) -> None:
    (victim / "report.json").write_text(json.dumps({"meta": {"data": str(tmp_path)}}))
    assert "outside the export" in _cli_error(["report", str(victim)])
    (victim / "report.json").write_text("[]")
    assert "does not record" in _cli_error(["report", str(victim)])
