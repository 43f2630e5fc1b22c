"""Checks and normalisation before tracing: unwrap, eval mode, finite weights, a usable example input."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import InputError

_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DataParallel / DistributedDataParallel wrappers (they only scatter the batch)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    while isinstance(model, _WRAPPERS):
        model = model.module
    return model


@contextlib.contextmanager
def eval_mode(model: nn.Module, notes: list[str]) -> Iterator[None]:
    """Analyse in eval mode (BatchNorm on running statistics, Dropout off); restore the user's mode after."""
    modes = {m: m.training for m in model.modules()}
    if any(modes.values()):
        notes.append("model was in train mode: analysed in eval mode (BatchNorm uses running statistics, "
                     "Dropout is the identity)")
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


def frozen_parametrizations(model: nn.Module) -> nn.Module:
    """``model`` itself when no submodule has ``torch.nn.utils.parametrize`` parametrizations; else a deep copy in
    which every parametrized tensor is replaced by the value it computes now (``remove_parametrizations(...,
    leave_parametrized=True)``): the same function, without the parametrizations' code, which ``torch.func``
    transforms cannot always run (their in-place ``set_`` on cached tensors). Call it in eval mode."""
    from torch.nn.utils import parametrize

    if not any(parametrize.is_parametrized(m) for m in model.modules()):
        return model
    frozen = copy.deepcopy(model)
    with torch.no_grad():
        for module in list(frozen.modules()):
            if parametrize.is_parametrized(module):
                # the copy shares the original's generated class, whose properties removal deletes: give it its own
                cls = type(module)
                module.__class__ = type(cls.__name__, cls.__bases__, {k: v for k, v in cls.__dict__.items()
                                                                      if k not in ("__dict__", "__weakref__")})
                for name in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return frozen


def check_finite_weights(model: nn.Module) -> None:
    """NaN/Inf weights make every bound meaningless: refuse them, naming each tensor."""
    bad = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise InputError(f"the model has NaN or Inf values in {len(bad)} tensor(s): {shown}")


def as_inputs(example_input: Any) -> tuple:
    """The example input as a tuple of positional arguments; tensors must be finite floats."""
    if isinstance(example_input, torch.Tensor):
        inputs = (example_input,)
    elif isinstance(example_input, (tuple, list)) and example_input:
        inputs = tuple(example_input)
    else:
        raise InputError(f"example_input must be a tensor (or a tuple of tensors), got {type(example_input).__name__}")
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise InputError(f"example input {i} is a {type(x).__name__}, not a tensor")
        if not x.is_floating_point():
            raise InputError(f"example input {i} has dtype {x.dtype}; a Lipschitz bound needs a floating input")
        if not bool(torch.isfinite(x).all()):
            raise InputError(f"example input {i} contains NaN or Inf")
    return inputs


def to_model_device(model: nn.Module, inputs: tuple) -> tuple:
    """The inputs on the model's device when all its tensors live on one other device (a model on a GPU, e.g. put
    there by ``nn.DataParallel``, with an example input on the CPU); otherwise unchanged."""
    devices = {t.device for t in [*model.parameters(), *model.buffers()]}
    if len(devices) != 1:
        return inputs
    (device,) = devices
    return tuple(x.to(device) for x in inputs)


def check_runs(model: nn.Module, inputs: tuple) -> None:
    """Run the model once so a wrong input shape fails here, with the shape the model seems to expect."""
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:  # noqa: BLE001 - any failure means the example input does not fit
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        hint = expected_input_hint(model)
        raise InputError(
            f"the model does not run on the example input of shape {shapes}: {type(exc).__name__}: {exc}"
            + (f"\nhint: {hint}" if hint else "")
            + "\nPass an input that the model accepts, including the batch dimension (e.g. --input-shape 1,3,32,32)."
        ) from None


def expected_input_hint(model: nn.Module) -> str | None:
    """What the first layer suggests about the input (channels or features)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            dims = len(m.kernel_size)
            return (f"the first layer {name or type(m).__name__} is {type(m).__name__} with in_channels="
                    f"{m.in_channels}: input shape (N, {m.in_channels}, {', '.join(['H', 'W', 'D'][:dims])})")
        if isinstance(m, nn.Linear):
            return (f"the first layer {name or 'Linear'} is Linear with in_features={m.in_features}: "
                    f"input shape (N, {m.in_features})")
    return None


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` -> ``(1, 3, 32, 32)``."""
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise InputError(f"input shape {text!r} is not a comma-separated list of integers") from None
    if not shape or any(d <= 0 for d in shape):
        raise InputError(f"input shape {text!r} must have positive dimensions")
    return shape


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint with ``weights_only=True`` (no code runs); accepts a state dict or common wrappers."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        # torch's message suggests weights_only=False (arbitrary code execution) and carries ANSI codes:
        # keep only its reason, e.g. "Unsupported global: GLOBAL torch.nn.modules.container.Sequential ..."
        reason = next((line.strip() for line in str(exc).splitlines() if "WeightsUnpickler error" in line),
                      str(exc).strip())
        raise InputError(
            f"could not load {path} with weights_only=True (it may hold a pickled object such as a whole "
            f"nn.Module, which is never unpickled): {reason}\n"
            "lipgraph only loads tensors (a state_dict); save one with torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        model.load_state_dict(obj, strict=True)
    except RuntimeError as exc:
        raise InputError(f"the weights in {path} do not fit the model: {exc}") from None

