"""Several target sets differentiated in one batched backward pass give exactly the per-set gradients."""

from __future__ import annotations

import pytest
import torch

from helpers_models import TinyResNet, TinySegNet
from medcam3d import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM
from medcam3d.core.gradients import batched_layer_gradients, layer_gradients
from medcam3d.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget


def _per_set_reference(cam: GradCAM, x: torch.Tensor, sets: list[list]) -> list[torch.Tensor]:
    return [cam.compute(x, targets).maps for targets in sets]


@pytest.mark.parametrize("method", [GradCAM, HiResCAM, GradCAMPlusPlus, LayerCAM])
def test_batched_classes_equal_one_backward_per_class_on_a_segmenter(method: type[GradCAM]) -> None:
    torch.manual_seed(0)
    model = TinySegNet(ndim=3, num_classes=8).eval()
    x = torch.randn(2, 1, 8, 12, 10)
    predicted = int(model(x)[0].argmax(dim=1).flatten().mode().values)
    sets = [[ClassifierOutputTarget(k), ClassifierOutputTarget(k)] for k in range(8)]  # whole channels
    sets.append([SemanticSegmentationTarget(predicted, None)] * 2)  # the predicted region of a class
    cam = method(model, ["down", "dec"])
    reference = _per_set_reference(cam, x, sets)
    for budget in (1 << 29, 1):  # every set in one pass / one set per pass
        cam.gradient_memory_bytes = budget
        for ref, result in zip(reference, cam.compute_multi(x, sets)):
            assert float(ref.max()) > 0  # a real map, not zeros against zeros
            torch.testing.assert_close(result.maps, ref, atol=1e-5, rtol=1e-4)


def test_batched_gradients_equal_autograd_set_by_set() -> None:
    torch.manual_seed(1)
    model = TinyResNet(ndim=2, num_classes=5).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(3, 1, 16, 16)
    taps: dict[str, torch.Tensor] = {}

    def keep(name: str):  # noqa: ANN202
        def hook(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
            recorded = output if output.requires_grad else output.detach().requires_grad_(True)
            taps[name] = recorded
            return recorded.clone()

        return hook

    model.layer3.register_forward_hook(keep("layer3"))
    model.layer4.register_forward_hook(keep("layer4"))
    out = model(x)
    acts = [taps["layer3"], taps["layer4"]]
    scores = [out[:, k] * (k + 1) for k in range(5)]
    batched = batched_layer_gradients(scores, acts, ["layer3", "layer4"], memory_bytes=3 * 4 * 16 * 8 * 8 * 2)
    assert batched is not None and len(batched) == 5
    for k in range(5):
        expected = layer_gradients(scores[k], acts, ["layer3", "layer4"], retain_graph=True)
        for got, want in zip(batched[k], expected):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_a_set_without_gradient_path_falls_back_to_the_precise_error() -> None:
    torch.manual_seed(0)
    model = TinyResNet(ndim=2).eval()
    x = torch.randn(1, 1, 16, 16)
    constant = lambda output: torch.tensor(1.0)  # noqa: E731 - reads nothing of the output
    with pytest.raises(Exception, match="no gradient path"):
        GradCAM(model, ["layer4"]).compute_multi(x, [[ClassifierOutputTarget(0)], [constant]])
