"""Run by tests/test_accelerate.py under `accelerate launch`: Accelerator() sets up the group,
retrofit.extract shards the extraction; each rank writes what it saw to OUT/rank-R.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.errors import DistributedError
from tests.tiny import SmallCNN, colour_coded_images

BATCH, N_BATCHES, C = 8, 8, 4


def data() -> DataLoader:
    images, labels = colour_coded_images(BATCH * N_BATCHES, 16, C, bright=3)
    return DataLoader(TensorDataset(images, labels), batch_size=BATCH)


def model() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(n_classes=C).eval()


def main(cache: str, out: str) -> None:
    accelerator = Accelerator(cpu=True)
    torch.set_num_threads(1)
    classifier = model()
    computed = [0]
    classifier.register_forward_hook(
        lambda module, inputs, output: computed.__setitem__(
            0, computed[0] + int(inputs[0].shape[0] == BATCH)
        )
    )
    features = retrofit.extract(classifier, data(), cache_dir=cache, progress=False)
    report = {
        "rank": accelerator.process_index,
        "world": accelerator.num_processes,
        "type": str(accelerator.distributed_type),
        "computed": computed[0],
        "rows": len(features),
    }
    try:  # accelerator.prepare gives each rank other batches: retrofit must refuse them
        retrofit.extract(
            classifier, accelerator.prepare(data()), cache_dir=f"{cache}-prepared", progress=False
        )
        report["prepared"] = "accepted"
    except DistributedError as error:
        report["prepared"] = str(error)
    Path(out, f"rank-{accelerator.process_index}.json").write_text(json.dumps(report))
    # an explicit teardown: left to interpreter exit, Gloo's threads can abort rank 0
    # ("terminate called without an active exception") after the work is done
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
