"""Recurrent layers under the export frontend: torch's "_flat_weights ... assigned during export" warning, which the
user cannot act on, is silenced where lipgraph calls torch.export; the clear error about the exported form stays."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import lipgraph


class Recurrent(nn.Module):
    def __init__(self, cls: type) -> None:
        super().__init__()
        self.rnn = cls(4, 5, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
def test_no_flat_weights_warning_under_export(cls: type) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(lipgraph.RuleError, match="recurrent layers are bounded as nn.RNN/GRU/LSTM modules"):
            lipgraph.analyze(Recurrent(cls).eval(), torch.randn(1, 3, 4), frontend="export", lower=False,
                             cache=False, quiet=True)
    assert not [w for w in caught if "_flat_weights" in str(w.message)], [str(w.message) for w in caught]


def test_other_export_warnings_still_show() -> None:
    """Only that warning is silenced: a warning of the user's own forward reaches the user."""
    class Warns(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            warnings.warn("from the user's forward", UserWarning)
            return x * 2

    with pytest.warns(UserWarning, match="from the user's forward"):
        lipgraph.analyze(Warns(), torch.randn(1, 3), frontend="export", lower=False, cache=False, quiet=True)
