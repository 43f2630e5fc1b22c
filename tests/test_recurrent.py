"""rules/recurrent.py: nn.RNN/GRU/LSTM (and Cells) unrolled over the example's length, against dense Jacobians.

Each rule bounds x ↦ (everything the module returns, flattened). At random points of several scales the exact
Jacobian norm of that map is a lower bound on its Lipschitz constant, so the rule's certified gain must be above
every one of them; tiny sizes keep this to seconds. How loose the bounds are: benchmarks/recurrent.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

import lipgraph
from lipgraph import RuleError
from lipgraph.cli import main

NORMS = {1: 1, 2: 2, math.inf: math.inf}


def flat(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.reshape(-1)
    return torch.cat([flat(o) for o in out])


class Whole(nn.Module):
    """Returns everything the recurrent module returns (the rule's gain is for all of it)."""

    def __init__(self, rnn: nn.Module, state: object = None) -> None:
        super().__init__()
        self.rnn, self.state = rnn, state

    def forward(self, x):
        return self.rnn(x) if self.state is None else self.rnn(x, self.state)


def gain(rnn: nn.Module, x: torch.Tensor, p: float = 2, state: object = None) -> float:
    report = lipgraph.analyze(Whole(rnn, state), x, norm=p, lower=False, cache=False)
    return report.find("rnn").bound.value


def attained(rnn: nn.Module, x: torch.Tensor, p: float = 2, state: object = None, samples: int = 4) -> float:
    """max over random points x·s of the exact ℓp operator norm of the Jacobian of the flattened outputs."""
    gen = torch.Generator().manual_seed(1)
    best = 0.0
    for k in range(samples):
        point = torch.randn(x.shape, generator=gen, dtype=torch.float64) * (0.3 + k)
        J = jacobian(lambda v: flat(rnn(v) if state is None else rnn(v, state)), point).reshape(-1, x.numel())
        best = max(best, torch.linalg.matrix_norm(J, NORMS[p]).item())
    return best


def build(cls: type, layers: int, bidirectional: bool, **kwargs) -> nn.Module:
    torch.manual_seed(layers + 2 * bidirectional)
    return cls(3, 4, num_layers=layers, bidirectional=bidirectional, **kwargs).double().eval()


KINDS = {"rnn-tanh": (nn.RNN, {}), "rnn-relu": (nn.RNN, {"nonlinearity": "relu"}), "gru": (nn.GRU, {}),
         "lstm": (nn.LSTM, {})}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (1, True), (2, True)])
@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_bound_is_above_every_attained_jacobian_norm(kind, layers, bidirectional, length):
    cls, kwargs = KINDS[kind]
    rnn = build(cls, layers, bidirectional, **kwargs)
    x = torch.randn(length, 1, 3, dtype=torch.float64)
    bound, seen = gain(rnn, x), attained(rnn, x)
    assert seen <= bound
    if length == 1 and layers == 1:  # one step: not absurdly loose
        assert bound <= 6 * seen, (bound, seen)


@pytest.mark.parametrize("p", [1, math.inf])
@pytest.mark.parametrize("kind", KINDS)
def test_l1_and_linf(kind, p):
    cls, kwargs = KINDS[kind]
    rnn = build(cls, 2, True, **kwargs)
    x = torch.randn(3, 1, 3, dtype=torch.float64)
    assert attained(rnn, x, p) <= gain(rnn, x, p)


@pytest.mark.parametrize("cls", [nn.RNNCell, nn.GRUCell, nn.LSTMCell])
@pytest.mark.parametrize("p", [1, 2, math.inf])
def test_cells(cls, p):
    torch.manual_seed(0)
    cell = cls(3, 5).double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    bound, seen = gain(cell, x, p), attained(cell, x, p)
    assert seen <= bound <= 8 * seen, (bound, seen)


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
def test_batch_first_constant_initial_states_and_projection(cls):
    torch.manual_seed(0)
    extra = {"proj_size": 2} if cls is nn.LSTM else {}
    rnn = cls(3, 4, num_layers=2, batch_first=True, **extra).double().eval()
    x = torch.randn(2, 3, 3, dtype=torch.float64)  # (batch, time, features)
    out_size = 2 if cls is nn.LSTM else 4
    h0 = torch.full((2, 2, out_size), 3.0, dtype=torch.float64)  # large constant states widen the bound (|h| ≤ 3)
    state = (h0, torch.full((2, 2, 4), -2.0, dtype=torch.float64)) if cls is nn.LSTM else h0
    with_state = gain(rnn, x, state=state)
    assert attained(rnn, x[:1], state=tuple(s[:, :1] for s in state) if cls is nn.LSTM else h0[:, :1]) <= with_state
    assert with_state > gain(rnn, x)
    assert "unrolled over 3 step(s)" in " ".join(lipgraph.analyze(Whole(rnn), x, lower=False).find("rnn").notes)


def test_unbatched_cell_and_sequence():
    torch.manual_seed(0)
    rnn, cell = nn.GRU(3, 4).double().eval(), nn.LSTMCell(3, 4).double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)  # (time, features) without a batch
    assert attained(rnn, x) <= gain(rnn, x)
    step = torch.randn(3, dtype=torch.float64)
    assert attained(cell, step) <= gain(cell, step)


class Picked(nn.Module):
    """The usual spellings: one part of the tuple, through getitem."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.head(out[:, -1]) + self.head(h[-1]) + c.sum()


def test_tuple_outputs_through_getitem_are_certified():
    model = Picked().double().eval()
    x = torch.randn(1, 3, 3, dtype=torch.float64)
    report = lipgraph.analyze(model, x, lower_options={"starts": 2, "steps": 5})
    assert report.bound.kind is lipgraph.Kind.CERTIFIED and report.lower.value <= report.bound.value


class StateFromInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 4)

    def forward(self, x):
        return self.gru(x, x[-1:, :, :1].expand(1, -1, 4).contiguous())[0]


def test_initial_state_from_the_input_is_refused():
    with pytest.raises(RuleError, match=r"an initial state computed from the input is not supported \(pass a "
                                        r"constant initial state or none\); for GRU and for the LSTM's c_0 no global "
                                        r"Lipschitz bound exists"):
        lipgraph.analyze(StateFromInput().eval(), torch.randn(2, 1, 3), lower=False, cache=False)


def test_cli_on_a_recurrent_model(tmp_path, capsys):
    model_file = tmp_path / "seq.py"
    model_file.write_text("import torch\nfrom torch import nn\n"
                          "class Net(nn.Module):\n"
                          "    def __init__(self):\n        super().__init__()\n"
                          "        self.gru = nn.GRU(3, 4, batch_first=True)\n        self.fc = nn.Linear(4, 1)\n"
                          "    def forward(self, x):\n        out, h = self.gru(x)\n        return self.fc(h[-1])\n"
                          "def build_model():\n    torch.manual_seed(0)\n    return Net()\n"
                          "def example_input():\n    return torch.randn(1, 5, 3)\n")
    assert main(["explain", str(model_file), "--no-lower", "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "certified" in out and "unrolled-gru" in out


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_exported_recurrent_ops_are_refused_with_the_way_out():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(3, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    with pytest.raises(RuleError, match=r"recurrent layers are bounded as nn.RNN/GRU/LSTM modules \(and their Cell "
                                        r"variants\); this op is a functional or exported form of one, which has no "
                                        r"rule \(use the default fx frontend and the nn module\)"):
        lipgraph.analyze(Net().eval(), torch.randn(1, 4, 3), frontend="export", lower=False, cache=False)
