"""Load ``model.py[:factory]`` for the CLI. This executes the file, like ``python model.py`` would."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError
from .frontend.prepare import embedding_hint, first_layer, parse_shape, suggested_shape
from .userfile import run_user_file


def load_model(spec: str, input_shape: str | None = None) -> tuple[nn.Module, Any]:
    """``path.py`` or ``path.py:factory`` -> (model, example input).

    The file defines ``build_model()`` or ``model`` (or the named factory) and ``example_input()`` or
    ``input_shape`` (or ``<factory>_input()``); ``input_shape`` given here (``"1,3,32,32"``) wins.
    """
    path, _, factory = spec.partition(":")
    file = Path(path)
    if file.is_dir():
        raise InputError(f"model file {file} is a directory; give the Python file that builds the model "
                         "(model.py or model.py:factory)")
    if not file.is_file():
        raise InputError(f"model file {file} does not exist")
    try:
        namespace = run_user_file(file, "lipgraph_model")
    except Exception as exc:  # noqa: BLE001 - the user's file failed: say where
        raise InputError(f"running {file} failed: {type(exc).__name__}: {exc}") from None
    model = _model(namespace, factory or None, file)
    if input_shape:
        return model, torch.randn(*parse_shape(input_shape), generator=torch.Generator().manual_seed(0))
    return model, _example_input(namespace, factory or None, file, model)


def _model(ns: dict, factory: str | None, file: Path) -> nn.Module:
    names = [factory] if factory else ["build_model", "model"]
    for name in names:
        if name in ns:
            obj = ns[name]
            if not isinstance(obj, nn.Module) and callable(obj):
                try:
                    obj = obj()
                except Exception as exc:  # noqa: BLE001
                    raise InputError(f"{file}:{name}() failed: {type(exc).__name__}: {exc}") from None
            if not isinstance(obj, nn.Module):
                raise InputError(f"{file}:{name} is a {type(obj).__name__}, not an nn.Module")
            return obj
    want = f"factory named {factory!r}" if factory else "build_model() or a module-level `model`"
    raise InputError(f"{file} defines no {want}")


def _example_input(ns: dict, factory: str | None, file: Path, model: nn.Module) -> Any:
    for name in ([f"{factory}_input"] if factory else []) + ["example_input"]:
        if callable(ns.get(name)):
            return ns[name]()
    if "input_shape" in ns:
        shape = ns["input_shape"]
        return torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    raise InputError(f"{file} defines neither example_input() nor input_shape; {_shape_advice(model)}")


def _shape_advice(model: nn.Module) -> str:
    """What to pass for the input, inferred from the model's first layer."""
    first = first_layer(model)
    if first is None:
        return "pass --input-shape N,... with the batch dimension first (e.g. 1,3,32,32 for a batch of one image)"
    name, layer = first
    if isinstance(layer, (nn.Embedding, nn.EmbeddingBag)):
        return f"define example_input() returning integer token ids.\nhint: {embedding_hint(model, first)}"
    shape = ",".join(map(str, suggested_shape(layer)))
    if isinstance(layer, nn.modules.conv._ConvNd):
        return (f"the first layer {name} is {type(layer).__name__} with in_channels={layer.in_channels}, so pass "
                f"e.g. --input-shape {shape} (batch 1; the spatial size is an example: use your data's, as "
                "convolution norms depend on it)")
    return (f"the first layer {name} is {type(layer).__name__} with in_features={suggested_shape(layer)[1]}, so "
            f"pass --input-shape {shape} (batch 1)")
