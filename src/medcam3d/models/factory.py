"""``--model package.module:factory``: build the network with the user's own code, then load a state dict."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn

from medcam3d.models.errors import ModelFactoryError

__all__ = ["import_factory", "build_from_factory", "parse_model_kwargs"]

logger = logging.getLogger(__name__)


def parse_model_kwargs(text: str | dict[str, Any] | None) -> dict[str, Any]:
    """``--model-kwargs`` JSON (an object) as a dict; ``None``/empty gives ``{}``."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFactoryError(
            f'--model-kwargs must be a JSON object such as \'{{"spatial_dims": 3, "out_channels": 2}}\'; '
            f"{text!r} is not valid JSON ({exc.msg} at character {exc.pos})."
        ) from exc
    if not isinstance(value, dict):
        raise ModelFactoryError(
            f"--model-kwargs must be a JSON object ({{...}}), got {type(value).__name__}."
        )
    return value


def _import_module(spec: str) -> Any:
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec)
        if not path.is_file():
            raise ModelFactoryError(f"--model: the file {path} does not exist.")
        name = f"medcam3d_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}"
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:  # pragma: no cover - a .py file always has one
            raise ModelFactoryError(f"--model: cannot import {path} as a Python module.")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ModelFactoryError(f"--model: importing {path} failed: {type(exc).__name__}: {exc}") from exc
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise ModelFactoryError(
            f"--model: cannot import the module {spec!r} ({exc}). Install the package that defines the network "
            "(pip install -e .), run from the folder that holds it or add it to PYTHONPATH, or give a file: "
            "--model path/to/model.py:factory."
        ) from exc
    except Exception as exc:
        raise ModelFactoryError(f"--model: importing {spec!r} failed: {type(exc).__name__}: {exc}") from exc


def import_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` (or ``"file.py:function"``; dotted
    attributes such as ``module:Class.build`` are followed).

    Raises:
        ModelFactoryError: no ``:``, the module cannot be imported, the attribute does not exist
            (close matches listed), or it is not callable.
    """
    if not isinstance(spec, str) or spec.count(":") < 1 or spec.endswith(":") or spec.startswith(":"):
        raise ModelFactoryError(
            f"--model must be 'package.module:factory' (or 'path/to/file.py:factory'), got {spec!r}: the part after "
            "':' names a function or class that returns the nn.Module, e.g. monai.networks.nets:UNet."
        )
    module_name, _, attribute = spec.rpartition(":")
    module = _import_module(module_name)
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ModelFactoryError(f"--model: {module_name!r} has no attribute {attribute!r}.{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelFactoryError(
            f"--model: {spec} is a {type(obj).__name__}, not a callable; name a function or class that returns "
            "the nn.Module."
        )
    return obj


def build_from_factory(spec: str, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Call the factory with ``model_kwargs`` and check that it returns an ``nn.Module``."""
    factory = import_factory(spec)
    kwargs = dict(model_kwargs or {})
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ModelFactoryError(
            f"--model: calling {spec}(**{kwargs!r}) failed: {exc}. Pass the factory's arguments with --model-kwargs "
            "as a JSON object."
        ) from exc
    except Exception as exc:
        raise ModelFactoryError(
            f"--model: calling {spec}(**{kwargs!r}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelFactoryError(
            f"--model: {spec}(...) returned a {type(model).__name__}, not a torch.nn.Module. The factory must "
            "return the network itself (load the weights with --checkpoint)."
        )
    return model
