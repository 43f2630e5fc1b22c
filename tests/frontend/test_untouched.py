"""``analyze`` (and the other entry points) leave the user's model and input as they were, accepted or refused
(lipgraph/frontend/untouched.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lipgraph
from lipgraph.frontend import untouched as module
from tests.fixtures.stateful import StateWrittenInPlace as WritesInput


class Counts(nn.Module):
    """A call counter: accepted (the count is read by nobody)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return 2 * x


class BatchStatistics(nn.Module):
    """F.batch_norm(training=True): updates its running statistics, refused (batch statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("var", torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(torch.cat([x, -x]), self.mean, self.var, training=True)


class KeepsLast(nn.Module):
    """self.last = x: while fx traces, the buffer receives a Proxy; accepted."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("last", torch.zeros(1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = x.detach().clone()
        return x


class DriftsWeights(nn.Module):
    """Adds 1 to its bias and freezes its weight on every call: no function of x (the lower bound says so)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.lin.bias.add_(1.0)
        self.lin.weight.requires_grad_(False)
        return self.lin(x)


class ScalesInput(nn.Module):
    """x.mul_(2) on the caller's tensor: 2x, accepted."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return x


def _state(model: nn.Module) -> dict:
    return {name: (t.clone(), t.dtype, t.requires_grad, t) for name, t in
            [*model.named_parameters(), *model.named_buffers()]}


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("first, outcome", [
    (WritesInput, (lipgraph.TraceError, lipgraph.NotLipschitzError)),
    (Counts, None),
    (BatchStatistics, lipgraph.RuleError),
    (KeepsLast, None),
    (DriftsWeights, lipgraph.InputError),
    (ScalesInput, None),
])
def test_the_model_and_input_come_back_bit_for_bit(first, outcome, frontend: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(first(), nn.Linear(3, 3), nn.BatchNorm1d(3)).train()
    model[2].running_mean.uniform_()
    x = torch.randn(1, 3)
    before, x_before = _state(model), x.clone()
    if outcome is None:
        lipgraph.analyze(model, x, frontend=frontend, cache=False, quiet=True)
    else:
        with pytest.raises(outcome):
            lipgraph.analyze(model, x, frontend=frontend, cache=False, quiet=True)
    after = _state(model)
    assert list(after) == list(before)
    for name, (value, dtype, requires_grad, tensor) in before.items():
        assert after[name][3] is tensor, name  # the same tensor object under each name
        assert after[name][1:3] == (dtype, requires_grad), name
        assert torch.equal(after[name][0], value), name
    assert torch.equal(x, x_before)
    assert all(m.training for m in model.modules())


def test_a_model_that_updates_its_weights_is_no_function() -> None:
    with pytest.raises(lipgraph.InputError, match=r"^the model's output at one input changes from one call to the "
                                                  r"next \(a random op, or a forward that updates the model's "
                                                  r"parameters or buffers\): it is no function"):
        lipgraph.lower_bound(DriftsWeights(), torch.randn(1, 3))


def test_a_model_that_updates_its_input_in_place_has_a_lower_bound() -> None:
    """A first ReLU(inplace=True) updates the search's own points: each evaluation gets a copy."""
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(3, 3))
    report = lipgraph.analyze(model, torch.randn(1, 3), cache=False, quiet=True)
    assert report.notes == []
    assert 0 < report.lower.value <= report.bound.value


def test_a_model_in_train_mode_is_analysed_in_eval_mode_and_keeps_its_statistics() -> None:
    """BatchNorm in train mode: bounded with its running statistics, as in eval mode, which running one batch in
    train mode would have updated; the report says so, and the model leaves in train mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 3)
    evaluated = lipgraph.analyze(model.eval(), x, lower=False, cache=False, quiet=True)
    statistics = {k: v.clone() for k, v in model.state_dict().items()}
    trained = lipgraph.analyze(model.train(), x, lower=False, cache=False, quiet=True)
    assert trained.bound.value == evaluated.bound.value
    assert any(note.startswith("model was in train mode: analysed in eval mode") for note in trained.notes)
    assert model.training and model[1].training
    assert all(torch.equal(v, statistics[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("entry", [
    lambda m, x: lipgraph.lower_bound(m, x),
    lambda m, x: lipgraph.lower_search(model=m, x=x),
    lambda m, x: lipgraph.analyze_slice(m, x, "0", "1"),
    lambda m, x: lipgraph.lipschitz_penalty(m, x),
])
def test_the_other_entry_points_leave_the_model_untouched(entry) -> None:
    model = nn.Sequential(nn.Linear(3, 3), Counts())
    before = model[1].calls.clone()
    entry(model, torch.randn(1, 3))
    assert torch.equal(model[1].calls, before)


def test_a_block_inside_another_copies_nothing_and_puts_back_the_first_value() -> None:
    """The input check inside analyze: its block reuses analyze's copy, and restores the value as given."""
    model = nn.Linear(3, 3)
    weight = model.weight.detach().clone()
    with module.untouched(model):
        held = dict(module._OPEN)
        with torch.no_grad():
            model.weight.add_(1.0)
        with module.untouched(model):
            assert module._OPEN.keys() == held.keys() and all(module._OPEN[k] is v for k, v in held.items())
            with torch.no_grad():
                model.weight.mul_(3.0)
        assert torch.equal(model.weight, weight)
        with torch.no_grad():
            model.weight.add_(1.0)
    assert torch.equal(model.weight, weight) and module._OPEN == {}


