"""First-order LipSDP, the conv operators and the block-tridiagonal certificate (issue #14, docs/sdp-conv.md).

Oracles: dense matrices of the operators (materialised by torch), the dense LipSDP matrix (``lmi_blocks``), the
interior-point LipSDP-Neuron (cvxpy), lipgraph's proven lower bound, and feasibility of H decided by eigvalsh."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lipgraph

from lipgraph.estimators import CHAIN_ESTIMATORS, DenseChain
from lipgraph.estimators.blockcert import block_certificate
from lipgraph.estimators.dcp import ConvChain
from lipgraph.estimators.eclipse import eclipse_multipliers, fast_multipliers
from lipgraph.estimators.lipsdp_fo import certify_multipliers, lipsdp_first_order
from lipgraph.estimators.operators import (OperatorChain, conv_op, lipsdp_apply, multiplier_gradient,
                                           top_eigenpair)
from lipgraph.estimators.recertify import TORCH_OPS, InfeasibleMultipliers, lmi_blocks, recertify
from tests.estimators.nets import chain_of, lower, mlp

GELU = (-0.1290, 1.1290)


def conv_net(seed: int, act: type[nn.Module] = nn.ReLU, groups: int = 1) -> nn.Sequential:
    """A small conv chain: stride, padding, dilation and groups the chain pass produces, then a dense head."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), act(), nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=groups),
                         act(), nn.Conv2d(4, 3, 2, dilation=1), nn.Flatten()).double().eval()


