"""medcam3d: Class Activation Maps for 3D (and 2D) networks on medical images."""

__version__ = "0.2.0"
