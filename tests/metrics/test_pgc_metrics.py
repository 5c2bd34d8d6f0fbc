"""pytorch-grad-cam's metric code (README "Metrics and evaluating the explanations" and the "CAM
Metrics and Tuning" tutorial) runs with only the package name changed, on 2D and 3D models, and
leaves the caller's model exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers_models import TinyResNet
from medcam3d import GradCAM
from medcam3d.metrics.arcc import ARCC
from medcam3d.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
)
from medcam3d.metrics.road import (
    ROADCombined,
    ROADLeastRelevantFirst,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirst,
    ROADMostRelevantFirstAverage,
)
from medcam3d.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget


@pytest.mark.parametrize("spatial_dims", [2, 3], ids=["2d", "3d"])
def test_readme_metric_code_runs_with_only_the_import_changed(spatial_dims):
    torch.manual_seed(0)
    model = TinyResNet(ndim=spatial_dims, num_classes=3, width=4)
    model.train()  # the caller's state: training, one frozen layer
    model.stem[0].weight.requires_grad_(False)
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    input_tensor = torch.rand(2, 1, *((12,) * spatial_dims))

    # --- pytorch-grad-cam's code from here on (imports above: medcam3d instead of pytorch_grad_cam)
    target_layers = [model.layer4]
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    cam = GradCAM(model=model, target_layers=target_layers)
    grayscale_cams = cam(input_tensor=input_tensor, targets=targets)

    metric_target = ClassifierOutputSoftmaxTarget(1)
    inverse_cams = 1 - grayscale_cams
    scores, batch_visualizations = CamMultImageConfidenceChange()(
        input_tensor, inverse_cams, [metric_target, metric_target], model, return_visualization=True
    )
    visualization = batch_visualizations[0, :].cpu().numpy()

    cam_metric = ROADMostRelevantFirst(percentile=75)
    road_scores, perturbation_visualizations = cam_metric(
        input_tensor, grayscale_cams, targets, model, return_visualization=True
    )
    lerf_scores = ROADLeastRelevantFirst(percentile=25)(input_tensor, grayscale_cams, targets, model)
    morf_average = ROADMostRelevantFirstAverage(percentiles=[20, 40, 60, 80])(
        input_tensor, grayscale_cams, targets, model
    )
    lerf_average = ROADLeastRelevantFirstAverage(percentiles=[20, 40, 60, 80])(
        input_tensor, grayscale_cams, targets, model
    )
    cam_metric = ROADCombined(percentiles=[20, 40, 60, 80])
    combined = cam_metric(input_tensor, grayscale_cams, targets, model)
    drop = DropInConfidence()(input_tensor, grayscale_cams, targets, model)
    increase = IncreaseInConfidence()(input_tensor, grayscale_cams, targets, model)
    cam_metric = ARCC(base_method=cam)
    arcc_score = cam_metric(input_tensor, grayscale_cams, targets, model)
    # --- end of pytorch-grad-cam's code

    assert grayscale_cams.shape == (2, *input_tensor.shape[2:])
    for values in (scores, road_scores, lerf_scores, morf_average, lerf_average, combined, drop, increase):
        assert values.shape == (2,) and values.dtype == np.float32 and np.all(np.isfinite(values))
    np.testing.assert_allclose(visualization, input_tensor[0].numpy() * inverse_cams[0][None], rtol=1e-6)
    # ROAD at percentile 75 fills the voxels at or above the map's 75th percentile (at least a quarter;
    # more when many voxels tie at the threshold, e.g. a ReLU'd map that is mostly zero) and keeps the
    # others bit for bit
    for i in range(2):
        removed = grayscale_cams[i] >= np.percentile(grayscale_cams[i].astype(np.float64), 75)
        kept = ~removed
        np.testing.assert_array_equal(perturbation_visualizations[i, :, kept], input_tensor[i, :, kept])
        assert not torch.equal(perturbation_visualizations[i, :, removed], input_tensor[i, :, removed])
        assert removed.mean() >= 0.25
    np.testing.assert_allclose(combined, (lerf_average - morf_average) / 2, atol=0.05)  # noise differs
    assert np.all(drop >= 0) and set(np.unique(increase)) <= {0.0, 1.0}
    assert arcc_score.shape == (2,) and np.all((arcc_score >= 0) & (arcc_score <= 1 + 1e-6))

    # the caller's model is unchanged: train flags, requires_grad, every parameter and buffer
    assert all(m.training == flag for m, flag in flags)
    assert all(p.requires_grad == flag for p, flag in grads)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in model.parameters())
