"""ImageNet-shaped scale: 1,000 classes x 2,048 features, converted from a cache of N rows.

Run: python -m benchmarks.scale [--rows 10000 30000 100000 300000] [--workdir DIR]
(writes benchmarks/results/scale.json). Every measurement runs in a fresh subprocess so its
peak memory is its own. Peak RSS (VmHWM) counts the memory-mapped cache pages a stage touched,
which the kernel can drop at will; peak anonymous RSS (RssAnon, sampled every 20 ms) is the
memory the stage itself allocated, the number that must stay bounded.

The synthetic world: inputs are 8 x 8 "images" around one of 1,000 random prototypes; the
backbone is a fixed random Linear(64, 2,048) + ReLU and the classifier a nearest-prototype
Linear(2,048, 1,000). Batches are generated from their index, so every process sees the same
data without storing it.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import RESULTS, machine, write_result

CLASSES = 1000
DIM = 2048
INPUT = 64
BATCH = 1000


class World(nn.Module):
    """Fixed random backbone (64 -> 2,048, ReLU) and nearest-prototype classifier."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(INPUT, DIM), nn.ReLU())
        with torch.no_grad():
            self.body[1].weight.copy_(torch.randn(DIM, INPUT, generator=g) / INPUT**0.5)
            self.body[1].bias.zero_()
            centres = self.body(prototypes().reshape(CLASSES, 1, 8, 8))
            centres = centres - centres.mean(dim=0)
        self.fc = nn.Linear(DIM, CLASSES)
        with torch.no_grad():
            self.fc.weight.copy_(centres / centres.norm(dim=1, keepdim=True))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def prototypes() -> torch.Tensor:
    return torch.randn(CLASSES, INPUT, generator=torch.Generator().manual_seed(1))


class Batches:
    """N rows in batches of BATCH, each generated from its index (the same in every process);
    another `seed` gives another sample of the same world (a test set)."""

    def __init__(self, rows: int, seed: int = 10_000) -> None:
        self.rows = rows
        self.seed = seed
        self.proto = prototypes()

    def __len__(self) -> int:
        return math.ceil(self.rows / BATCH)

    def __iter__(self):
        for index in range(len(self)):
            n = min(BATCH, self.rows - index * BATCH)
            g = torch.Generator().manual_seed(self.seed + index)
            labels = torch.randint(0, CLASSES, (n,), generator=g)
            images = self.proto[labels] + 0.8 * torch.randn(n, INPUT, generator=g)
            yield images.reshape(n, 1, 8, 8), labels


class MemoryWatch:
    """Peak RssAnon of this process, sampled in a thread; VmHWM read at the end."""

    def __init__(self) -> None:
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, _status_kb("RssAnon"))
            time.sleep(0.02)

    def __enter__(self) -> MemoryWatch:
        self.baseline = _status_kb("RssAnon")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, float]:
        """Peaks, and the anonymous memory held before the stage began (imports, interpreter)."""
        return {
            "peak_rss_mb": _status_kb("VmHWM") / 1024,
            "peak_anon_mb": self.peak_anon / 1024,
            "baseline_anon_mb": self.baseline / 1024,
            "stage_anon_mb": (self.peak_anon - self.baseline) / 1024,
        }


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_extract(rows: int, cache: str, feature_dtype: str) -> dict[str, Any]:
    import retrofit
    from retrofit.adapters import adapter_for

    adapter_for(World())  # the model-family checks import transformers: not extraction time
    with MemoryWatch() as watch:
        began = time.perf_counter()
        features = retrofit.extract(
            World().eval(),
            Batches(rows),
            cache_dir=cache,
            progress=False,
            batch_size=BATCH,
            feature_dtype=feature_dtype,
        )
        seconds = time.perf_counter() - began
    (store,) = Path(cache).glob("*/store")
    size = sum(f.stat().st_size for f in store.iterdir())
    return {
        "rows": len(features),
        "extract_s": seconds,
        "store": str(store),
        "cache_mb": size / 2**20,
        **watch.report(),
    }


