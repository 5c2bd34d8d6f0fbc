"""``medcam3d nnunet`` on the Ray engine: a local Ray cluster (2 CPUs) that the module starts and
stops; the commands of docs/scale.md, the same files, bit for bit, as the local engine, resume
across engines, and the maps of Ray-computed cases read back in Python."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import builder
import numpy as np
import pytest
from test_nnunet_resume import LAYER, MANIFEST, final_files

from helpers_docs import section_commands
from medcam3d.batch import BatchOptions
from medcam3d.nnunet import segment_and_explain
from medcam3d.nnunet.cli import main as cli_main

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(nnunet_models):  # after the nnU-Net environment is set: the workers inherit it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_refuses_a_loaded_predictor(tmp_path: Path, nnunet_models, sphere_inputs: Path) -> None:
    from medcam3d.nnunet import load_predictor

    predictor = load_predictor(nnunet_models.model_folder(builder.SPHERE), folds=(0,))
    with pytest.raises(Exception, match="loads the model in every worker"):
        segment_and_explain(
            predictor, sphere_inputs, tmp_path / "out", LAYER, options=BatchOptions(engine="ray", workers=2)
        )
    assert not (tmp_path / "out").exists()


def test_the_commands_of_docs_scale_run_and_both_engines_write_the_same_bytes(
    tmp_path: Path, nnunet_models, sphere_inputs: Path, monkeypatch, capsys
) -> None:
    import shlex

    from test_nnunet_docs import substitute

    local_command, ray_command = section_commands("scale.md", "medcam3d nnunet", "medcam3d nnunet")
    assert "--engine ray" in ray_command and "--engine" not in local_command
    monkeypatch.chdir(tmp_path)
    model = nnunet_models.model_folder(builder.SPHERE)
    inputs = tmp_path / "imagesTs"
    shutil.copytree(sphere_inputs, inputs)

    def argv(command: str, *extra: str) -> list[str]:
        # the fixture's model, one fold, its layer, the CPU; Ray workers of one CPU and no GPU
        text = substitute(command, model, inputs).replace("--gpus-per-worker 1", "--gpus-per-worker 0")
        text = text.replace("--cpus-per-worker 2", "--cpus-per-worker 1")
        return [*shlex.split(text)[2:], "--no-progress", *extra]

    assert cli_main(argv(local_command, "--torch-threads", "1")) == 0
    assert "2 case(s): 2 done" in capsys.readouterr().out
    (inputs / "sph2_0000.nii.gz").write_bytes((inputs / "sph1_0000.nii.gz").read_bytes())  # a new scan
    assert cli_main(argv(ray_command)) == 0
    assert "3 case(s): 1 done, 2 skipped" in capsys.readouterr().out
    records = json.loads((tmp_path / "cams" / MANIFEST).read_text(encoding="utf-8"))["cases"]
    assert records["sph2"]["engine"] == "ray" and records["sph0"]["engine"] == "local"

    # the whole folder on Ray: the same bytes as the local engine's (sph2 from Ray in both)
    assert cli_main([*argv(ray_command.replace("-o cams", "-o cams_ray"))]) == 0
    local_files = final_files(tmp_path / "cams")
    assert final_files(tmp_path / "cams_ray") == local_files
    assert sorted(local_files) == [
        f"sph{i}{suffix}" for i in range(3) for suffix in (".nii.gz", "_gradcam_class1.nii.gz")
    ]

    # the Python API on the same settings: every case finished; the maps of the cases the Ray
    # workers computed are read back from their files, equal to an in-memory local computation
    again = segment_and_explain(
        model,
        inputs,
        tmp_path / "cams_ray",
        LAYER,
        [1],
        folds=[0],
        save_slices=False,
        device="cpu",
        progress=False,
    )
    assert again.skipped == ["sph0", "sph1", "sph2"] and again.summary is not None and not again.summary.done
    in_memory = segment_and_explain(
        model, [inputs / "sph0_0000.nii.gz"], None, LAYER, [1], folds=[0], save_slices=False, progress=False
    )
    assert again.results[0].maps is not None and in_memory.results[0].maps is not None
    np.testing.assert_array_equal(again.results[0].maps, in_memory.results[0].maps)
    np.testing.assert_array_equal(again.results[0].segmentation, in_memory.results[0].segmentation)
