"""Distributed extraction on CPU: 2 Gloo processes (forked, bound to 127.0.0.1) share one cache."""

from __future__ import annotations

import logging
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
from torch.utils.data import DataLoader, Dataset, RandomSampler

import retrofit
from retrofit.adapters import adapter_for
from retrofit.errors import ConfigError
from retrofit.extraction.features import PROBE_IMAGES, extract
from retrofit.extraction.rank_batches import loader_over, unsplittable_reason
from tests.gloo import free_port, join_gloo
from tests.test_convert import SmallCNN
from tests.tiny import colour_coded_images

pytestmark = pytest.mark.slow  # two Gloo processes

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


class CountingDataset(Dataset):
    """The colour-coded images, one per item; each process logs the indices it decoded."""

    def __init__(
        self,
        log_dir: str,
        n: int = BATCH * N_BATCHES,
        die_at: int | None = None,
        fail_at: int | None = None,
    ):
        self.images, self.labels = colour_coded_images(BATCH * N_BATCHES, 16, 4, bright=3)
        self.n, self.log_dir, self.die_at, self.fail_at = n, Path(log_dir), die_at, fail_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index == self.die_at:
            os._exit(3)  # a rank killed mid-extraction
        if index == self.fail_at:
            raise ValueError(f"image {index} is truncated")
        rank = dist.get_rank() if dist.is_initialized() else 0
        with open(self.log_dir / f"decoded-{rank}.txt", "a") as log:
            log.write(f"{index}\n")
        return self.images[index], int(self.labels[index])


def decoded(log_dir: Path, rank: int) -> list[int]:
    """The dataset indices rank `rank` decoded, in order (cleared once read)."""
    path = Path(log_dir) / f"decoded-{rank}.txt"
    if not path.exists():
        return []
    indices = [int(line) for line in path.read_text().split()]
    path.unlink()
    return indices


def batches_of(rank: int, world: int = 2, n_batches: int = N_BATCHES) -> list[int]:
    """Dataset indices of the batches i ≡ rank (mod world) of a sequential loader."""
    return [j for b in range(rank, n_batches, world) for j in range(b * BATCH, (b + 1) * BATCH)]


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
        if scenario.startswith("split"):  # a DataLoader each rank reads only its part of
            n = BATCH * (N_BATCHES - 1) if scenario == "split_shorter" and rank == 1 else None
            n = BATCH if scenario == "split_one" else n
            die_at = 5 * BATCH if scenario == "split_kill" and rank == 1 else None
            fail_at = BATCH + 3 if scenario == "split_bad_first" and rank == 1 else None
            dataset = CountingDataset(cache, n or BATCH * N_BATCHES, die_at, fail_at)
            data = DataLoader(dataset, batch_size=BATCH)
        if scenario == "list":
            data = list(_batches())
            messages: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda record: messages.append(record.getMessage())
            logging.getLogger("retrofit.extraction.rank_batches").addHandler(handler)
            logging.getLogger("retrofit.extraction.rank_batches").setLevel(logging.INFO)
            report["log"] = messages
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
        report["decoded"] = decoded(cache, report["rank"])
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


