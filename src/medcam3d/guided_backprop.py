"""pytorch-grad-cam's import path ``pytorch_grad_cam.guided_backprop``: a re-export of :mod:`medcam3d.methods.guided`.

``medcam3d.guided_backprop`` is also medcam3d's function (guided gradients as a torch tensor). Once this
module is imported, Python binds the package attribute ``medcam3d.guided_backprop`` to the module, so the
module is made callable: ``medcam3d.guided_backprop(model, x, targets)`` calls the function either way.
"""

import sys
import types
from typing import Any

from medcam3d.methods.guided import (
    GuidedBackpropReLU,
    GuidedBackpropReLUasModule,
    GuidedBackpropReLUModel,
    guided_backprop,
)

__all__ = ["GuidedBackpropReLUModel", "GuidedBackpropReLU", "GuidedBackpropReLUasModule", "guided_backprop"]


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`medcam3d.methods.guided.guided_backprop`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return guided_backprop(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
