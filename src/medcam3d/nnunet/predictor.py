"""Compatibility module: the names ``medcam3d.nnunet.predictor`` has always offered.

The code now lives in files named after their job: :mod:`~medcam3d.nnunet.loading` (model
folders, predictors, devices), :mod:`~medcam3d.nnunet.layers` (suggested layers),
:mod:`~medcam3d.nnunet.engine` (the patch engine and nnU-Net's logit accumulation),
:mod:`~medcam3d.nnunet.runner` (one case: :class:`NnUNetCAM`), :mod:`~medcam3d.nnunet.batch`
(the front door: :func:`segment_and_explain`, :func:`run_cam_for_prediction`) and
:mod:`~medcam3d.nnunet.files` (grouping, matching and writing files). Import from there in new code.
"""

from __future__ import annotations

from medcam3d.nnunet.batch import BatchResult, CaseFailure, run_cam_for_prediction, segment_and_explain
from medcam3d.nnunet.files import (
    Case,
    check_case_names,
    check_map_writer,
    check_readable,
    group_input_files,
    match_masks,
    match_prev_stage,
    write_float_map,
)
from medcam3d.nnunet.layers import suggested_layers
from medcam3d.nnunet.loading import load_predictor, previous_stage_of
from medcam3d.nnunet.runner import CaseResult, NnUNetCAM, TargetMode
from medcam3d.sliding import SlidingSegmentationTarget, SlidingState, SlidingWindowCAM, normalize_maps

__all__ = [
    "BatchResult",
    "Case",
    "CaseFailure",
    "CaseResult",
    "NnUNetCAM",
    "SlidingSegmentationTarget",
    "SlidingState",
    "SlidingWindowCAM",
    "TargetMode",
    "check_case_names",
    "check_map_writer",
    "check_readable",
    "group_input_files",
    "load_predictor",
    "match_masks",
    "match_prev_stage",
    "normalize_maps",
    "previous_stage_of",
    "run_cam_for_prediction",
    "segment_and_explain",
    "suggested_layers",
    "write_float_map",
]
