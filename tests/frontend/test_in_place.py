"""In-place ops: the graph computes what the code computes (lipgraph/frontend/inplace.py), and propagation
never overwrites the constants that rules read."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lipgraph
from tests.fixtures.stateful import StateWrittenInPlace


class Updated(nn.Module):
    """y = 2x, then y.mul_(3) whose result is unused: the output is 6x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        y.mul_(3)
        return y


class InPlaceModule(nn.Module):
    """relu(inplace=True) rewrites x: x + relu(x) reads the updated x, so the output is 2·relu(x) (L = 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 1
        y = self.relu(x)
        return x + y


class ConstantUpdated(nn.Module):
    """c·x computed as c.clone().mul_(x): L = max |c| = 2, whatever the example input."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("c", torch.full((1, 3), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c.clone().mul_(x)


class ViewUpdated(nn.Module):
    """An update through a view changes its base, which the graph does not connect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 1
        y.view(-1).mul_(3)
        return y


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("model, expected", [(Updated(), 6.0), (InPlaceModule(), 2.0), (ConstantUpdated(), 2.0)])
def test_in_place_updates_are_followed(model: nn.Module, expected: float, frontend: str) -> None:
    report = lipgraph.analyze(model, torch.full((1, 3), 0.1), frontend=frontend, lower=False, cache=False, quiet=True)
    assert report.bound.value == pytest.approx(expected)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_in_place_update_of_a_view_is_refused(frontend: str) -> None:
    with pytest.raises(lipgraph.TraceError, match=r"shares storage with another one \(a view\) read afterwards.*"
                                                  r"Write the update out of place"):
        lipgraph.analyze(ViewUpdated(), torch.ones(1, 3), frontend=frontend, lower=False, cache=False, quiet=True)


# -- what the code does not show: checked on the tensors during propagation ---------------------------------
class FirstTwo(nn.Module):
    """A leaf module (it has a rule) whose result is a view of its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2]


class UpdatesItsInput(nn.Module):
    """A leaf module that returns its input's old value and triples the input in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        x.mul_(3)
        return out


class UpdateThroughLeafView(nn.Module):
    """y = x·1; the first two entries of y are tripled through the leaf's view: L = 3 (the graph alone says 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.leaf = FirstTwo()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 1
        self.leaf(y).mul_(3)
        return y