def test_each_rank_decodes_only_its_batches_of_a_dataloader(tmp_path, reference):
    reports = _launch("split", tmp_path)
    assert all(reports[r]["ok"] for r in (0, 1)), reports
    assert [reports[r]["computed"] for r in (0, 1)] == [N_BATCHES // 2] * 2
    for rank in (0, 1):  # every image once, by the rank that owns its batch
        assert reports[rank]["decoded"] == batches_of(rank), rank
        assert reports[rank]["n"] == BATCH * N_BATCHES
    _assert_same_store(tmp_path, reference)
    again = _launch("split", tmp_path)  # reused: the exchanged fingerprints match the store
    assert [again[r]["computed"] for r in (0, 1)] == [0, 0]
    assert [again[r]["decoded"] for r in (0, 1)] == [batches_of(0), batches_of(1)]


def test_a_killed_rank_resumes_with_split_loading(tmp_path, reference):
    killed = _launch("split_kill", tmp_path)  # rank 1 dies decoding batch 5
    assert 1 not in killed and not killed[0]["ok"], killed
    assert decoded(tmp_path, 1) == batches_of(1)[: 2 * BATCH]  # batches 1 and 3, then died
    assert not list(tmp_path.glob("*/store"))
    resumed = _launch("split", tmp_path)
    assert all(resumed[r]["ok"] for r in (0, 1)), resumed
    assert [resumed[r]["computed"] for r in (0, 1)] == [0, 2]  # batches 5 and 7 were left
    assert resumed[1]["decoded"] == batches_of(1)
    _assert_same_store(tmp_path, reference)


def test_ranks_whose_loaders_list_other_batches_fail_before_decoding(tmp_path):
    reports = _launch("split_shorter", tmp_path)  # rank 1's dataset lacks the last batch
    for rank in (0, 1):
        assert reports[rank]["error"] == "DistributedError", reports
        assert "read different batches" in reports[rank]["message"]
        assert reports[rank]["decoded"] == []
    assert not list(tmp_path.glob("*/store"))


def test_a_rank_whose_first_batch_fails_stops_every_rank(tmp_path):
    reports = _launch("split_bad_first", tmp_path)  # rank 1's first batch is batch 1
    assert reports[1]["error"] == "ValueError" and "truncated" in reports[1]["message"]
    assert reports[0]["error"] == "DistributedError", reports[0]
    assert "Rank 1 failed" in reports[0]["message"]


def test_a_rank_without_a_batch_probes_on_batch_0(tmp_path):
    reports = _launch("split_one", tmp_path)  # one batch for two ranks
    assert all(reports[r]["ok"] for r in (0, 1)), reports
    assert [reports[r]["computed"] for r in (0, 1)] == [1, 0]
    assert [reports[r]["n"] for r in (0, 1)] == [BATCH, BATCH]
    assert reports[1]["decoded"] == list(range(PROBE_IMAGES))  # the layer probe's images only


def test_a_list_of_batches_is_read_in_full_by_every_rank(tmp_path, reference):
    reports = _launch("list", tmp_path)
    assert all(reports[r]["ok"] for r in (0, 1)), reports
    assert [reports[r]["computed"] for r in (0, 1)] == [N_BATCHES // 2] * 2
    assert any("cannot be split: it is a list" in m for m in reports[0]["log"]), reports[0]
    _assert_same_store(tmp_path, reference)


def test_which_loaders_split_and_the_split_loader_keeps_their_settings(tmp_path):
    dataset = CountingDataset(str(tmp_path))
    plain = DataLoader(dataset, batch_size=BATCH, num_workers=2, prefetch_factor=3)
    assert unsplittable_reason(plain) is None
    assert "RandomSampler" in unsplittable_reason(DataLoader(dataset, shuffle=True))
    assert "not a torch DataLoader" in unsplittable_reason(list(_batches()))
    assert "batch_size=None" in unsplittable_reason(DataLoader(dataset, batch_size=None))
    custom = DataLoader(dataset, batch_sampler=[[0, 1], [2, 3]])
    assert "custom list" in unsplittable_reason(custom)
    assert isinstance(plain.sampler, torch.utils.data.SequentialSampler)
    assert not isinstance(plain.sampler, RandomSampler)
    part = loader_over(plain, [[8, 9, 10], [24]])
    for name in ("num_workers", "prefetch_factor", "collate_fn", "pin_memory", "timeout"):
        assert getattr(part, name) == getattr(plain, name), name
    assert part.dataset is dataset and len(part) == 2
    assert [labels.tolist() for _, labels in part] == [[0, 1, 2], [0]]
    assert sorted(decoded(tmp_path, 0)) == [8, 9, 10, 24]  # in the workers, nothing else
