"""Distributed extraction on CPU: 2 Gloo processes (forked, bound to 127.0.0.1) share one cache."""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

import retrofit
from retrofit.adapters import adapter_for
from retrofit.errors import ConfigError
from retrofit.features import extract
from tests.gloo import free_port, join_gloo
from tests.test_convert import SmallCNN
from tests.tiny import colour_coded_images

BATCH = 8
N_BATCHES = 8


def _model(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN().eval()


def _batches(die_before: int | None = None):
    images, labels = colour_coded_images(BATCH * N_BATCHES, 16, 4, bright=3)
    for i in range(N_BATCHES):
        if i == die_before:
            os._exit(3)  # a rank killed mid-extraction: no cleanup, no goodbye
        yield images[i * BATCH : (i + 1) * BATCH], labels[i * BATCH : (i + 1) * BATCH]


def _count_batches(model: nn.Module) -> list[int]:
    """How many full batches the backbone ran on (the layer probe uses 2 images)."""
    counter = [0]

    def hook(module, inputs, output):
        counter[0] += int(inputs[0].shape[0] == BATCH)

    model.register_forward_hook(hook)
    return counter


def _worker(rank: int, world: int, port: int, scenario: str, cache: str, queue) -> None:
    torch.set_num_threads(1)
    report: dict = {"rank": rank}
    try:
        join_gloo(rank, world, port)
        model = _model(seed=1 if scenario == "other_model" and rank == 1 else 0)
        counter = _count_batches(model)
        kwargs: dict = {"cache_dir": cache, "progress": False}
        data = _batches()
        if scenario == "kill" and rank == 1:
            data = _batches(die_before=4)  # rank 1 finished batches 1 and 3
        if scenario == "world_size":
            kwargs["world_size"] = 3
        if scenario == "disk_full" and rank == 1:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (200, resource.RLIM_INFINITY))
        features = extract(model, data, **kwargs)
        report.update(ok=True, computed=counter[0], n=len(features))
        if scenario == "convert":  # the documented pattern: every rank extracts, rank 0 fits
            dist.barrier()
            if rank == 0:
                imodel = retrofit.convert(
                    model,
                    _batches(),
                    cache_dir=cache,
                    distributed=False,
                    n_features=8,
                    per_class=2,
                    finetune="none",
                    progress=False,
                    threads=1,
                )
                report["accuracy"] = imodel.stats["train"]["accuracy"]
            report["computed"] = counter[0]
    except Exception as error:
        report.update(ok=False, error=type(error).__name__, message=str(error))
    queue.put(report)
    if dist.is_initialized():
        dist.destroy_process_group()


def _launch(scenario: str, cache: Path, world: int = 2) -> dict[int, dict]:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    port = free_port()
    procs = [
        context.Process(target=_worker, args=(r, world, port, scenario, str(cache), queue))
        for r in range(world)
    ]
    for proc in procs:
        proc.start()
    reports: dict[int, dict] = {}
    for proc in procs:
        proc.join(timeout=90)
        if proc.is_alive():
            proc.kill()
    while not queue.empty():
        report = queue.get()
        reports[report["rank"]] = report
    return reports


def _store(cache: Path) -> dict[str, torch.Tensor]:
    (pooled,) = cache.glob("*/store/pooled.safetensors")
    return load_file(str(pooled))


def _assert_same_store(cache: Path, reference: Path) -> None:
    ours, theirs = _store(cache), _store(reference)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A single-process extraction (one thread, like the ranks) to compare against."""
    adapter_for(_model())  # import the model-family checks (transformers) once, before forking
    cache = tmp_path_factory.mktemp("single")
    reports = _launch("single", cache, world=1)
    assert reports[0]["ok"] and reports[0]["computed"] == N_BATCHES, reports
    return cache


def test_two_ranks_give_the_single_process_cache_bit_for_bit(tmp_path, reference):
    reports = _launch("plain", tmp_path)
    assert all(reports[r]["ok"] for r in (0, 1)), reports
    assert [reports[r]["computed"] for r in (0, 1)] == [N_BATCHES // 2] * 2  # each its shard
    assert reports[1]["n"] == BATCH * N_BATCHES
    _assert_same_store(tmp_path, reference)
    again = _launch("convert", tmp_path)  # a finished cache is reused by every rank
    assert [again[r]["computed"] for r in (0, 1)] == [0, 0]
    assert 0 <= again[0]["accuracy"] <= 1 and "accuracy" not in again[1]


def test_a_killed_rank_resumes_from_its_finished_chunks(tmp_path, reference):
    killed = _launch("kill", tmp_path)
    assert 1 not in killed and not killed[0]["ok"]  # rank 1 died; rank 0 was told, not hung
    assert not list(tmp_path.glob("*/store"))
    resumed = _launch("plain", tmp_path)
    assert all(resumed[r]["ok"] for r in (0, 1)), resumed
    # rank 0 had finished its 4 batches, rank 1 batches 1 and 3: only 5 and 7 are left
    assert [resumed[r]["computed"] for r in (0, 1)] == [0, 2]
    _assert_same_store(tmp_path, reference)


def test_a_full_disk_on_one_rank_is_a_clear_error_and_resumes(tmp_path, reference):
    failed = _launch("disk_full", tmp_path)
    assert failed[1]["error"] == "CacheError" and "free disk space" in failed[1]["message"]
    assert failed[0]["error"] == "DistributedError" and "Rank 1 failed" in failed[0]["message"]
    assert not list(tmp_path.glob("*/store")) and not list(tmp_path.rglob("*.tmp"))
    resumed = _launch("plain", tmp_path)
    assert [resumed[r]["computed"] for r in (0, 1)] == [0, N_BATCHES // 2]
    _assert_same_store(tmp_path, reference)


@pytest.mark.parametrize(
    ("scenario", "words"),
    [("other_model", "disagrees with rank 0 on model"), ("world_size", "world_size=3")],
)
def test_ranks_that_disagree_fail_on_every_rank(tmp_path, scenario, words):
    reports = _launch(scenario, tmp_path)
    for r in (0, 1):
        assert reports[r]["error"] == "DistributedError", reports
    assert any(words in reports[r]["message"] for r in (0, 1)), reports
    assert not list(tmp_path.glob("*/store"))


def test_distributed_needs_a_process_group_and_a_cache():
    with pytest.raises(ConfigError, match="torchrun"):
        extract(_model(), _batches(), distributed=True, progress=False)
    assert retrofit.RetrofitConfig().cache_dtype == "float32"
