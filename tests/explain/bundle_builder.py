"""Build a small MONAI bundle folder during a test: configs written here, a tiny UNet, its weights saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

NETWORK_DEF: dict[str, Any] = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
}

PREPROCESSING: dict[str, Any] = {
    "_target_": "Compose",
    "transforms": [
        {"_target_": "LoadImaged", "keys": "image", "image_only": False},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 1.5], "mode": "bilinear"},
        {"_target_": "ScaleIntensityd", "keys": "image"},
        {"_target_": "DivisiblePadd", "keys": "image", "k": 4},
    ],
}


def build_network() -> torch.nn.Module:
    from monai.networks.nets import UNet

    kwargs = {k: v for k, v in NETWORK_DEF.items() if k != "_target_"}
    return UNet(**kwargs)


def make_bundle(folder: Path, inferer: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """A bundle folder: configs/inference.json, configs/metadata.json, models/model.pt."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config: dict[str, Any] = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "preprocessing": PREPROCESSING,
        "inferer": inferer or {"_target_": "SimpleInferer"},
    }
    metadata = {
        "version": "0.1.0",
        "monai_version": "1.3.0",
        "name": "tiny test bundle",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": 1,
                    "spatial_shape": [-1, -1, -1],
                }
            },
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2}},
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    torch.manual_seed(seed)
    torch.save(build_network().state_dict(), folder / "models" / "model.pt")
    return folder
