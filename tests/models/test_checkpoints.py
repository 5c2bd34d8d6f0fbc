"""Model loading: state-dict wrappers and prefixes, strict key checks, factories, pickles, hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from helpers_models import TinyResNet
from medcam3d.models import (
    CheckpointError,
    ModelFactoryError,
    import_factory,
    load_model,
    model_source,
    read_state_dict,
    sha256_file,
)
from medcam3d.models.checkpoints import load_into


def reference_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return TinyResNet(ndim=3).state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "epoch": 1},
        lambda s: {"model": s, "optimizer": {"lr": 0.1}},
        lambda s: {"model_state_dict": s},
        lambda s: {"network": s},
        lambda s: {"state_dict": {f"model.{k}": v for k, v in s.items()}, "pytorch-lightning_version": "2.4"},
        lambda s: {f"module.{k}": v for k, v in s.items()},  # DataParallel
        lambda s: {f"_orig_mod.{k}": v for k, v in s.items()},  # torch.compile
        lambda s: {f"model.module.{k}": v for k, v in s.items()},
    ],
    ids=[
        "plain",
        "state_dict",
        "model",
        "model_state_dict",
        "network",
        "lightning",
        "dataparallel",
        "compile",
        "nested",
    ],
)
def test_wrappers_and_prefixes_load_the_same_weights(tmp_path: Path, wrap) -> None:
    state = reference_state()
    path = tmp_path / "weights.pt"
    torch.save(wrap(state), path)
    model = TinyResNet(ndim=3)
    load_into(model, read_state_dict(path), str(path))
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_non_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "best": 0.9}, path)
    with pytest.raises(CheckpointError, match="holds no state dict.*'epoch', 'best'"):
        read_state_dict(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Could not read checkpoint .*not a file written by torch.save"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pt")


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(reference_state(), path)
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_factories_from_modules_files_and_classes(tmp_path: Path) -> None:
    assert import_factory("helpers_models:TinyResNet") is TinyResNet
    script = tmp_path / "my_model.py"
    script.write_text("import torch.nn as nn\n\ndef build(width=4):\n    return nn.Conv3d(1, width, 3)\n")
    source = model_source(factory=f"{script}:build", model_kwargs='{"width": 6}')
    loaded = load_model(source, device="cpu")
    assert loaded.network.out_channels == 6 and loaded.in_channels == 1 and loaded.spatial_dims == 3
    assert loaded.kind == "factory" and loaded.checkpoint_sha256 is None
    with pytest.raises(ModelFactoryError, match="does not exist"):
        import_factory(str(tmp_path / "nowhere.py") + ":build")
    (tmp_path / "broken.py").write_text("raise ValueError('boom')\n")
    with pytest.raises(ModelFactoryError, match="importing .*broken.py failed: ValueError: boom"):
        import_factory(str(tmp_path / "broken.py") + ":build")


def test_the_model_is_in_eval_mode_on_the_device(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(reference_state(), path)
    loaded = load_model(
        model_source(factory="helpers_models:TinyResNet", model_kwargs={"ndim": 3}, checkpoint=path),
        device="cpu",
    )
    assert not loaded.network.training and loaded.device.type == "cpu"
    assert loaded.provenance()["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_source_only() -> None:
    from medcam3d.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="not both"):
        model_source(bundle="b", factory="m:f")
    with pytest.raises(ConfigurationError, match="No model given"):
        model_source()
    with pytest.raises(ConfigurationError, match="--model-kwargs needs --model"):
        model_source(checkpoint="x.pt", model_kwargs='{"a": 1}')
