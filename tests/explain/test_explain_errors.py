"""Bad input: a clear medcam3d error before any heavy work, and no output files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from bundle_builder import make_bundle

from helpers_models import TinyResNet, TinySegNet
from medcam3d import errors
from medcam3d.explain import ExplainSettings, explain_folder
from medcam3d.models import BundleError, CheckpointError, ModelFactoryError, model_source

pytestmark = pytest.mark.filterwarnings(
    "ignore::RuntimeWarning", "ignore::UserWarning", "ignore::FutureWarning"
)


def run(tmp_path: Path, inputs, source, **settings):
    out = tmp_path / "out"
    try:
        return explain_folder(inputs, out, source, ExplainSettings(progress=False, **settings), device="cpu")
    finally:
        assert not out.exists() or not any(out.iterdir()), "outputs were written"


def factory(checkpoint: Path | None = None, name: str = "explain_nets:classifier", **kwargs):
    return model_source(factory=name, model_kwargs=kwargs or {"num_classes": 3}, checkpoint=checkpoint)


# ---------------------------------------------------------------------------------- bundles
@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        ("no folder", BundleError, "is not a folder"),
        ("no metadata", BundleError, r"configs/metadata\.json is missing"),
        ("no config", BundleError, r"configs/inference\.json \(or inference\.yaml\) is missing"),
        ("no weights", BundleError, r"models/model\.pt is missing"),
        ("bad json", BundleError, r"Cannot parse .*inference\.json"),
        ("no network key", BundleError, r"inference\.json defines no network: add the key 'network_def'"),
        ("no preprocessing", BundleError, r"inference\.json has no 'preprocessing' key"),
        ("bad network", BundleError, r"inference\.json: the entry 'network_def' cannot be built"),
        ("wrong weights", CheckpointError, r"model\.pt do not fit the model UNet: .*missing key"),
    ],
)
def test_broken_bundles(scans, tmp_path, damage, error, match):
    bundle = make_bundle(tmp_path / "bundle")
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    if damage == "no folder":
        shutil.rmtree(bundle)
    elif damage == "no metadata":
        (bundle / "configs" / "metadata.json").unlink()
    elif damage == "no config":
        config_file.unlink()
    elif damage == "no weights":
        (bundle / "models" / "model.pt").unlink()
    elif damage == "bad json":
        config_file.write_text(config_file.read_text()[:-10])
    elif damage in ("no network key", "no preprocessing"):
        keys = ("network_def", "network") if damage == "no network key" else ("preprocessing",)
        config_file.write_text(json.dumps({k: v for k, v in config.items() if k not in keys}))
    elif damage == "bad network":
        config["network_def"]["no_such_argument"] = 3
        config_file.write_text(json.dumps(config))
    else:
        torch.save(TinySegNet(ndim=3).state_dict(), bundle / "models" / "model.pt")
    with pytest.raises(error, match=match):
        run(tmp_path, scans, model_source(bundle=bundle))


# ---------------------------------------------------------------------------------- factories
@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_such_package.nets:build", r"cannot import the module 'no_such_package\.nets'"),
        ("explain_nets:clasifier", r"has no attribute 'clasifier'\. Did you mean: classifier"),
        ("explain_nets:not_a_module", r"returned a dict, not a torch\.nn\.Module"),
        ("explain_nets", r"must be 'package\.module:factory'"),
        ("explain_nets:CALLS", r"is a dict, not a callable"),
    ],
)
def test_bad_factories(scans, tmp_path, spec, match):
    with pytest.raises(ModelFactoryError, match=match):
        run(tmp_path, scans, model_source(factory=spec))


def test_bad_factory_arguments(scans, tmp_path):
    with pytest.raises(
        ModelFactoryError, match=r"calling explain_nets:classifier\(\*\*\{'colours': 3\}\) failed"
    ):
        run(tmp_path, scans, factory(colours=3))
    with pytest.raises(ModelFactoryError, match="not valid JSON"):
        model_source(factory="explain_nets:classifier", model_kwargs="{num_classes: 3}")


def test_checkpoint_keys_that_do_not_match(scans, segmenter_checkpoint, tmp_path):
    with pytest.raises(CheckpointError) as info:
        run(tmp_path, scans, factory(segmenter_checkpoint))
    message = str(info.value)
    assert "do not fit the model TinyResNet" in message
    assert (
        "missing key(s), first: stem.0.weight" in message
        and "unexpected key(s), first: model.enc.0.weight" in message
    )


def test_checkpoint_shapes_that_do_not_match(scans, classifier_checkpoint, tmp_path):
    with pytest.raises(
        CheckpointError, match=r"shape mismatch.*fc\.weight: checkpoint \(3, 32\) vs model \(5, 32\)"
    ):
        run(tmp_path, scans, factory(classifier_checkpoint, num_classes=5))


def test_a_pickled_module_needs_trust(scans, tmp_path):
    torch.manual_seed(0)
    pickled = tmp_path / "whole.pt"
    torch.save(TinyResNet(ndim=3), pickled)
    with pytest.raises(
        CheckpointError, match=r"--trust-checkpoint.*unpickling runs code|unpickling runs code.*--trust"
    ):
        run(tmp_path, scans, model_source(checkpoint=pickled))
    with pytest.raises(CheckpointError, match=r"--trust-checkpoint"):
        run(tmp_path, scans, factory(pickled))  # a factory does not make a pickle safe
    results = explain_folder(
        scans / "plain.nii",
        tmp_path / "trusted",
        model_source(checkpoint=pickled, trust_checkpoint=True),
        ExplainSettings(progress=False),
        device="cpu",
    )
    assert results[0].ok and results[0].maps[0].map_file.exists()


def test_a_state_dict_without_factory(scans, classifier_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match=r"holds a state dict.*--model package\.module:factory"):
        run(tmp_path, scans, model_source(checkpoint=classifier_checkpoint))


# ---------------------------------------------------------------------------------- inputs, targets, layers
def test_channel_count_that_does_not_match(scans, classifier_checkpoint, tmp_path):
    folder = tmp_path / "two_channels"
    folder.mkdir()
    for channel in ("0000", "0001"):
        shutil.copy(scans / "plain.nii", folder / f"case_{channel}.nii")
    with pytest.raises(
        errors.InputShapeError,
        match=r"2 channel file\(s\) per case but the network's first convolution takes 1",
    ):
        run(tmp_path, folder, factory(classifier_checkpoint))


def test_target_class_out_of_range(scans, classifier_checkpoint, tmp_path):
    with pytest.raises(
        errors.TargetError, match=r"Target class 5 is out of range: the model output has 3 classes"
    ):
        run(tmp_path, scans, factory(classifier_checkpoint), target_classes=(5,))


def test_unknown_method_and_layer(scans, classifier_checkpoint, tmp_path):
    with pytest.raises(
        errors.ConfigurationError, match=r"Unknown CAM method 'gradcma'\. Did you mean: gradcam"
    ):
        run(tmp_path, scans, factory(classifier_checkpoint), methods=("gradcma",))
    with pytest.raises(
        errors.LayerNotFoundError, match=r"no layer named 'layer5'\. Did you mean: .*'layer4'"
    ):
        run(tmp_path, scans, factory(classifier_checkpoint), target_layers=("layer5",))


def test_layers_off_the_gradient_path_or_the_output(scans, segmenter_checkpoint, tmp_path):
    source = factory(segmenter_checkpoint, name="explain_nets:segmenter")
    with pytest.raises(
        errors.LayerOutputError, match=r"'aux' is off the gradient path.*output_index=0.*--list-layers"
    ):
        run(tmp_path, scans, source, target_layers=("aux",), input_size=(16, 16, 16))
    with pytest.raises(errors.LayerOutputError, match=r"'head' produces the model output itself"):
        run(tmp_path, scans, source, target_layers=("head",), input_size=(16, 16, 16))


def test_a_patch_size_the_network_cannot_take(scans, segmenter_checkpoint, tmp_path):
    source = factory(segmenter_checkpoint, name="explain_nets:segmenter")
    with pytest.raises(errors.InputShapeError, match=r"cannot take an input of patch size \(15, 15, 15\)"):
        run(tmp_path, scans, source, patch_size=(15, 15, 15))


def test_options_checked_before_the_model_loads(scans, tmp_path):
    never = model_source(factory="explain_nets:classifier")
    for settings, match in [
        ({"orientation": "RAX"}, "not an orientation code"),
        ({"zscore": True, "window": "brain"}, "Choose one intensity normalisation"),
        ({"input_size": (16, 16, 16), "patch_size": (8, 8, 8)}, "either --input-size"),
        ({"window": "lungs"}, "Unknown window 'lungs'"),
        ({"overlap": 1.0}, r"--overlap must be in \[0, 1\)"),
    ]:
        with pytest.raises(errors.ConfigurationError, match=match):
            run(tmp_path, scans, never, **settings)
    with pytest.raises(errors.InputFileError, match="does not exist"):
        run(tmp_path, tmp_path / "nowhere", never)


def test_the_command_line_reports_errors_without_a_traceback(scans, tmp_path, capsys):
    from medcam3d.cli import main

    code = main(
        ["explain", "-i", str(scans), "-o", str(tmp_path / "out"), "--model", "explain_nets:clasifier"]
    )
    assert code == 1
    assert "Did you mean: classifier" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
