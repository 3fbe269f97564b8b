"""The synthetic concept world: deterministic, consistent ground truth, clear errors."""

from __future__ import annotations

import hashlib
import logging
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from retrofit.datasets import (
    BACKGROUNDS,
    ConceptWorld,
    SyntheticConceptDataset,
    concept_world,
)
from retrofit.errors import ConfigError

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def train() -> SyntheticConceptDataset:
    return SyntheticConceptDataset(120, n_classes=50, image_size=64, seed=0, split="train")


def _digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.numpy().tobytes()).hexdigest()


def test_vocabulary_has_four_groups_and_enough_concepts() -> None:
    world = concept_world(50, 0)
    assert world.n_concepts >= 20
    assert list(world.concept_groups) == ["shape", "colour", "texture", "background"]
    flat = [name for names in world.concept_groups.values() for name in names]
    assert flat == world.concept_names
    assert len(set(flat)) == len(flat)
    assert {"circle", "red", "striped", "dotted", "checkered", "grass background"} <= set(flat)


@pytest.mark.parametrize("n_classes", [10, 50, 200])
def test_signatures_are_unique_sized_and_not_nested(n_classes: int) -> None:
    world = ConceptWorld(n_classes, seed=3)
    sig = world.class_signatures
    assert sig.shape == (n_classes, world.n_concepts) and sig.dtype == torch.bool
    sizes = sig.sum(1)
    assert int(sizes.min()) >= 3 and int(sizes.max()) <= 5
    inter = (sig[:, None] & sig[None]).sum(-1)
    nested = inter == sizes[:, None]  # row's signature contained in column's
    assert not (nested & ~torch.eye(n_classes, dtype=torch.bool)).any()
    assert (inter.fill_diagonal_(0) > 0).any(), "signatures should share concepts"
    assert len(set(world.class_names)) == n_classes


def test_world_is_deterministic_and_seed_dependent() -> None:
    a, b, c = ConceptWorld(50, 0), ConceptWorld(50, 0), ConceptWorld(50, 1)
    assert torch.equal(a.class_signatures, b.class_signatures)
    assert a.class_names == b.class_names
    assert not torch.equal(a.class_signatures, c.class_signatures)
    assert concept_world(50, 0) is concept_world(50, 0)


def test_dataset_is_deterministic(train: SyntheticConceptDataset) -> None:
    again = SyntheticConceptDataset(120, n_classes=50, image_size=64, seed=0, split="train")
    assert again.captions == train.captions
    assert torch.equal(again.concepts, train.concepts)
    for i in (0, 7, 119):
        assert torch.equal(again[i][0], train[i][0])
    # a longer dataset of the same split starts with the same images
    longer = SyntheticConceptDataset(130, n_classes=50, image_size=64, seed=0, split="train")
    assert torch.equal(longer[5][0], train[5][0])


def test_items_have_expected_types_and_shapes(train: SyntheticConceptDataset) -> None:
    image, label = train[3]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert isinstance(label, int) and 0 <= label < 50
    assert train[-1][1] == train[len(train) - 1][1]
    with pytest.raises(IndexError):
        train[len(train)]
    images, labels = next(iter(DataLoader(train, batch_size=16)))
    assert images.shape == (16, 3, 64, 64) and labels.shape == (16,)
    assert len(train.class_names) == 50 and len(train.captions) == 120
    assert train.concepts.shape == (120, len(train.concept_names))
    assert train.labels.bincount(minlength=50).min() >= 2  # balanced


def test_pil_and_transform() -> None:
    ds = SyntheticConceptDataset(4, image_size=48, as_pil=True)
    image, _ = ds[0]
    assert isinstance(image, Image.Image) and image.size == (48, 48) and image.mode == "RGB"
    flipped = SyntheticConceptDataset(4, image_size=48, transform=lambda t: t.flip(-1))
    plain = SyntheticConceptDataset(4, image_size=48)
    assert torch.equal(flipped[1][0], plain[1][0].flip(-1))


@pytest.mark.parametrize("size", [32, 224])
def test_extreme_image_sizes_render(size: int) -> None:
    ds = SyntheticConceptDataset(3, n_classes=10, image_size=size, seed=1)
    scene = ds.render(2)
    assert scene.image.shape == (3, size, size)
    assert scene.masks.shape[1:] == (size, size)
    assert bool(scene.masks.flatten(1).any(1).all())


