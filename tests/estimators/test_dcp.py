"""DCP on small CNNs: pieces are exact restrictions of the unrolled network (zero padding included), and the
combined bound is ≥ the full SDP and the exact / attained values."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipgraph.errors import InputError
from lipgraph.estimators import CHAIN_ESTIMATORS
from lipgraph.estimators.dcp import ConvChain, _piece, _tiles, block_bound, dcp
from tests.estimators.nets import lower, product_norm


def cnn(*convs: dict, act: type[nn.Module] = nn.ReLU, head: int | None = None, in_shape=(1, 6, 6),
        seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c = in_shape[0]
    for spec in convs:
        spec = dict(spec)
        out = spec.pop("out")
        layers += [nn.Conv2d(c, out, **spec), act()]
        c = out
    if head is None:
        layers.pop()
    else:
        with torch.no_grad():
            n = nn.Sequential(*layers)(torch.zeros(1, *in_shape)).numel()
        layers += [nn.Flatten(), nn.Linear(n, head)]
    return nn.Sequential(*layers).double().eval()


SMALL = [dict(out=2, kernel_size=3, padding=1), dict(out=2, kernel_size=3, padding=1, stride=2),
         dict(out=2, kernel_size=3, padding=1)]
ODD = [dict(out=4, kernel_size=(3, 2), padding=(2, 0), dilation=(1, 2)),
       dict(out=4, kernel_size=3, padding=1, groups=2, stride=(2, 1)),
       dict(out=3, kernel_size=2)]


@pytest.mark.parametrize("convs,head,shape", [(SMALL, None, (1, 6, 6)), (ODD, None, (2, 7, 8)), (SMALL, 3, (1, 6, 6))])
def test_pieces_are_exact_restrictions_of_the_unrolled_network(convs, head, shape):
    chain = ConvChain.from_sequential(cnn(*convs, head=head, in_shape=shape), shape)
    dense = chain.to_dense()
    full = dense.weights[0]
    for W in dense.weights[1:]:
        full = W @ full
    linear = nn.Sequential(*[m for m in cnn(*convs, head=head, in_shape=shape) if not isinstance(m, nn.ReLU)])
    jac = torch.autograd.functional.jacobian(lambda v: linear(v.reshape(1, *shape)).reshape(-1),
                                             torch.zeros(math.prod(shape), dtype=torch.float64))
    torch.testing.assert_close(full, jac)
    out = chain.shapes[-1]
    index = torch.arange(math.prod(out)).reshape(out)
    in_index = torch.arange(math.prod(shape)).reshape(shape)
    for t in (2, 3):
        for tile in _tiles(out, t):
            piece, (r0, r1, c0, c1) = _piece(chain, 0, len(chain.layers), tile)
            rows = index[:, tile[0]:tile[1], tile[2]:tile[3]].reshape(-1)
            cols = in_index[:, r0:r1, c0:c1].reshape(-1)
            composed = piece.weights[0]
            for W in piece.weights[1:]:
                composed = W @ composed
            torch.testing.assert_close(composed, full[rows][:, cols])
            outside = torch.ones(full.shape[1], dtype=torch.bool)
            outside[cols] = False
            assert not full[rows][:, outside].any()  # the crop holds the whole receptive field


def test_linear_conv_chain_dcp_between_exact_and_product():
    """Activations with slopes [1, 1]: the chain is linear, L = ‖composed operator‖ exactly."""
    chain = ConvChain.from_sequential(cnn(*SMALL), (1, 6, 6))
    chain = ConvChain(chain.layers, ((1.0, 1.0),) * 2, chain.input_shape)
    exact = product_norm(chain.to_dense().weights)
    block = block_bound(chain, 0, 2, estimator="eclipse-fast", max_piece=60, workers=1)
    assert block.tiles == 2 and block.pieces == 4
    first_two = ConvChain(chain.layers[:2], chain.slopes[:1], chain.input_shape).to_dense()
    assert block.value >= product_norm(first_two.weights)
    bound = dcp(chain, estimator="eclipse-fast", max_piece=60, workers=1)
    product = math.prod(layer.norm(shape).value for layer, shape in zip(chain.layers, chain.shapes))
    assert exact <= bound.value <= product * (1 + 1e-12)


def test_pool_gives_the_serial_result():
    chain = ConvChain.from_sequential(cnn(*SMALL), (1, 6, 6))
    serial = block_bound(chain, 0, 2, estimator="eclipse-fast", max_piece=60, workers=1)
    pooled = block_bound(chain, 0, 2, estimator="eclipse-fast", max_piece=60, workers=2)
    assert serial.tiles == 2 and serial.distinct > 1
    assert pooled.value == serial.value


def test_dcp_above_full_sdp_above_lower_bound():
    pytest.importorskip("cvxpy")
    model = cnn(*SMALL)
    chain = ConvChain.from_sequential(model, (1, 6, 6))
    full = CHAIN_ESTIMATORS["lipsdp-neuron"].fn(chain.to_dense()).value  # LMI 36 + 72 + 18
    spatial = block_bound(chain, 0, 2, estimator="lipsdp-neuron", max_piece=60, workers=1)
    first_two = CHAIN_ESTIMATORS["lipsdp-neuron"].fn(ConvChain(chain.layers[:2], chain.slopes[:1],
                                                               chain.input_shape).to_dense()).value
    assert spatial.tiles == 2 and spatial.value >= first_two * (1 - 1e-7)
    bound = dcp(chain, max_piece=70, workers=1)
    assert bound.value >= full * (1 - 1e-7)
    assert full >= lower(model, (1, 6, 6))


def test_from_sequential_refuses_what_it_cannot_unroll():
    with pytest.raises(InputError, match="alternate"):
        ConvChain.from_sequential(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)), (3,))
    with pytest.raises(InputError, match="BatchNorm"):
        ConvChain.from_sequential(nn.Sequential(nn.Conv2d(1, 1, 3), nn.BatchNorm2d(1)), (1, 5, 5))
    with pytest.raises(InputError, match="zero padding"):
        ConvChain.from_sequential(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")), (1, 5, 5))


@pytest.mark.parametrize("convs,head,shape,seed", [(SMALL, None, (1, 6, 6), 0), (SMALL, 3, (1, 6, 6), 1),
                                                   (ODD, None, (2, 7, 8), 2)])
def test_dcp_between_attained_and_the_cheap_whole_chain_bounds(convs, head, shape, seed):
    """DCP ≥ the attained Jacobian norm, ≤ AutoLip's product, and never looser than ECLipsE-Fast or CP on the
    whole chain (untiled blocks are bounded by them too)."""
    model = cnn(*convs, head=head, in_shape=shape, seed=seed)
    chain = ConvChain.from_sequential(model, shape)
    dense = chain.to_dense()
    bound = dcp(chain, estimator="eclipse-fast", max_piece=40, workers=1, seconds=5)
    product = math.prod(layer.norm(s).value for layer, s in zip(chain.layers, chain.shapes))
    assert lower(model, shape) <= bound.value * (1 + 1e-9)
    assert bound.value <= product * (1 + 1e-9)
    for name in ("eclipse-fast", "cp"):
        assert bound.value <= CHAIN_ESTIMATORS[name].fn(dense).value * (1 + 1e-9), name


def test_dcp_whole_chain_fallback_reaches_wider_maps_than_blocks(monkeypatch):
    """The untiled whole chain is tried up to WHOLE_CHAIN_MAX neurons per map (inner blocks only up to
    WHOLE_MAX): then DCP is never looser than ECLipsE-Fast or CP on the whole chain."""
    import lipgraph.estimators.dcp as dcp_module

    monkeypatch.setattr(dcp_module, "WHOLE_MAX", 0)
    model = cnn(*SMALL, head=3, in_shape=(1, 6, 6), seed=3)
    chain = ConvChain.from_sequential(model, (1, 6, 6))
    dense = chain.to_dense()
    cheap = min(CHAIN_ESTIMATORS[name].fn(dense).value for name in ("eclipse-fast", "cp"))
    bound = dcp(chain, estimator="eclipse-fast", max_piece=40, workers=1, seconds=5)
    assert "untiled" in bound.method and bound.value <= cheap * (1 + 1e-9)
    monkeypatch.setattr(dcp_module, "WHOLE_CHAIN_MAX", 0)
    assert "untiled" not in dcp(chain, estimator="eclipse-fast", max_piece=40, workers=1, seconds=5).method


def test_eclipse_fast_is_computed_once_per_conv_chain(monkeypatch) -> None:
    """DCP's untiled whole chain and lipsdp-conv's start and fallback share one ECLipsE-Fast (multipliers and
    certificate) and one dense form of the chain (minutes each on maps of 4,096 neurons); both stay ≥ attained."""
    from lipgraph.estimators import eclipse, eclipse_fast
    from lipgraph.estimators.lipsdp_fo import lipsdp_conv

    model = cnn(dict(out=3, kernel_size=3, padding=1), dict(out=2, kernel_size=3, padding=1), in_shape=(2, 5, 5))
    conv = ConvChain.from_sequential(model, (2, 5, 5))
    whole = conv.to_dense().widths
    calls = []
    original = eclipse_fast.fast_multipliers

    def counted(chain, **options):
        calls.append(chain.widths)
        return original(chain, **options)
    for module in (eclipse, eclipse_fast):
        monkeypatch.setattr(module, "fast_multipliers", counted)
    by_dcp = dcp(conv, estimator="eclipse-fast", workers=1, max_piece=60)  # pieces smaller than the chain
    by_lipsdp = lipsdp_conv(conv, seconds=5.0)
    assert calls.count(whole) == 1 and conv.to_dense() is conv.to_dense()
    attained = lower(model, (2, 5, 5))
    assert attained <= by_lipsdp.value <= conv.memo["eclipse-fast"].value * (1 + 1e-12)
    assert attained <= by_dcp.value <= conv.memo["eclipse-fast"].value * (1 + 1e-9)
