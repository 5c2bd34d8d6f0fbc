"""The names added for pytorch-grad-cam 1.5.7, against formulas computed here (numpy, scipy, scikit-learn)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from helpers_models import TinyResNet
from medcam3d import (
    SESS,
    AblationCAM,
    AblationLayer,
    AblationLayerFasterRCNN,
    AblationLayerVit,
    GradCAM,
    GradCAMPlusPlus,
    RefineCAM,
    ScoreCAM,
    SegEigenCAM,
)
from medcam3d.errors import ConfigurationError, InputShapeError, TargetError
from medcam3d.feature_factorization.deep_feature_factorization import DeepFeatureFactorization, dff
from medcam3d.sess import sliding_window
from medcam3d.sobel_cam import sobel_cam
from medcam3d.utils.image import (
    cam_resize,
    create_labels_legend,
    preprocess_image,
    scale_cam_image,
    show_factorization_on_image,
)
from medcam3d.utils.model_targets import ClassifierOutputTarget, FasterRCNNBoxScoreTarget
from medcam3d.utils.svd_on_activations import (
    get_2d_projection,
    get_2d_projection_kernel,
    get_2d_projection_with_sign_correction,
)


def _model(ndim: int = 2, seed: int = 0) -> TinyResNet:
    torch.manual_seed(seed)
    return TinyResNet(ndim=ndim).eval()


def _x(ndim: int = 2, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, *(12, 16, 20)[-ndim:], generator=torch.Generator().manual_seed(seed))


def _numpy_projection(a: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's projection (full SVD of the centred voxels × channels matrix), any sign."""
    out = []
    for sample in a:
        m = sample.reshape(sample.shape[0], -1).T
        m = m - m.mean(axis=0)
        _, _, vt = np.linalg.svd(m, full_matrices=False)
        out.append((m @ vt[0]).reshape(sample.shape[1:]))
    return np.float32(out)


# ---------------------------------------------------------------- projections
@pytest.mark.parametrize("spatial", [(9,), (6, 7), (4, 5, 6)])
def test_projections_against_numpy_svd(spatial: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    a = rng.random((2, 5, *spatial)).astype(np.float32)
    a[0, 0].flat[0] = np.nan
    before = a.copy()
    ours = get_2d_projection(a)
    assert np.array_equal(a, before, equal_nan=True)  # the caller's array is not modified
    clean = np.nan_to_num(a)
    reference = _numpy_projection(clean)
    for i in range(2):  # same up to sign; our sign correlates with the channel sum
        sign = np.sign((ours[i] * reference[i]).sum())
        np.testing.assert_allclose(ours[i], sign * reference[i], atol=1e-4)
        total = clean[i].sum(axis=0)
        assert ((ours[i] - ours[i].mean()) * (total - total.mean())).sum() >= 0
    corrected = get_2d_projection_with_sign_correction(a)
    for i in range(2):
        p = reference[i] if abs(reference[i].min()) <= abs(reference[i].max()) else -reference[i]
        np.testing.assert_allclose(corrected[i], p, atol=1e-4)
    tensor = get_2d_projection(torch.from_numpy(clean))
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, *spatial)


def test_kernel_projection_against_scikit_learn() -> None:
    from sklearn.decomposition import KernelPCA

    rng = np.random.default_rng(1)
    a = rng.random((2, 4, 5, 6)).astype(np.float32)
    ours = get_2d_projection_kernel(a, kernel="rbf", gamma=0.5)
    for i in range(2):
        m = a[i].reshape(4, -1).T
        m = m - m.mean(axis=0)
        reference = KernelPCA(n_components=1, kernel="rbf", gamma=0.5).fit_transform(m)[:, 0].reshape(5, 6)
        assert abs(np.corrcoef(ours[i].ravel(), reference.ravel())[0, 1]) > 0.999


# ---------------------------------------------------------------- SegEigenCAM
@pytest.mark.parametrize("ndim", [2, 3])
def test_seg_eigen_cam_formula(ndim: int) -> None:
    model, x = _model(ndim), _x(ndim)
    targets = [ClassifierOutputTarget(2)] * 2
    cam = SegEigenCAM(model, [model.layer4], normalize=False)
    maps = cam(x, targets)
    acts = cam.activations_and_grads.activations[0].numpy()
    grads = cam.activations_and_grads.gradients[0].numpy()
    projection = _numpy_projection(np.abs(grads) * acts)
    for i in range(2):  # eq. 13: the larger-magnitude side is positive
        if abs(projection[i].min()) > abs(projection[i].max()):
            projection[i] = -projection[i]
    expected = torch.relu(torch.from_numpy(projection))[:, None]
    mode = "bilinear" if ndim == 2 else "trilinear"
    expected = torch.nn.functional.interpolate(expected, size=x.shape[2:], mode=mode, align_corners=False)[
        :, 0
    ]
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-4)


