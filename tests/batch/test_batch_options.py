"""BatchOptions checks, the argparse flags, the progress hook, and the prepare thread."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import batch_helpers as helpers
import pytest

from medcam3d.batch import BatchOptions, CaseContext, add_batch_arguments, options_from_args, run_batch
from medcam3d.errors import ConfigurationError


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workers": 0}, "workers must be a whole number of at least 1"),
        ({"workers": -2, "engine": "ray"}, "workers must be"),
        ({"workers": 2}, "Use engine='ray'"),
        ({"workers": 1.5, "engine": "ray"}, "workers must be"),
        ({"engine": "dask"}, "engine must be 'local' or 'ray'"),
        ({"gpus_per_worker": -1, "engine": "ray"}, "gpus_per_worker must be a number >= 0"),
        ({"cpus_per_worker": 0, "engine": "ray"}, "must reserve something"),
        ({"ray_address": "10.0.0.1:6379"}, "add engine='ray'"),
        ({"torch_threads": 0}, "torch_threads"),
        ({"retries": -1}, "retries"),
    ],
)
def test_invalid_options_are_clear_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        BatchOptions(**kwargs)


def test_torch_threads_default_one_per_reserved_core_on_ray_unchanged_locally() -> None:
    assert BatchOptions().worker_threads() is None
    assert BatchOptions(engine="ray", workers=2).worker_threads() == 1
    assert BatchOptions(engine="ray", cpus_per_worker=4, gpus_per_worker=1).worker_threads() == 4
    assert BatchOptions(engine="ray", torch_threads=3).worker_threads() == 3


def test_flags_parse_into_options() -> None:
    parser = argparse.ArgumentParser()
    add_batch_arguments(parser)
    args = parser.parse_args(
        "--engine ray --ray-address 10.0.0.5:6379 --workers 4 --gpus-per-worker 1 --cpus-per-worker 8 --quiet".split()
    )
    assert options_from_args(args) == BatchOptions(
        engine="ray",
        ray_address="10.0.0.5:6379",
        workers=4,
        gpus_per_worker=1.0,
        cpus_per_worker=8.0,
        quiet=True,
    )
    assert options_from_args(parser.parse_args([])) == BatchOptions()
    assert options_from_args(parser.parse_args(["--continue_prediction"])) == BatchOptions()
    assert options_from_args(parser.parse_args(["--continue-prediction"])) == BatchOptions()
    assert options_from_args(parser.parse_args(["--overwrite", "--torch-threads", "2"])) == BatchOptions(
        overwrite=True, torch_threads=2
    )
    with pytest.raises(ConfigurationError, match="contradict"):
        options_from_args(parser.parse_args(["--overwrite", "--continue_prediction"]))
    with pytest.raises(ConfigurationError, match="workers must be"):
        options_from_args(parser.parse_args(["--engine", "ray", "--workers", "0"]))
    assert options_from_args(parser.parse_args([]), quiet=True).quiet


def test_flags_a_parser_already_has_are_kept() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--overwrite", action="store_true", help="the command's own")
    add_batch_arguments(parser)  # no argparse conflict
    assert options_from_args(parser.parse_args(["--overwrite"])).overwrite


class Recorder(helpers.CamWorker):
    """Records when and in which thread prepare/process run, and how many prepared cases are alive."""

    events: list[tuple[str, str, str, float]] = []
    alive = 0
    peak = 0
    lock = threading.Lock()

    def prepare(self, case):
        start = time.perf_counter()
        time.sleep(0.15)
        prepared = super().prepare(case)
        with Recorder.lock:
            Recorder.alive += 1
            Recorder.peak = max(Recorder.peak, Recorder.alive)
        Recorder.events.append(("prepare", case.identifier, threading.current_thread().name, start))
        return prepared

    def process(self, case, prepared, context: CaseContext):
        Recorder.events.append(
            ("process", case.identifier, threading.current_thread().name, time.perf_counter())
        )
        assert context.progress and context.output_dir.is_dir()
        with context.bar(total=2, desc="patches") as bar:  # the inner-bar hook
            bar.update(2)
        time.sleep(0.15)
        written = super().process(case, prepared, context)
        with Recorder.lock:
            Recorder.alive -= 1
        Recorder.events.append(("end", case.identifier, threading.current_thread().name, time.perf_counter()))
        return written


def test_the_next_case_is_prepared_in_a_thread_while_this_one_is_computed(tmp_path: Path, capsys) -> None:
    cases = helpers.make_cases(tmp_path / "in", 4)
    Recorder.events, Recorder.alive, Recorder.peak = [], 0, 0
    start = time.perf_counter()
    summary = run_batch(cases, Recorder, tmp_path / "out", {}, BatchOptions())
    elapsed = time.perf_counter() - start
    assert summary.done == [c.identifier for c in cases]
    prepares = {e[1]: e for e in Recorder.events if e[0] == "prepare"}
    processes = {e[1]: e for e in Recorder.events if e[0] == "process"}
    ends = {e[1]: e for e in Recorder.events if e[0] == "end"}
    assert all(e[2] == "medcam3d-prepare" for e in prepares.values())
    assert all(e[2] == "MainThread" for e in processes.values())
    for this, following in zip(cases, cases[1:]):  # the next prepare starts before this case ends
        assert prepares[following.identifier][3] < ends[this.identifier][3]
    assert Recorder.peak <= 2  # one case computed, one prepared: bounded memory
    assert elapsed < 4 * 0.3 + 1.5  # overlapped (sequential would be >= 1.2 s of sleeps alone)
    err = capsys.readouterr().err
    assert "cases" in err and "4/4" in err  # the bar over cases


def test_quiet_shows_no_bar_and_tells_the_worker(tmp_path: Path, capsys) -> None:
    seen: list[bool] = []

    class Quiet(helpers.CamWorker):
        def process(self, case, prepared, context):
            seen.append(context.progress)
            return super().process(case, prepared, context)

    cases = helpers.make_cases(tmp_path / "in", 2)
    run_batch(cases, Quiet, tmp_path / "out", {}, BatchOptions(quiet=True))
    assert seen == [False, False] and "cases" not in capsys.readouterr().err


def test_without_prefetch_everything_runs_in_the_main_thread(tmp_path: Path) -> None:
    names: set[str] = set()

    class Plain(helpers.CamWorker):
        def prepare(self, case):
            names.add(threading.current_thread().name)
            return super().prepare(case)

    run_batch(
        helpers.make_cases(tmp_path / "in", 2),
        Plain,
        tmp_path / "out",
        {},
        BatchOptions(quiet=True, prefetch=False),
    )
    assert names == {"MainThread"}


def test_torch_threads_are_set_for_the_run_and_restored(tmp_path: Path) -> None:
    import torch

    seen: list[int] = []

    class Threads(helpers.CamWorker):
        def process(self, case, prepared, context):
            seen.append(torch.get_num_threads())
            return super().process(case, prepared, context)

    before = torch.get_num_threads()
    run_batch(
        helpers.make_cases(tmp_path / "in", 1),
        Threads,
        tmp_path / "out",
        {},
        BatchOptions(quiet=True, torch_threads=1),
    )
    assert seen == [1] and torch.get_num_threads() == before


def test_a_factory_whose_worker_lacks_the_methods_is_refused(tmp_path: Path) -> None:
    from medcam3d.batch import WorkerError

    with pytest.raises(WorkerError, match="lacks prepare and process"):
        run_batch(
            helpers.make_cases(tmp_path / "in", 1), object, tmp_path / "out", {}, BatchOptions(quiet=True)
        )
