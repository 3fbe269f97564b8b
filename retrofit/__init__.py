"""retrofit: turn any trained image classifier into a globally interpretable one, post hoc."""

from retrofit import _moved
from retrofit._version import __version__
from retrofit.check import CheckConfig, CheckFailedError, Report, check
from retrofit.config import RetrofitConfig
from retrofit.editing.apply import EditResult, edit
from retrofit.errors import (
    CacheError,
    ConfigError,
    DataError,
    EditError,
    ExportCorruptedError,
    ExportError,
    ExportNotFoundError,
    ExportSchemaError,
    ExportVersionError,
    FeatureError,
    FingerprintMismatchError,
    InfeasibleSettingsError,
    LayerNotFoundError,
    ModelError,
    RetrofitError,
    SolverError,
    UntrustedCodeError,
)
from retrofit.extraction.features import extract
from retrofit.extraction.featureset import FeatureSet
from retrofit.fitting.convert import convert
from retrofit.inv import cluster_maps
from retrofit.model.explanation import Explanation
from retrofit.model.interpretable import InterpretableModel, load

_moved.install()

__all__ = [
    "CacheError",
    "CheckConfig",
    "CheckFailedError",
    "ConfigError",
    "DataError",
    "EditError",
    "EditResult",
    "Explanation",
    "ExportCorruptedError",
    "ExportError",
    "ExportNotFoundError",
    "ExportSchemaError",
    "ExportVersionError",
    "FeatureError",
    "FingerprintMismatchError",
    "FeatureSet",
    "InfeasibleSettingsError",
    "InterpretableModel",
    "LayerNotFoundError",
    "ModelError",
    "Report",
    "RetrofitConfig",
    "RetrofitError",
    "SolverError",
    "UntrustedCodeError",
    "__version__",
    "check",
    "cluster_maps",
    "convert",
    "edit",
    "extract",
    "load",
]
