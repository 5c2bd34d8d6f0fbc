"""Errors of model loading (subclasses of :mod:`medcam3d.errors` classes, so callers may catch those)."""

from __future__ import annotations

from medcam3d.errors import ConfigurationError, InputFileError

__all__ = ["BundleError", "CheckpointError", "ModelFactoryError"]


class BundleError(InputFileError):
    """A MONAI bundle folder is missing a file or a config key, or a config entry cannot be built."""


class CheckpointError(InputFileError):
    """A checkpoint cannot be read, is a pickled object that was not trusted, or does not fit the model."""


class ModelFactoryError(ConfigurationError):
    """``--model package.module:factory`` cannot be imported, called, or does not return an ``nn.Module``."""
