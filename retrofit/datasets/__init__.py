"""Datasets with known ground truth: the synthetic concept world and its demo classifier."""

from retrofit.datasets.demo import DemoCNN, demo_world_settings, load_demo_classifier
from retrofit.datasets.synthetic import (
    BACKGROUNDS,
    COLOURS,
    GROUPS,
    SHAPES,
    TEXTURES,
    ConceptWorld,
    Scene,
    SyntheticConceptDataset,
    concept_world,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "GROUPS",
    "SHAPES",
    "TEXTURES",
    "ConceptWorld",
    "DemoCNN",
    "Scene",
    "SyntheticConceptDataset",
    "concept_world",
    "demo_world_settings",
    "load_demo_classifier",
]
