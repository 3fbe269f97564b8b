"""INV (Bianchi et al., IJCAI 2024): layer-wise cluster maps, their labels and the reveal game."""

from retrofit.inv.answers import AnswersError, read_answers, score_answers
from retrofit.inv.explanation import auto_label_records, layer_explanation
from retrofit.inv.labels import auto_labels
from retrofit.inv.maps import ClusterMap, ClusterMaps, cluster_maps
from retrofit.inv.reveal import REVEAL_FRACTIONS, reveal_curves

__all__ = [
    "REVEAL_FRACTIONS",
    "AnswersError",
    "ClusterMap",
    "ClusterMaps",
    "auto_label_records",
    "auto_labels",
    "cluster_maps",
    "layer_explanation",
    "read_answers",
    "reveal_curves",
    "score_answers",
]
