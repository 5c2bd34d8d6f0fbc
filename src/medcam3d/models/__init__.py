"""Loading a user's model: MONAI bundles, a factory + state dict, or a trusted pickled module.

>>> from medcam3d.models import load_model, model_source
>>> loaded = load_model(model_source(factory="monai.networks.nets:DenseNet121",
...     model_kwargs='{"spatial_dims": 3, "in_channels": 1, "out_channels": 2}'), device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

from medcam3d.models.checkpoints import load_into, read_state_dict, sha256_file, unwrap_state_dict
from medcam3d.models.errors import BundleError, CheckpointError, ModelFactoryError
from medcam3d.models.factory import build_from_factory, import_factory, parse_model_kwargs
from medcam3d.models.loaded import BundleInfo, LoadedModel, ModelSource
from medcam3d.models.loading import load_model, model_source, resolve_device
from medcam3d.models.pickled import load_pickled_module

__all__ = [
    "BundleError",
    "BundleInfo",
    "CheckpointError",
    "LoadedModel",
    "ModelFactoryError",
    "ModelSource",
    "build_from_factory",
    "import_factory",
    "load_into",
    "load_model",
    "load_pickled_module",
    "model_source",
    "parse_model_kwargs",
    "read_state_dict",
    "resolve_device",
    "sha256_file",
    "unwrap_state_dict",
]
