"""Deep Feature Factorization (Collins et al., 2018): non-negative matrix factorisation of a layer's
activations into concepts and their heat maps, in torch on the model's device, N-D.

The activations ``(N, K, *s)`` of one layer are arranged as a ``K × (N·voxels)`` matrix ``X``
(each channel shifted to a minimum of 0) and factorised ``X ≈ W H`` with ``W ≥ 0`` ``(K, c)``
(the concepts, as channel embeddings) and ``H ≥ 0`` ``(c, N·voxels)`` (where each concept is).
The factorisation uses scikit-learn's multiplicative-update rules for the Frobenius norm, with
its random initialisation and stopping rule, so ``NMF(n_components=c, init="random",
random_state=seed, solver="mu")`` on the same matrix gives the same factors up to float
rounding; pytorch-grad-cam uses scikit-learn's default coordinate-descent solver, a different
local optimum of the same objective.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medcam3d.core.checks import check_input, select_output
from medcam3d.core.gradients import as_feature_map
from medcam3d.core.layers import LayerSpec, resolve_layers
from medcam3d.core.model import conv_spatial_rank, model_state
from medcam3d.core.taps import LayerTaps
from medcam3d.core.tensors import minmax_normalize, resize_maps
from medcam3d.errors import ConfigurationError, InputShapeError

__all__ = ["nmf", "dff", "DeepFeatureFactorization", "run_dff_on_image"]

_EPSILON = float(np.finfo(np.float32).eps)


def nmf(
    x: torch.Tensor,
    n_components: int,
    seed: int = 0,
    max_iter: int = 200,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative ``x ≈ W @ H`` for ``x`` ``(m, n)`` ≥ 0 → ``W (m, c)``, ``H (c, n)``, on ``x``'s device.

    scikit-learn's ``solver="mu"`` (Frobenius norm, no regularisation): initialisation
    ``|N(0, 1)| · sqrt(mean(x) / c)`` drawn from ``numpy.random.RandomState(seed)`` (``H`` first,
    then ``W``), updates ``W ← W ⊙ (X Hᵀ)/(W H Hᵀ)`` then ``H ← H ⊙ (Wᵀ X)/(Wᵀ W H)`` (zero
    denominators replaced by float32's eps), stopping when the relative decrease of
    ``‖X − WH‖`` over 10 iterations falls below ``tol``.
    """
    if n_components < 1:
        raise ConfigurationError(f"n_components must be a positive integer, got {n_components}.")
    if bool((x < 0).any()):
        raise ValueError("nmf needs a non-negative matrix.")
    m, n = x.shape
    rng = np.random.RandomState(seed)
    scale = float(np.sqrt(float(x.mean()) / n_components))
    h0 = np.abs(scale * rng.standard_normal(size=(n_components, n)).astype(np.float32))
    w0 = np.abs(scale * rng.standard_normal(size=(m, n_components)).astype(np.float32))
    w = torch.from_numpy(w0).to(x.device, x.dtype)
    h = torch.from_numpy(h0).to(x.device, x.dtype)

    def error() -> float:
        return float(torch.linalg.norm(x - w @ h))

    initial = previous = error()
    for iteration in range(1, max_iter + 1):
        denominator = w @ (h @ h.T)
        w = w * (
            (x @ h.T) / torch.where(denominator == 0, torch.full_like(denominator, _EPSILON), denominator)
        )
        denominator = (w.T @ w) @ h
        h = h * (
            (w.T @ x) / torch.where(denominator == 0, torch.full_like(denominator, _EPSILON), denominator)
        )
        if tol > 0 and iteration % 10 == 0:
            current = error()
            if initial == 0 or (previous - current) / initial < tol:
                break
            previous = current
    return w, h


def dff(activations: Any, n_components: int = 5, seed: int = 0) -> tuple[Any, Any]:
    """Deep Feature Factorization of ``(N, K, *s)`` activations (numpy or torch).

    Returns ``(concepts, explanations)``: ``concepts`` ``(K, n_components)`` (the factor ``W``
    plus each channel's offset, as pytorch-grad-cam) and ``explanations`` ``(N, n_components,
    *s)`` (the factor ``H``). numpy in, numpy out; a tensor stays on its device. The input is not
    modified.
    """
    numpy_in = not isinstance(activations, torch.Tensor)
    a = (
        torch.as_tensor(np.asarray(activations, dtype=np.float32))
        if numpy_in
        else activations.detach().float()
    )
    if a.ndim < 3:
        raise InputShapeError(f"Activations must be (N, K, *spatial); got shape {tuple(a.shape)}.")
    n, k = a.shape[:2]
    spatial = tuple(a.shape[2:])
    matrix = torch.nan_to_num(a.transpose(0, 1).reshape(k, -1), nan=0.0)
    offset = matrix.min(dim=1).values
    w, h = nmf(matrix - offset[:, None], n_components, seed=seed)
    concepts = w + offset[:, None]
    explanations = h.reshape(n_components, n, *spatial).transpose(0, 1)
    if numpy_in:
        return concepts.cpu().numpy(), explanations.cpu().numpy()
    return concepts, explanations


