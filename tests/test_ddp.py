"""Backbone fine-tuning as DDP on CPU: 2 Gloo processes (forked, bound to 127.0.0.1)."""

from __future__ import annotations

import copy
import multiprocessing

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

import retrofit
from retrofit.fitting.finetune import finetune_backbone
from tests.gloo import free_port, join_gloo
from tests.test_distributed import CountingDataset, batches_of, decoded
from tests.tiny import SmallCNN, colour_coded_images

pytestmark = pytest.mark.slow  # two Gloo processes

BATCH = 8
C = 4


def _data(n_batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    return colour_coded_images(BATCH * n_batches, 16, C, bright=3)


def _batches(n_batches: int, size: int = BATCH):
    images, labels = _data(n_batches)
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, len(labels), size)]


def _weights(n_batches: int) -> torch.Tensor:
    return torch.rand(BATCH * n_batches, generator=torch.Generator().manual_seed(5)) * 2


def _trained(imodel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in imodel.state_dict().items()}


def _portable(weights: dict[str, torch.Tensor]) -> dict:
    """As numpy arrays: a tensor put on a queue would be shared with a process about to exit."""
    return {k: v.numpy() for k, v in weights.items()}


@pytest.fixture(scope="module")
def imodel():
    """A converted model (head fixed) whose backbone and bottleneck the tests fine-tune."""
    torch.manual_seed(0)
    images, labels = _data(8)
    model = SmallCNN(n_classes=C).eval()
    return retrofit.convert(
        model,
        list(zip(images.split(16), labels.split(16), strict=True)),
        method="sparse",
        n_features=4,
        per_class=2,
        finetune="none",
        backbone_lr=0.01,
        backbone_epochs=2,
        progress=False,
        threads=1,
    )


def _loader(n_batches: int, log_dir: str) -> DataLoader:
    """The same batches as `_batches`, from a dataset that logs which items each rank decoded."""
    return DataLoader(CountingDataset(log_dir, BATCH * n_batches), batch_size=BATCH)


def _worker(rank, world, port, scenario, imodel, cache, queue) -> None:
    torch.set_num_threads(1)
    report: dict = {"rank": rank}
    split = scenario.endswith("_loader")  # a DataLoader each rank reads only its part of
    scenario = scenario.removesuffix("_loader")
    try:
        join_gloo(rank, world, port)
        if scenario == "convert":
            torch.manual_seed(0)  # the same model on every rank (extraction checks it)
            result = retrofit.convert(
                SmallCNN(n_classes=C),
                _loader(8, cache) if split else _batches(8),
                cache_dir=cache,
                method="dense",
                n_features=4,
                per_class=2,
                finetune="backbone",
                epochs=1,  # bottleneck epochs before the backbone's
                backbone_lr=0.002,
                progress=False,
                threads=1,
            )
            report.update(
                weights=_portable(_trained(result)), accuracy=result.stats["train"]["accuracy"]
            )
        else:
            if scenario == "fail" and rank == 1:
                calls = [0]

                def explode(module, inputs):
                    calls[0] += 1
                    if calls[0] == 3:
                        raise RuntimeError("out of memory on rank 1")

                imodel.backbone.register_forward_pre_hook(explode)
            if scenario == "even" and rank == 1:  # e.g. a MIP that stopped elsewhere on rank 1
                with torch.no_grad():
                    imodel.head.weight.mul_(2)
                    imodel.bottleneck.mean.add_(1)
            n_batches = 7 if scenario == "uneven" else 8
            if scenario == "shorter" and rank == 1:  # e.g. a loader split by a sampler
                n_batches = 6
            weights = _weights(n_batches) if scenario == "uneven" else None
            data = _loader(n_batches, cache) if split else _batches(n_batches)
            history = finetune_backbone(imodel, data, torch.device("cpu"), weights)
            report.update(weights=_portable(_trained(imodel)), loss=history["loss"])
    except Exception as error:
        report.update(error=type(error).__name__, message=str(error))
    queue.put(report)
    if dist.is_initialized():
        dist.destroy_process_group()


def _launch(scenario: str, imodel=None, cache: str | None = None) -> dict[int, dict]:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    port = free_port()
    procs = [
        context.Process(target=_worker, args=(r, 2, port, scenario, imodel, cache, queue))
        for r in range(2)
    ]
    for proc in procs:
        proc.start()
    reports = {}
    for _ in procs:
        report = queue.get(timeout=90)
        if "weights" in report:
            report["weights"] = {k: torch.from_numpy(v) for k, v in report["weights"].items()}
        reports[report["rank"]] = report
    for proc in procs:
        proc.join(timeout=30)
    for rank, report in reports.items():
        report["decoded"] = decoded(cache, rank) if cache else []
    return reports


