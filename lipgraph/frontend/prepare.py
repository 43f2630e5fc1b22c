"""Checks and normalisation before tracing: unwrap, eval mode, finite weights, a usable example input."""
from __future__ import annotations

import contextlib
import copy
import inspect
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ..errors import InputError, listed
from .untouched import untouched

_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DataParallel / DistributedDataParallel wrappers (they only scatter the batch)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    while isinstance(model, _WRAPPERS):
        model = model.module
    return model


#: torch.nn layers that compute something else in train mode (batch statistics, random masks)
_MODE_DEPENDENT = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd, nn.RReLU, nn.MultiheadAttention,
                   nn.modules.rnn.RNNBase, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


@contextlib.contextmanager
def eval_mode(model: nn.Module, notes: list[str]) -> Iterator[None]:
    """Analyse in eval mode (BatchNorm on running statistics, Dropout off); restore the user's mode after. The
    report says so when a layer in train mode behaves differently in eval mode."""
    modes = {m: m.training for m in model.modules()}
    if any(training and _mode_dependent(m) for m, training in modes.items()):
        notes.append("model was in train mode: analysed in eval mode (BatchNorm uses running statistics, "
                     "Dropout is the identity)")
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


def _mode_dependent(module: nn.Module) -> bool:
    """A torch layer with train/eval behaviour, or a user module whose ``forward`` reads ``self.training``."""
    if isinstance(module, _MODE_DEPENDENT):
        return True
    if type(module).__module__.startswith("torch.nn"):
        return False
    try:
        return "training" in inspect.getsource(type(module).forward)
    except (OSError, TypeError, AttributeError):  # no source (a REPL, TorchScript): it may depend on the mode
        return True


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
    """NaN/Inf weights make every bound meaningless, and a lazy module's weights do not exist before its first
    call: refuse them, naming each tensor."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    lazy = [name for name, t in tensors if is_lazy(t)]
    if lazy:
        raise InputError(f"the model has {len(lazy)} uninitialised lazy parameter(s) or buffer(s) ({listed(lazy)}; "
                         "nn.LazyLinear, nn.LazyConv2d…): run it once on an input, model(x), then analyse it")
    bad = [name for name, t in tensors if t.is_floating_point() and not _all_finite(t)]
    if bad:
        raise InputError(f"the model has NaN or Inf values in {len(bad)} tensor(s): {listed(bad)}")

def _all_finite(t: torch.Tensor) -> bool:
    """Every entry finite: the extremes are, since ``torch.aminmax`` propagates NaN (its documentation). One pass and
    no boolean tensor the size of the weights (ResNet-18: 0.01 s instead of 0.07 s for ``isfinite(t).all()``)."""
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t.detach())
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def as_inputs(example_input: Any, model: nn.Module | None = None, *, floating: bool = True) -> tuple:
    """The example input as a tuple of positional arguments; tensors must be finite floats (``floating=False``:
    integer ids too, for running a model up to a submodule). ``model``, when given, names its embedding in the
    message for integer inputs."""
    if isinstance(example_input, torch.Tensor):
        inputs = (example_input,)
    elif isinstance(example_input, (tuple, list)) and example_input:
        inputs = tuple(example_input)
    else:
        raise InputError(f"example_input must be a tensor (or a tuple of tensors), got {type(example_input).__name__}")
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise InputError(f"example input {i} is a {type(x).__name__}, not a tensor")
        if floating and not x.is_floating_point():
            hint = embedding_hint(model) if model is not None else None
            raise InputError(f"example input {i} has dtype {x.dtype}; a Lipschitz bound needs a floating input"
                             + (f"\nhint: {hint}" if hint else ""))
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
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
    """Run the model once so a wrong input shape fails here, with the shape its first layer expects. What the run
    changes in the model is put back: the graph is traced from the model's state as given."""
    called: list[tuple[str, nn.Module]] = []
    names = {m: name for name, m in model.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda m, _: called.append((names[m], m)))
             for m in model.modules() if isinstance(m, _INPUT_LAYERS)]
    try:
        with torch.no_grad(), untouched(model, inputs):
            model(*inputs)
    except Exception as exc:  # noqa: BLE001 - any failure means the example input does not fit
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        first = called[0] if called else first_layer(model)
        hint = expected_input_hint(model, first)
        raise InputError(
            f"the model does not run on the example input of shape {shapes}: {type(exc).__name__}: {exc}"
            + (f"\nhint: {hint}" if hint else "")
            + "\nPass an input that the model accepts, including the batch dimension"
            + (f" (e.g. --input-shape {','.join(map(str, suggested_shape(first[1])))})." if first
               and not isinstance(first[1], _EMBEDDINGS) else ".")
        ) from None
    finally:
        for hook in hooks:
            hook.remove()


_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_INPUT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, *_EMBEDDINGS)
_EXAMPLE_SIDE = {1: 32, 2: 32, 3: 16}  # spatial size of a suggested convolution input, per spatial dimension


