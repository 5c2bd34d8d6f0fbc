"""The files of the nnU-Net integration: grouping inputs into cases (names checked by
:func:`medcam3d.batch.check_case_names`), matching
masks and previous-stage segmentations to cases, reading headers, writing float maps
(nnunetv2 imported lazily)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcam3d._atomic import SPACE_HINT, atomic_path
from medcam3d.batch.cases import check_case_names  # the one check every command shares
from medcam3d.errors import ConfigurationError, InputFileError, OutputPathError

__all__ = [
    "Case",
    "check_case_names",
    "check_map_writer",
    "check_readable",
    "group_input_files",
    "match_masks",
    "match_prev_stage",
    "strip_file_ending",
    "verify_image_file",
    "verify_segmentation_file",
    "write_float_map",
    "write_npy",
    "writer_errors",
]

logger = logging.getLogger(__name__)


class Case:
    """One case to predict: its identifier and its channel files in channel order."""

    def __init__(self, identifier: str, files: list[str]) -> None:
        self.identifier = identifier
        self.files = files

    def __repr__(self) -> str:
        return f"Case({self.identifier!r}, {self.files!r})"


def strip_file_ending(name: str, file_ending: str) -> str:
    return name[: -len(file_ending)] if name.endswith(file_ending) else name


def _channel_split(name: str, file_ending: str) -> tuple[str, int] | None:
    """``case_0001.nii.gz`` → ``("case", 1)``; None if the name does not follow nnU-Net's pattern."""
    if not name.endswith(file_ending):
        return None
    stem = name[: -len(file_ending)]
    if len(stem) < 5 or stem[-5] != "_" or not stem[-4:].isdigit():
        return None
    return stem[:-5], int(stem[-4:])


def group_input_files(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    file_ending: str,
    num_channels: int,
) -> list[Case]:
    """Group nnU-Net-style files (``<case>_0000<ending>``, ``<case>_0001<ending>``, …) into cases.

    ``inputs``: a folder (every case in it, as ``nnUNetv2_predict -i`` does, using nnU-Net's own
    identifier and grouping helpers), one file of a case (its sibling channel files are found), or
    a list of files and folders. Every case must have exactly the channels ``0 .. num_channels-1``;
    a missing or extra channel file raises :class:`InputFileError` before any work is done, and so
    do case names that cannot name output files (:func:`check_case_names`).
    """
    from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

    if isinstance(inputs, (str, os.PathLike)):
        items = [Path(inputs)]
    else:
        items = [Path(p) for p in inputs]
    if not items:
        raise InputFileError("No input files were given.")
    cases: dict[str, Case] = {}
    for item in items:
        if item.is_dir():
            folder_files = sorted(
                f.name for f in item.iterdir() if f.is_file() and f.name.endswith(file_ending)
            )
            identifiers = list(get_identifiers_from_splitted_dataset_folder(str(item), file_ending))
            if not identifiers:
                raise InputFileError(
                    f"The input folder {item} has no files named <case>_0000{file_ending} (the model's dataset uses "
                    f"the file ending {file_ending!r} and nnU-Net's channel suffixes _0000, _0001, ...)."
                )
            for identifier in identifiers:
                files = create_paths_fn(str(item), folder_files, file_ending, identifier)
                cases[str(item / identifier)] = Case(str(identifier), sorted(files))
        elif item.is_file():
            split = _channel_split(item.name, file_ending)
            if split is None:
                raise InputFileError(
                    f"Input file {item} is not named <case>_XXXX{file_ending} (nnU-Net's naming, XXXX the 4-digit "
                    f"channel index, {file_ending!r} the dataset's file ending)."
                )
            identifier, _ = split
            key = str(item.parent / identifier)
            if key in cases:
                continue
            siblings = sorted(
                f.name for f in item.parent.iterdir() if f.is_file() and f.name.endswith(file_ending)
            )
            files = create_paths_fn(str(item.parent), siblings, file_ending, identifier)
            cases[key] = Case(identifier, sorted(files))
        else:
            raise InputFileError(f"Input {item} does not exist.")
    result = list(cases.values())
    for case in result:
        found = {}
        for f in case.files:
            split = _channel_split(Path(f).name, file_ending)
            assert split is not None
            found[split[1]] = f
        missing = [c for c in range(num_channels) if c not in found]
        extra = sorted(c for c in found if c >= num_channels)
        if missing:
            names = ", ".join(f"{case.identifier}_{c:04d}{file_ending}" for c in missing)
            raise InputFileError(
                f"Case {case.identifier!r} lacks channel file(s) {names}: the model expects {num_channels} "
                f"channel(s) (_0000 to _{num_channels - 1:04d})."
            )
        if extra:
            raise InputFileError(
                f"Case {case.identifier!r} has channel file(s) {extra} beyond the model's {num_channels} channel(s)."
            )
        case.files = [found[c] for c in range(num_channels)]
    check_case_names(result)
    return sorted(result, key=lambda c: c.identifier)