def run_fit(store: str, method: str, time_limit: float, epochs: int) -> dict[str, Any]:
    from retrofit.config import RetrofitConfig
    from retrofit.extraction.cache import Store
    from retrofit.extraction.streaming import chunk_rows, row_slices
    from retrofit.fitting.bottleneck import FixedHead, build_bottleneck, finetune_bottleneck
    from retrofit.methods.base import get_head

    config = RetrofitConfig(
        method=method,
        n_features=50,
        per_class=5,
        time_limit=time_limit,
        finetune="none",
        epochs=epochs,
        batch_size=256,
        progress=False,
        threads=1,
    )
    times: dict[str, float] = {}
    get_head(method)  # imports the head modules (and the MIP library) before the watch
    with MemoryWatch() as watch:
        began = time.perf_counter()
        opened = Store(Path(store))
        features, labels = opened.features, opened.labels
        times["open_s"] = time.perf_counter() - began
        began = time.perf_counter()
        result = get_head(method)(features, labels, config, None, opened.logits)
        times["head_s"] = time.perf_counter() - began
        bottleneck = result.bottleneck or build_bottleneck(result, config, in_features=DIM)
        head = FixedHead.from_result(result)
        began = time.perf_counter()
        finetune_bottleneck(bottleneck, head, features, labels, config, epochs=epochs)
        times["bottleneck_s"] = time.perf_counter() - began
        began = time.perf_counter()
        correct = agree = 0
        with torch.no_grad():
            for r in row_slices(len(labels), chunk_rows(DIM)):
                predicted = head(bottleneck(features[r])).argmax(dim=1)
                correct += int((predicted == labels[r]).sum())
                agree += int((predicted == opened.logits[r].argmax(dim=1)).sum())
        times["accuracy_s"] = time.perf_counter() - began
    stage_keys = ("constants_time", "warm_start_time", "program_time", "head_time", "gap")
    return {
        **times,
        **watch.report(),
        "accuracy": correct / len(labels),
        "agreement": agree / len(labels),
        "original_accuracy": float((opened.logits.argmax(dim=1) == labels).float().mean()),
        "selected": result.selected.tolist(),
        "head_stats": {k: result.stats[k] for k in stage_keys if k in result.stats},
    }


def run_constants(full: str, half: str) -> dict[str, Any]:
    """The dtype's own effect, free of solver timing: QPM's A and candidates from both caches."""
    from retrofit.extraction.cache import Store
    from retrofit.methods.qpm.constants import class_correlation, select_candidates

    found = {}
    for name, store in (("float32", full), ("float16", half)):
        opened = Store(Path(store))
        assoc = class_correlation(opened.features, opened.labels, CLASSES)
        found[name] = (assoc, select_candidates(assoc, 50, 5))
    (a32, c32), (a16, c16) = found["float32"], found["float16"]
    return {
        "max_abs_correlation_difference": float((a32 - a16).abs().max()),
        "same_candidates": bool(torch.equal(c32, c16)),
        "shared_candidates": len(set(c32.tolist()) & set(c16.tolist())),
        "n_candidates": len(c32),
    }


def run_convert(rows: int, cache: str, model_path: str, time_limit: float) -> dict[str, Any]:
    """One qpm convert (finetune none) from the cache of `rows`; the model is saved for checks."""
    import retrofit
    from retrofit.methods.base import get_head

    get_head("qpm")
    retrofit.extract(World().eval(), Batches(rows), cache_dir=cache, progress=False)
    with MemoryWatch() as watch:
        began = time.perf_counter()
        imodel = retrofit.convert(
            World().eval(),
            Batches(rows),
            cache_dir=cache,
            method="qpm",
            n_features=50,
            per_class=5,
            time_limit=time_limit,
            finetune="none",
            batch_size=BATCH,
            progress=False,
            threads=1,
        )
        seconds = time.perf_counter() - began
    torch.save(imodel, model_path)
    return {"rows": rows, "convert_s": seconds, "train": imodel.stats["train"], **watch.report()}