def first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first convolution, linear or embedding layer in registration order (usually the input layer)."""
    return next(((name or type(m).__name__, m) for name, m in model.named_modules() if isinstance(m, _INPUT_LAYERS)),
                None)


def suggested_shape(layer: nn.Module) -> tuple[int, ...]:
    """An input shape (batch 1) the layer accepts: (1, in_features), or (1, in_channels, 32, 32) for a 2-d
    convolution, the spatial size being only an example (convolution norms depend on it)."""
    if isinstance(layer, nn.modules.conv._ConvNd):
        dims = len(layer.kernel_size)
        return (1, layer.in_channels, *(_EXAMPLE_SIDE[dims],) * dims)
    if isinstance(layer, nn.Bilinear):
        return (1, layer.in1_features)
    if isinstance(layer, _EMBEDDINGS):
        return (1, 16)
    return (1, layer.in_features)


def expected_input_hint(model: nn.Module, first: tuple[str, nn.Module] | None = None) -> str | None:
    """What the first layer (``first``, else :func:`first_layer`) says about the input (channels or features)."""
    name, m = first or first_layer(model) or (None, None)
    if m is None:
        return None
    if isinstance(m, _EMBEDDINGS):
        return embedding_hint(model, (name, m))
    if isinstance(m, nn.modules.conv._ConvNd):
        dims = len(m.kernel_size)
        return (f"the first layer {name} is {type(m).__name__} with in_channels={m.in_channels}: input shape "
                f"(N, {m.in_channels}, {', '.join(['H', 'W', 'D'][:dims])})")
    features = m.in1_features if isinstance(m, nn.Bilinear) else m.in_features
    return f"the first layer {name} is {type(m).__name__} with in_features={features}: input shape (N, {features})"


def embedding_hint(model: nn.Module, first: tuple[str, nn.Module] | None = None) -> str | None:
    """For a model that starts with an embedding: it takes integer ids, so analyse from its output on."""
    name, m = first or first_layer(model) or (None, None)
    if not isinstance(m, _EMBEDDINGS):
        return None
    parent_path, _, leaf = name.rpartition(".")
    siblings = [n for n, _ in (model.get_submodule(parent_path) if parent_path else model).named_children()]
    after = siblings[siblings.index(leaf) + 1:] if leaf in siblings else []
    prefix = f"{parent_path}." if parent_path else ""
    span = f"{prefix}{after[0]}" + (f":{prefix}{after[-1]}" if len(after) > 1 else "") if after else None
    how = (f"analyse the modules after it on the embeddings: lipgraph explain MODEL --from {span} (Python: "
           f"lipgraph.analyze_slice(model, tokens, {', '.join(repr(s) for s in span.split(':'))}))"
           if span else "analyse the modules after it with lipgraph.analyze_slice(model, tokens, START, END)")
    return (f"the first layer {name} is {type(m).__name__}({m.num_embeddings}, {m.embedding_dim}): it takes "
            f"integer token ids, a lookup that has no Lipschitz constant in them; {how}")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` -> ``(1, 3, 32, 32)``."""
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise InputError(f"input shape {text!r} is not a comma-separated list of integers") from None
    if not shape or any(d <= 0 for d in shape):
        raise InputError(f"input shape {text!r} must have positive dimensions")
    if len(shape) < 2:
        raise InputError(f"input shape {text!r} has no batch dimension: dim 0 is the batch, e.g. 1,{text.strip()}")
    return shape


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint with ``weights_only=True`` (no code runs); accepts a state dict or common wrappers."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"weights file {path} is a directory; give the file written by torch.save")
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols, naming its own file: our message says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(_unreadable_checkpoint(path, exc)) from None
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


def _unreadable_checkpoint(path: Path, exc: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, without torch's advice to unpickle arbitrary code."""
    text = str(exc)
    unsupported = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if unsupported:  # a pickled Python object (a whole nn.Module, a custom class): never unpickled
        return (f"could not load {path} with weights_only=True: it holds a pickled Python object, which lipgraph "
                f"never unpickles ({unsupported.group(0)})\n"
                "lipgraph only loads tensors (a state_dict); save one with torch.save(model.state_dict(), path)")
    head = path.read_bytes()[:2] if path.stat().st_size else b""
    if not zipfile.is_zipfile(path) and len(head) == 2 and head[0] == 0x80 and head[1] >= 3:
        return (f"could not load {path}: it is a plain pickle file (pickle.dump), not a torch.save checkpoint; "
                "save the weights with torch.save(model.state_dict(), path)")
    reason = "the file is empty" if not head else (text.split(". ")[0].strip() if isinstance(exc, RuntimeError) else "")
    return (f"could not load {path}: it is not a checkpoint torch.load can read (corrupt or truncated, or not "
            f"written by torch.save){': ' + reason if reason else ''}")
