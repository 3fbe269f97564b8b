"""retrofit: turn any trained image classifier into a globally interpretable one, post hoc."""

from retrofit._version import __version__
from retrofit.api import convert
from retrofit.check import CheckConfig, CheckFailedError, Report, check
from retrofit.config import RetrofitConfig
from retrofit.edit import EditResult, edit
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
from retrofit.explanation import Explanation
from retrofit.features import extract
from retrofit.featureset import FeatureSet
from retrofit.inv import cluster_maps
from retrofit.model import InterpretableModel, load

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
