"""Every example runs offline in its --tiny mode and leaves a loadable export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import retrofit

pytestmark = pytest.mark.slow  # every example end to end, in subprocesses

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CASES = {
    "torchvision": ["torchvision_imagefolder.py", "--tiny"],
    "hf_resnet": ["hf_convert.py", "--tiny", "resnet"],
    "hf_vit": ["hf_convert.py", "--tiny", "vit"],
    "timm": ["timm_convert.py", "--tiny"],
}


@pytest.mark.parametrize("script", ["load_and_explain.py", "clip_naming.py"])
def test_explain_and_naming_examples_run_offline(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--tiny"],
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = "class_" if script == "load_and_explain.py" else "feature "
    assert expected in result.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_example_runs_offline_and_exports(case: str, tmp_path: Path) -> None:
    script, *flags = CASES[case]
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *flags, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "saved the interpretable model" in result.stdout
    assert (out / "model.safetensors").is_file() and (out / "retrofit_config.json").is_file()
    imodel = retrofit.load(out)
    assert imodel.num_classes == 10
    assert imodel(torch.rand(2, 3, 64, 64)).shape == (2, 10)