def run_check(model_path: str, rows: int, deletion_images: str = "default") -> dict[str, Any]:
    """retrofit.check on `rows` test images without pixel methods: what the check holds per image.

    deletion_images: "default" (CheckConfig's cap), "all" or a number of images."""
    import retrofit

    cap = (
        {} if deletion_images == "default" else {"deletion_images": _deletion_cap(deletion_images)}
    )
    imodel = torch.load(model_path, weights_only=False)  # written by run_convert above
    with MemoryWatch() as watch:
        began = time.perf_counter()
        report = retrofit.check(
            imodel,
            Batches(rows, seed=900_000),
            reference=World().eval(),
            pixel_methods=(),
            batch_size=BATCH,
            progress=False,
            **cap,
        )
        seconds = time.perf_counter() - began
    fidelity = report.results["fidelity"]
    meta = report.results["meta"]
    return {
        "rows": rows,
        "check_s": seconds,
        "accuracy": fidelity["accuracy"],
        "agreement": fidelity["agreement"],
        "fidelity@5": fidelity.get("fidelity@5"),
        "deletion_images": meta.get("deletion_images"),
        "deletion_images_cap": meta.get("deletion_images_cap", "n/a"),
        "deletion_auc_gain": report.results["concept_deletion"]["deletion_auc_gain"],
        "timings": meta["timings"],
        **watch.report(),
    }


def _deletion_cap(value: str) -> int | None:
    return None if value == "all" else int(value)


def _join(rank: int, world: int, port: int) -> None:
    """One thread per process; a Gloo group on 127.0.0.1 when there are several."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(minutes=30),
        )


def _rank(rank: int, world: int, port: int, rows: int, cache: str, queue) -> None:
    import torch.distributed as dist

    from retrofit.extraction.features import extract

    _join(rank, world, port)
    began = time.perf_counter()
    extract(World().eval(), Batches(rows), cache_dir=cache, progress=False)
    queue.put((rank, time.perf_counter() - began))
    dist.destroy_process_group()


def run_distributed(rows: int, cache: str, world: int) -> dict[str, Any]:
    """Extraction by `world` Gloo processes on 127.0.0.1 (one thread each)."""
    from retrofit.adapters import adapter_for

    adapter_for(World())  # import the model-family checks once, before forking
    wall, reports = _run_ranks(
        _rank, world, lambda r, port, queue: (r, world, port, rows, cache, queue)
    )
    (store,) = Path(cache).glob("*/store")
    return {"world": world, "wall_s": wall, "rank_s": dict(reports), "store": str(store)}


def _run_ranks(target, world: int, arguments) -> tuple[float, list[Any]]:
    """Fork `world` processes on a free 127.0.0.1 port, each running target(*arguments(rank,
    port, queue)) and putting one report on the queue; (wall seconds, the reports)."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    began = time.perf_counter()
    procs = [context.Process(target=target, args=arguments(r, port, queue)) for r in range(world)]
    for proc in procs:
        proc.start()
    reports = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    return time.perf_counter() - began, reports


SPLIT_SIZE = 256  # encoded JPEG side; decoded, then resized to 128 like a crop pipeline
SPLIT_BATCH = 64