# ---------------------------------------------------------------- RefineCAM
@pytest.mark.parametrize("ndim", [2, 3])
def test_refine_cam_fusion(ndim: int) -> None:
    model, x = _model(ndim), _x(ndim)
    layers = [model.layer2, model.layer3, model.layer4]
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(1)]
    per_layer = [
        GradCAMPlusPlus(model, [layer], normalize=False, return_tensor=True)(x, targets).numpy()
        for layer in layers
    ]
    product = np.ones_like(per_layer[0])
    for m in per_layer:  # each layer ReLU'd and divided by its maximum (the step pytorch-grad-cam skips)
        m = np.maximum(m, 0)
        product *= m / (m.reshape(2, -1).max(axis=1).reshape(2, *([1] * ndim)) + 1e-8)
    expected = scale_cam_image(product)
    with RefineCAM(model, layers) as cam:
        ours = cam(x, targets)
        smoothed = cam(x, targets, eigen_smooth=True)  # eigen_smooth reaches the base method as eigen_smooth
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    base_eigen = [
        GradCAMPlusPlus(model, [layer], normalize=False, return_tensor=True)(x, targets, eigen_smooth=True)
        for layer in layers
    ]
    assert not np.allclose(smoothed, ours)
    assert np.isfinite(smoothed).all() and len(base_eigen) == 3


# ---------------------------------------------------------------- SESS
@pytest.mark.parametrize(
    "height,width,step_size,window_size,expected",
    [
        (224, 224, 224, 224, [(0, 0)]),
        (288, 288, 224, 224, [(0, 0), (64, 0), (0, 64), (64, 64)]),
        (224, 448, 224, 224, [(0, 0), (224, 0)]),
        (224, 448, 112, 224, [(0, 0), (112, 0), (224, 0)]),
    ],
)
def test_sliding_window(height: int, width: int, step_size: int, window_size: int, expected: list) -> None:  # type: ignore[type-arg]
    assert sliding_window(height, width, step_size, window_size) == expected


def test_sess_one_window_is_the_base_method() -> None:
    model, x = _model(3), _x(3)
    targets = [ClassifierOutputTarget(1)] * 2
    sess = SESS(model, [model.layer4], scales=[12], smooth=False, progress=False)  # one scale = the input
    np.testing.assert_allclose(sess(x, targets), GradCAM(model, [model.layer4])(x, targets), atol=1e-5)


def test_sess_windows_along_every_axis_and_fusion() -> None:
    model, x = _model(3), _x(3, batch=1)
    target = [ClassifierOutputTarget(1)]
    sess = SESS(model, [model.layer4], scales=[18], window_size=(12, 16, 20), smooth=False, pool="max",
                use_softmax_scores=True, progress=False)  # fmt: skip
    geometry = sess.geometry(tuple(x.shape[2:]))
    shape, starts = geometry[0]
    assert shape == (18, 24, 30) and len(starts) == 8  # 2 windows along each of the 3 axes
    # the reference: every window scored by its class probability, explained, weighted, put back, max-pooled
    scaled = torch.nn.functional.interpolate(x, size=shape, mode="trilinear", align_corners=False)
    crops = [scaled[:, :, z : z + 12, y : y + 16, w : w + 20] for z, y, w in starts]
    with torch.no_grad():
        probs = [float(torch.softmax(model(c), dim=1)[0, 1]) for c in crops]
    fused = np.zeros(x.shape[2:], dtype=np.float32)
    for (z, y, w), crop, p in zip(starts, crops, probs):
        canvas = torch.zeros(shape)
        canvas[z : z + 12, y : y + 16, w : w + 20] = GradCAM(model, [model.layer4], return_tensor=True)(
            crop, target
        )[0]
        canvas = canvas * p / max(probs)
        back = torch.nn.functional.interpolate(
            canvas[None, None], size=x.shape[2:], mode="trilinear", align_corners=False
        )
        fused = np.maximum(fused, back[0, 0].numpy())
    np.testing.assert_allclose(sess(x, target)[0], scale_cam_image(fused[None])[0], atol=1e-4)


