"""Crashes and concurrency: kill -9 at every write step of a save and of an extraction, several
processes filling one cache at once, a corrupted store, and saving never deleting what retrofit
did not write. Child processes are forked (real processes, killed with a real SIGKILL)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.cli import main
from retrofit.model.interpretable import load
from tests.tiny import SmallCNN, colour_coded_images

C = 3


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return colour_coded_images(24, 16, C)


def _convert(model: nn.Module, data, method: str) -> retrofit.InterpretableModel:
    return retrofit.convert(
        model,
        [data],
        method=method,
        n_features=4,
        per_class=2,
        epochs=1,
        rounds=1,
        linear_mix=False,
        progress=False,
    )


@pytest.fixture(scope="module")
def two_models(data) -> tuple[nn.Module, retrofit.InterpretableModel, retrofit.InterpretableModel]:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    return model, _convert(model, data, "qsenn"), _convert(model, data, "dense")


def _in_child(run: Callable[[], None], kill_at: int | None, patch: dict[str, Callable]) -> str:
    """Run `run` in a forked process that SIGKILLs itself at the `kill_at`-th call of any function
    in `patch` ("module.attr" -> original); returns "killed", "ok" or "failed"."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            torch.set_num_threads(1)
            calls = [0]

            def wrap(original: Callable) -> Callable:
                def step(*args, **kwargs):
                    if calls[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    calls[0] += 1
                    return original(*args, **kwargs)

                return step

            for dotted, original in patch.items():
                module, _, attr = dotted.rpartition(".")
                setattr(__import__(module, fromlist=[attr]), attr, wrap(original))
            run()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return "killed"
    return "ok" if os.WEXITSTATUS(status) == 0 else "failed"


def _logits(imodel: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return imodel(images)


def test_kill_9_at_every_write_step_of_a_save_loses_nothing(two_models, data, tmp_path) -> None:
    import retrofit.export.staging as staging
    import retrofit.export.write as saving

    model, old, new = two_models
    images = data[0][:4]
    old_logits, new_logits = _logits(old, images), _logits(new, images)
    patch = {
        "retrofit.export.write.save_file": saving.save_file,
        "retrofit.export.write.atomic_write_bytes": saving.atomic_write_bytes,
        "retrofit.export.write.fsync": staging.fsync,
        "retrofit.export.staging.fsync": staging.fsync,
        "os.replace": os.replace,
        "os.rename": os.rename,
        "shutil.rmtree": shutil.rmtree,
    }
    outcomes, restored = [], 0
    for step in range(40):
        root = tmp_path / f"step{step}"
        target = old.save_pretrained(root / "export")
        outcome = _in_child(lambda t=target: new.save_pretrained(t), step, patch)
        outcomes.append(outcome)
        restored += not target.exists()
        logits = _logits(load(target, model=model), images)
        assert torch.equal(logits, old_logits) or torch.equal(logits, new_logits), step
        new.save_pretrained(target)  # the next save works and removes superseded old exports
        assert torch.equal(_logits(load(target, model=model), images), new_logits)
        assert [p.name for p in root.iterdir()] == ["export"], "no leftovers of the killed save"
        if outcome == "ok":
            break
    assert outcomes[-1] == "ok" and outcomes.count("killed") >= 8, outcomes
    assert restored >= 1, "one kill lands between the two renames, and load restores the old export"


# ------------------------------------------------------------------- saving: what may go


def test_saving_keeps_a_users_readme_unless_overwrite(two_models, tmp_path) -> None:
    _, imodel, _ = two_models
    (tmp_path / "README.md").write_text("my notes")
    with pytest.raises(retrofit.ExportError, match="overwrite=True"):
        imodel.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my notes"
    imodel.save_pretrained(tmp_path, overwrite=True)
    assert "my notes" not in (tmp_path / "README.md").read_text()
    (tmp_path / "data.csv").write_text("keep")
    with pytest.raises(retrofit.ExportError, match="data.csv"):
        imodel.save_pretrained(tmp_path, overwrite=True)
    assert (tmp_path / "data.csv").read_text() == "keep"


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue().strip()


def test_the_cli_never_deletes_a_folder_it_did_not_write(tmp_path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    cache = tmp_path / "cache"
    for argv in (
        [
            "convert",
            "--model",
            "demo",
            "--train",
            "synthetic:train:8",
            "--out",
            str(precious),
            "--overwrite",
        ],
        ["convert", "--model", "demo", "--train", "synthetic:train:8", "--out", str(precious)],
        ["demo", "--out", str(precious), "--overwrite"],
        ["demo", "--out", str(precious)],
    ):
        code, err = _cli([*argv, "--cache-dir", str(cache)])
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert (precious / "thesis.tex").read_text() == "years of work"
        assert not cache.exists(), "refused before any work"
    a_file = tmp_path / "out.txt"
    a_file.write_text("x")
    code, err = _cli(["demo", "--out", str(a_file), "--cache-dir", str(cache)])
    assert code == 2 and "is a file" in err and a_file.read_text() == "x"


# ---------------------------------------------------------------------------- the cache


def _extract(
    model: nn.Module, data, cache: Path | None, batch_size: int = 2, **kwargs
) -> retrofit.FeatureSet:
    loader = DataLoader(TensorDataset(*data), batch_size=batch_size)
    return retrofit.extract(model, loader, cache_dir=cache, progress=False, **kwargs)


def test_several_processes_fill_one_cache_at_once(data, tmp_path) -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    reference = _extract(model, data, None, with_maps=True, batch_size=1)
    cache, go = tmp_path / "cache", tmp_path / "go"

    def run(i: int) -> Callable[[], None]:
        def extract() -> None:
            while not go.exists():
                time.sleep(0.005)
            time.sleep(0.02 * i)  # staggered: later processes find the earlier ones' chunks
            features = _extract(model, data, cache, with_maps=True, batch_size=1)
            save_file({"f": features.features, "m": features.maps.float()}, str(tmp_path / f"{i}"))

        return extract

    pids = []
    for i in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                torch.set_num_threads(1)
                run(i)()
                code = 0
            except BaseException:
                traceback.print_exc()  # the parent's assertion only sees the exit code
            finally:
                os._exit(code)
        pids.append(pid)
    go.touch()
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert codes == [0, 0, 0, 0]
    for i in range(4):
        result = load_file(str(tmp_path / f"{i}"))
        assert torch.equal(result["f"], reference.features)
        assert torch.equal(result["m"], reference.maps.float())
    (key,) = [p for p in cache.iterdir() if p.is_dir()]
    assert sorted(p.name for p in key.iterdir() if not p.name.startswith(".")) == ["store"]


def test_a_chunk_is_rewritten_when_another_process_removes_the_folder_meanwhile(
    tmp_path, monkeypatch
) -> None:
    """The race behind a flaky CI run: safetensors reports the vanished folder as its own error."""
    import retrofit.extraction.cache as cache_module
    import retrofit.io.files as safe_io

    cache = cache_module.FeatureCache(tmp_path, "key")
    real_save, calls = safe_io.save_file, []

    def save_after_a_finaliser_removed_the_chunks(tensors, filename, metadata=None) -> None:
        calls.append(filename)
        if len(calls) == 1:
            shutil.rmtree(cache.chunks)
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safe_io, "save_file", save_after_a_finaliser_removed_the_chunks)
    batch = cache_module.Batch(torch.ones(2, 3), torch.zeros(2, dtype=torch.long), torch.ones(2, 4))
    cache.write_chunk(0, "fingerprint", batch)
    assert len(calls) == 2
    assert cache.read_chunk(0, "fingerprint") is not None


def test_a_corrupted_store_is_detected_and_recomputed(data, tmp_path, caplog) -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    first = _extract(model, data, tmp_path)
    expected = first.features.clone(), first.logits.clone()  # the store's tensors may be mapped
    (store,) = tmp_path.glob("*/store/pooled.safetensors")
    raw = bytearray(store.read_bytes())
    raw[-3] ^= 0x40  # a flipped bit in the features: same size, valid header
    store.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="retrofit.extraction.cache"):
        again = _extract(model, data, tmp_path)
    assert "corrupted feature cache" in caplog.text
    assert torch.equal(again.features, expected[0]) and torch.equal(again.logits, expected[1])
    store.write_bytes(b"garbage")
    assert torch.equal(_extract(model, data, tmp_path).features, expected[0])


def test_kill_9_at_every_write_step_of_an_extraction_loses_nothing(data, tmp_path) -> None:
    import retrofit.io.files as safe_io

    torch.manual_seed(0)
    model = SmallCNN().eval()
    reference = _extract(model, data, None)
    patch = {
        "retrofit.io.files.save_file": safe_io.save_file,
        "os.replace": os.replace,
        "shutil.rmtree": shutil.rmtree,
    }
    outcomes = []
    for step in range(0, 60, 3):
        cache = tmp_path / f"step{step}"
        outcomes.append(_in_child(lambda c=cache: _extract(model, data, c), step, patch))
        assert torch.equal(_extract(model, data, cache).features, reference.features), step
        if outcomes[-1] == "ok":
            break
    assert outcomes[-1] == "ok" and outcomes.count("killed") >= 5, outcomes


def test_a_shuffled_loader_with_a_cache_is_warned_about(data, tmp_path) -> None:
    model = SmallCNN().eval()
    shuffled = DataLoader(TensorDataset(*data), batch_size=8, shuffle=True)
    with pytest.warns(UserWarning, match="shuffle=False"):
        retrofit.extract(model, shuffled, cache_dir=tmp_path, progress=False)
