"""Operator norms of linear maps: dense, convolution (FFT / Gram iteration / pointwise / dense / abs-sum; the
per-frequency work in ``spectral``), power iteration, nonnegative maps; where they run (``device``) and in how
many threads (``parallel``)."""
from lipgraph.linalg.conv import conv_norm, lazy_conv_norm
from lipgraph.linalg.dense import DENSE_LIMIT, DenseLimit, dense_is_cheap, dense_norm, materialize, matrix_norm
from lipgraph.linalg.nonneg import col_sum_max, row_sum_max, schur_bound
from lipgraph.linalg.power import power_iteration

__all__ = [
    "DENSE_LIMIT",
    "DenseLimit",
    "col_sum_max",
    "conv_norm",
    "dense_is_cheap",
    "dense_norm",
    "lazy_conv_norm",
    "materialize",
    "matrix_norm",
    "power_iteration",
    "row_sum_max",
    "schur_bound",
]