def encode_images(rows: int, path: str) -> None:
    """`rows` smooth random RGB images as JPEG bytes (8 KB each), labels index mod 10."""
    import io
    import pickle

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(rows):
        small = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        image = Image.fromarray(small).resize((SPLIT_SIZE, SPLIT_SIZE), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    Path(path).write_bytes(pickle.dumps(blobs))


class JpegImages(torch.utils.data.Dataset):
    """Decodes each JPEG (PIL) and resizes it when read: the work a real image loader does."""

    def __init__(self, path: str) -> None:
        import pickle

        self.blobs = pickle.loads(Path(path).read_bytes())
        self.decoded = 0

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import io

        import numpy as np
        from PIL import Image

        self.decoded += 1
        image = Image.open(io.BytesIO(self.blobs[index])).convert("RGB")
        array = np.asarray(image.resize((128, 128), Image.BILINEAR), dtype=np.float32) / 255
        return torch.from_numpy(array).permute(2, 0, 1), index % 10


def small_cnn() -> nn.Module:
    """A cheap backbone, so that decoding dominates as it does in front of a GPU."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=4, padding=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


def _split_rank(rank: int, world: int, port: int, blobs: str, cache: str, split: bool, queue):
    import torch.distributed as dist

    from retrofit.extraction.features import extract

    _join(rank, world, port)
    dataset = JpegImages(blobs)
    loader = torch.utils.data.DataLoader(dataset, batch_size=SPLIT_BATCH)
    began = time.perf_counter()
    # a generator over the same DataLoader cannot be split: every rank reads everything
    extract(small_cnn(), loader if split else iter(loader), cache_dir=cache, progress=False)
    queue.put((rank, time.perf_counter() - began, dataset.decoded))
    if world > 1:
        dist.destroy_process_group()


def run_split(blobs: str, cache: str, world: int, split: bool) -> dict[str, Any]:
    """Extraction of JPEG images by `world` Gloo processes, each reading only its own batches
    (split) or every batch (the loader as a generator)."""
    from retrofit.adapters import adapter_for

    adapter_for(small_cnn())  # import the model-family checks once, before forking
    wall, reports = _run_ranks(
        _split_rank, world, lambda r, port, queue: (r, world, port, blobs, cache, split, queue)
    )
    (store,) = Path(cache).glob("*/store")
    return {
        "world": world,
        "split": split,
        "wall_s": wall,
        "rank_s": {r: seconds for r, seconds, _ in reports},
        "images_decoded_per_rank": {r: count for r, _, count in reports},
        "store": str(store),
    }


def measure_alone(args: argparse.Namespace) -> None:
    """`--parts split dense` (either or both): measure them and add their keys to
    results/scale.json, keeping every other key (and its machine) as it is."""
    path = RESULTS / "scale.json"
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="retrofit-scale-"))
    for part, measure in (("split", measure_split), ("dense", measure_dense)):
        if part in args.parts:
            payload = json.loads(path.read_text()) if path.exists() else {}
            measured_on = payload.pop("machine", None)
            measure(args, workdir, payload)
            write_result("scale", payload, measured_on)


def measure_split(args: argparse.Namespace, workdir: Path, payload: dict[str, Any]) -> None:
    """JPEG extraction by 1 process, by 2 reading only their batches and by 2 reading all."""
    blobs = str(workdir / f"jpeg-{args.split_rows}.pkl")
    encode_images(args.split_rows, blobs)
    runs = {
        name: _worker(["split", blobs, str(workdir / f"split-{name}"), str(world), str(split)])
        for name, world, split in (
            ("one_process", 1, True),
            ("two_split", 2, True),
            ("two_read_all", 2, False),
        )
    }
    stores = [run.pop("store") for run in runs.values()]
    payload["split_loading"] = {
        "rows": args.split_rows,
        "image": f"JPEG {SPLIT_SIZE}x{SPLIT_SIZE} decoded with PIL, resized to 128x128",
        "batch": SPLIT_BATCH,
        **runs,
        "time_ratio_two_split_over_one": runs["two_split"]["wall_s"]
        / runs["one_process"]["wall_s"],
        "time_ratio_two_read_all_over_one": runs["two_read_all"]["wall_s"]
        / runs["one_process"]["wall_s"],
        "bit_identical": all(_same_store(stores[0], other) for other in stores[1:]),
        "machine": machine(),
        "load_average": os.getloadavg(),
    }
    print(f"split loading: {payload['split_loading']}", flush=True)


DENSE_CLASSES = 10  # few classes: the N x D design, not the N x C logits, is what is measured


def write_dense_features(rows: int, path: str) -> None:
    """rows x 2,048 float32 features with class structure, as the cache stores them."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, DENSE_CLASSES, (rows,), generator=g)
    centres = torch.randn(DENSE_CLASSES, DIM, generator=g) * 0.3
    features = torch.randn(rows, DIM, generator=g) * torch.linspace(0.5, 3, DIM) + 1
    features += centres[labels]
    save_file({"features": features, "labels": labels}, path)


def run_dense(path: str, variant: str, l2: float) -> dict[str, Any]:
    """The dense head on memory-mapped features: streamed (fit_dense now) or on an in-memory
    standardised copy (how the head fitted before)."""
    from retrofit.config import RetrofitConfig
    from retrofit.extraction.cache import open_pooled
    from retrofit.methods.dense.head import fit_dense
    from retrofit.solvers.elastic_net import check_inputs, fit_elastic_net
    from retrofit.solvers.stats import standardise

    tensors = open_pooled(Path(path))
    features, labels = tensors["features"], tensors["labels"]
    config = RetrofitConfig(method="dense", progress=False, threads=1, dense={"l2": l2})
    with MemoryWatch() as watch:
        began = time.perf_counter()
        if variant == "streamed":
            result = fit_dense(features, labels, config)
            weight, iterations = result.weight, result.stats["iterations"]
        else:
            x, y, c = check_inputs(features, labels, None)
            z, _, _ = standardise(x)
            point = fit_elastic_net(z, y, l2, alpha=0.0, num_classes=c, max_iter=2000)
            weight, iterations = point.weight, point.iterations
        seconds = time.perf_counter() - began
    return {
        "variant": variant,
        "head_s": seconds,
        "iterations": iterations,
        "weight": weight.flatten()[:: max(1, weight.numel() // 4096)].tolist(),
        "features_mb": features.numel() * features.element_size() / 2**20,
        **watch.report(),
    }


def measure_dense(args: argparse.Namespace, workdir: Path, payload: dict[str, Any]) -> None:
    """Peak memory of the dense head at N x 2,048, streamed against the standardised copy."""
    by_rows: dict[str, Any] = {}
    for rows in sorted(args.dense_rows):
        path = workdir / f"dense-{rows}.safetensors"
        write_dense_features(rows, str(path))
        runs = {
            variant: _worker(["dense", str(path), variant, str(args.dense_l2)])
            for variant in ("in_memory_copy", "streamed")
        }
        path.unlink()
        a, b = (torch.tensor(runs[v].pop("weight")) for v in ("in_memory_copy", "streamed"))
        by_rows[str(rows)] = {
            **runs,
            "stage_anon_ratio_streamed_over_copy": runs["streamed"]["stage_anon_mb"]
            / runs["in_memory_copy"]["stage_anon_mb"],
            "time_ratio_streamed_over_copy": runs["streamed"]["head_s"]
            / runs["in_memory_copy"]["head_s"],
            "max_weight_difference_sampled": float((a - b).abs().max()),
        }
        print(f"dense {rows}: {by_rows[str(rows)]}", flush=True)
    payload["dense_out_of_core"] = {
        "features": DIM,
        "classes": DENSE_CLASSES,
        "l2": args.dense_l2,
        "rows": by_rows,
        "machine": machine(),
        "load_average": os.getloadavg(),
    }


def _worker(args: list[str]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its JSON report is the last stdout line."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--worker", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) on log(x): the growth exponent."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den


def _same_store(a: str, b: str) -> bool:
    from safetensors.torch import load_file

    left, right = load_file(f"{a}/pooled.safetensors"), load_file(f"{b}/pooled.safetensors")
    return set(left) == set(right) and all(torch.equal(left[k], right[k]) for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 30_000, 100_000, 300_000])
    parser.add_argument("--qsenn-rows", type=int, nargs="*", default=[5_000, 10_000, 20_000])
    parser.add_argument("--dist-rows", type=int, default=20_000)
    parser.add_argument("--half-rows", type=int, default=30_000)
    parser.add_argument("--check-rows", type=int, nargs="*", default=[10_000, 50_000])
    parser.add_argument("--split-rows", type=int, default=4_000)
    parser.add_argument("--dense-rows", type=int, nargs="+", default=[30_000, 60_000])
    parser.add_argument("--dense-l2", type=float, default=1e-2)
    parser.add_argument(
        "--check-time-limit", type=float, default=None, help="qpm time_limit of the checked model"
    )
    parser.add_argument(
        "--check-deletion-images", default="default", help='"default", "all" or a number'
    )
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--worker", nargs="+", default=None)
    parser.add_argument(
        "--parts", nargs="+", default=["qpm", "half", "dist", "qsenn"], help="what to measure"
    )
    parser.add_argument(
        "--merge", action="store_true", help="update results/scale.json instead of replacing it"
    )
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "extract":
            report = run_extract(int(rest[0]), rest[1], rest[2])
        elif kind == "fit":
            report = run_fit(rest[0], rest[1], float(rest[2]), int(rest[3]))
        elif kind == "constants":
            report = run_constants(rest[0], rest[1])
        elif kind == "convert":
            report = run_convert(int(rest[0]), rest[1], rest[2], float(rest[3]))
        elif kind == "check":
            report = run_check(rest[0], int(rest[1]), *rest[2:3])
        elif kind == "dense":
            report = run_dense(rest[0], rest[1], float(rest[2]))
        elif kind == "split":
            report = run_split(rest[0], rest[1], int(rest[2]), rest[3] == "True")
        else:
            report = run_distributed(int(rest[0]), rest[1], int(rest[2]))
        print(json.dumps(report))
        return
    if set(args.parts) <= {"split", "dense"}:
        measure_alone(args)
        return
    measured_on = machine(["mip"])
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="retrofit-scale-"))
    payload: dict[str, Any] = {
        "world": {"classes": CLASSES, "features": DIM, "batch": BATCH},
        "settings": {
            "n_features": 50,
            "per_class": 5,
            "time_limit": args.time_limit,
            "bottleneck_epochs": args.epochs,
            "threads": 1,
        },
        "qpm": {},
        "qsenn": {},
    }
    previous = RESULTS / "scale.json"
    if args.merge and previous.exists():
        kept = json.loads(previous.read_text())
        measured_on = kept.pop("machine")
        payload = kept | {"settings": payload["settings"]}

    def save() -> None:
        write_result("scale", payload, measured_on)

    extractions: dict[int, dict[str, Any]] = {}

    def fit(method: str, rows: int) -> None:
        if rows not in extractions:
            report = _worker(["extract", str(rows), str(workdir / f"f32-{rows}"), "float32"])
            extractions[rows] = report
            print(f"extract {rows}: {report}", flush=True)
        extracted = extractions[rows]
        result = _worker(
            ["fit", extracted["store"], method, str(args.time_limit), str(args.epochs)]
        )
        earlier = payload[method].get(str(rows), {}).get("extract")
        payload[method][str(rows)] = {
            # a merged rerun finds the store already there: keep the real extraction's numbers
            "extract": earlier
            if args.merge and earlier
            else {k: v for k, v in extracted.items() if k != "store"},
            "fit": result,
        }
        print(f"{method} {rows}: {result}", flush=True)
        payload["growth"] = growth(payload)
        save()

    if "qpm" in args.parts:
        for rows in sorted(args.rows):
            fit("qpm", rows)
    if "half" in args.parts:
        measure_half(args, workdir, payload)
        save()
    if "dist" in args.parts:
        measure_distributed(args, workdir, payload)
        save()
    if "check" in args.parts:
        measure_check(args, workdir, payload)
        save()
    if "split" in args.parts:
        measure_split(args, workdir, payload)
        save()
    if "qsenn" in args.parts:
        for rows in sorted(args.qsenn_rows):  # last: by far the slowest
            fit("qsenn", rows)
    print(json.dumps(payload.get("growth"), indent=1))