def _single_process(imodel, batches, weights=None) -> tuple[dict[str, torch.Tensor], list[float]]:
    copied = copy.deepcopy(imodel)
    history = finetune_backbone(copied, batches, torch.device("cpu"), weights)
    return _trained(copied), history["loss"]


def _assert_close(ours: dict, theirs: dict, exact: bool = False) -> None:
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        if exact:
            assert torch.equal(ours[name], value), name
        else:
            torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("loader", ["", "_loader"])
def test_two_ranks_equal_one_process_with_the_rounds_as_batches(imodel, tmp_path, loader):
    # rank 1 starts from another head: DDP takes rank 0's
    reports = _launch("even" + loader, imodel, str(tmp_path))
    assert "error" not in reports[0] and "error" not in reports[1], reports
    _assert_close(reports[1]["weights"], reports[0]["weights"], exact=True)
    # rounds of 2 batches of 8 == batches of 16 in one process, SGD momentum included
    reference, loss = _single_process(imodel, _batches(8, size=2 * BATCH))
    _assert_close(reports[0]["weights"], reference)
    assert reports[0]["loss"] == pytest.approx(loss, rel=1e-5)
    assert reports[0]["loss"][1] < reports[0]["loss"][0]
    before = imodel.state_dict()
    moved = max(float((reference[k] - before[k]).abs().max()) for k in before)
    assert moved > 1e-3  # the comparison is about weights that actually trained
    if loader:  # each rank decoded its own batches, once per epoch, and nothing else
        for rank in (0, 1):
            assert reports[rank]["decoded"] == batches_of(rank) * 2


@pytest.mark.parametrize("loader", ["", "_loader"])
def test_a_short_last_round_and_sample_weights_stay_exact(imodel, tmp_path, loader):
    # 7 batches: rank 1 has none in the last round
    reports = _launch("uneven" + loader, imodel, str(tmp_path))
    assert "error" not in reports[0] and "error" not in reports[1], reports
    _assert_close(reports[1]["weights"], reports[0]["weights"], exact=True)
    rounds = _batches(7, size=2 * BATCH)  # the last "round" is batch 6 alone
    reference, loss = _single_process(imodel, rounds, _weights(7))
    _assert_close(reports[0]["weights"], reference)
    assert reports[1]["loss"] == pytest.approx(loss, rel=1e-5)
    if loader:  # rank 1 also reads rank 0's batch 6, which it runs with weight zero
        batch_6 = list(range(6 * BATCH, 7 * BATCH))
        assert reports[0]["decoded"] == batches_of(0, n_batches=7) * 2
        assert reports[1]["decoded"] == (batches_of(1, n_batches=7) + batch_6) * 2


def test_a_rank_that_fails_makes_every_rank_raise(imodel):
    reports = _launch("fail", imodel)
    assert reports[1]["error"] == "RuntimeError" and "out of memory" in reports[1]["message"]
    assert reports[0]["error"] == "DistributedError", reports[0]
    assert "Rank 1 failed during backbone fine-tuning" in reports[0]["message"]


def test_ranks_that_read_other_batches_fail_on_every_rank(imodel):
    reports = _launch("shorter", imodel)  # rank 1's loader ends a round early
    for rank in (0, 1):
        assert reports[rank]["error"] == "DistributedError", reports[rank]
        assert "read different batches" in reports[rank]["message"]


@pytest.mark.parametrize("loader", ["", "_loader"])
def test_convert_finetunes_the_backbone_as_ddp_with_identical_weights(tmp_path, imodel, loader):
    del imodel  # converted first: transformers is imported before forking
    reports = _launch("convert" + loader, cache=str(tmp_path))
    assert "error" not in reports[0] and "error" not in reports[1], reports
    _assert_close(reports[1]["weights"], reports[0]["weights"], exact=True)
    assert reports[0]["accuracy"] == reports[1]["accuracy"]
    if loader:  # extraction, fine-tuning and re-extraction: only each rank's own batches
        for rank in (0, 1):
            assert set(reports[rank]["decoded"]) == set(batches_of(rank)), rank
            assert len(reports[rank]["decoded"]) % len(batches_of(rank)) == 0


def test_distributed_false_trains_alone(imodel):
    opted_out = copy.deepcopy(imodel)
    opted_out.config.distributed = False
    alone, _ = _single_process(opted_out, _batches(8))
    reference, _ = _single_process(imodel, _batches(8))
    _assert_close(alone, reference, exact=True)
