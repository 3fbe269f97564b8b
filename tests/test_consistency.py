"""Explanation consistency: the score, the masked perturbation, the spurious world, errors,
every model family, and the check() / HTML wiring."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torchvision
import transformers
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.check import check
from retrofit.check.background_swap import fill_foreground, swap_background
from retrofit.check.consistency import (
    SIMILARITIES,
    ConsistencySettings,
    background_mask,
    consistency,
    heatmap_function,
    perturb_background,
    similarity,
)
from retrofit.datasets.spurious import SpuriousBackgroundDataset
from retrofit.datasets.spurious_classifier import load_spurious_classifier, spurious_world_settings
from retrofit.errors import ConfigError, DataError, LayerNotFoundError
from retrofit.fitting.reweight import consistency_weights
from tests.test_report_browser import CHROMIUM, PROBE, _chromium, _console
from tests.tiny import TINY_VIT

FAST = {"max_images": 16, "steps": 4, "batch_size": 16}


@pytest.fixture(scope="module")
def world() -> SpuriousBackgroundDataset:
    settings = spurious_world_settings()
    return SpuriousBackgroundDataset(
        48,
        n_classes=settings["n_classes"],
        image_size=settings["image_size"],
        split="test",
        background="shuffled",
    )


@pytest.mark.parametrize("kind", SIMILARITIES)
def test_a_heatmap_is_perfectly_consistent_with_itself(kind: str) -> None:
    heat = torch.rand(5, 12, 12)
    heat[0] = 0  # an all-zero map is uniform, and equal to itself
    assert torch.allclose(similarity(heat, heat.clone(), kind), torch.ones(5), atol=1e-6)
    moved = torch.roll(heat, shifts=6, dims=2)
    assert (similarity(heat[1:], moved[1:], kind) < 0.999).all()


def test_l1_similarity_is_one_minus_half_the_l1_distance_of_the_normalised_maps() -> None:
    heat = torch.zeros(1, 2, 2)
    heat[0, 0, 0] = 1.0
    other = torch.ones(1, 2, 2)
    # p = (1, 0, 0, 0), q = (1/4, ...): ½‖p − q‖₁ = ½(3/4 + 3/4) = 3/4
    assert similarity(heat, other, "l1").item() == pytest.approx(0.25)


def test_the_background_is_exactly_the_quantile_share_of_lowest_heat() -> None:
    heat = torch.rand(3, 10, 10)
    heat[2] = 0  # ties everywhere: the share is still exact
    mask = background_mask(heat, 0.3)
    assert mask.flatten(1).sum(dim=1).tolist() == [30, 30, 30]
    assert (heat[0][mask[0]].max() <= heat[0][~mask[0]].min()).item()


def test_the_perturbation_is_zero_outside_the_background_and_within_epsilon(world) -> None:
    model = load_spurious_classifier("spurious")
    images = torch.stack([world[i][0] for i in range(8)])
    background = torch.rand(8, *images.shape[2:], generator=torch.Generator().manual_seed(0)) < 0.5
    settings = ConsistencySettings(epsilon=0.05, steps=5)
    classes = model(images).argmax(dim=1)
    perturbed = perturb_background(model, images, classes, background, settings)
    change = perturbed - images
    outside = ~background[:, None].expand_as(images)
    assert torch.equal(change[outside], torch.zeros_like(change[outside]))
    assert change.abs().max() <= 0.05 + 1e-6
    assert change[~outside].abs().max() > 0.04, "PGD moves the background to the edge of the ball"
    assert perturbed.min() >= images.min() and perturbed.max() <= images.max()


def test_on_the_spurious_world_pgd_moves_the_shape_models_heatmap_more(world) -> None:
    """The measured direction, which is the opposite of the paper's intuition: the shortcut
    model reads the background's mean colour, which a ±8/255 perturbation cannot change, so its
    (diffuse, background-wide) heatmap stays put; the control reads the shape, is not
    adversarially robust, and PGD on the pixels around the object flips it and moves its
    heatmap. Where the heatmaps lie still tells the two apart."""
    masks = [world.mask(i) for i in range(len(world))]
    settings = {"max_images": 48, "steps": 5, "batch_size": 48}
    models = {kind: load_spurious_classifier(kind) for kind in ("spurious", "control")}
    scores = {
        kind: consistency(model, world, masks=masks, settings=settings, progress=False)
        for kind, model in models.items()
    }
    spurious, control = scores["spurious"], scores["control"]
    assert spurious.mean > control.mean + 0.2
    assert spurious.summary["flip_rate"] < control.summary["flip_rate"]
    assert spurious.summary["background"] == "foreground masks"
    assert set(spurious.summary["per_class"]) <= set(world.class_names)
    assert len(spurious.summary["worst_classes"]) == 5
    images = torch.stack([world[i][0] for i in range(len(world))])
    inside = {}
    for kind, model in models.items():
        heatmaps, _ = heatmap_function(model, images)
        heat = heatmaps(images, model(images).argmax(dim=1))
        inside[kind] = float((heat * torch.stack(masks)).sum() / heat.sum())
    assert inside["spurious"] < inside["control"] - 0.05


def test_the_spurious_world_has_exact_masks_and_shuffled_backgrounds() -> None:
    train = SpuriousBackgroundDataset(400, n_classes=8, split="train", correlation=0.9)
    test = SpuriousBackgroundDataset(400, n_classes=8, split="test", background="shuffled")
    assert 0.85 < train.aligned.float().mean() < 0.95
    assert test.aligned.float().mean() < 0.25
    image, label = train[3]
    mask = train.mask(3)
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and label == 3
    assert 0.03 < mask.float().mean() < 0.5
    assert torch.equal(train[3][0], image), "rendering is deterministic"
    with pytest.raises(ConfigError, match="background must be one of"):
        SpuriousBackgroundDataset(4, background="random")


@pytest.fixture(scope="module")
def imodel(world) -> retrofit.InterpretableModel:
    return retrofit_model(world)


def test_bad_input_raises_clear_errors(world, imodel) -> None:
    model = load_spurious_classifier("spurious")
    for bad, match in (
        ({"epsilon": 0.0}, "epsilon must be a positive"),
        ({"epsilon": -1.0}, "epsilon must be a positive"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"quantile": 0.0}, "quantile must lie strictly between 0 and 1"),
        ({"quantile": 1.5}, "quantile must lie strictly between 0 and 1"),
        ({"similarity": "kl"}, "similarity='kl' is not supported"),
        ({"epsilon_": 1}, "ConsistencySettings fields"),
    ):
        with pytest.raises(ConfigError, match=match):
            consistency(model, world, settings=bad, progress=False)
    with pytest.raises(DataError, match="images\\s+are 32x32"):
        consistency(model, world, masks=torch.ones(48, 16, 16), settings=FAST, progress=False)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 8)).eval()
    with pytest.raises(LayerNotFoundError, match="Grad-CAM needs a spatial layer"):
        consistency(flat, world, settings=FAST, progress=False)
    with pytest.raises(ConfigError, match="consistency=True"):
        check(imodel, world, min_consistency=0.5, progress=False)


def retrofit_model(world, finetune: str = "none", **settings) -> retrofit.InterpretableModel:
    return retrofit.convert(
        load_spurious_classifier("spurious"),
        DataLoader(world, batch_size=48),
        method="dense",
        finetune=finetune,
        progress=False,
        **settings,
    )


def test_interpretable_model_uses_the_exact_cam_and_check_reports_both_models(
    world, imodel, tmp_path
) -> None:
    result = consistency(imodel, world, settings=FAST, progress=False)
    assert result.summary["heatmap"].startswith("exact CAM")
    assert 0 < result.mean <= 1
    report = check(
        imodel,
        DataLoader(world, batch_size=16),
        reference=load_spurious_classifier("spurious"),
        pixel_methods=(),
        max_pixel_images=4,
        top_images=1,
        masks=[world.mask(i) for i in range(len(world))],
        consistency={**FAST, "max_images": 8, "examples": 2},
        min_consistency=0.0,
        max_consistency_flip_rate=1.0,
        progress=False,
    )
    section = report.results["consistency"]
    assert set(section) == {"interpretable", "original"}
    assert section["original"]["heatmap"].startswith("Grad-CAM")
    assert report.passed and {t.name for t in report.thresholds} == {
        "min_consistency",
        "max_consistency_flip_rate",
    }
    assert "consistency" in report.to_dict()
    path = report.to_html(tmp_path / "report.html")
    page = path.read_text()
    assert '<section id="consistency">' in page and 'href="#consistency"' in page
    assert page.count("consistency examples of the") == 2
    if CHROMIUM is not None:  # the page as a browser shows it: no console errors, images decode
        probed = tmp_path / "probed.html"
        probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
        run = _chromium(tmp_path, probed.as_uri(), "--dump-dom")
        console = _console(run.stderr)
        assert '<section id="consistency">' in run.stdout
        assert not [line for line in console if "broken image" in line]
        assert len([line for line in console if "ok image" in line]) == page.count("<img ")


def test_works_for_tiny_torchvision_and_transformers_models() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 64, 64, generator=generator)
    loader = DataLoader(TensorDataset(images, torch.zeros(4, dtype=torch.long)), batch_size=4)
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    vit = transformers.ViTForImageClassification(
        transformers.ViTConfig(**{**TINY_VIT, "image_size": 64}, num_labels=3)
    ).eval()
    for model, layer in ((resnet, "layer4"), (vit, "vit.layernorm")):
        result = retrofit.check.consistency(model, loader, settings={"steps": 2}, progress=False)
        assert result.summary["heatmap"] == f"Grad-CAM on {layer}"
        assert result.scores.shape == (4,) and (result.scores <= 1 + 1e-6).all()


def test_consistency_weights_have_mean_one_are_clipped_and_favour_inconsistent_samples() -> None:
    scores = torch.tensor([1.0, 0.99, 0.9, 0.5, 0.0])
    weights = consistency_weights(scores, clip=3.0, temperature=1.0)
    assert weights.mean().item() == pytest.approx(1.0)
    assert torch.all(weights[:-1] <= weights[1:]), "less consistent, more weight"
    assert weights.max() / weights.min() <= 9.0 + 1e-4
    assert torch.equal(consistency_weights(torch.ones(4), 3.0, 1.0), torch.ones(4))
    sharp = consistency_weights(scores, clip=100.0, temperature=0.5)
    assert sharp[-1] > weights[-1]


@pytest.mark.parametrize("finetune", ["bottleneck", "backbone"])
def test_convert_with_consistency_reweighting_records_its_rounds(world, finetune: str) -> None:
    settings = {"reweight_consistency": {"steps": 2, "batch_size": 24}}
    imodel = retrofit_model(
        world,
        finetune=finetune,
        epochs=2,
        reweight="consistency",
        reweight_rounds=2,
        reweight_images=24,
        **settings,
    )
    history = imodel.stats["history"]["reweight"]
    assert history["images"] == 24 and len(history["rounds"]) == 2
    assert all(0 <= r["consistency"] <= 1 for r in history["rounds"])
    assert history["rounds"][0]["weight_max"] > 1 > history["rounds"][0]["weight_min"]
    assert 0 <= history["consistency_after"] <= 1
    if finetune == "backbone":
        assert len(history["rounds"][0]["history"]["loss"]) == 1
    with torch.no_grad():
        assert imodel(world[0][0][None]).shape == (1, 8)


def test_reweighting_needs_a_loader_in_a_fixed_order_and_valid_settings(world) -> None:
    shuffled = DataLoader(world, batch_size=16, shuffle=True)
    with pytest.raises(DataError, match="shuffle=False"):
        retrofit.convert(
            load_spurious_classifier("spurious"),
            shuffled,
            method="dense",
            finetune="none",
            reweight="consistency",
            reweight_images=16,
            progress=False,
        )
    for bad, match in (
        ({"reweight": "focal"}, "reweight='focal' is not supported"),
        ({"reweight": "consistency", "reweight_rounds": 0}, "reweight_rounds must be"),
        ({"reweight": "consistency", "reweight_clip": 1.0}, "reweight_clip must be > 1"),
        ({"reweight": "consistency", "reweight_consistency": {"quantile": 1.0}}, "quantile"),
    ):
        with pytest.raises(ConfigError, match=match):
            retrofit.RetrofitConfig(**bad)


# -- the background swap -----------------------------------------------------------------------

SWAP = {"perturbation": "swap", "max_images": 48, "batch_size": 24}


@pytest.mark.parametrize("fill", ["diffuse", "mean"])
def test_a_donor_loses_its_object_and_the_swap_keeps_the_foreground(fill: str) -> None:
    images = torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    colours = torch.tensor([[0.2, 0.4, 0.6], [0.9, 0.1, 0.3], [0.5, 0.5, 0.0]])
    images[:] = colours[:, :, None, None]
    background = torch.ones(3, 10, 10, dtype=torch.bool)
    background[:, 2:7, 3:9] = False
    images[:, :, 2:7, 3:9] = 1.0  # a white object on each flat background
    donors = fill_foreground(images, background, fill)
    assert torch.allclose(donors, colours[:, :, None, None].expand_as(images), atol=1e-6)
    swapped = swap_background(images, background, donors.roll(-1, dims=0))
    foreground = ~background[:, None].expand_as(images)
    assert torch.equal(swapped[foreground], images[foreground])
    assert torch.allclose(swapped[0, :, 0, 0], colours[1]) and torch.allclose(
        swapped[2, :, 0, 0], colours[0]
    )


def test_on_the_spurious_world_a_background_swap_moves_the_shortcut_models_heatmap_more(
    world,
) -> None:
    """The paper's direction, measured with a non-adversarial perturbation: the object pasted
    on another image's clean background. The shortcut model's heatmap (and prediction) follows
    the new background; the control's stays on the object. Donors inpainted from the batch
    score like the true object-free renders."""
    masks = torch.stack([world.mask(i) for i in range(len(world))])
    clean = torch.stack([world.background_only((i + 1) % len(world)) for i in range(len(world))])
    scores = {}
    for kind in ("spurious", "control"):
        model = load_spurious_classifier(kind)
        scores[kind] = consistency(model, world, masks=masks, settings=SWAP, progress=False)
        given = consistency(
            model, world, masks=masks, settings=SWAP, backgrounds=clean, progress=False
        )
        assert abs(given.mean - scores[kind].mean) < 0.05
        assert given.summary["perturbation"] == "background swap (given object-free backgrounds)"
    spurious, control = scores["spurious"], scores["control"]
    assert spurious.mean < control.mean - 0.15
    assert spurious.summary["flip_rate"] > control.summary["flip_rate"] + 0.3
    assert control.summary["perturbation"] == "background swap (diffuse-filled)"
    assert (world.background_only(0) - world[0][0])[:, ~world.mask(0)].abs().max() == 0


def test_the_swap_needs_two_images_and_well_shaped_backgrounds(world) -> None:
    model = load_spurious_classifier("control")
    odd = consistency(
        model, world, settings={**SWAP, "max_images": 17, "batch_size": 16}, progress=False
    )
    assert odd.scores.shape == (17,), "a last batch of one image joins the one before"
    for bad, match in (
        ({"perturbation": "fgsm"}, "perturbation='fgsm' is not supported"),
        ({"perturbation": "swap", "swap_fill": "zero"}, "swap_fill='zero' is not supported"),
    ):
        with pytest.raises(ConfigError, match=match):
            consistency(model, world, settings=bad, progress=False)
    with pytest.raises(ConfigError, match="perturbation='swap'"):
        consistency(model, world, settings=FAST, backgrounds=torch.rand(4, 3, 32, 32))
    with pytest.raises(DataError, match="masks cover 3 images but 48 are used"):
        consistency(model, world, masks=torch.ones(3, 32, 32), settings=SWAP, progress=False)
    with pytest.raises(DataError, match="at least two images"):
        consistency(model, world, settings={**SWAP, "max_images": 1}, progress=False)
    with pytest.raises(DataError, match="backgrounds= images are \\(3, 16, 16\\)"):
        consistency(model, world, settings=SWAP, backgrounds=torch.rand(4, 3, 16, 16))
    with pytest.raises(DataError, match="donor backgrounds must have the images' shape"):
        swap_background(
            torch.rand(2, 3, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool), torch.rand(1, 3, 8, 8)
        )
    one = consistency(
        model,
        world,
        settings={**SWAP, "max_images": 1},
        backgrounds=[(world.background_only(1), 0)],
        progress=False,
    )
    assert one.scores.shape == (1,)


def test_a_rerun_with_a_cache_reuses_the_consistency_scores_and_a_change_recomputes(
    world, tmp_path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="retrofit.fitting.consistency_cache")
    swap = {"perturbation": "swap", "batch_size": 24}
    settings = {
        "reweight": "consistency",
        "reweight_rounds": 1,
        "reweight_images": 24,
        "cache_dir": str(tmp_path),
        "epochs": 2,
    }

    def run(**changed) -> tuple[int, int, retrofit.InterpretableModel]:
        caplog.clear()
        imodel = retrofit_model(
            world, "bottleneck", **{"reweight_consistency": swap, **settings, **changed}
        )
        messages = [r.getMessage() for r in caplog.records]
        return sum("stored" in m for m in messages), sum("reused" in m for m in messages), imodel

    stored, reused, first = run()
    assert (stored, reused) == (2, 0), "one round and the final pass"
    stored, reused, second = run()
    assert (stored, reused) == (0, 2)
    before, after = (m.stats["history"]["reweight"] for m in (first, second))
    assert after["consistency_after"] == before["consistency_after"]
    assert [r["consistency"] for r in after["rounds"]] == [
        r["consistency"] for r in before["rounds"]
    ]
    stored, reused, _ = run(reweight_consistency={**swap, "quantile": 0.6})
    assert (stored, reused) == (2, 0), "a changed setting recomputes"
    masks = [world.mask(i) for i in range(len(world))]
    caplog.clear()
    masked = retrofit.convert(
        load_spurious_classifier("spurious"),
        DataLoader(world, batch_size=48),
        method="dense",
        progress=False,
        masks=masks,
        reweight_consistency=swap,
        **settings,
    )
    assert masked.stats["history"]["reweight"]["background"] == "foreground masks"
    assert sum("stored" in r.getMessage() for r in caplog.records) == 2
    assert len(list((tmp_path / "consistency").glob("*.safetensors"))) == 6
    with pytest.raises(ConfigError, match="masks= are used only by reweight='consistency'"):
        retrofit.convert(load_spurious_classifier("spurious"), world, masks=masks, progress=False)


def test_cli_converts_with_consistency_reweighting(tmp_path) -> None:
    from retrofit.cli import main

    out = tmp_path / "out"
    convert = ["--quiet", "convert", "--model", "demo", "--train", "synthetic:train:60"]
    convert += ["--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--method", "dense"]
    convert += ["--finetune", "none", "--reweight", "consistency", "--reweight-rounds", "1"]
    assert main([*convert, "--reweight-images", "12", "--consistency-perturbation", "swap"]) == 0
    config = json.loads((out / "retrofit_config.json").read_text())["config"]
    assert config["reweight"] == "consistency" and config["reweight_rounds"] == 1
    assert config["reweight_consistency"] == {"perturbation": "swap"}
    assert list((tmp_path / "cache" / "consistency").glob("*.safetensors")), "E was cached"
    # check --consistency runs in tests/test_cli.py on the demo export (a check is slow)
    check = ["--quiet", "check", str(out), "--data", "synthetic:test:8"]
    assert main([*check, "--min-consistency", "0.5"]) == 2, "needs --consistency"
    assert main([*convert[:-4], "--overwrite", "--reweight-rounds", "1"]) == 2, "needs --reweight"
