"""Typed errors. Every message names the problem, the bad value and what to do.

Each error also subclasses the matching built-in (``ValueError``, ``FileNotFoundError``, ...) so
callers that catch the built-in keep working. The CLI turns any :class:`TransferkitError` into one
line on stderr and exit code 2.
"""

from __future__ import annotations


class TransferkitError(Exception):
    """Base class of every error transferkit raises on purpose."""


class ConfigError(TransferkitError, ValueError):
    """A configuration value or key is invalid (unknown key, out-of-range value)."""


class UnknownNameError(TransferkitError, LookupError):
    """A name (model, dataset, method, layer) is not registered; the message suggests close ones."""


class CheckpointError(TransferkitError, ValueError):
    """A checkpoint or model file is missing, corrupt, or holds something other than tensors."""


class DataError(TransferkitError, ValueError):
    """A dataset is missing, empty, or malformed."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset path or built-in dataset's files do not exist."""


class LabelError(DataError):
    """Labels fall outside the range the model's head can predict."""


class ShapeError(TransferkitError, ValueError):
    """Tensors or inputs have a shape the model or method cannot take."""


class TrainingError(TransferkitError, RuntimeError):
    """Training cannot go on (for example the loss became NaN or infinite)."""


class MissingDependencyError(TransferkitError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "LabelError",
    "MissingDependencyError",
    "ShapeError",
    "TrainingError",
    "TransferkitError",
    "UnknownNameError",
]


class ExportError(TransferkitError, RuntimeError):
    """The exporter failed, or the exported file does not reproduce the model's outputs."""