def match_masks(
    cases: Sequence[Case],
    mask_files: str | os.PathLike[str] | Sequence[str] | dict[str, str] | None,
    ending: str,
) -> dict[str, str]:
    """Case identifier → mask file, for ``target='mask'``.

    ``mask_files``: a folder holding ``<case><ending>`` per case, a dict ``{case: file}``, or a
    list of files in case order (one per case). A missing mask raises :class:`InputFileError`.
    """
    if not mask_files:
        return {}
    if isinstance(mask_files, dict):
        mapping = {str(k): str(v) for k, v in mask_files.items()}
    elif isinstance(mask_files, (str, os.PathLike)) and Path(mask_files).is_dir():
        mapping = {c.identifier: str(Path(mask_files) / f"{c.identifier}{ending}") for c in cases}
    else:
        files = (
            [str(f) for f in mask_files]
            if not isinstance(mask_files, (str, os.PathLike))
            else [str(mask_files)]
        )
        if len(files) != len(cases):
            raise ConfigurationError(
                f"Got {len(files)} mask files for {len(cases)} cases: give one per case."
            )
        mapping = {c.identifier: f for c, f in zip(cases, files)}
    for c in cases:
        f = mapping.get(c.identifier)
        if f is None or not Path(f).is_file():
            raise InputFileError(f"Mask file for case {c.identifier!r} not found ({f}).")
    return mapping


def match_prev_stage(
    cases: Sequence[Case], folder: str | os.PathLike[str] | None, ending: str
) -> dict[str, str]:
    """Case identifier → the previous cascade stage's segmentation ``<folder>/<case><ending>``;
    a missing one raises :class:`InputFileError`."""
    if folder is None:
        return {}
    mapping = {c.identifier: str(Path(folder) / f"{c.identifier}{ending}") for c in cases}
    for ident, f in mapping.items():
        if not Path(f).is_file():
            raise InputFileError(f"Previous-stage segmentation for case {ident!r} not found: {f}.")
    return mapping


@contextlib.contextmanager
def writer_errors(final: Path) -> Iterator[None]:
    """An image writer's own failure (ITK raises ``RuntimeError`` on a full disk or a file size
    limit) as :class:`~medcam3d.errors.OutputPathError` naming the file; ``OSError`` is left to
    :func:`~medcam3d._atomic.atomic_path`, which names its cause."""
    try:
        yield
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[-300:] or type(exc).__name__
        raise OutputPathError(f"Could not write {final}: {detail}. {SPACE_HINT}") from exc