def measure_half(args: argparse.Namespace, workdir: Path, payload: dict[str, Any]) -> None:
    """qpm on a float16 cache against the float32 one of the same rows."""
    half = _worker(["extract", str(args.half_rows), str(workdir / "f16"), "float16"])
    half_store = half.pop("store")
    half_fit = _worker(["fit", half_store, "qpm", str(args.time_limit), str(args.epochs)])
    full_fit = payload["qpm"].get(str(args.half_rows), {}).get("fit")
    full = _worker(
        ["extract", str(args.half_rows), str(workdir / f"f32-{args.half_rows}"), "float32"]
    )
    payload["float16_cache"] = {
        "constants": _worker(["constants", full["store"], half_store]),
        "rows": args.half_rows,
        "extract": half,
        "fit": half_fit,
        "float32_fit": full_fit,
        "same_selection": None
        if full_fit is None
        else full_fit["selected"] == half_fit["selected"],
    }


def measure_check(args: argparse.Namespace, workdir: Path, payload: dict[str, Any]) -> None:
    """One qpm convert from the smallest cache, then retrofit.check on test sets of growing size."""
    rows = min(args.rows)
    model_path = str(workdir / "check-model.pt")
    time_limit = args.check_time_limit or args.time_limit
    convert = _worker(
        ["convert", str(rows), str(workdir / f"f32-{rows}"), model_path, str(time_limit)]
    )
    keep_check_before(payload)
    checks: dict[int, dict[str, Any]] = {}
    for n in sorted(args.check_rows):
        checks[n] = _worker(["check", model_path, str(n), args.check_deletion_images])
        print(f"check {n}: {checks[n]}", flush=True)
    payload["check"] = {
        "time_limit": time_limit,
        "pixel_methods": [],
        "convert": convert,
        "checks": {str(n): r for n, r in checks.items()},
        "growth": {
            key: _slope([(n, r[key]) for n, r in checks.items()])
            for key in ("check_s", "stage_anon_mb")
        },
    }
    payload["check"]["against_before"] = check_against_before(payload)
    print(f"check: {payload['check']}", flush=True)


