"""The original medcam3d's import path ``medcam3d.base_medcam3d``: a re-export of :mod:`medcam3d.core.base`."""

from medcam3d.core.base import BaseCAM

__all__ = ["BaseCAM"]
