"""Analysing part of a model: one submodule, or consecutive siblings (a ResNet's ``layer2`` to ``layer3``), at the
input size they see inside the full model.

    x2 = lipgraph.capture_input(model, "layer2", x)      # what layer2 receives when the model runs on x
    lipgraph.analyze(model.layer2, x2)                    # paths relative to layer2 ("0.conv1")
    lipgraph.analyze_slice(model, x, "layer2", "layer3")  # paths as in the full model ("layer2.0.conv1")

The bound of a slice is the Lipschitz constant of the composed modules as functions of their own input (whatever
produced it), so it is at most the product of their bounds and often the bound a stage contributes to the model's.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import InputError
from .frontend.prepare import as_inputs, eval_mode, unwrap
from .frontend.untouched import leaves_untouched
from .report import Report


def capture_input(model: nn.Module, path: str, example_input: Any) -> Any:
    """The positional input of submodule ``path`` on its first call when ``model`` (in eval mode) runs on
    ``example_input``: a tensor, or a tuple for a module taking several."""
    args, _ = _capture(model, path, example_input)
    return args[0] if len(args) == 1 else args


@leaves_untouched
def analyze_slice(model: nn.Module, example_input: Any, start: str, end: str | None = None,
                  **options: Any) -> Report:
    """``lipgraph.analyze`` of submodule ``start``, or of the siblings ``start`` … ``end`` (children of one module,
    in registration order, each feeding the next), on the input they receive from ``example_input``; tree paths
    are those of the full model. ``options`` go to :func:`lipgraph.analyze`."""
    from .api import analyze

    model = unwrap(model)
    parent_path, _, first = start.rpartition(".")
    names = _sibling_run(model, parent_path, first, end)
    paths = [f"{parent_path}.{n}" if parent_path else n for n in names]
    piece = _Slice(model, paths)
    (x, *more), _ = _capture(model, paths[0], example_input)
    if more:
        raise InputError(f"{paths[0]} takes {1 + len(more)} inputs; a slice starts at a module with one input")
    if len(paths) > 1:
        _check_sequential(model, piece, paths, x, example_input)
    report = analyze(piece, x, **options)
    report.model = f"{type(model).__name__}[{start}{':' + end if end and end != start else ''}]"
    return report


class _Slice(nn.Module):
    """Modules of a model called one after the other, registered under their paths in that model (through plain
    containers for dotted paths), so the analysis shows the same paths."""

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        super().__init__()
        self.paths = paths
        self.training = False  # the wrapper itself; the model's modules keep their own mode
        for path in paths:
            holder: nn.Module = self
            *parents, leaf = path.split(".")
            for name in parents:
                if not hasattr(holder, name):
                    holder.add_module(name, nn.Module())
                    getattr(holder, name).training = False
                holder = getattr(holder, name)
            holder.add_module(leaf, model.get_submodule(path))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for path in self.paths:
            x = self.get_submodule(path)(x)
        return x


def _sibling_run(model: nn.Module, parent_path: str, first: str, end: str | None) -> list[str]:
    try:
        parent = model.get_submodule(parent_path) if parent_path else model
    except AttributeError:
        raise InputError(f"the model has no submodule {parent_path!r}") from None
    names = [name for name, _ in parent.named_children()]
    if first not in names:
        raise InputError(f"the model has no submodule {first!r}" + (f" in {parent_path!r}" if parent_path else "")
                         + f"; its children are: {', '.join(names)}")
    if end is None or end == (f"{parent_path}.{first}" if parent_path else first):
        return [first]
    end_parent, _, last = end.rpartition(".")
    if end_parent != parent_path or last not in names:
        raise InputError(f"{end!r} is not a sibling of {first!r}: a slice runs over children of one module")
    i, j = names.index(first), names.index(last)
    if j < i:
        raise InputError(f"{end!r} comes before {first!r} in {parent_path or 'the model'}")
    return names[i:j + 1]


def _capture(model: nn.Module, path: str, example_input: Any) -> tuple[tuple, Any]:
    """(positional args, output) of the first call of submodule ``path`` while ``model`` runs in eval mode."""
    try:
        module = unwrap(model).get_submodule(path)
    except AttributeError:
        raise InputError(f"the model has no submodule {path!r}") from None
    seen: list[tuple[tuple, Any]] = []

    def hook(_module: nn.Module, args: tuple, output: Any) -> None:
        if not seen:
            seen.append((tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args), output))

    handle = module.register_forward_hook(hook)
    try:
        with eval_mode(model, []), torch.no_grad():
            model(*as_inputs(example_input, floating=False))  # integer ids for an embedding
    finally:
        handle.remove()
    if not seen:
        raise InputError(f"submodule {path!r} is not called when the model runs on the example input")
    return seen[0]


def _check_sequential(model: nn.Module, piece: _Slice, paths: list[str], x: torch.Tensor, example_input: Any) -> None:
    """The slice must compute what the model computes from ``paths[0]``'s input to ``paths[-1]``'s output."""
    _, expected = _capture(model, paths[-1], example_input)
    try:
        with eval_mode(piece, []), torch.no_grad():
            got = piece(x)
        same = isinstance(expected, torch.Tensor) and got.shape == expected.shape and torch.allclose(
            got, expected, rtol=1e-5, atol=1e-6)
    except Exception:  # noqa: BLE001 - a shape error means the same as a different result
        same = False
    if not same:
        raise InputError(f"{' → '.join(paths)} is not a sequence in this model (something else happens between "
                         f"them, e.g. a flatten or a skip connection); analyse a submodule that contains them")