def test_a_proxy_left_by_tracing_is_gone_before_the_lower_search() -> None:
    """self.last = x: fx tracing leaves a Proxy in the buffer; the search, which runs the model after the trace,
    must see a tensor there (it failed: 'symbolically traced variables cannot be used as inputs to control flow')."""
    report = lipgraph.analyze(nn.Sequential(KeepsLast(), nn.Linear(3, 3)), torch.randn(1, 3), frontend="fx",
                              cache=False, quiet=True)
    assert report.notes == [] and 0 < report.lower.value <= report.bound.value


class Remembers(nn.Module):
    """A Python counter and a list of the inputs seen: plain attributes, no tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.calls, self.seen = 0, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.seen.append(x)
        return 2 * x


def test_python_attributes_come_back_too() -> None:
    model = nn.Sequential(Remembers(), nn.Linear(3, 3))
    seen = model[0].seen
    lipgraph.analyze(model, torch.randn(1, 3), cache=False, quiet=True)
    assert model[0].calls == 0 and model[0].seen is seen and seen == []


class Reshapes(nn.Module):
    """Resizes its buffer, or gives it other ``.data``, then (``fails``) raises."""

    def __init__(self, how: str, fails: bool) -> None:
        super().__init__()
        self.how, self.fails = how, fails
        self.lin = nn.Linear(3, 3)
        self.register_buffer("buf", torch.arange(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "resize":
            self.buf.resize_(5)
        else:
            self.buf.data = torch.zeros(5)
        if self.fails:
            raise ValueError("the model's own error")
        return self.lin(x)


@pytest.mark.parametrize("how", ["resize", "data"])
@pytest.mark.parametrize("fails", [False, True])
def test_a_tensor_given_another_shape_comes_back_and_the_error_is_the_models(how: str, fails: bool) -> None:
    """Putting back values of another shape raised (copy_), in place of the model's own error."""
    model = Reshapes(how, fails)
    before = _state(model)
    if fails:
        with pytest.raises(lipgraph.InputError, match=r"^the model does not run on the example input of shape "
                                                      r"\(1, 3\): ValueError: the model's own error"):
            lipgraph.analyze(model, torch.randn(1, 3), cache=False, quiet=True)
    else:
        lipgraph.analyze(model, torch.randn(1, 3), cache=False, quiet=True)
    after = _state(model)
    for name, (value, *_, tensor) in before.items():
        assert after[name][3] is tensor and torch.equal(tensor, value), name


class SwapsTiedData(nn.Module):
    """Two linear layers whose weights share one memory (``dec.weight.data = enc.weight.data``); the forward gives
    ``enc.weight`` other ``.data`` of the same shape."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.dec = nn.Linear(3, 3), nn.Linear(3, 3)
        self.dec.weight.data = self.enc.weight.data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.enc.weight.data = self.enc.weight.data.clone()
        return self.dec(self.enc(x))


def test_weights_tied_by_their_data_stay_tied() -> None:
    """Copying the values back into the new ``.data`` restored them but untied the weights."""
    model = SwapsTiedData()
    before = model.enc.weight.detach().clone()
    lipgraph.analyze(model, torch.randn(1, 3), cache=False, quiet=True)
    assert torch.equal(model.enc.weight, before)
    assert model.enc.weight.is_set_to(model.dec.weight)


def test_certify_runs_the_dataset_on_copies_of_its_batches() -> None:
    """certify does not copy its dataset whole (benchmarks/RESULTS.md, untouched): a first ReLU(inplace=True)
    writes into copies of the batches, never into x."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(3, 4))
    x, y = torch.randn(6, 3), torch.randint(0, 4, (6,))
    x_before = x.clone()
    lipgraph.certify(model, x, y, batch_size=4)
    assert torch.equal(x, x_before)


class ReplacesWeight(nn.Module):
    """Assigns a new weight on every call: the function is x ↦ 3x + b from the first call on, whatever the weight
    was; the traced graph must bound that (putting the weight back after tracing gave a bound below it)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.lin.weight = nn.Parameter(3 * torch.eye(3))
        return self.lin(x)


def test_the_graph_describes_the_model_as_tracing_left_it() -> None:
    model = ReplacesWeight()
    weight = model.lin.weight
    report = lipgraph.analyze(model, torch.randn(1, 3), lower=False, cache=False, quiet=True)
    assert report.bound.value >= 3.0 * (1 - 1e-9)
    assert model.lin.weight is weight
