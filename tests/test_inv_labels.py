"""Automatic labels: a map on a true object of the synthetic world is named by one of that
object's concepts (with the bundled tiny CLIP), far more often than a mismatched object's."""

from __future__ import annotations

import torch

from retrofit.datasets import SyntheticConceptDataset
from retrofit.inv import ClusterMap, ClusterMaps, auto_labels
from retrofit.inv.labels import revealed_crops
from retrofit.inv.reveal import REVEAL_FRACTIONS, reveal_masks


def test_reveal_masks_show_the_top_fractions_nested() -> None:
    saliency = torch.rand(20, 30, generator=torch.Generator().manual_seed(0))
    masks = reveal_masks(saliency)
    counts = masks.flatten(1).sum(dim=1).tolist()
    assert counts == [round(f * 600) for f in REVEAL_FRACTIONS]
    assert all(bool((a <= b).all()) for a, b in zip(masks[:-1], masks[1:]))
    assert float(saliency[masks[0]].min()) >= float(saliency[~masks[0]].max())


def test_revealed_crops_zoom_on_the_revealed_box() -> None:
    image = torch.zeros(3, 32, 32)
    image[0, 8:16, 8:16] = 1.0
    saliency = torch.zeros(32, 32)
    saliency[8:16, 8:16] = 1.0
    crops = revealed_crops(image, saliency)
    assert crops.shape == (len(REVEAL_FRACTIONS), 3, 32, 32)
    # 4.5 % of the pixels lie inside the square: the crop zooms onto red; at 30 % the ties
    # spread over the image and the crop is the whole, mostly black, image
    assert float(crops[1, 0].mean()) > 0.9
    assert float(crops[-1, 0].mean()) < 0.3


def test_labels_of_true_object_maps_name_their_concepts() -> None:
    dataset = SyntheticConceptDataset(6, split="test")
    images, maps, truth = [], [], []
    for i in range(len(dataset)):
        scene = dataset.render(i)
        images.append(scene.image)
        for j, mask in enumerate(scene.masks):
            maps.append(ClusterMap(i, "layer", 0, j, 1.0, (0,), mask.float()))
            names = scene.object_concepts[j].nonzero()[:, 0].tolist()
            truth.append({dataset.concept_names[k] for k in names})
    result = ClusterMaps(
        images=torch.stack(images),
        labels=dataset.labels,
        predictions=dataset.labels,
        probabilities=torch.ones(len(dataset)),
        layers=["layer"],
        maps=maps,
        stats=[],
    )
    labels = auto_labels(result, concepts=dataset.concept_names)
    assert [entry["map"] for entry in labels] == [m.id for m in maps]
    hits = sum(entry["label"] in names for entry, names in zip(labels, truth))
    shifted = sum(entry["label"] in names for entry, names in zip(labels, truth[1:] + truth[:1]))
    assert hits >= 0.6 * len(maps)
    assert hits > 2 * shifted
