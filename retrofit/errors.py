"""One error hierarchy: every problem a user can cause is a RetrofitError that says what and how to fix it."""

from __future__ import annotations


class RetrofitError(Exception):
    """Base class of every error retrofit raises on purpose."""


class ConfigError(RetrofitError, ValueError):
    """An argument or setting is invalid (wrong value, type or combination)."""


class DataError(RetrofitError, ValueError):
    """The data loader yields something retrofit cannot use (empty, bad labels, bad shapes)."""


class ModelError(RetrofitError):
    """The model cannot be used as given (output width, unsupported output type)."""


class LayerNotFoundError(ModelError, LookupError):
    """The feature layer does not exist or cannot be detected automatically."""


class FeatureError(RetrofitError, ValueError):
    """Extracted features are unusable (non-finite values, wrong shape)."""


class CacheError(RetrofitError, OSError):
    """The feature cache cannot be written or read (permissions, corruption, mismatch)."""


class InfeasibleSettingsError(ConfigError):
    """Settings that no assignment can satisfy (e.g. per_class > n_features)."""


class DistributedError(RetrofitError, RuntimeError):
    """The ranks of a distributed extraction disagree, or one of them failed."""


class SolverError(RetrofitError, RuntimeError):
    """The optimisation solver failed or is not available."""


class ExportError(RetrofitError):
    """An export folder is missing, corrupted or inconsistent."""


class ExportNotFoundError(ExportError, FileNotFoundError):
    """The export folder or one of its files does not exist."""


class ExportCorruptedError(ExportError):
    """A file of the export is truncated, corrupted or unreadable."""


class ExportSchemaError(ExportError):
    """retrofit_config.json or the tensors do not have the expected structure or shapes."""


class ExportVersionError(ExportError):
    """The export was written with a schema version this retrofit cannot read."""


class FingerprintMismatchError(ExportError):
    """The backbone is not the one the export was made from."""


class EditError(ConfigError):
    """A human edit is malformed, names an unknown class or feature, or conflicts with another."""


class UntrustedCodeError(ExportError):
    """Loading would run code or read files the export names; needs trust_remote_code=True."""


class WeightsFileError(ModelError, ValueError):
    """A weights file (--weights) is not safetensors, or its tensors do not fit the model."""


class TransformersViewError(ModelError, TypeError):
    """A transformers tool (e.g. pipeline) was given the InterpretableModel instead of its
    transformers view; pass imodel.to_transformers()."""