class LeafUpdatesInput(nn.Module):
    """y + leaf(y) = 3x + x once the leaf has tripled y: L = 4 (the graph alone says 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.leaf = UpdatesItsInput()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 1
        return y + self.leaf(y)


class WritesToOut(nn.Module):
    """torch.add(x, x, out=y) overwrites y = x·1 with 2x: L = 2 (the graph alone says 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 1
        torch.add(x, x, out=y)
        return y


def _analyze(model: nn.Module, frontend: str, registry) -> lipgraph.Report:
    registry.register(FirstTwo, lipgraph.isometry())
    registry.register(UpdatesItsInput, lipgraph.isometry())
    return lipgraph.analyze(model, torch.ones(1, 3), frontend=frontend, lower=False, cache=False, quiet=True)


def test_update_through_a_leaf_modules_view_is_refused(restore_default_registry) -> None:
    with pytest.raises(lipgraph.TraceError, match=r"updates a tensor in place that shares storage with mul .*read "
                                                  r"afterwards; lipgraph cannot follow"):
        _analyze(UpdateThroughLeafView(), "fx", restore_default_registry)


@pytest.mark.parametrize("model, frontend, changed", [(LeafUpdatesInput(), "fx", "leaf"), (WritesToOut(), "fx", "add"),
                                                      (WritesToOut(), "export", "add")])
def test_an_op_that_changes_its_input_unseen_is_refused(model, frontend: str, changed: str,
                                                        restore_default_registry) -> None:
    with pytest.raises(lipgraph.TraceError, match=rf"^%{changed} .* changes its input mul in place, which the graph "
                                                  r"does not show; .*\(y = y.exp\(\) instead of y.exp_\(\), "
                                                  r"y = y \* 3 instead of y.view\(-1\).mul_\(3\)\)$"):
        _analyze(model, frontend, restore_default_registry)


def test_a_leaf_that_updates_its_input_is_followed_by_export(restore_default_registry) -> None:
    """torch.export traces into the leaf and records its update: bounded, at the true constant 4."""
    report = _analyze(LeafUpdatesInput(), "export", restore_default_registry)
    assert report.bound.value == pytest.approx(4.0)


# -- input-dependent values written into a constant that is read again ------------------------------------------
class StashesInput(nn.Module):
    """A leaf module (it has a rule) that copies its input into its second argument, a buffer of the caller."""

    def forward(self, x: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
        buf.copy_(x)
        return x


class StateWrittenByLeaf(nn.Module):
    """x · buf once the leaf has written x into buf: x², not Lipschitz (certified as |x_example| before)."""

    def __init__(self) -> None:
        super().__init__()
        self.stash = StashesInput()
        self.register_buffer("buf", torch.ones(1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stash(x, self.buf) * self.buf


class StateWrittenByOut(nn.Module):
    """torch.add(x, 1, out=self.buf), then x · self.buf = x(x + 1): not Lipschitz."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("buf", torch.ones(1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.add(x, 1, out=self.buf)
        return x * self.buf


class TensorBuiltInForward(nn.Module):
    """out = zeros; out.add_(x repeated twice); 3·out: fx computes 3·out while tracing (a constant output, certified
    0 before); the true constant is 3√2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(1, 4)
        out.add_(x.repeat(1, 2))
        return out * 3


class FilledBySlices(nn.Module):
    """out = zeros; out[:, :2] = x: fx returns a second read of the constant (certified 0 before; the constant is 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(1, 4)
        out[:, :2] = x
        return out


@pytest.mark.parametrize("model, width, op, target", [(StateWrittenInPlace(), 3, "copy_", "buf"),
                                                      (TensorBuiltInForward(), 2, "add_", "_tensor_constant0")])
def test_input_written_into_an_attribute_in_place_is_refused(model, width: int, op: str, target: str) -> None:
    with pytest.raises(lipgraph.TraceError, match=rf"^%{op} .* writes input-dependent values into the attribute "
                                                  rf"{target} in place; its later reads, and what torch.fx computed"):
        lipgraph.analyze(model, torch.full((1, width), 5.0), lower=False, cache=False, quiet=True)


@pytest.mark.parametrize("model, width, op, target", [(StateWrittenByLeaf(), 3, "stash", "buf"),
                                                      (StateWrittenByOut(), 3, "add", "buf"),
                                                      (FilledBySlices(), 2, "setitem", "_tensor_constant0")])
def test_input_written_into_a_constant_read_again_is_refused(model, width: int, op: str, target: str,
                                                             restore_default_registry) -> None:
    restore_default_registry.register(StashesInput, lipgraph.isometry())
    with pytest.raises(lipgraph.TraceError, match=rf"^%{op} .* writes input-dependent values into {target} in place, "
                                                  rf"which {target}_1 reads afterwards as a constant; lipgraph cannot"):
        lipgraph.analyze(model, torch.full((1, width), 5.0), lower=False, cache=False, quiet=True)


def test_batch_statistics_updated_in_place_keep_the_rules_message() -> None:
    """F.batch_norm(training=True) writes its running statistics, read by nobody afterwards: not this refusal."""

    class TrainingBatchNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(3))
            self.register_buffer("var", torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.batch_norm(x, self.mean, self.var, training=True)

    with pytest.raises(lipgraph.RuleError, match="batch statistics"):
        lipgraph.analyze(TrainingBatchNorm(), torch.randn(4, 3), lower=False, cache=False, quiet=True)
