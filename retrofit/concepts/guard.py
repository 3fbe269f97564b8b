"""Which concept encoder names the features: the shipped tiny CLIP only on its own world.

The tiny CLIP was trained on retrofit's synthetic scenes and on nothing else; on photos it
would name features with a model that has never seen one. So it is the default only for the
synthetic world's datasets (those that say `synthetic_world = True`); any other data needs an
explicit encoder, and the tiny CLIP asked for by name on other data gets a warning.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from retrofit.errors import ConfigError

logger = logging.getLogger(__name__)

TINY = "tiny"
REAL_ENCODERS = "encoder='open_clip:ViT-B-32:/path/to/weights.safetensors' or encoder='hf:DIR'"


def is_synthetic_world(data: Any) -> bool:
    """True when `data` (a loader, Subset or Dataset, however nested) is retrofit's synthetic
    concept world; False for anything else, tensors and feature sets included."""
    seen = 0
    while data is not None and seen < 8:
        if getattr(data, "synthetic_world", False) is True:
            return True
        data = getattr(data, "dataset", None)
        seen += 1
    return False


def _is_tiny(encoder: Any) -> bool:
    spec = encoder if isinstance(encoder, str) else getattr(encoder, "spec", None)
    return isinstance(spec, str) and (
        spec == TINY or spec.startswith((f"{TINY}:", f"open_clip:{TINY}"))
    )


def resolve_encoder(encoder: Any, data: Any) -> Any:
    """The encoder to name with: `encoder` when given (a warning when it is the tiny CLIP and
    `data` is not the synthetic world), the tiny CLIP on the synthetic world, else an error
    that says which encoder to pass."""
    synthetic = is_synthetic_world(data)
    if encoder is None:
        if synthetic:
            return TINY
        raise ConfigError(
            "No concept encoder was given, and the shipped tiny CLIP knows only retrofit's "
            f"synthetic scenes: pass {REAL_ENCODERS} (a CLIP that has seen images like yours), "
            "or encoder='tiny' to use the tiny CLIP anyway."
        )
    if _is_tiny(encoder) and not synthetic:
        message = (
            "The tiny CLIP was trained on retrofit's synthetic scenes only; on other images its "
            f"names are not to be trusted: pass {REAL_ENCODERS}."
        )
        logger.warning(message)
        warnings.warn(message, UserWarning, stacklevel=3)
    return encoder
