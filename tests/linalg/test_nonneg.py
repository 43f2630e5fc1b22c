import math

import pytest
import torch.nn.functional as F

from lipgraph.linalg import col_sum_max, row_sum_max, schur_bound

OPS = {
    "avgpool2x2s2": (lambda x: F.avg_pool2d(x, 2, 2), (1, 6, 6)),
    "avgpool3x3s2pad": (lambda x: F.avg_pool2d(x, 3, 2, padding=1), (2, 7, 7)),
    "avgpool1d-k3s1": (lambda x: F.avg_pool1d(x, 3, 1), (1, 9)),
    "sumpool3d": (lambda x: 8 * F.avg_pool3d(x, 2, 1), (1, 3, 3, 4)),
    "nearest-x2": (lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), (1, 4, 3)),
    "bilinear-x2": (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), (1, 4, 5)),
    "adaptive-avg": (lambda x: F.adaptive_avg_pool2d(x, (3, 2)), (2, 7, 5)),
}


@pytest.mark.parametrize("name", list(OPS))
def test_nonnegative_operator_norms(oracle, name):
    fn, shape = OPS[name]
    oracle.assert_exact(row_sum_max(fn, shape), oracle.norm(fn, shape, math.inf))
    oracle.assert_exact(col_sum_max(fn, shape), oracle.norm(fn, shape, 1))
    oracle.assert_upper(schur_bound(fn, shape), oracle.norm(fn, shape, 2), slack=1.5)


def test_avgpool_2x2_stride2_is_half():
    fn, shape = OPS["avgpool2x2s2"]
    assert schur_bound(fn, shape).value == pytest.approx(0.5, rel=2e-6)
