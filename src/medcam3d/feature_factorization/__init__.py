"""pytorch-grad-cam's ``feature_factorization`` package: Deep Feature Factorization (see :mod:`medcam3d.methods.dff`)."""

from medcam3d.methods.dff import DeepFeatureFactorization, dff, run_dff_on_image

__all__ = ["DeepFeatureFactorization", "dff", "run_dff_on_image"]
