"""pytorch-grad-cam's import path ``pytorch_grad_cam.score_cam``: a re-export of :mod:`medcam3d.methods.perturbation`."""

from medcam3d.methods.perturbation import ScoreCAM

__all__ = ["ScoreCAM"]
