"""Concept naming and alignment: CLIP encoders, vocabularies, scores, `name_features`, `align_features`."""

from retrofit.concepts.align import AlignmentReport, align_features, cos3_similarity
from retrofit.concepts.encoders import (
    ENCODERS,
    ConceptEncoder,
    HFCLIPEncoder,
    OpenCLIPEncoder,
    Preprocess,
    available_encoders,
    embed_concepts,
    embed_images,
    load_encoder,
    load_tiny_clip,
    register_encoder,
    tiny_clip_settings,
    unregister_encoder,
)
from retrofit.concepts.naming import NamingResult, apply_concepts, name_features
from retrofit.concepts.scoring import METHODS, auc_scores, score_matrix
from retrofit.concepts.settings import ConceptSettings, parse_concepts
from retrofit.concepts.stored import ConceptsNotRestoredWarning, ConceptsSummary
from retrofit.concepts.vocabulary import (
    CURATED,
    DEFAULT_TEMPLATES,
    FilterResult,
    Vocabulary,
    clean_concepts,
    curated_concepts,
    filter_vocabulary,
    general_words,
    load_vocabulary,
)

__all__ = [
    "CURATED",
    "DEFAULT_TEMPLATES",
    "ENCODERS",
    "METHODS",
    "AlignmentReport",
    "ConceptEncoder",
    "ConceptSettings",
    "ConceptsNotRestoredWarning",
    "ConceptsSummary",
    "FilterResult",
    "HFCLIPEncoder",
    "NamingResult",
    "OpenCLIPEncoder",
    "Preprocess",
    "Vocabulary",
    "align_features",
    "apply_concepts",
    "auc_scores",
    "available_encoders",
    "clean_concepts",
    "cos3_similarity",
    "curated_concepts",
    "embed_concepts",
    "embed_images",
    "filter_vocabulary",
    "general_words",
    "load_encoder",
    "load_tiny_clip",
    "load_vocabulary",
    "name_features",
    "parse_concepts",
    "register_encoder",
    "score_matrix",
    "tiny_clip_settings",
    "unregister_encoder",
]