def write_float_map(
    array: np.ndarray,
    path: str | os.PathLike[str],
    properties: dict[str, Any],
    reader_writer: Any,
) -> Path:
    """Write a float32 map ``array`` (nnU-Net's array order for this reader-writer, i.e. the
    order ``read_images`` returns: ``(z, y, x)`` for SimpleITK, transposed for nibabel) with the
    input image's exact geometry taken from ``properties``.

    The geometry handling follows each reader-writer's own ``write_seg`` (which cannot be used
    because it casts to integers). Written atomically, and read back with the same reader-writer
    before the rename (:func:`verify_image_file`: values, shape, spacing and orientation).
    """
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO, NibabelIOWithReorient
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    array = np.ascontiguousarray(array, dtype=np.float32)
    final = Path(path)
    rw_class = reader_writer if isinstance(reader_writer, type) else type(reader_writer)

    def verify(tmp: Path) -> None:
        verify_image_file(tmp, array, properties, rw_class)

    with atomic_path(final, verify=verify) as tmp, writer_errors(final):
        if issubclass(rw_class, SimpleITKIO):
            import SimpleITK as sitk

            stuff = properties["sitk_stuff"]
            data = array[0] if len(stuff["spacing"]) == 2 else array
            image = sitk.GetImageFromArray(data)
            image.SetSpacing(stuff["spacing"])
            image.SetOrigin(stuff["origin"])
            image.SetDirection(stuff["direction"])
            if "original_orientation" in stuff:  # SimpleITKIOWithReorient
                image = sitk.DICOMOrient(image, stuff["original_orientation"])
            sitk.WriteImage(image, str(tmp), True)
        elif issubclass(rw_class, NibabelIOWithReorient):
            import nibabel
            from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

            stuff = properties["nibabel_stuff"]
            nib_image = nibabel.Nifti1Image(array.transpose((2, 1, 0)), affine=stuff["reoriented_affine"])
            back = ornt_transform(axcodes2ornt("RAS"), io_orientation(stuff["original_affine"]))
            nib_image = nib_image.as_reoriented(back)
            nib_image.header.set_data_dtype(np.float32)
            nibabel.save(nib_image, str(tmp))
        elif issubclass(rw_class, NibabelIO):
            import nibabel

            stuff = properties["nibabel_stuff"]
            nib_plain = nibabel.Nifti1Image(array.transpose((2, 1, 0)), affine=stuff["original_affine"])
            nib_plain.header.set_data_dtype(np.float32)
            nibabel.save(nib_plain, str(tmp))
        else:
            raise ConfigurationError(
                f"Writing float maps with the reader-writer {rw_class.__name__} is not supported (SimpleITK and "
                "nibabel reader-writers are). Use save_numpy=True / --save-numpy to get the maps as .npy."
            )
    return final


def _check_nifti_size(path: Path) -> None:
    """An uncompressed NIfTI must hold every voxel its header announces (ITK zero-fills a short file)."""
    if not path.name.endswith(".nii"):
        return
    import nibabel

    image: Any = nibabel.load(str(path))
    proxy = image.dataobj  # the voxel data's offset, shape and type, from the header
    needed = int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
    size = path.stat().st_size
    if size < needed:
        raise OutputPathError(f"{path.name} holds {size} bytes, its header needs {needed}. {SPACE_HINT}")


def _compare_read_back(
    path: Path,
    back: np.ndarray,
    back_properties: dict[str, Any],
    expected: np.ndarray,
    properties: dict[str, Any],
) -> None:
    values = np.asarray(back)[0]  # the reader-writers return (1, *S)
    if values.shape != expected.shape:
        raise OutputPathError(
            f"{path.name} reads back with shape {values.shape} instead of {expected.shape}. {SPACE_HINT}"
        )
    if not np.array_equal(values, expected):
        differ = int(np.count_nonzero(values != expected))
        raise OutputPathError(
            f"{differ} of {expected.size} voxels of {path.name} read back differently. {SPACE_HINT}"
        )
    if not np.allclose(back_properties["spacing"], properties["spacing"], rtol=1e-4, atol=1e-6):
        raise OutputPathError(
            f"{path.name} reads back with the spacing {back_properties['spacing']} instead of "
            f"{properties['spacing']}."
        )
    for key, fields in (("sitk_stuff", ("origin", "direction")), ("nibabel_stuff", ("original_affine",))):
        if key in properties and key in back_properties:
            for name in fields:
                if name in properties[key] and not np.allclose(
                    np.asarray(back_properties[key][name], dtype=float),
                    np.asarray(properties[key][name], dtype=float),
                    atol=1e-3,
                ):
                    raise OutputPathError(
                        f"{path.name} reads back with the {name} {back_properties[key][name]} instead of "
                        f"{properties[key][name]}: the format cannot store the input's geometry."
                    )


def verify_segmentation_file(
    path: str | os.PathLike[str], expected: np.ndarray, properties: dict[str, Any], reader_writer: Any
) -> None:
    """Check a freshly written segmentation ``path``: read back with the dataset's reader-writer's
    ``read_seg`` it holds exactly ``expected`` (nnU-Net's array order, as given to ``write_seg``),
    with the input's spacing and orientation (from ``properties``); an uncompressed NIfTI is
    complete. Raises :class:`~medcam3d.errors.OutputPathError` otherwise."""
    p = Path(path)
    _check_nifti_size(p)
    rw = reader_writer() if isinstance(reader_writer, type) else reader_writer
    back, back_properties = rw.read_seg(str(p))
    _compare_read_back(p, back, back_properties, np.asarray(expected), properties)