def test_sess_options_and_errors() -> None:
    model, x = _model(), _x()
    for kwargs in ({"pool": "mean", "theta": 0.1}, {"pre_filter_ratio": 0.5}, {"use_softmax_scores": False}):
        maps = SESS(model, [model.layer4], num_scales=2, step_size=6, progress=False, **kwargs)(x)  # type: ignore[arg-type]
        assert maps.shape == (2, 16, 20) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    with pytest.raises(ValueError):
        SESS(model, [model.layer4], pool="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SESS(model, [model.layer4], pre_filter_ratio=1.0)
    with pytest.raises(ValueError):
        SESS(model, [model.layer4], num_scales=0)
    with pytest.raises(ConfigurationError, match="smaller than the window"):
        SESS(model, [model.layer4], scales=[6], progress=False)(x, [ClassifierOutputTarget(0)] * 2)
    with pytest.raises(TargetError):
        SESS(model, [model.layer4], num_scales=1, progress=False)(x, [ClassifierOutputTarget(0)])
    top = model(x).argmax(dim=1).tolist()
    sess = SESS(model, [model.layer4], num_scales=2, progress=False)
    np.testing.assert_allclose(sess(x), sess(x, [ClassifierOutputTarget(c) for c in top]), atol=1e-6)


# ---------------------------------------------------------------- DFF
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_dff_against_scikit_learn_nmf() -> None:
    from sklearn.decomposition import NMF

    rng = np.random.default_rng(0)
    a = (rng.random((2, 6, 4, 5)) - 0.3).astype(np.float32)
    concepts, explanations = dff(a, n_components=3)
    assert concepts.shape == (6, 3) and explanations.shape == (2, 3, 4, 5)
    matrix = a.transpose(1, 0, 2, 3).reshape(6, -1)
    offset = matrix.min(axis=1)
    model = NMF(n_components=3, init="random", random_state=0, solver="mu", max_iter=200, tol=1e-4)
    w = model.fit_transform(matrix - offset[:, None])
    np.testing.assert_allclose(concepts, w + offset[:, None], rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(
        explanations, model.components_.reshape(3, 2, 4, 5).transpose(1, 0, 2, 3), rtol=2e-3, atol=2e-4
    )
    # the same objective as pytorch-grad-cam's default (coordinate descent) solver reaches, or close
    cd = NMF(n_components=3, init="random", random_state=0).fit(matrix - offset[:, None])
    ours_error = np.linalg.norm(
        matrix
        - offset[:, None]
        - (concepts - offset[:, None]) @ explanations.transpose(1, 0, 2, 3).reshape(3, -1)
    )
    assert ours_error <= 1.1 * cd.reconstruction_err_


@pytest.mark.parametrize("ndim", [2, 3])
def test_deep_feature_factorization_nd(ndim: int) -> None:
    model, x = _model(ndim), _x(ndim)
    head = model.fc
    factorization = DeepFeatureFactorization(model, model.layer4, computation_on_concepts=head)
    concepts, explanations, outputs = factorization(x, n_components=4)
    assert concepts.shape == (32, 4) and outputs.shape == (4, 3)
    assert len(explanations) == 2 and explanations[0].shape == (4, *x.shape[2:])
    assert explanations[0].min() >= 0 and explanations[0].max() <= 1 + 1e-6
    np.testing.assert_allclose(outputs, head(torch.from_numpy(concepts.T)).detach().numpy(), atol=1e-5)
    assert all(not m._forward_hooks for m in model.modules())


def test_show_factorization_and_legend() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((8, 10, 3)).astype(np.float32)
    explanations = rng.random((2, 8, 10)).astype(np.float32)
    before = explanations.copy()
    colors = [np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.5, 1.0])]
    out = show_factorization_on_image(img, explanations, colors=colors, image_weight=0.3)
    assert np.array_equal(explanations, before)
    winner = explanations.argmax(axis=0)
    mask = np.zeros_like(img)
    for i, color in enumerate(colors):  # HSV value := the map, i.e. RGB scaled by map / max(RGB)
        mask += np.where(winner == i, explanations[i], 0)[..., None] * (color / color.max())
    np.testing.assert_array_equal(out, np.uint8(np.clip(img * 0.3 + mask * 0.7, 0, 1) * 255))
    legend = create_labels_legend(
        np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]]), {0: "cat, tabby", 1: "dog", 2: "car"}, top_k=2
    )
    assert legend == ["dog:0.70\ncar:0.20", "cat, tabby:0.50\ncar:0.40"]
    pytest.importorskip("matplotlib")
    with_legend = show_factorization_on_image(img, explanations, colors=colors, concept_labels=legend)
    assert with_legend.shape == (8, 20, 3) and with_legend.dtype == np.uint8