class DeepFeatureFactorization:
    """pytorch-grad-cam's ``DeepFeatureFactorization``: concepts and their heat maps for one layer, N-D.

    ``dff(input_tensor (N, C, *S), n_components=16)`` returns ``(concepts, explanations)`` or,
    with ``computation_on_concepts`` (e.g. the classifier head, applied to the concepts
    ``(n_components, K)``), ``(concepts, explanations, concept_outputs)``: ``concepts`` numpy
    ``(K, n_components)``; ``explanations`` a list of one numpy ``(n_components, *S)`` per sample,
    each concept's map min-max scaled to [0, 1] and resized (linear) to the input;
    ``concept_outputs`` numpy ``(n_components, outputs)``. One forward pass, no gradients; the
    factorisation runs on the model's device.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        computation_on_concepts: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.layers = resolve_layers(model, target_layer)
        if len(self.layers) != 1:
            raise ConfigurationError("DeepFeatureFactorization takes one target layer.")
        self.target_layer = self.layers[0][1]
        self.reshape_transform = reshape_transform
        self.computation_on_concepts = computation_on_concepts
        self.seed = seed

    def activations(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """The target layer's feature map ``(N, K, *s)`` for ``input_tensor``, on the model's device."""
        x = check_input(input_tensor, self.model, conv_spatial_rank(self.model))
        taps = LayerTaps(self.layers, track_gradients=False)
        with model_state(self.model), torch.no_grad():
            with taps:
                select_output(self.model(x), 0)
            name = self.layers[0][0]
            raw = taps.activations[name]
            taps.clear()
        return as_feature_map(name, raw, x.ndim - 2, x.shape[0], self.reshape_transform)

    def __call__(self, input_tensor: torch.Tensor, n_components: int = 16) -> tuple[Any, ...]:
        feature_map = self.activations(input_tensor)
        concepts, explanations = dff(feature_map, n_components=n_components, seed=self.seed)
        spatial = tuple(input_tensor.shape[2:])
        processed = []
        for sample in explanations:  # (c, *s)
            scaled = resize_maps(minmax_normalize(sample), spatial)
            processed.append(scaled.detach().to("cpu", torch.float32).numpy())
        concepts_np = concepts.detach().cpu().numpy()
        if self.computation_on_concepts is None:
            return concepts_np, processed
        with torch.no_grad():
            outputs = self.computation_on_concepts(concepts.T.contiguous())
        return concepts_np, processed, outputs.detach().cpu().numpy()

    def __enter__(self) -> DeepFeatureFactorization:
        return self

    def __exit__(self, exc_type: object, exc_value: object, exc_tb: object) -> None:
        return None


def run_dff_on_image(
    model: nn.Module,
    target_layer: LayerSpec,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    img_pil: Any,
    img_tensor: torch.Tensor,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_components: int = 5,
    top_k: int = 2,
    labels: Mapping[int, str] | Sequence[str] | None = None,
) -> np.ndarray:
    """pytorch-grad-cam's one-image DFF figure: the image and its concepts side by side, uint8 RGB.

    ``img_pil``: the RGB image (PIL or ``(H, W, 3)`` uint8); ``img_tensor`` ``(C, H, W)`` its
    network input; ``classifier`` maps concepts ``(c, K)`` to class scores; ``labels`` class
    index → name (default: ``model.config.id2label``, as pytorch-grad-cam, else the index).
    Needs matplotlib (the ``viz`` extra) for the legend.
    """
    from medcam3d.utils.image import create_labels_legend, show_factorization_on_image

    image = np.asarray(img_pil)
    rgb = image.astype(np.float32) / 255.0
    factorization = DeepFeatureFactorization(model, target_layer, reshape_transform, classifier)
    _, explanations, concept_outputs = factorization(img_tensor[None], n_components)
    probabilities = torch.softmax(torch.from_numpy(concept_outputs), dim=-1).numpy()
    if labels is None:
        config = getattr(model, "config", None)
        labels = getattr(config, "id2label", None)
    if labels is None:
        labels = {i: str(i) for i in range(probabilities.shape[1])}
    names = dict(enumerate(labels)) if isinstance(labels, Sequence) else dict(labels)
    legend = create_labels_legend(probabilities, names, top_k=top_k)
    figure = show_factorization_on_image(rgb, explanations[0], image_weight=0.3, concept_labels=legend)
    return np.hstack((image.astype(np.uint8), figure))
