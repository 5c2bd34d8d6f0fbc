"""Medical image I/O that keeps geometry (extra ``medcam3d[io]``: SimpleITK, nibabel).

Axis orders, once and for all:

* arrays from :func:`read_image` and arrays given to :func:`write_map` are ``(D, H, W)`` ==
  **(z, y, x)**, like ``SimpleITK.GetArrayFromImage`` (nibabel's arrays are ``(x, y, z)``);
* ``Geometry.spacing`` / ``origin`` / direction columns are **(x, y, z)**, world frame LPS (ITK);
* ``Geometry.affine`` maps the index ``(x, y, z, 1)`` to **RAS+** mm (nibabel's convention).

SimpleITK, nibabel and MONAI are imported only when a function needs them.
"""

from __future__ import annotations

from medcam3d.io.geometry import LPS_TO_RAS, Geometry
from medcam3d.io.reading import DicomSeries, list_dicom_series, read_geometry, read_image, read_sitk
from medcam3d.io.transforms import geometry_from_meta_tensor, map_to_original, resample_to_reference
from medcam3d.io.writing import WRITABLE_ENDINGS, as_volume, write_image, write_map

__all__ = [
    "Geometry",
    "LPS_TO_RAS",
    "DicomSeries",
    "read_image",
    "read_geometry",
    "read_sitk",
    "list_dicom_series",
    "write_map",
    "write_image",
    "as_volume",
    "WRITABLE_ENDINGS",
    "resample_to_reference",
    "map_to_original",
    "geometry_from_meta_tensor",
]
