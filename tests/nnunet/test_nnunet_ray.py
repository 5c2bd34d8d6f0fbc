"""``medcam3d nnunet`` on the Ray engine: a local Ray cluster (2 CPUs) that the module starts and
stops; the same files, bit for bit, as the local engine, and resume across engines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import builder
import numpy as np
import pytest
from test_nnunet_resume import LAYER, cli, final_files

from medcam3d.batch import MANIFEST_NAME, BatchOptions
from medcam3d.nnunet import segment_and_explain
from medcam3d.nnunet.cli import main as cli_main

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(nnunet_models):  # after the nnU-Net environment is set: the workers inherit it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_two_ray_workers_write_the_local_engines_bytes_and_resume_across_engines(
    tmp_path: Path, nnunet_models, sphere_inputs: Path, capsys
) -> None:
    model = nnunet_models.model_folder(builder.SPHERE)
    inputs = tmp_path / "in"
    shutil.copytree(sphere_inputs, inputs)
    image = (inputs / "sph1_0000.nii.gz").read_bytes()
    (inputs / "sph2_0000.nii.gz").write_bytes(image)  # a third case (same scan, its own name)

    local = segment_and_explain(
        model, inputs, tmp_path / "local", LAYER, [0, 1], folds=[0], use_mirroring=True, progress=False
    )
    assert local.summary is not None and local.summary.ok
    expected = final_files(tmp_path / "local")

    # one case with the local engine, then the rest on two Ray workers, into one folder
    out = tmp_path / "out"
    flags = ["--target-class", "0", "1"]
    args = [a for a in cli(model, inputs, out, *flags) if a != "--disable-tta"]
    first = segment_and_explain(
        model,
        [inputs / "sph0_0000.nii.gz"],
        out,
        LAYER,
        [0, 1],
        folds=[0],
        use_mirroring=True,
        progress=False,
    )
    assert first.summary is not None and first.summary.done == ["sph0"]
    capsys.readouterr()
    assert cli_main([*args, "--engine", "ray", "--workers", "2", "--cpus-per-worker", "1"]) == 0
    assert "3 case(s): 2 done, 1 skipped" in capsys.readouterr().out
    assert final_files(out) == expected  # bit for bit
    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))["cases"]
    assert manifest["sph0"]["engine"] == "local"
    assert {manifest[c]["engine"] for c in ("sph1", "sph2")} == {"ray"}

    # back on the local engine: everything finished, nothing computed; the Python API reads the
    # Ray workers' maps back from their files, equal to the local engine's maps
    again = segment_and_explain(
        model, inputs, out, LAYER, [0, 1], folds=[0], use_mirroring=True, progress=False
    )
    assert again.skipped == ["sph0", "sph1", "sph2"]
    for ours, theirs in zip(again.results, local.results):
        assert ours.maps is not None and theirs.maps is not None
        np.testing.assert_array_equal(ours.maps, theirs.maps)


def test_ray_refuses_a_loaded_predictor(tmp_path: Path, nnunet_models, sphere_inputs: Path) -> None:
    from medcam3d.nnunet import load_predictor

    predictor = load_predictor(nnunet_models.model_folder(builder.SPHERE), folds=(0,))
    with pytest.raises(Exception, match="loads the model in every worker"):
        segment_and_explain(
            predictor, sphere_inputs, tmp_path / "out", LAYER, options=BatchOptions(engine="ray", workers=2)
        )
    assert not (tmp_path / "out").exists()
