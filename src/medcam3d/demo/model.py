"""The small 3D CNN of the demo: does this brain volume contain a (synthetic) lesion?

The network reads the whole MNI152 T1 template grid at 2 mm, ``(N, 1, 91, 109, 91)`` in
``(N, C, D, H, W)`` = ``(N, C, z, y, x)`` order (the order of a SimpleITK array), and returns two
logits per volume: class 0 = no lesion, class 1 = lesion. Inside, it averages down to 4 mm, runs one
convolution block, max-pools to 8 mm and runs two more blocks there. A 1x1x1 convolution turns the
features into a lesion-evidence score per 8 mm cell, and a smooth maximum over the cells
(log-sum-exp pooling, between the mean and the max) gives the lesion logit; the "no lesion" logit is
the constant 0, so ``softmax`` of the two is ``sigmoid`` of the lesion logit. (A hard global max-pool
trains far more slowly here: at the start, a small lesion rarely holds any channel's maximum, so it
gets no gradient.)

The documented target layer for CAMs is :attr:`DemoLesionNet.features` (the last convolution block,
output ``(N, 16, 22, 27, 22)``, one cell per 8 mm): the last layer that still has a spatial grid.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["DemoLesionNet", "TARGET_LAYER", "LESION_CLASS", "load_demo_model", "default_weights_path"]

#: Dotted name of the documented target layer (``model.features``).
TARGET_LAYER = "features"
#: Index of the "lesion present" logit.
LESION_CLASS = 1


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3x3 convolution (no bias) -> batch norm -> ReLU; keeps the spatial size."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(),
    )


class DemoLesionNet(nn.Module):
    """Tiny lesion-present classifier for 3D volumes, ``(N, 1, D, H, W)`` -> logits ``(N, 2)``.

    Any spatial size of at least 4 voxels per axis works; the shipped weights were trained on the
    2 mm MNI152 grid ``(D, H, W) = (91, 109, 91)``.

    Args:
        width: channels of the first block; later blocks use ``2 * width``.
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.width = width
        self.downsample = nn.AvgPool3d(kernel_size=2)  # 2 mm -> 4 mm
        self.block1 = _conv_block(1, width)
        self.pool1 = nn.MaxPool3d(kernel_size=2)  # 4 mm -> 8 mm
        self.block2 = _conv_block(width, 2 * width)
        self.features = _conv_block(2 * width, 2 * width)  # the target layer: (N, 2w, D/4, H/4, W/4)
        self.score = nn.Conv3d(2 * width, 1, kernel_size=1)  # lesion evidence per cell: (N, 1, d, h, w)
        self.sharpness = 4.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, 1, D, H, W)`` float, intensities normalised as in
        :func:`medcam3d.demo.data.normalise_intensity`. Returns logits ``(N, 2)``."""
        x = self.downsample(x)
        x = self.block1(x)
        x = self.pool1(x)
        x = self.block2(x)
        x = self.features(x)
        scores = self.score(x).flatten(1)  # (N, cells)
        count = torch.log(torch.tensor(float(scores.shape[1]), dtype=scores.dtype, device=scores.device))
        lesion = (torch.logsumexp(self.sharpness * scores, dim=1) - count) / self.sharpness
        return torch.stack([torch.zeros_like(lesion), lesion], dim=1)


def default_weights_path() -> Path:
    """Path of the trained weights shipped with the package (``assets/demo/demo_cnn.pt``)."""
    return Path(__file__).resolve().parent.parent / "assets" / "demo" / "demo_cnn.pt"


def load_demo_model(weights: str | Path | None = None, device: str | torch.device = "cpu") -> DemoLesionNet:
    """Build :class:`DemoLesionNet` and load its trained weights, in eval mode.

    Args:
        weights: a ``state_dict`` file written by ``scripts/train_demo_model.py``; default: the
            weights shipped in the package. Loaded with ``torch.load(..., weights_only=True)``.
        device: where to put the model.
    """
    from medcam3d.errors import InputFileError

    path = Path(weights) if weights is not None else default_weights_path()
    if not path.is_file():
        raise InputFileError(
            f"Demo weights {path} not found. Reinstall medcam3d, or train them with "
            "'python scripts/train_demo_model.py'."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    width = int(state["block1.0.weight"].shape[0])
    model = DemoLesionNet(width=width)
    model.load_state_dict(state)
    return model.to(device).eval()
