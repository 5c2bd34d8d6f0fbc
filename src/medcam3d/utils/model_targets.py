"""pytorch-grad-cam's import path for the targets (``pytorch_grad_cam.utils.model_targets``).

The targets live in :mod:`medcam3d.core.targets`; this module re-exports them unchanged.
"""

from medcam3d.core.targets import *  # noqa: F403
from medcam3d.core.targets import __all__  # noqa: F401
