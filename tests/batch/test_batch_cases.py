"""Case names are checked in one place, before any work."""

from __future__ import annotations

import functools
from pathlib import Path

import batch_helpers as helpers
import pytest

from medcam3d.batch import MANIFEST_NAME, BatchOptions, Case, case_inputs, check_case_names, run_batch
from medcam3d.errors import InputFileError


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "x\ny", "nul\0", " padded", "tab\t"])
def test_unsafe_names_are_refused_naming_the_case(name: str) -> None:
    cases = [Case("fine", (Path("fine.nii.gz"),)), Case(name, (Path("bad.nii.gz"),))]
    with pytest.raises(InputFileError) as caught:
        check_case_names(cases)
    message = str(caught.value)
    assert repr(name) in message and "bad.nii.gz" in message and "fine.nii.gz" not in message


def test_duplicate_names_from_two_folders_list_both_files() -> None:
    cases = [
        Case("liver_001", (Path("a/liver_001_0000.nii.gz"),)),
        Case("liver_002", (Path("a/liver_002_0000.nii.gz"),)),
        Case("liver_001", (Path("b/liver_001_0000.nii.gz"),)),
    ]
    with pytest.raises(InputFileError) as caught:
        check_case_names(cases)
    message = str(caught.value)
    assert "'liver_001' 2 times" in message
    assert "a/liver_001_0000.nii.gz" in message and "b/liver_001_0000.nii.gz" in message
    assert "liver_002" not in message


def test_plain_names_pass_and_any_object_with_identifier_and_files_is_a_case() -> None:
    class OtherCase:  # the shape of medcam3d.nnunet.files.Case
        def __init__(self, identifier: str, files: list[str]) -> None:
            self.identifier, self.files = identifier, files

    check_case_names([Case("a.b-c_1", (Path("x"),)), OtherCase("ünïcode", ["y"])])
    with pytest.raises(InputFileError, match="needs an 'identifier'"):
        check_case_names([object()])


def test_case_inputs_are_the_files_then_the_extra_inputs() -> None:
    case = Case("c", ("scan_0000.nii.gz", "scan_0001.nii.gz"), extra_inputs=("mask.nii.gz",))
    assert case_inputs(case) == [Path("scan_0000.nii.gz"), Path("scan_0001.nii.gz"), Path("mask.nii.gz")]


def test_run_batch_refuses_before_any_work(tmp_path: Path) -> None:
    cases = helpers.make_cases(tmp_path / "a", 2)
    cases += [Case("case_000", (tmp_path / "b" / "case_000.nii.gz",))]
    log = tmp_path / "log"
    with pytest.raises(InputFileError, match="share a name"):
        run_batch(
            cases,
            functools.partial(helpers.CamWorker, log=str(log)),
            tmp_path / "out",
            {},
            BatchOptions(quiet=True),
        )
    assert not log.exists()  # no worker made, no model loaded
    assert not (tmp_path / "out").exists() or not (tmp_path / "out" / MANIFEST_NAME).exists()