def test_concepts_contain_exactly_their_own_signature(train: SyntheticConceptDataset) -> None:
    sig = train.class_signatures
    concepts = train.concepts
    contained = (sig[None] & ~concepts[:, None]).sum(-1) == 0  # N x C
    assert contained[torch.arange(len(train)), train.labels].all()
    assert (contained.sum(1) == 1).all(), "the class must be identifiable from the concepts"
    # exactly one background per image
    bg = torch.tensor([train.concept_names.index(b) for b in BACKGROUNDS])
    assert (concepts[:, bg].sum(1) == 1).all()


def test_masks_are_nonempty_disjoint_and_match_concepts(train: SyntheticConceptDataset) -> None:
    for i in range(0, len(train), 7):
        scene = train.render(i)
        n = scene.masks.shape[0]
        assert 1 <= n <= 3
        assert scene.masks.shape == (n, 64, 64) and scene.masks.dtype == torch.bool
        assert bool(scene.masks.flatten(1).sum(1).min() >= 10), "every object must stay visible"
        assert int(scene.masks.sum(0).max()) <= 1, "visible masks do not overlap"
        assert torch.equal(scene.image, train[i][0])
        assert scene.object_concepts.shape == (n, len(train.concept_names))
        assert (scene.object_concepts.sum(1) == 3).all()  # a shape, a colour, a texture
        union = scene.object_concepts.any(0) | scene.concepts
        assert torch.equal(union, scene.concepts)
        masks, object_concepts = train.masks(i)
        assert torch.equal(masks, scene.masks) and torch.equal(
            object_concepts, scene.object_concepts
        )


def test_captions_name_the_concepts(train: SyntheticConceptDataset) -> None:
    names = train.concept_names
    for caption, present in zip(train.captions, train.concepts):
        words = set(re.findall(r"[a-z]+", caption))
        for k, name in enumerate(names):
            named = name in caption if " " in name else name in words
            assert named == bool(present[k]), (caption, name)
    assert re.fullmatch(r"an? [a-z ,]+ on a [a-z]+ background", train.captions[0])


def test_splits_are_disjoint() -> None:
    digests = {}
    for split in ("train", "val", "test"):
        ds = SyntheticConceptDataset(60, n_classes=10, image_size=32, seed=0, split=split)
        assert ds.world is concept_world(10, 0)
        digests[split] = {_digest(ds[i][0]) for i in range(len(ds))}
        assert len(digests[split]) == len(ds)
    assert not digests["train"] & digests["val"]
    assert not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]


def test_shared_world_argument() -> None:
    world = ConceptWorld(12, seed=5)
    ds = SyntheticConceptDataset(5, world=world, split="val")
    assert ds.world is world and len(ds.class_names) == 12
    assert ds.labels.max() < 12


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_classes": 9}, "n_classes"),
        ({"n_classes": 201}, "n_classes"),
        ({"n_classes": 50.0}, "n_classes"),
        ({"image_size": 31}, "image_size"),
        ({"image_size": 225}, "image_size"),
        ({"n_images": -1}, "n_images"),
        ({"split": "holdout"}, "split"),
        ({"transform": 3}, "transform"),
        ({"world": "world"}, "world"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict, message: str) -> None:
    args = {"n_images": 4, **kwargs}
    with pytest.raises(ConfigError, match=message):
        SyntheticConceptDataset(**args)


def test_world_rejects_bad_class_count() -> None:
    with pytest.raises(ConfigError, match="between 10 and 200"):
        ConceptWorld(n_classes=500)


def test_empty_dataset() -> None:
    ds = SyntheticConceptDataset(0)
    assert len(ds) == 0 and ds.concepts.shape == (0, len(ds.concept_names))


def test_generation_throughput_is_logged() -> None:
    start = time.perf_counter()
    ds = SyntheticConceptDataset(500, image_size=64, seed=11)
    batch = np.stack([ds[i][0].numpy() for i in range(len(ds))])
    seconds = time.perf_counter() - start
    assert batch.shape == (500, 3, 64, 64)
    logger.info("synthetic world: %.0f images/s at 64x64 (draw + render)", len(ds) / seconds)
