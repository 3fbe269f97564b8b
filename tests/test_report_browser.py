"""The HTML report in a real headless Chromium: loads cleanly, every section and image shows.

Chromium is driven from the command line (no extra Python dependency): `--dump-dom` gives the
DOM after load, `--enable-logging=stderr` prints every console message as a "CONSOLE" line,
`--screenshot` saves what the page looks like to test-artifacts/. The report's only script is
its editor's (tests/test_edit_cli.py clicks through it), so any console message is a fault; to check that each inlined image really decodes, a
copy of the report gets a probe script that logs every image's load state.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from retrofit.check import Report, check
from retrofit.datasets import SyntheticConceptDataset
from tests.test_check_faithfulness import FAST, ColourNet, build_imodel

CHROMIUM = next(
    (
        shutil.which(name)
        for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
        if shutil.which(name)
    ),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (apt-get install -y chromium); CI installs it",
)
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SECTION_IDS = ("summary", "assignment", "features", "explanations", "faithfulness", "metrics")
PROBE = """<script>window.addEventListener("load", () => {
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) console.error("broken image: " + img.alt);
    else console.info("ok image: " + img.alt);
  }
  document.body.dataset.probed = "yes";
});</script>"""


def _chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        *args,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class _Resources(HTMLParser):
    """Every tag and the URLs a page would fetch (src, href, srcset, CSS url())."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data") and value is not None:
                self.urls.append(value)
            if name == "id" and value:
                self.ids.append(value)

    def handle_data(self, data: str) -> None:
        self.urls.extend(re.findall(r"url\(([^)]*)\)", data))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Report, Path]:
    dataset = SyntheticConceptDataset(40, n_classes=10, image_size=32, split="test", seed=0)
    images = torch.stack([dataset[i][0] for i in range(16)])
    colours = [dataset.concept_names.index(c) for c in ("red", "green", "blue")]
    # classes read the colour detectors their signature names, plus brightness
    signatures = dataset.class_signatures[:, colours].float()
    weight = torch.cat([signatures * 2 - 0.5, torch.full((10, 1), 0.5)], dim=1)
    imodel = build_imodel(ColourNet(), images, weight)
    for j, name in enumerate(("red", "green", "blue", "bright")):
        imodel.concepts[j] = [{"concept": name, "score": 0.9 - 0.1 * j}]
    result = check(
        imodel,
        DataLoader(dataset, batch_size=20),
        masks=dataset.masks,
        attributes=dataset.class_signatures,
        max_pixel_images=8,
        top_images=4,
        min_accuracy=0.0,
        max_dependence=0.3,
        **FAST,
    )
    path = result.to_html(tmp_path_factory.mktemp("report") / "report.html")
    return result, path


def test_report_is_one_self_contained_file(report) -> None:
    _, path = report
    parser = _Resources()
    parser.feed(path.read_text(encoding="utf-8"))
    assert parser.tags.count("script") == 1 and "link" not in parser.tags  # the editor's
    external = [u for u in parser.urls if not (u.startswith("data:image/") or u.startswith("#"))]
    assert external == []
    assert set(SECTION_IDS) <= set(parser.ids)


def test_report_loads_without_console_errors_and_shows_every_section(report, tmp_path) -> None:
    result, path = report
    run = _chromium(tmp_path, path.as_uri(), "--dump-dom")
    assert _console(run.stderr) == []
    dom = run.stdout
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in dom, section
    n_features = result.meta["n_features"]
    assert len(re.findall(r'<div class="card" id="feature-\d+">', dom)) == n_features
    assert len(re.findall(r'<div class="card" id="explanation-\d+">', dom)) == 8
    assert "FAILED" in dom and "max_dependence" in dom  # the failed threshold is shown
    assert "<h3>red</h3>" in dom and "red 0.90" in dom  # a named feature card


def test_every_inlined_image_decodes_in_the_browser(report, tmp_path) -> None:
    _, path = report
    text = path.read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    run = _chromium(tmp_path, probed.as_uri(), "--dump-dom")
    console = _console(run.stderr)
    assert 'data-probed="yes"' in run.stdout
    assert not [line for line in console if "broken image" in line]
    assert len([line for line in console if "ok image" in line]) == text.count("<img ")


def test_the_harness_catches_errors_and_broken_images(tmp_path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img alt="bad" src="data:image/png;base64,AAAA">'
        '<script>console.error("deliberate");</script>' + PROBE + "</body></html>",
        encoding="utf-8",
    )
    console = _console(_chromium(tmp_path, page.as_uri(), "--dump-dom").stderr)
    assert any("deliberate" in line for line in console)
    assert any("broken image: bad" in line for line in console)


def test_screenshot_is_saved_as_an_artifact(report, tmp_path) -> None:
    _, path = report
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "check_report.png"
    shot.unlink(missing_ok=True)
    _chromium(tmp_path, path.as_uri(), "--window-size=1280,7000", f"--screenshot={shot}")
    with Image.open(shot) as image:
        assert image.size == (1280, 7000)
        grey = image.convert("L").resize((64, 350))
        assert len(grey.getcolors(maxcolors=256) or range(257)) > 20  # not a blank page