# ---------------------------------------------------------------- sobel, images, targets
@pytest.mark.parametrize("shape", [(9, 11), (5, 6, 7)])
def test_sobel_cam_against_scipy(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    image = rng.random(shape)
    expected = np.mean([np.abs(ndi.sobel(image, axis=a, mode="mirror")) for a in range(len(shape))], axis=0)
    np.testing.assert_allclose(sobel_cam(image), expected, atol=1e-5)


def test_sobel_cam_uint8_rgb_as_opencv() -> None:
    rng = np.random.default_rng(1)
    rgb = (rng.random((9, 11, 3)) * 255).astype(np.uint8)
    r, g, b = (rgb[..., c].astype(np.int64) for c in range(3))
    gray = ((r * 4899 + g * 9617 + b * 1868 + 8192) >> 14).astype(float)  # OpenCV's RGB2GRAY
    gx = np.clip(np.rint(np.abs(ndi.sobel(gray, axis=1, mode="mirror"))), 0, 255)
    gy = np.clip(np.rint(np.abs(ndi.sobel(gray, axis=0, mode="mirror"))), 0, 255)
    out = sobel_cam(rgb)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.clip(np.rint(0.5 * gx + 0.5 * gy), 0, 255).astype(np.uint8))


def test_preprocess_image_scales_uint8_like_to_tensor() -> None:
    rng = np.random.default_rng(0)
    img = (rng.random((6, 7, 3)) * 255).astype(np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = ((img / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
    np.testing.assert_allclose(preprocess_image(img, mean=mean, std=std).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(
        preprocess_image(img.astype(np.float32) / 255, mean, std).numpy(), expected, atol=1e-6
    )


def test_cam_resize() -> None:
    cam = np.random.default_rng(0).random((2, 4, 5, 6)).astype(np.float32) * 3
    out = cam_resize(cam, (12, 10, 8))  # OpenCV order: (W, H, D)
    assert out.shape == (2, 8, 10, 12) and out.max() > 1  # resized, not rescaled
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(cam)[:, None], size=(8, 10, 12), mode="trilinear"
    )[:, 0]
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-6)
    with pytest.raises(InputShapeError):
        cam_resize(cam, (12, 10))


def test_faster_rcnn_box_score_target() -> None:
    outputs = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 30.0, 30.0]]),
        "labels": torch.tensor([1, 2, 1]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
    }
    target = FasterRCNNBoxScoreTarget(
        labels=[1, 2, 1],
        bounding_boxes=[np.array([0, 0, 10, 8]), np.array([6, 6, 15, 15]), np.array([50, 50, 60, 60])],
    )
    iou_1 = 80 / 100  # box 1 vs detection 0
    iou_2 = 81 / 100  # box 2 vs detection 1
    assert float(target(outputs)) == pytest.approx(iou_1 + 0.9 + iou_2 + 0.8, rel=1e-6)
    assert float(FasterRCNNBoxScoreTarget([1], [np.array([0, 0, 1, 1])])({"boxes": torch.zeros(0, 4)})) == 0.0
    volume = {
        "boxes": torch.tensor([[0.0, 0, 0, 4, 4, 4]]),
        "labels": torch.tensor([3]),
        "scores": torch.tensor([0.5]),
    }
    assert float(FasterRCNNBoxScoreTarget([3], [np.array([0, 0, 0, 4, 4, 3])])(volume)) == pytest.approx(
        0.75 + 0.5
    )


# ---------------------------------------------------------------- AblationCAM and its layers
def test_ablation_cam_positional_parameters_and_protocol() -> None:
    model, x = _model(), _x()
    targets = [ClassifierOutputTarget(1)] * 2
    by_position = AblationCAM(model, [model.layer4], None, AblationLayer(), 4, 1.0, progress=False)
    by_name = AblationCAM(model=model, target_layers=[model.layer4], ablation_layer=AblationLayer(), batch_size=4,
                          ratio_channels_to_ablate=1.0, progress=False)  # fmt: skip
    assert by_position.batch_size == 4 and isinstance(by_position.ablation_layer, AblationLayer)
    maps = by_position(x, targets)
    np.testing.assert_allclose(maps, by_name(x, targets), atol=1e-6)
    # the formula, by hand: channel k of layer4 set to pytorch-grad-cam's value, w_k = (y - y_k) / y
    with torch.no_grad():
        acts = model.layer4(model.layer3(model.layer2(model.layer1(model.stem(x)))))
        y = model.fc(acts.mean(dim=(2, 3)))[:, 1]
        value = 0.0 if float(acts.min()) == 0 else float(acts.min()) - 1e7
        weights = torch.zeros(2, acts.shape[1])
        for i in range(2):
            for k in range(acts.shape[1]):
                ablated = acts[i : i + 1].clone()
                ablated[0, k] = value
                weights[i, k] = (y[i] - model.fc(ablated.mean(dim=(2, 3)))[0, 1]) / y[i]
        cam = torch.relu((weights[:, :, None, None] * acts).sum(dim=1))[:, None]
        cam = torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[
            :, 0
        ]
    np.testing.assert_allclose(maps, scale_cam_image(cam.numpy()), atol=1e-4)
    assert all(not m._forward_hooks for m in model.modules())