def conv_chain(seed: int, **kw) -> tuple[nn.Sequential, ConvChain]:
    model = conv_net(seed, **kw)
    return model, ConvChain.from_sequential(model, (2, 4, 4))


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 1, 1, 2), (2, 0, 2, 1), (3, 2, 1, 4)])
def test_conv_operator_forward_adjoint_and_dense_agree(stride, padding, dilation, groups):
    gen = torch.Generator().manual_seed(stride + groups)
    weight = torch.randn(4, 4 // groups, 3, 3, generator=gen, dtype=torch.float64)
    op = conv_op(weight, (4, 7, 6), (stride, stride), (padding, padding), (dilation, dilation), groups)
    W = op.dense()
    x = torch.randn(3, op.n_in, generator=gen, dtype=torch.float64)
    y = torch.randn(3, op.n_out, generator=gen, dtype=torch.float64)
    assert torch.allclose(op.forward(x), x @ W.T)
    assert torch.allclose(op.adjoint(y), y @ W)


def test_matrix_free_lipsdp_product_and_gradient_match_the_dense_matrix():
    _, conv = conv_chain(0, act=nn.GELU)
    dense = conv.to_dense()
    ops = OperatorChain.from_conv(conv)
    gen = torch.Generator().manual_seed(0)
    T = [torch.rand(n, generator=gen, dtype=torch.float64) for n in dense.widths[1:-1]]
    M = lmi_blocks(dense.weights, dense.slopes, T, 0.7, TORCH_OPS)
    z = torch.randn(2, M.shape[0], generator=gen, dtype=torch.float64)
    assert torch.allclose(lipsdp_apply(ops, T, 0.7, z), z @ M.T)
    v = z[:1]
    grads = multiplier_gradient(ops, v)
    for k, g in enumerate(grads):  # ∂(vᵀMv)/∂t_k,i by a finite difference of the affine M
        e = torch.zeros_like(T[k])
        e[3] = 1.0
        bumped = [t + (e if j == k else 0) for j, t in enumerate(T)]
        diff = (v @ (lmi_blocks(dense.weights, dense.slopes, bumped, 0.7, TORCH_OPS) - M) @ v.T).item()
        assert abs(diff - float(g[3])) <= 1e-9 * (1 + abs(diff))
    lam, vec = top_eigenpair(lambda u: lipsdp_apply(ops, T, 0.7, u), torch.ones(1, M.shape[0], dtype=torch.float64))
    assert abs(lam - float(torch.linalg.eigvalsh(M)[-1])) <= 1e-7 * float(M.abs().max())


@pytest.mark.parametrize("widths,act,seed", [((10, 16, 16, 4), "relu", 0), ((8, 12, 10, 12, 3), "gelu", 1),
                                             ((6, 8, 8, 8, 8, 2), "relu", 5)])
def test_first_order_equals_interior_point_lipsdp(widths, act, seed):
    pytest.importorskip("cvxpy")
    chain = chain_of(mlp(widths, act, seed=seed), widths[0])
    interior = CHAIN_ESTIMATORS["lipsdp-neuron"].fn(chain).value
    first = lipsdp_first_order(chain, steps=600).value
    assert abs(first / interior - 1) <= 1e-3


def test_first_order_equals_interior_point_on_a_conv_chain():
    pytest.importorskip("cvxpy")
    _, conv = conv_chain(2)
    chain = conv.to_dense()
    interior = CHAIN_ESTIMATORS["lipsdp-neuron"].fn(chain).value
    assert abs(lipsdp_first_order(chain, steps=600).value / interior - 1) <= 1e-3


@pytest.mark.parametrize("seed,act,groups", [(0, nn.ReLU, 1), (1, nn.GELU, 2), (2, nn.LeakyReLU, 4)])
def test_new_methods_are_sound_on_conv_chains(seed, act, groups, monkeypatch):
    monkeypatch.setattr("lipgraph.estimators.eclipse.MAX_LMI", 0)  # every ECLipsE stage by the first-order solver
    model, conv = conv_chain(seed, act=act, groups=groups)
    chain = conv.to_dense()
    low = lower(model, (2, 4, 4))
    fast = CHAIN_ESTIMATORS["eclipse-fast"].fn(chain).value
    bounds = {"schur": lipsdp_first_order(chain, mode="schur", steps=200).value,
              "lanczos": lipsdp_first_order(chain, mode="lanczos", steps=20).value,
              "eclipse": certify_multipliers(chain, [eclipse_multipliers(chain)], "eclipse").value}
    for name, value in bounds.items():
        assert low <= value <= fast * (1 + 1e-9), name


def test_trained_like_weights_lanczos_on_conv_operators_is_sound():
    model, conv = conv_chain(3)
    with torch.no_grad():  # trained-like: a few large kernels dominate, biases irrelevant
        model[0].weight.mul_(torch.linspace(0.2, 3.0, 4, dtype=torch.float64)[:, None, None, None])
    conv = ConvChain.from_sequential(model, (2, 4, 4))
    chain = conv.to_dense()
    from lipgraph.estimators.lipsdp_fo import first_order_multipliers
    fast = fast_multipliers(chain)
    T = first_order_multipliers(chain, fast, mode="lanczos", operators=OperatorChain.from_conv(conv), steps=20)
    bound = certify_multipliers(chain, [T, fast], "x", fallback=fast)
    assert lower(model, (2, 4, 4)) <= bound.value <= recertify(chain, fast).value * (1 + 1e-9)


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_block_certificate_equals_dense_certificate(act):
    for seed, widths in enumerate([(9, 5, 6, 3), (4, 7, 8, 6, 2), (5, 12, 3)]):
        chain = chain_of(mlp(widths, act, seed=seed), widths[0])
        T = fast_multipliers(chain)
        dense, block = recertify(chain, T).value, block_certificate(chain.weights, chain.slopes, T).value
        assert abs(block / dense - 1) <= 1e-7


def _feasibility_edge(chain: DenseChain, T: list[torch.Tensor]) -> float:
    """The c* such that c·T makes the hidden block H of M negative definite exactly for c > c* (by eigvalsh)."""
    n0 = chain.widths[0]

    def feasible(c: float) -> bool:
        H = lmi_blocks(chain.weights, chain.slopes, [c * t for t in T], 0.0, TORCH_OPS)[n0:, n0:]
        return float(torch.linalg.eigvalsh(H)[-1]) < 0

    lo, hi = 1e-6, 1.0
    assert feasible(hi) and not feasible(lo)
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return hi


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_infeasible_multipliers_are_rejected_by_both_certificates(act):
    chain = chain_of(mlp((6, 7, 8, 3), act, seed=4), 6)
    T = fast_multipliers(chain)
    edge = _feasibility_edge(chain, T)
    bad = [edge * (1 - 1e-6) * t for t in T]  # just outside the feasible set
    with pytest.raises(InfeasibleMultipliers):
        recertify(chain, bad)
    with pytest.raises(InfeasibleMultipliers):
        block_certificate(chain.weights, chain.slopes, bad)
    with pytest.raises(InfeasibleMultipliers):
        block_certificate(chain.weights, chain.slopes, [torch.zeros_like(t) for t in T])
    with pytest.raises(InfeasibleMultipliers):  # what the estimators call
        certify_multipliers(chain, [bad], "x")
    inside = [edge * 1.01 * t for t in T]  # just inside: both certify, and agree
    assert block_certificate(chain.weights, chain.slopes, inside).value == pytest.approx(
        recertify(chain, inside).value, rel=1e-6)


def test_lipsdp_method_runs_above_the_interior_point_limit(monkeypatch):
    import lipgraph.estimators.lipsdp_fo as fo

    monkeypatch.setattr(fo, "DENSE_CERTIFICATE", 10)  # force the block-tridiagonal certificate
    model, conv = conv_chain(4)
    chain = conv.to_dense()
    bound = lipsdp_first_order(chain, steps=200)
    assert bound.method == "lipsdp-neuron (first-order)"
    assert lower(model, (2, 4, 4)) <= bound.value <= CHAIN_ESTIMATORS["eclipse-fast"].fn(chain).value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_first_order_and_certificate_follow_the_device():
    _, conv = conv_chain(5)
    chain = conv.to_dense()
    cuda = DenseChain(tuple(w.cuda() for w in chain.weights), chain.slopes)
    T = fast_multipliers(cuda)
    assert T[0].is_cuda
    ops = OperatorChain.from_conv(conv, device="cuda")
    from lipgraph.estimators.lipsdp_fo import first_order_multipliers
    T = first_order_multipliers(cuda, T, mode="lanczos", operators=ops, steps=30)
    cpu = [t.cpu() for t in T]
    assert block_certificate(cuda.weights, cuda.slopes, T).value == pytest.approx(
        block_certificate(chain.weights, chain.slopes, cpu).value, rel=1e-9)


def test_lipsdp_method_takes_large_conv_chains_through_the_conv_estimator(monkeypatch):
    from lipgraph.linalg.dense import DenseLimit

    monkeypatch.setattr("lipgraph.linalg.dense.DENSE_LIMIT", DenseLimit(max_entries=100, max_min_dim=4))
    monkeypatch.setattr("lipgraph.estimators.lipsdp_fo.PASS_SECONDS", 5.0)
    model = conv_net(6)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    report = lipgraph.analyze(model, x, method="lipsdp", lower=False)
    autolip = lipgraph.analyze(model, x, method="autolip", lower=False)
    (info,) = report.chains
    assert info.winner == "lipsdp-conv" and report.bound.value < autolip.bound.value  # conv → flatten included
    assert lower(model, (2, 4, 4)) <= report.bound.value
    chain = ConvChain.from_sequential(model, (2, 4, 4))
    assert CHAIN_ESTIMATORS["lipsdp-conv"].applies(chain) is None
    assert CHAIN_ESTIMATORS["lipsdp-conv"].fn(chain).value <= CHAIN_ESTIMATORS["eclipse-fast"].fn(
        chain.to_dense()).value * (1 + 1e-9)


def _perturbed_fast(chain: DenseChain) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [t * (1 + 0.3 * torch.rand(t.shape, generator=gen, dtype=torch.float64)) for t in fast_multipliers(chain)]


@pytest.mark.parametrize("act,head", [(nn.ReLU, 2), (nn.GELU, 2), (nn.GELU, 40)])
def test_operator_schur_value_and_gradient_equal_the_autograd_schur_recursion(act, head):
    """The operator-Schur objective (conv operators, Woodbury for a thin last layer, gradient by back-substitution)
    against the dense recursion differentiated by autograd, exact and soft-maximum; float32 operators agree to
    float32 accuracy. head = 40 rows ≥ n_l / 4: the last layer goes through the dense Cholesky instead."""
    from lipgraph.estimators.lipsdp_fo import _schur_objective, _weights
    from lipgraph.estimators.schur_operator import OperatorSchur

    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), act(), nn.Conv2d(4, 4, 3, stride=2, padding=1), act(),
                          nn.Flatten(), nn.Linear(16, head)).double()
    conv = ConvChain.from_sequential(model, (2, 4, 4))
    chain = conv.to_dense()
    log_t = [t.log() for t in _perturbed_fast(chain)]
    ops = OperatorSchur(OperatorChain.from_conv(conv))
    assert ops.low_rank == (head == 2)
    dense = _schur_objective(_weights(chain), chain.slopes)
    for beta in (None, 30.0):
        soft, exact, grads = ops(log_t, beta)
        soft_ref, exact_ref, grads_ref = dense(log_t, beta)
        assert soft == pytest.approx(soft_ref, rel=1e-12) and exact == pytest.approx(exact_ref, rel=1e-12)
        for g, ref in zip(grads, grads_ref):
            assert torch.allclose(g, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))
    single = OperatorSchur(OperatorChain.from_conv(conv, dtype=torch.float32))(log_t, None)
    assert single[1] == pytest.approx(exact_ref, rel=1e-4)
    assert single[2][0].dtype == torch.float64


def test_operator_schur_rejects_infeasible_multipliers():
    from lipgraph.estimators.schur_operator import OperatorSchur

    _, conv = conv_chain(0)
    T = fast_multipliers(conv.to_dense())
    with pytest.raises(InfeasibleMultipliers):  # T/100: the last Schur complement 2T − WᵀW is indefinite
        OperatorSchur(OperatorChain.from_conv(conv))([(t / 100).log() for t in T], None)


@pytest.mark.parametrize("seed", [2, 3])
def test_operator_schur_mode_equals_interior_point_on_a_conv_chain(seed):
    """The mode lipsdp-conv uses, on a conv chain small enough for cvxpy: within 1e-3 of the interior point."""
    pytest.importorskip("cvxpy")
    from lipgraph.estimators.lipsdp_fo import first_order_multipliers

    _, conv = conv_chain(seed)
    chain = conv.to_dense()
    interior = CHAIN_ESTIMATORS["lipsdp-neuron"].fn(chain).value
    fast = fast_multipliers(chain)
    T = first_order_multipliers(chain, fast, mode="operator-schur", operators=OperatorChain.from_conv(conv),
                                steps=300)
    assert abs(certify_multipliers(chain, [T], "x").value / interior - 1) <= 1e-3