def keep_check_before(payload: dict[str, Any]) -> None:
    """The first measured check (before streaming) stays under "check_before" for comparison."""
    if "check" in payload and "check_before" not in payload:
        payload["check_before"] = payload["check"]


def check_against_before(payload: dict[str, Any]) -> dict[str, Any]:
    """Per test-set size measured in both: time and allocated memory now over before."""
    before = payload.get("check_before", {}).get("checks", {})
    now = payload["check"]["checks"]
    return {
        rows: {
            key: now[rows][key] / before[rows][key]
            for key in ("check_s", "stage_anon_mb", "peak_rss_mb")
        }
        for rows in sorted(set(before) & set(now), key=int)
    }


def measure_distributed(args: argparse.Namespace, workdir: Path, payload: dict[str, Any]) -> None:
    """Extraction by 1 and by 2 Gloo processes: time ratio and bit-identical stores."""
    one = _worker(["dist", str(args.dist_rows), str(workdir / "dist1"), "1"])
    two = _worker(["dist", str(args.dist_rows), str(workdir / "dist2"), "2"])
    payload["distributed_extraction"] = {
        "rows": args.dist_rows,
        "one_process": one,
        "two_processes": two,
        "time_ratio_two_over_one": two["wall_s"] / one["wall_s"],
        "bit_identical": _same_store(one["store"], two["store"]),
    }


def growth(payload: dict[str, Any]) -> dict[str, Any]:
    """Growth exponents of time and memory per stage, and a 1.28 M extrapolation for qpm."""
    out: dict[str, Any] = {}
    for method in ("qpm", "qsenn"):
        runs = {int(n): r for n, r in payload[method].items()}
        if len(runs) < 2:
            continue
        stages: dict[str, Any] = {}
        for key in ("head_s", "bottleneck_s", "accuracy_s", "stage_anon_mb", "peak_rss_mb"):
            stages[key] = _slope([(n, r["fit"][key]) for n, r in runs.items()])
        stages["constants_time"] = _slope(
            [(n, r["fit"]["head_stats"].get("constants_time", 0.0)) for n, r in runs.items()]
        )
        stages["extract_s"] = _slope([(n, r["extract"]["extract_s"]) for n, r in runs.items()])
        largest = max(runs)
        target = 1_281_167
        scale = target / largest
        anon = runs[largest]["fit"]["stage_anon_mb"]
        slope = stages["stage_anon_mb"] or 0.0
        stages["extrapolated_stage_anon_mb_at_1281167"] = anon * scale ** max(slope, 0.0)
        out[method] = stages
    return out


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
