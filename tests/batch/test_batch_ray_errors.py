"""Ray engine errors that need no cluster: an unreachable address, zero workers, an unpicklable factory."""

from __future__ import annotations

import functools
import socket
import threading
import time
from pathlib import Path

import batch_helpers as helpers
import pytest

from medcam3d.batch import BatchOptions, run_batch
from medcam3d.errors import ConfigurationError

ray = pytest.importorskip("ray")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there


def test_an_unreachable_ray_address_is_a_clear_error_fast(tmp_path: Path) -> None:
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process (run_batch would use it)")
    cases = helpers.make_cases(tmp_path / "in", 1)
    address = f"127.0.0.1:{closed_port()}"
    start = time.perf_counter()
    with pytest.raises(ConfigurationError, match=f"Cannot reach the Ray cluster at {address}") as caught:
        run_batch(
            cases, helpers.CamWorker, tmp_path / "out", {}, BatchOptions(engine="ray", ray_address=address)
        )
    assert time.perf_counter() - start < 30 and "ray start --head" in str(caught.value)
    assert not ray.is_initialized()


def test_a_malformed_ray_address_is_a_clear_error(tmp_path: Path) -> None:
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    with pytest.raises(ConfigurationError, match="is not HOST:PORT"):
        run_batch(
            helpers.make_cases(tmp_path / "in", 1),
            helpers.CamWorker,
            tmp_path / "out",
            {},
            BatchOptions(engine="ray", ray_address="head-node"),
        )


def test_zero_workers_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="workers must be a whole number of at least 1"):
        BatchOptions(engine="ray", workers=0)


def test_an_unpicklable_factory_is_refused_before_connecting(tmp_path: Path) -> None:
    factory = functools.partial(helpers.CamWorker, log=threading.Lock())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cannot be sent to Ray workers"):
        run_batch(
            helpers.make_cases(tmp_path / "in", 1), factory, tmp_path / "out", {}, BatchOptions(engine="ray")
        )
    assert not ray.is_initialized()
