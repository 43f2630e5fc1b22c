"""lipgraph's built-in rule library, installed as ``lipgraph.rules``.

Each module below has a ``register(registry)`` function, the same protocol as third-party packs
(entry-point group ``lipgraph.rules``). Constants and their sources: ``docs/mathematics.md`` §2.
"""

MODULES = ("activations", "structural", "arithmetic", "linear", "conv", "normalization", "pooling", "softmax", "extra",
           "recurrent", "deel", "orthogonium", "pattern_sorting", "pattern_lp_pool", "pattern_residual",
           "intervals", "local", "attention", "stochastic_depth",
           "nonlipschitz", "eps_normalize", "pattern_root_sum_squares")
