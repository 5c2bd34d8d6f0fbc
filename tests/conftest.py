"""Shared fixtures: tiny real N-D networks (random init, fixed seeds)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_models import TinyResNet, TinySegNet, spatial_shape  # noqa: E402, F401

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def ndim(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def classifier(ndim: int) -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet(ndim=ndim, num_classes=3).eval()


@pytest.fixture
def segmenter(ndim: int) -> TinySegNet:
    torch.manual_seed(0)
    return TinySegNet(ndim=ndim, num_classes=3).eval()


#: tests that take seconds each on the 2-core machine (measured with ``--durations=0``), marked ``slow``
#: so that ``pytest -m "not slow"`` is the quick edit–test loop; CI runs everything. Files whose every
#: test is slow (nnU-Net models, Ray clusters, headless Chromium) mark themselves.
SLOW_TESTS = frozenset(
    {
        "tests/compat/test_compat_docs.py::test_pytorch_grad_cam_doc_runs",
        "tests/compat/test_compat_imports.py::test_guided_backprop_is_callable_after_its_module_is_imported",
        "tests/compat/test_compat_methods.py::test_ablation_cam_positional_parameters_and_protocol",
        "tests/compat/test_compat_methods.py::test_deep_feature_factorization_nd",
        "tests/compat/test_compat_methods.py::test_dff_against_scikit_learn_nmf",
        "tests/compat/test_compat_methods.py::test_long_running_methods_warn_with_an_estimate",
        "tests/compat/test_compat_methods.py::test_refine_cam_fusion",
        "tests/compat/test_compat_methods.py::test_sess_options_and_errors",
        "tests/compat/test_compat_methods.py::test_sess_windows_along_every_axis_and_fusion",
        "tests/compat/test_compat_subclassing.py::test_helpers_and_attributes",
        "tests/compat/test_compat_usage.py::test_cam_py",
        "tests/compat/test_compat_usage.py::test_run_all_models",
        "tests/core/test_core_batched_gradients.py::test_batched_classes_equal_one_backward_per_class_on_a_segmenter",
        "tests/core/test_core_context.py::test_compute_multi_serves_every_set_from_one_forward",
        "tests/core/test_core_formulas.py::test_method_equals_formula",
        "tests/core/test_core_formulas.py::test_random_cam_is_a_seeded_baseline",
        "tests/core/test_core_formulas.py::test_several_layers_are_the_mean_of_per_layer_normalised_maps",
        "tests/core/test_core_multi.py::test_equals_separate_calls_with_one_forward",
        "tests/core/test_core_multi.py::test_methods_with_their_own_gradient_pass_equal_one_call_per_set",
        "tests/core/test_core_state.py::test_memory_stays_flat_over_200_calls",
        "tests/core/test_core_state.py::test_no_numpy_and_no_cpu_copy_inside_the_pipeline",
        "tests/core/test_core_utils.py::test_gradcam_on_swinunetr_stages_and_blocks",
        "tests/demo/test_demo.py::test_cli",
        "tests/demo/test_demo.py::test_outputs_are_on_the_template_grid",
        "tests/demo/test_demo.py::test_training_script_is_deterministic",
        "tests/explain/test_explain_batch.py::test_a_file_factory_gets_the_same_module_name_in_every_process",
        "tests/explain/test_explain_factory.py::test_classifier_maps_overlay_the_inputs_and_equal_the_python_api",
        "tests/explain/test_explain_factory.py::test_segmenter_sliding_window_equals_the_engine_and_raw_maps_stay_raw",
        "tests/methods/test_fullgrad.py::test_fullgrad_is_the_hand_sum",
        "tests/methods/test_guided.py::test_guided_gradcam_is_guided_times_cam",
        "tests/methods/test_guided.py::test_guided_gradcam_takes_one_forward_pass_and_leaves_no_hooks",
        "tests/methods/test_localisation.py::test_maximum_falls_in_the_blob",
        "tests/methods/test_localisation.py::test_the_classifier_learned",
        "tests/methods/test_perturbation.py::test_scorecam_matches_hand_loop",
        "tests/methods/test_registry_and_shapes.py::test_every_method_nd_batch2",
        "tests/methods/test_shapley_fem_finer.py::test_shapleycam_two_layers_leave_no_graph_alive",
        "tests/metrics/test_compare.py::test_segmenter_through_a_sliding_window",
        "tests/metrics/test_pgc_metrics.py::test_readme_metric_code_runs_with_only_the_import_changed",
        "tests/metrics/test_sanity.py::test_demo_model_untouched_when_a_step_raises",
        "tests/metrics/test_sanity.py::test_demo_similarity_falls_once_top_layers_are_random",
        "tests/reliability/test_io_faults.py::test_sigkill_leaves_an_invisible_temporary_that_the_next_run_removes",
        "tests/reliability/test_io_faults.py::test_writes_past_a_file_size_limit_raise_and_leave_old_files_intact",
        "tests/test_docs.py::test_doc_examples_run",
        "tests/viz/test_viz_viewer.py::test_full_disk_is_an_output_path_error",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
