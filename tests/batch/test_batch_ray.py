"""The Ray engine on a local Ray cluster that the module starts and stops (2 CPUs)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import batch_helpers as helpers
import pytest
from test_batch_kill import final_files

from medcam3d.batch import MANIFEST_NAME, BatchOptions, WorkerError, run_batch

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
SETTINGS = {"method": "gradcam", "layer": "conv2"}


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(helpers)  # the test helpers are not installed on the workers
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def ray_options(**kwargs) -> BatchOptions:
    return BatchOptions(engine="ray", workers=2, quiet=True, **kwargs)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory) -> tuple[list, dict[str, bytes]]:
    folder = tmp_path_factory.mktemp("reference")
    cases = helpers.make_cases(folder / "in", 6)
    summary = run_batch(
        cases, helpers.CamWorker, folder / "out", SETTINGS, BatchOptions(quiet=True, torch_threads=1)
    )
    assert summary.ok
    return cases, final_files(folder / "out")


def test_two_ray_workers_write_the_same_bytes_as_the_local_engine_and_resume_across_engines(
    tmp_path: Path, local_reference
) -> None:
    cases, expected = local_reference
    out, log = tmp_path / "out", tmp_path / "log"
    factory = functools.partial(helpers.CamWorker, log=str(log))
    first = run_batch(cases[:2], factory, out, SETTINGS, BatchOptions(quiet=True, torch_threads=1))
    assert first.done == ["case_000", "case_001"]
    log.unlink()
    summary = run_batch(cases, factory, out, SETTINGS, ray_options())
    assert summary.skipped == ["case_000", "case_001"] and summary.ok
    assert sorted(summary.done) == ["case_002", "case_003", "case_004", "case_005"]
    assert sorted(helpers.calls(log)) == sorted(summary.done)  # only the missing cases were computed
    assert len(helpers.calls(log, "init")) == 2  # the model is loaded once per worker
    assert final_files(out) == expected  # bit for bit
    records = json.loads((out / MANIFEST_NAME).read_text())["cases"]
    assert {records[c]["engine"] for c in summary.done} == {"ray"}
    assert len({records[c]["worker"] for c in summary.done}) == 2  # both workers took cases
    assert run_batch(cases, factory, out, SETTINGS, BatchOptions(quiet=True)).skipped == [
        c.identifier for c in cases
    ]


def test_a_worker_that_dies_is_replaced_and_its_case_retried(tmp_path: Path, local_reference) -> None:
    cases, expected = local_reference
    out, log, marker = tmp_path / "out", tmp_path / "log", tmp_path / "died"
    factory = functools.partial(helpers.CamWorker, log=str(log), die_once_on="case_002", marker=str(marker))
    summary = run_batch(cases, factory, out, SETTINGS, ray_options())
    assert marker.exists() and summary.ok and sorted(summary.done) == [c.identifier for c in cases]
    assert helpers.calls(log).count("case_002") == 2
    assert json.loads((out / MANIFEST_NAME).read_text())["cases"]["case_002"]["attempts"] == 2
    assert final_files(out) == expected


def test_a_case_that_kills_its_worker_twice_fails_the_others_finish(tmp_path: Path, local_reference) -> None:
    cases, expected = local_reference
    cases = cases[:4]
    out, log = tmp_path / "out", tmp_path / "log"
    factory = functools.partial(helpers.CamWorker, log=str(log), die_always_on="case_001")
    summary = run_batch(cases, factory, out, SETTINGS, ray_options())
    assert [f.identifier for f in summary.failures] == ["case_001"] and summary.exit_code == 1
    assert summary.failures[0].attempts == 2 and "died 2 time(s)" in summary.failures[0].error
    assert sorted(summary.done) == ["case_000", "case_002", "case_003"]
    assert helpers.calls(log).count("case_001") == 2
    produced = final_files(out)
    assert produced == {
        k: v for k, v in expected.items() if not k.startswith("case_001") and k[:8] in summary.done
    }


def test_a_factory_that_fails_on_the_workers_is_a_clear_error(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "in", 1)
    factory = functools.partial(helpers.CamWorker, fail_init=True)
    with pytest.raises(
        WorkerError, match="worker_factory\\(\\) failed on a Ray worker: InputFileError: the model file"
    ):
        run_batch(cases, factory, tmp_path / "out", SETTINGS, ray_options())
    assert json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["cases"] == {}


def test_the_ray_example_of_docs_scale_runs(tmp_path: Path, monkeypatch) -> None:
    import re

    doc = Path(__file__).resolve().parents[2] / "docs" / "scale.md"
    fence = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
    blocks = [(info.split(), body) for info, body in fence.findall(doc.read_text(encoding="utf-8"))]
    plain = [
        body for words, body in blocks if words[:1] == ["python"] and not {"skip", "notest"} & set(words)
    ]
    on_ray = [body for words, body in blocks if words[:1] == ["python"] and "ray" in words]
    assert len(plain) >= 3 and len(on_ray) == 1
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    for index, body in enumerate([*plain, *on_ray]):
        exec(compile(body, f"docs/scale.md[block {index}]", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "cams_ray" / MANIFEST_NAME).is_file()
