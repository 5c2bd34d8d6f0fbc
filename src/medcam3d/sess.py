"""pytorch-grad-cam's import path ``pytorch_grad_cam.sess``: a re-export of :mod:`medcam3d.methods.sess`."""

from medcam3d.methods.sess import SESS, sliding_window

__all__ = ["SESS", "sliding_window"]
