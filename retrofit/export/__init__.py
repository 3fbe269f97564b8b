"""Save and load interpretable models: safetensors + JSON + a model card, nothing pickled.

An export folder holds
  model.safetensors      bottleneck (selected indices, mean, log_std, optional mix) and head
                         (int8 assignment + scale when weight == scale·assignment, else weights)
  retrofit_config.json   schema version, base model spec + fingerprint, preprocessing, classes,
                         features with their concepts, the RetrofitConfig, stats, versions,
                         file hashes
  README.md              model card with the global explanation
  backbone.safetensors   the backbone's weights (only with include_backbone=True)
Saving writes a temporary sibling folder and swaps it in (staging.py), so an interrupted save
leaves the previous export intact. Loading checks every file against the config (schema.py)
before building anything; nothing in the folder is executed or unpickled, and a base model spec
that would run code is refused unless trust_remote_code=True (retrofit.io.trust).

This package never imports retrofit.model.interpretable: the model calls in (save_pretrained,
from_pretrained), and reading returns plain parts (ExportParts) that the model assembles.
"""

from retrofit.export.hub import push_to_hub, resolve_export
from retrofit.export.layout import BACKBONE_FILE, CONFIG_FILE, MODEL_FILE, README_FILE
from retrofit.export.read import ExportParts, read_export
from retrofit.export.schema import read_config
from retrofit.export.staging import check_save_target, recover_interrupted_save
from retrofit.export.write import save

__all__ = [
    "BACKBONE_FILE",
    "CONFIG_FILE",
    "MODEL_FILE",
    "README_FILE",
    "ExportParts",
    "check_save_target",
    "push_to_hub",
    "read_config",
    "read_export",
    "recover_interrupted_save",
    "resolve_export",
    "save",
]