def test_ablation_layer_channel_choice_and_variants() -> None:
    rng = np.random.default_rng(0)
    acts = torch.from_numpy(rng.random((8, 4, 5)).astype(np.float32))
    layer = AblationLayer()
    assert layer.activations_to_be_ablated(acts, 1.0).tolist() == list(range(8))
    chosen = layer.activations_to_be_ablated(acts, 0.5)
    assert len(chosen) == 4 and len(set(chosen.tolist())) == 4
    vit = AblationLayerVit()
    tokens = torch.rand(2, 5, 6) + 1
    vit.set_next_batch(1, tokens, 3)
    vit.indices = torch.tensor([0, 2, 5])
    out = vit()
    assert out.shape == (3, 5, 6)
    low = float(tokens[1].min()) - 1e7
    for row, channel in enumerate([0, 2, 5]):
        assert torch.all(out[row, :, channel] == low)
    frcnn = AblationLayerFasterRCNN()
    pyramid = {k: torch.rand(1, 256, 2, 2) for k in ("0", "1", "2", "3", "pool")}
    frcnn.set_next_batch(0, pyramid, 2)
    frcnn.indices = [3, 256 + 7]
    result = frcnn()
    assert torch.all(result["0"][0, 3] == -1000) and torch.all(result["1"][1, 7] == -1000)
    model = _model()
    with pytest.raises(ValueError):
        AblationCAM(model, [model.layer4], ratio_channels_to_ablate=0.0)
    with pytest.raises(TypeError):
        AblationCAM(model, [model.layer4], None, object())  # type: ignore[arg-type]


def test_ablation_cam_ratio_uses_the_ablation_layer_choice() -> None:
    model, x = _model(), _x()
    cam = AblationCAM(
        model, [model.layer4], ablation_layer=AblationLayer(), ratio_channels_to_ablate=0.25, progress=False
    )
    result = cam.compute(x, [ClassifierOutputTarget(0)] * 2)
    assert np.isfinite(result.maps.numpy()).all()


# ---------------------------------------------------------------- long runs say so first
def test_long_running_methods_warn_with_an_estimate(caplog: pytest.LogCaptureFixture) -> None:
    model, x = _model(), _x()
    with caplog.at_level(logging.WARNING, logger="medcam3d"):
        ScoreCAM(model, [model.layer4], warn_forwards=10, progress=False)(x)
    record = next(r for r in caplog.records if "ScoreCAM will run" in r.getMessage())
    message = record.getMessage()
    assert "top_k_channels" in message and "forward pass of one sample takes" in message
    count = int(message.split("will run ")[1].split(" ")[0])
    assert 10 < count <= 2 * 32 + 1  # 2 samples x 32 channels (+ the zero input)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medcam3d"):
        AblationCAM(model, [model.layer4], warn_forwards=10, progress=False)(x)
        message = next(r.getMessage() for r in caplog.records if "AblationCAM will run 64" in r.getMessage())
    assert "ratio_channels_to_ablate" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medcam3d"):
        ScoreCAM(model, [model.layer4], top_k_channels=4, warn_forwards=10, progress=False)(x)
        ScoreCAM(model, [model.layer4], warn_forwards=None, progress=False)(x)
    assert not [r for r in caplog.records if "will run" in r.getMessage()]


def test_sess_warns_before_a_long_run(caplog: pytest.LogCaptureFixture) -> None:
    model, x = _model(), _x(batch=1)
    sess = SESS(model, [model.layer4], base_method=ScoreCAM, num_scales=2, progress=False)
    assert sess.forward_passes(x) > 300
    with caplog.at_level(logging.WARNING, logger="medcam3d"):
        sess.base_cam.warn_forwards = None
        sess.base_cam.progress = False
        sess(x)
    message = next(r.getMessage() for r in caplog.records if "SESS will run about" in r.getMessage())
    assert "pre_filter_ratio" in message
