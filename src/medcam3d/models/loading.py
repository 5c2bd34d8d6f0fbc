"""One entry point: :func:`load_model` for a bundle, a factory + state dict, or a trusted pickle."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from medcam3d.errors import ConfigurationError
from medcam3d.models.checkpoints import load_into, read_state_dict, sha256_file
from medcam3d.models.factory import build_from_factory, parse_model_kwargs
from medcam3d.models.loaded import LoadedModel, ModelSource, finish
from medcam3d.models.pickled import load_pickled_module

__all__ = ["load_model", "resolve_device", "model_source"]

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA if available, else MPS, else CPU) or the device asked for; CUDA/MPS that are
    not available fall back to the CPU with a warning."""
    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigurationError(f"Unknown device {device!r}: use auto, cpu, cuda, cuda:1 or mps.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        logger.warning("CUDA is not available: falling back to the CPU.")
        return torch.device("cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        logger.warning("MPS is not available: falling back to the CPU.")
        return torch.device("cpu")
    return dev


def model_source(
    bundle: str | os.PathLike[str] | None = None,
    factory: str | None = None,
    model_kwargs: str | dict[str, Any] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    trust_checkpoint: bool = False,
) -> ModelSource:
    """A checked :class:`ModelSource` (exactly one kind of source; the files exist)."""
    kwargs = parse_model_kwargs(model_kwargs)
    if bundle is not None:
        if factory is not None or checkpoint is not None:
            raise ConfigurationError(
                "Give either a MONAI bundle (--bundle) or --model/--checkpoint, not both: a bundle brings its own "
                "network and weights."
            )
        return ModelSource(bundle=Path(bundle))
    if factory is None and checkpoint is None:
        raise ConfigurationError(
            "No model given: pass --bundle FOLDER (a MONAI bundle), --model package.module:factory [--checkpoint "
            "weights.pt], or --checkpoint whole_model.pt --trust-checkpoint."
        )
    if kwargs and factory is None:
        raise ConfigurationError("--model-kwargs needs --model package.module:factory.")
    if factory is None and not trust_checkpoint:
        # no factory: only a pickled module can work; say why before touching it
        return ModelSource(checkpoint=Path(checkpoint) if checkpoint is not None else None)
    return ModelSource(
        factory=factory,
        model_kwargs=kwargs,
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        trust_checkpoint=trust_checkpoint,
    )


def load_model(source: ModelSource, device: str | torch.device | None = "auto") -> LoadedModel:
    """Load the network once, in eval mode on ``device``.

    * bundle: :func:`medcam3d.models.bundle.load_bundle`;
    * factory (+ checkpoint): the factory is called with ``model_kwargs``; the checkpoint is a
      state dict read with ``torch.load(weights_only=True)``, unwrapped
      (:func:`~medcam3d.models.checkpoints.unwrap_state_dict`) and loaded strictly;
    * pickle: ``torch.load(weights_only=False)`` only with ``trust_checkpoint`` (unpickling runs code).

    Raises:
        BundleError, ModelFactoryError, CheckpointError: what is wrong and how to fix it.
    """
    dev = resolve_device(device)
    if source.bundle is not None:
        from medcam3d.models.bundle import load_bundle

        network, info, weights = load_bundle(source.bundle, dev)
        return finish(network, source, "bundle", weights, sha256_file(weights), dev, bundle=info)
    if source.factory is not None:
        network = build_from_factory(source.factory, source.model_kwargs)
        digest = None
        if source.checkpoint is not None:
            state = read_state_dict(source.checkpoint)
            load_into(network, state, str(source.checkpoint))
            digest = sha256_file(source.checkpoint)
        else:
            logger.warning("No --checkpoint: the network from %s keeps its initial weights.", source.factory)
        return finish(network, source, "factory", source.checkpoint, digest, dev)
    if source.checkpoint is None:  # pragma: no cover - model_source refuses this
        raise ConfigurationError("No model given.")
    module = load_pickled_module(source.checkpoint, trust_checkpoint=source.trust_checkpoint)
    return finish(module, source, "pickle", source.checkpoint, sha256_file(source.checkpoint), dev)
