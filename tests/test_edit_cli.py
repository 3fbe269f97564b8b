"""`retrofit edit` and the report's editor: real edits clicked in headless Chromium, exported,
applied from the command line, re-checked; bad edits files fail cleanly with nothing written."""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import retrofit
from retrofit.cli import DEMO_SPEC, main
from retrofit.datasets import load_demo_classifier
from retrofit.editing.apply import head_fingerprint
from retrofit.editing.file import check_edits_document, check_fingerprint, edits_document
from retrofit.io.data_specs import open_data
from tests.test_report_browser import CHROMIUM, _chromium, _console

TRAIN = "synthetic:train:120"
TEST = "synthetic:test:10"
CHECK = ["--max-pixel-images", "1"]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small qsenn export of the demo CNN with a report whose data the CLI can reopen."""
    folder = tmp_path_factory.mktemp("edit") / "original"
    train = open_data(TRAIN, None)
    imodel = retrofit.convert(
        load_demo_classifier(),
        DataLoader(train, batch_size=64),
        method="qsenn",
        n_features=10,
        per_class=3,
        rounds=1,
        epochs=2,
        class_names=train.class_names,
        cache_dir=str(folder.parent / "cache"),
        progress=False,
    )
    imodel.save_pretrained(folder, include_backbone=True, base_model=DEMO_SPEC)
    report = retrofit.check(
        imodel, DataLoader(open_data(TEST, None), batch_size=64), max_pixel_images=0, progress=False
    )
    report.meta["data"] = TEST
    report.to_json(folder / "report.json")
    report.to_html(folder / "report.html")
    return folder


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _apply(export: Path, edits: Path, out: Path, *extra: str) -> int:
    cache = str(export.parent / "cache")
    return main(
        ["--quiet", "edit", str(export), "--apply", str(edits), "--out", str(out)]
        + ["--train", TRAIN, "--cache-dir", cache, *CHECK, *extra]
    )


def test_cli_edit_applies_rechecks_and_leaves_the_original(export: Path, tmp_path: Path) -> None:
    before = _digest(export)
    imodel = retrofit.load(export)
    used = torch.nonzero(imodel.head.weight[0]).flatten().tolist()
    unused = [j for j in range(imodel.n_features) if imodel.head.weight[1, j] == 0]
    edits = [
        {"op": "forbid", "class": imodel.class_names[0], "feature": used[0]},
        {"op": "pin", "class": 1, "feature": unused[0]},
        {"op": "rename", "feature": 2, "name": "watermark"},
    ]
    file = _write(tmp_path / "edits.json", edits_document(head_fingerprint(imodel), edits))
    out = tmp_path / "edited"
    assert _apply(export, file, out) == 0
    assert {"model.safetensors", "report.html", "report.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    edited = retrofit.load(out)
    assert edited.head.weight[0, used[0]] == 0 and edited.head.weight[1, unused[0]] != 0
    assert edited.feature_name(2) == "watermark"
    assert edited.edits[0]["previous_fingerprint"] == head_fingerprint(imodel)
    assert "watermark" in (out / "report.html").read_text(encoding="utf-8")
    assert "## Human edits" in (out / "README.md").read_text(encoding="utf-8")
    assert _digest(export) == before


def test_bad_edits_files_fail_cleanly_without_writing(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    imodel = retrofit.load(export)
    fingerprint = head_fingerprint(imodel)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "retrofit-edits", "edits": [', encoding="utf-8")
    cases = [
        (broken, "is not valid JSON"),
        (_write(tmp_path / "list.json", [{"op": "drop", "feature": 0}]), "not a retrofit edits"),
        (
            _write(
                tmp_path / "other.json", edits_document("0" * 32, [{"op": "drop", "feature": 0}])
            ),
            "fingerprint",
        ),
        (
            _write(
                tmp_path / "conflict.json",
                edits_document(
                    fingerprint,
                    [
                        {"op": "pin", "class": 0, "feature": 1},
                        {"op": "forbid", "class": 0, "feature": 1},
                    ],
                ),
            ),
            "conflicts with edit 0",
        ),
        (
            _write(
                tmp_path / "unknown.json",
                edits_document(fingerprint, [{"op": "drop", "feature": "waterrmark"}]),
            ),
            "unknown feature",
        ),
    ]
    for file, message in cases:
        out = tmp_path / f"out-{file.stem}"
        assert _apply(export, file, out) == 2, file.name
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()
    same = _write(tmp_path / "ok.json", edits_document(fingerprint, [{"op": "drop", "feature": 0}]))
    assert _apply(export, same, export) == 2
    assert "original stays untouched" in capsys.readouterr().err


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)"
)
def test_browser_editor_clicks_export_and_apply(export: Path, tmp_path: Path) -> None:
    imodel = retrofit.load(export)
    weight = imodel.head.weight
    used = torch.nonzero(weight[0]).flatten().tolist()
    unused = [j for j in range(imodel.n_features) if weight[1, j] == 0]
    page = (export / "report.html").read_text(encoding="utf-8")
    assert page.count("<script>") == 1 and 'id="edit-table"' in page
    driver = f"""<script>window.addEventListener("load", () => {{
  const cell = (c, j) => document.querySelector(
    `#edit-table td[data-class="${{c}}"][data-feature="${{j}}"]`);
  cell(0, {used[0]}).click();
  cell(1, {unused[0]}).click(); cell(1, {unused[0]}).click();
  cell(2, 0).click(); cell(2, 0).click(); cell(2, 0).click();
  const name = document.querySelector('#edit-table input.rename[data-feature="3"]');
  name.value = "grass"; name.dispatchEvent(new Event("input", {{bubbles: true}}));
  document.querySelector('#edit-table input.drop[data-feature="{used[1]}"]').click();
  document.getElementById("export-edits").click();
  document.body.dataset.driven = "yes";
}});</script>"""
    driven = tmp_path / "driven.html"
    driven.write_text(page.replace("</body>", driver + "</body>"), encoding="utf-8")
    run = _chromium(tmp_path, driven.as_uri(), "--dump-dom")
    assert _console(run.stderr) == []
    assert 'data-driven="yes"' in run.stdout
    assert re.search(rf'data-class="0" data-feature="{used[0]}"[^>]*data-edit="forbid"', run.stdout)
    text = re.search(r'<textarea id="edits-json"[^>]*>(.*?)</textarea>', run.stdout, re.S)
    document = json.loads(html.unescape(text.group(1)))
    assert document["model_fingerprint"] == head_fingerprint(imodel)
    assert document["edits"] == [
        {"op": "forbid", "class": 0, "feature": used[0]},
        {"op": "pin", "class": 1, "feature": unused[0]},
        {"op": "drop", "feature": used[1]},
        {"op": "rename", "feature": 3, "name": "grass"},
    ]
    # applied through the API: the command line's path (and its re-check) is tested above
    check_fingerprint(check_edits_document(document), head_fingerprint(imodel), "edits.json")
    features = retrofit.extract(
        imodel.backbone,
        DataLoader(open_data(TRAIN, None), batch_size=64),
        cache_dir=str(export.parent / "cache"),
        progress=False,
    )
    edited = retrofit.edit(imodel, document["edits"], features).model
    w = edited.head.weight
    assert w[0, used[0]] == 0 and w[1, unused[0]] != 0 and not bool((w[:, used[1]] != 0).any())
    assert edited.feature_name(3) == "grass"
