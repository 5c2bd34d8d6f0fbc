"""Exceptions raised by medcam3d.

Every exception derives from :class:`MedCAMError` and from the built-in class that fits
(``ValueError`` for bad input, ``RuntimeError`` for things that went wrong while running,
``ImportError`` for a missing optional extra), so callers may catch either.
Messages say what was wrong and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "MedCAMError",
    "InputShapeError",
    "NonFiniteInputError",
    "TargetError",
    "ValueRangeError",
    "LayerNotFoundError",
    "LayerNotReachedError",
    "LayerOutputError",
    "ModelOutputError",
    "MissingExtraError",
    "InputFileError",
    "OutputPathError",
    "GeometryError",
    "ConfigurationError",
]


class MedCAMError(Exception):
    """Base class of every error raised on purpose by medcam3d."""


class InputShapeError(MedCAMError, ValueError):
    """The input tensor (or an array) has the wrong rank or shape."""


class NonFiniteInputError(MedCAMError, ValueError):
    """The input tensor holds NaN or Inf values."""


class ValueRangeError(MedCAMError, ValueError):
    """Values are outside the range a function expects (e.g. an image not in [0, 1])."""


class TargetError(MedCAMError, ValueError):
    """A target is missing, of the wrong length, or names a class out of range."""


class LayerNotFoundError(MedCAMError, ValueError):
    """A target layer name does not exist in the model."""


class LayerNotReachedError(MedCAMError, RuntimeError):
    """A target layer never ran during the forward pass."""


class LayerOutputError(MedCAMError, ValueError):
    """A target layer's output cannot be used (not a tensor, no spatial axes, ...)."""


class ModelOutputError(MedCAMError, ValueError):
    """The model's output cannot be used as given (e.g. an out-of-range ``output_index``)."""


class MissingExtraError(MedCAMError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class InputFileError(MedCAMError, ValueError):
    """An input file is missing, unreadable or inconsistent."""


class OutputPathError(MedCAMError, ValueError):
    """An output path exists (without overwrite) or cannot be written."""


class GeometryError(MedCAMError, ValueError):
    """Image geometry is inconsistent (shape, spacing, direction)."""


class ConfigurationError(MedCAMError, ValueError):
    """An option or a combination of options is invalid."""


def require_extra(module: str, extra: str, purpose: str = "") -> object:
    """Import ``module`` or raise :class:`MissingExtraError` naming the pip extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        what = f" for {purpose}" if purpose else ""
        raise MissingExtraError(
            f"The optional dependency '{module}' is needed{what} but is not installed. "
            f"Install it with: pip install 'medcam3d[{extra}]'"
        ) from exc


class MultipleSeriesError(InputFileError):
    """A DICOM folder holds several series and none was chosen; ``series`` lists their UIDs."""

    def __init__(self, message: str, series: list[str] | None = None) -> None:
        super().__init__(message)
        self.series: list[str] = list(series or [])


__all__.append("MultipleSeriesError")
