"""MONAI bundles (local folders only; nothing is downloaded).

A bundle folder holds ``configs/inference.json`` (or ``.yaml``), ``configs/metadata.json`` and
``models/model.pt``. The network is the bundle's own definition (``network_def``, else
``network``), built by ``monai.bundle.ConfigParser``; its weights are read with
``torch.load(weights_only=True)``. The bundle's ``preprocessing`` (a MONAI ``Compose`` of
dictionary transforms) prepares each scan, and MONAI's inverse of it brings the maps back
(:func:`medcam3d.io.map_to_original`). The ``inferer``'s ``roi_size``/``overlap``, when it has them,
become the sliding-window settings.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from medcam3d.errors import MissingExtraError
from medcam3d.models.checkpoints import load_into, read_state_dict
from medcam3d.models.errors import BundleError
from medcam3d.models.loaded import BundleInfo

__all__ = ["CONFIG_NAMES", "bundle_files", "load_bundle"]

logger = logging.getLogger(__name__)

#: inference configs looked for in ``configs/``, in this order
CONFIG_NAMES: tuple[str, ...] = ("inference.json", "inference.yaml", "inference.yml")


def _monai_bundle() -> Any:
    try:
        import monai.bundle as monai_bundle
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            "MONAI bundles need the 'monai' package, which is not installed. Install it with: pip install monai"
        ) from exc
    return monai_bundle


def bundle_files(folder: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``(config, metadata, weights)`` of a bundle folder, each checked to exist (a clear error naming
    the missing file otherwise)."""
    root = Path(folder)
    if not root.is_dir():
        raise BundleError(
            f"The MONAI bundle {root} is not a folder (a bundle folder holds configs/ and models/)."
        )
    configs = root / "configs"
    config = next((configs / name for name in CONFIG_NAMES if (configs / name).is_file()), None)
    if config is None:
        raise BundleError(
            f"{root} is not a complete MONAI bundle: {configs / 'inference.json'} (or inference.yaml) is missing."
        )
    metadata = configs / "metadata.json"
    if not metadata.is_file():
        raise BundleError(f"{root} is not a complete MONAI bundle: {metadata} is missing.")
    weights = root / "models" / "model.pt"
    if not weights.is_file():
        extra = ""
        if (root / "models" / "model.ts").is_file():
            extra = " (only models/model.ts, TorchScript, is there: medcam3d needs the state dict model.pt)"
        raise BundleError(f"{root} is not a complete MONAI bundle: {weights} is missing{extra}.")
    return config, metadata, weights


def _read_dict(path: Path) -> dict[str, Any]:
    try:
        if path.suffix == ".json":
            value = json.loads(path.read_text(encoding="utf-8"))
        else:
            import yaml

            value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - any parse error: name the file
        raise BundleError(f"Cannot parse {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise BundleError(f"{path} must hold a JSON/YAML object ({{...}}), got {type(value).__name__}.")
    return value


def _parsed(parser: Any, key: str, config: Path) -> Any:
    try:
        return parser.get_parsed_content(key, instantiate=True)
    except Exception as exc:  # noqa: BLE001 - MONAI raises many kinds; name the file and the key
        detail = " ".join(str(exc).split())[:400]
        raise BundleError(
            f"{config}: the entry {key!r} cannot be built: {type(exc).__name__}: {detail}"
        ) from exc


def _image_key(preprocessing: Any) -> str:
    transforms = getattr(preprocessing, "transforms", None) or []
    for transform in transforms:
        keys = getattr(transform, "keys", None)
        if keys:
            return str(keys[0])
    return "image"


def load_bundle(folder: str | os.PathLike[str], device: torch.device) -> tuple[nn.Module, BundleInfo, Path]:
    """Build a bundle's network with its own config, load ``models/model.pt``, and gather the
    preprocessing and inferer settings.

    Returns:
        ``(network, info, weights_path)``.

    Raises:
        BundleError: a missing file, a malformed config (which file), a missing key
            (``network_def``/``network``, ``preprocessing``) or an entry that cannot be built.
        CheckpointError: ``model.pt`` does not fit the network.
    """
    config, metadata_file, weights = bundle_files(folder)
    root = Path(folder)
    content = _read_dict(config)
    metadata = _read_dict(metadata_file)
    network_key = next((k for k in ("network_def", "network") if k in content), None)
    if network_key is None:
        raise BundleError(
            f"{config} defines no network: add the key 'network_def' (the network's definition, e.g. "
            "{'_target_': 'UNet', ...}) or 'network'."
        )
    if "preprocessing" not in content:
        raise BundleError(
            f"{config} has no 'preprocessing' key: medcam3d applies the bundle's preprocessing (a Compose of "
            "dictionary transforms starting with LoadImaged) to each scan."
        )
    monai_bundle = _monai_bundle()
    parser = monai_bundle.ConfigParser()
    parser.read_meta(metadata)
    parser.read_config(content)
    parser["bundle_root"] = str(root.resolve())
    if "device" in content:
        parser["device"] = f"$torch.device('{device}')"
    network = _parsed(parser, network_key, config)
    if not isinstance(network, nn.Module):
        raise BundleError(f"{config}: {network_key!r} builds a {type(network).__name__}, not an nn.Module.")
    preprocessing = _parsed(parser, "preprocessing", config)
    if not callable(preprocessing):
        raise BundleError(
            f"{config}: 'preprocessing' builds a {type(preprocessing).__name__}, not a transform."
        )
    roi_size: tuple[int, ...] | None = None
    overlap: float | None = None
    if "inferer" in content:
        inferer = _parsed(parser, "inferer", config)
        roi = getattr(inferer, "roi_size", None)
        if roi is not None:
            roi_size = tuple(int(r) for r in roi)
            overlap = float(getattr(inferer, "overlap", 0.25))
    state = read_state_dict(weights)
    load_into(network, state, str(weights))
    info = BundleInfo(
        root=root,
        config_file=config,
        preprocessing=preprocessing,
        image_key=_image_key(preprocessing),
        roi_size=roi_size,
        overlap=overlap,
        metadata=metadata,
    )
    return network, info, weights


def bundle_input_channels(info: BundleInfo) -> int | None:
    """``network_data_format.inputs.<image>.num_channels`` of the metadata, when present."""
    inputs = info.metadata.get("network_data_format", {}).get("inputs", {})
    if not isinstance(inputs, dict):
        return None
    entry = inputs.get(info.image_key) or (next(iter(inputs.values())) if inputs else None)
    if isinstance(entry, dict) and isinstance(entry.get("num_channels"), int):
        return int(entry["num_channels"])
    return None