def verify_image_file(
    path: str | os.PathLike[str], expected: np.ndarray, properties: dict[str, Any], reader_writer: Any
) -> None:
    """Check a freshly written float map ``path``: read back with the reader-writer's ``read_images``
    it holds exactly ``expected`` (float32, nnU-Net's array order), with the input's spacing and
    orientation; an uncompressed NIfTI is complete. Raises :class:`~medcam3d.errors.OutputPathError`
    otherwise."""
    p = Path(path)
    _check_nifti_size(p)
    rw = reader_writer() if isinstance(reader_writer, type) else reader_writer
    back, back_properties = rw.read_images([str(p)])
    _compare_read_back(p, back, back_properties, np.asarray(expected, dtype=np.float32), properties)


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as ``.npy`` atomically; it is loaded back and compared (values, dtype) before
    the rename."""
    final = Path(path)
    data = np.ascontiguousarray(array)

    def verify(tmp: Path) -> None:
        back = np.load(tmp, allow_pickle=False)
        if back.dtype != data.dtype or back.shape != data.shape or not np.array_equal(back, data):
            raise OutputPathError(f"{final.name} does not load back as written. {SPACE_HINT}")

    with atomic_path(final, verify=verify) as tmp, open(tmp, "wb") as stream:
        np.save(stream, data, allow_pickle=False)
    return final


def _values_per_voxel(f: str) -> tuple[int, tuple[int, ...]]:
    """How many values each voxel of image ``f`` holds, and its shape, from the header only."""
    if f.endswith((".nii", ".nii.gz")):
        import nibabel

        image: Any = nibabel.load(f)
        shape = tuple(int(s) for s in image.shape)  # (x, y, z, t, components)
        return int(np.prod(shape[3:])) if len(shape) > 3 else 1, shape
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(f)
    reader.ReadImageInformation()
    size = tuple(int(s) for s in reader.GetSize())
    components = int(reader.GetNumberOfComponents())
    return components * (int(np.prod(size[3:])) if len(size) > 3 else 1), size + (
        (components,) if components > 1 else ()
    )


def check_readable(files: Sequence[str]) -> None:
    """Read each image's header (cheap: no voxel data) so that unreadable images, or ones holding
    several values per voxel (a vector image, or a 4-D series), fail with :class:`InputFileError`
    before any heavy work starts: nnU-Net takes one scalar image per channel file. Every offending
    file of the input is listed (up to 20), not only the first."""
    unreadable: list[str] = []
    vector: list[str] = []
    for f in files:
        try:
            values, shape = _values_per_voxel(f)
        except Exception as exc:
            unreadable.append(f"Cannot read image {f}: {type(exc).__name__}: {exc}".strip())
            continue
        if values != 1:
            vector.append(f"Image {f} holds {values} values per voxel (shape {shape}: a vector or 4-D image)")
    problems: list[str] = []
    if unreadable:
        listed = unreadable[:20] + ([f"... and {len(unreadable) - 20} more"] if len(unreadable) > 20 else [])
        problems.append(
            "; ".join(listed)
            + ". Replace these files (a damaged or incomplete copy?) or move them out of the input, then run the "
            "command again"
        )
    if vector:
        listed = vector[:20] + ([f"... and {len(vector) - 20} more"] if len(vector) > 20 else [])
        problems.append(
            "; ".join(listed)
            + ". nnU-Net takes one scalar 2-D or 3-D image per channel file: split each into one file per "
            "component, named <case>_0000<ending>, <case>_0001<ending>, ... (e.g. SimpleITK.VectorIndexSelectionCast), "
            "as the model's channels expect"
        )
    if problems:
        raise InputFileError("; and ".join(problems) + ".")


def check_map_writer(reader_writer: Any) -> None:
    """Raise :class:`ConfigurationError` early if float maps cannot be written with this reader-writer."""
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO, NibabelIOWithReorient
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    rw_class = reader_writer if isinstance(reader_writer, type) else type(reader_writer)
    if not issubclass(rw_class, (SimpleITKIO, NibabelIO, NibabelIOWithReorient)):
        raise ConfigurationError(
            f"Writing float maps with the reader-writer {rw_class.__name__} is not supported (SimpleITK and "
            "nibabel reader-writers are). Pass save_maps=False and save_numpy=True / --save-numpy to get the maps "
            "as .npy."
        )
