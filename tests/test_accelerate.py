"""Distributed extraction launched by Hugging Face Accelerate's own launcher (2 CPU processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import retrofit
from tests.gloo import free_port

pytest.importorskip("accelerate", reason="accelerate is not installed (pip install .[test])")
from tests import accelerate_extract as script  # noqa: E402  (it imports accelerate)

pytestmark = pytest.mark.slow  # Accelerate's launcher, two processes

ROOT = Path(__file__).resolve().parents[1]


def _store(cache: Path) -> dict[str, torch.Tensor]:
    (pooled,) = cache.glob("*/store/pooled.safetensors")
    return load_file(str(pooled))


def _single_process(cache: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each rank, so the arithmetic is the same
    try:
        retrofit.extract(script.model(), script.data(), cache_dir=cache, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_accelerate_launch_shards_extraction_into_the_single_process_cache(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),  # no config from the user's home
        "ACCELERATE_CONFIG_FILE": str(tmp_path / "hf" / "none.yaml"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    # --cpu starts one process (Accelerate's CPU multi-process needs mpirun); --multi_gpu runs
    # torchrun, and Accelerator(cpu=True) in the script then makes a Gloo group on the CPU
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
        "-m", "tests.accelerate_extract", str(cache), str(out),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["type"] for r in reports] == ["DistributedType.MULTI_CPU"] * 2
    assert [r["world"] for r in reports] == [2, 2]
    assert [r["computed"] for r in reports] == [script.N_BATCHES // 2] * 2  # each its shard
    assert [r["rows"] for r in reports] == [script.BATCH * script.N_BATCHES] * 2
    for report in reports:
        assert "disagrees with rank 0 on first_batch" in report["prepared"]
        assert "not accelerator.prepare(loader)" in report["prepared"]
    reference = tmp_path / "single"
    _single_process(reference)
    ours, theirs = _store(cache), _store(reference)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name
