"""The canonical op vocabulary: every torch spelling of an op maps to one key.

``nn.ReLU``, ``F.relu``, ``torch.relu``, ``x.relu()``, ``x.relu_()`` and ``aten.relu.default`` are all ``relu``.
Torch functions, tensor methods and ``aten`` ops that are not in the table keep their own name as key
(``torch.cumsum`` -> ``cumsum``), so one registration covers all their spellings; an in-place variant is its op
(``x.exp_()``, ``aten.exp_`` -> ``exp``) and a ``torch.special`` alias is the op it aliases (``special_erfcx`` ->
``erfcx``, ``special_expit`` -> ``sigmoid``), see :func:`canonical_name`. User functions and module
classes have no implicit key: they map to an op only through ``lipgraph.register``.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# key -> spellings: nn classes, functions, and strings (tensor method names and aten op names).
_SPELLINGS: dict[str, list[Any]] = {
    # linear layers
    "linear": [nn.Linear, F.linear, "linear"],
    "addmm": [torch.addmm, "addmm"],
    "bilinear": [nn.Bilinear, F.bilinear],
    "conv1d": [nn.Conv1d, F.conv1d, "conv1d"],
    "conv2d": [nn.Conv2d, F.conv2d, "conv2d"],
    "conv3d": [nn.Conv3d, F.conv3d, "conv3d"],
    "conv_transpose1d": [nn.ConvTranspose1d, F.conv_transpose1d, "conv_transpose1d"],
    "conv_transpose2d": [nn.ConvTranspose2d, F.conv_transpose2d, "conv_transpose2d"],
    "conv_transpose3d": [nn.ConvTranspose3d, F.conv_transpose3d, "conv_transpose3d"],
    "matmul": [torch.matmul, operator.matmul, "matmul", "mm", "bmm", torch.mm, torch.bmm, "__matmul__",
               torch.linalg.matmul, "linalg_matmul"],
    # normalisation
    "batch_norm": [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, F.batch_norm, "batch_norm",
                   "_native_batch_norm_legit_no_training"],
    "layer_norm": [nn.LayerNorm, F.layer_norm, "layer_norm"],
    "group_norm": [nn.GroupNorm, F.group_norm, "group_norm"],
    "rms_norm": [nn.RMSNorm, F.rms_norm, "rms_norm"],
    "instance_norm": [nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, F.instance_norm, "instance_norm"],
    # activations
    "relu": [nn.ReLU, F.relu, F.relu_, torch.relu, torch.relu_, "relu", "relu_"],
    "leaky_relu": [nn.LeakyReLU, F.leaky_relu, F.leaky_relu_, "leaky_relu", "leaky_relu_"],
    "prelu": [nn.PReLU, F.prelu, "prelu", "_prelu_kernel"],
    "rrelu": [nn.RReLU, F.rrelu, "rrelu"],
    "elu": [nn.ELU, F.elu, F.elu_, "elu", "elu_"],
    "celu": [nn.CELU, F.celu, "celu"],
    "selu": [nn.SELU, F.selu, torch.selu, "selu"],
    "gelu": [nn.GELU, F.gelu, "gelu"],
    "silu": [nn.SiLU, F.silu, "silu", "silu_"],
    "mish": [nn.Mish, F.mish, "mish"],
    "softplus": [nn.Softplus, F.softplus, "softplus"],
    "sigmoid": [nn.Sigmoid, F.sigmoid, torch.sigmoid, "sigmoid", "sigmoid_", "expit"],
    "tanh": [nn.Tanh, F.tanh, torch.tanh, "tanh", "tanh_"],
    "hardtanh": [nn.Hardtanh, F.hardtanh, F.hardtanh_, "hardtanh", "hardtanh_"],
    "relu6": [nn.ReLU6, F.relu6, "relu6"],
    "hardsigmoid": [nn.Hardsigmoid, F.hardsigmoid, "hardsigmoid"],
    "hardswish": [nn.Hardswish, F.hardswish, "hardswish"],
    "softsign": [nn.Softsign, F.softsign, "softsign"],
    "logsigmoid": [nn.LogSigmoid, F.logsigmoid, "log_sigmoid"],
    "tanhshrink": [nn.Tanhshrink, F.tanhshrink],
    "softshrink": [nn.Softshrink, F.softshrink, "softshrink"],
    "hardshrink": [nn.Hardshrink, F.hardshrink, "hardshrink"],
    "threshold": [nn.Threshold, F.threshold, "threshold"],
    "softmax": [nn.Softmax, F.softmax, torch.softmax, "softmax", "_softmax"],
    "log_softmax": [nn.LogSoftmax, F.log_softmax, torch.log_softmax, "log_softmax", "_log_softmax"],
    # pooling and resampling
    "max_pool1d": [nn.MaxPool1d, F.max_pool1d, "max_pool1d", "max_pool1d_with_indices"],
    "max_pool2d": [nn.MaxPool2d, F.max_pool2d, "max_pool2d", "max_pool2d_with_indices"],
    "max_pool3d": [nn.MaxPool3d, F.max_pool3d, "max_pool3d", "max_pool3d_with_indices"],
    "avg_pool1d": [nn.AvgPool1d, F.avg_pool1d, "avg_pool1d"],
    "avg_pool2d": [nn.AvgPool2d, F.avg_pool2d, "avg_pool2d"],
    "avg_pool3d": [nn.AvgPool3d, F.avg_pool3d, "avg_pool3d"],
    "adaptive_avg_pool1d": [nn.AdaptiveAvgPool1d, F.adaptive_avg_pool1d, "adaptive_avg_pool1d"],
    "adaptive_avg_pool2d": [nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d, "adaptive_avg_pool2d"],
    "adaptive_avg_pool3d": [nn.AdaptiveAvgPool3d, F.adaptive_avg_pool3d, "adaptive_avg_pool3d"],
    "lp_pool1d": [nn.LPPool1d, F.lp_pool1d],
    "lp_pool2d": [nn.LPPool2d, F.lp_pool2d],
    "lp_pool3d": [nn.LPPool3d, F.lp_pool3d],
    "adaptive_max_pool1d": [nn.AdaptiveMaxPool1d, F.adaptive_max_pool1d, "adaptive_max_pool1d",
                            "adaptive_max_pool1d_with_indices"],
    "adaptive_max_pool2d": [nn.AdaptiveMaxPool2d, F.adaptive_max_pool2d, "adaptive_max_pool2d",
                            "adaptive_max_pool2d_with_indices"],
    "adaptive_max_pool3d": [nn.AdaptiveMaxPool3d, F.adaptive_max_pool3d, "adaptive_max_pool3d",
                            "adaptive_max_pool3d_with_indices"],
    "upsample": [nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, F.interpolate, "upsample_nearest1d",
                 "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d", "_upsample_nearest_exact2d",
                 "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d"],
    "pad": [nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d,
            nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.CircularPad2d, F.pad, "pad",
            "constant_pad_nd"],
    # arithmetic
    "add": [operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__radd__", "__iadd__"],
    "sub": [operator.sub, operator.isub, torch.sub, torch.subtract, "sub", "sub_", "subtract", "__sub__",
            "__rsub__", "rsub"],
    "neg": [operator.neg, torch.neg, torch.negative, "neg", "negative", "__neg__"],
    "mul": [operator.mul, operator.imul, torch.mul, torch.multiply, "mul", "mul_", "multiply", "__mul__",
            "__rmul__"],
    "div": [operator.truediv, operator.itruediv, torch.div, torch.true_divide, torch.divide, "div", "div_", "true_divide",
            "divide",
            "__truediv__", "__rtruediv__"],
    "pos": [operator.pos, "positive"],
    # structure: isometries, projections, concatenation
    "cat": [torch.cat, torch.concat, torch.concatenate, "cat", "concat"],
    "stack": [torch.stack, "stack"],
    "flatten": [nn.Flatten, torch.flatten, "flatten"],
    "unflatten": [nn.Unflatten, torch.unflatten, "unflatten"],
    "reshape": [torch.reshape, "reshape", "view", "view_as", "reshape_as", "_unsafe_view"],
    "permute": [torch.permute, "permute"],
    "transpose": [torch.transpose, torch.t, "transpose", "t", "swapaxes", "swapdims", "T", "mT"],
    "squeeze": [torch.squeeze, "squeeze"],
    "unsqueeze": [torch.unsqueeze, "unsqueeze"],
    "contiguous": ["contiguous", "clone", torch.clone, "alias", "detach_copy"],
    "cast": ["to", "float", "double", "half", "bfloat16", "type", "cpu", "cuda", "_to_copy", "long", "int", "short",
             "char", "byte", "bool"],
    "identity": [nn.Identity],
    # recurrent layers (module rules only: rules/recurrent.py)
    "rnn": [nn.RNN], "gru": [nn.GRU], "lstm": [nn.LSTM],
    "rnn_cell": [nn.RNNCell], "gru_cell": [nn.GRUCell], "lstm_cell": [nn.LSTMCell],
    "dropout": [nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, F.dropout, F.dropout1d,
                F.dropout2d, F.dropout3d, F.alpha_dropout, "dropout", "feature_dropout", "alpha_dropout",
                "feature_alpha_dropout"],
    "channel_shuffle": [nn.ChannelShuffle, F.channel_shuffle, "channel_shuffle", "native_channel_shuffle"],
    "pixel_shuffle": [nn.PixelShuffle, F.pixel_shuffle, "pixel_shuffle"],
    "pixel_unshuffle": [nn.PixelUnshuffle, F.pixel_unshuffle, "pixel_unshuffle"],
    "getitem": [operator.getitem, "__getitem__", "select", "slice", "narrow", torch.narrow, "index_select",
                torch.index_select, "index"],
    "chunk": [torch.chunk, "chunk"],
    "split": [torch.split, "split", "split_with_sizes", "tensor_split", torch.tensor_split],
    "unbind": [torch.unbind, "unbind"],
    "expand": ["expand", "expand_as", "repeat", "broadcast_to", torch.broadcast_to],
    "full": [torch.full, "full"],
    "copy": ["copy_", "copy"],
    "mean": [torch.mean, "mean"],
    "sum": [torch.sum, "sum"],
    # rules/nonlipschitz.py: ops with no global Lipschitz constant, refused whatever their spelling
    "multihead_attention": [nn.MultiheadAttention, F.multi_head_attention_forward, F.scaled_dot_product_attention,
                            "scaled_dot_product_attention", "_scaled_dot_product_attention_math",
                            "_scaled_dot_product_attention_math_for_mps", "_scaled_dot_product_flash_attention",
                            "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
                            "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention_overrideable",
                            "_native_multi_head_attention"],
    "transformer_layer": [nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder,
                          nn.TransformerDecoder, nn.Transformer, "_transformer_encoder_layer_fwd"],
    "pow": [operator.pow, operator.ipow, torch.pow, torch.float_power, "pow", "float_power", "__pow__", "__ipow__"],
    "floor_divide": [operator.floordiv, operator.ifloordiv, torch.floor_divide, "floor_divide", "__floordiv__",
                     "__rfloordiv__"],
    "remainder": [operator.mod, operator.imod, torch.remainder, "remainder", "__mod__", "__rmod__"],
    "exp2": [torch.exp2, torch.special.exp2, "exp2"],
    "expm1": [torch.expm1, torch.special.expm1, "expm1"],
    "log1p": [torch.log1p, torch.special.log1p, "log1p"],
    "logit": [torch.logit, torch.special.logit, "logit"],
    "round": [torch.round, torch.special.round, "round"],
    "trunc": [torch.trunc, torch.fix, "trunc", "fix"],
    "sign": [torch.sign, torch.sgn, "sign", "sgn"],
    "asin": [torch.asin, torch.arcsin, "asin", "arcsin"],
    "acos": [torch.acos, torch.arccos, "acos", "arccos"],
    "atanh": [torch.atanh, torch.arctanh, "atanh", "arctanh"],
    "outer": [torch.outer, torch.ger, "outer", "ger"],
    "cross": [torch.cross, torch.linalg.cross, "cross", "linalg_cross"],
    "multi_dot": [torch.linalg.multi_dot, torch.chain_matmul, "linalg_multi_dot", "chain_matmul"],
    "dot": [torch.dot, "dot", torch.linalg.vecdot, "linalg_vecdot", "vecdot"],
    "digamma": [torch.digamma, "digamma", "psi"],
    "lgamma": [torch.lgamma, "lgamma", "gammaln"],
    "mvlgamma": [torch.mvlgamma, "mvlgamma", "multigammaln"],
    "igamma": [torch.igamma, "igamma", "gammainc"],
    "igammac": [torch.igammac, "igammac", "gammaincc"],
    "acosh": [torch.acosh, torch.arccosh, "acosh", "arccosh"],
    "atan2": [torch.atan2, torch.arctan2, "atan2", "arctan2"],
    "inverse": [torch.inverse, torch.linalg.inv, torch.linalg.inv_ex, torch.linalg.pinv, torch.pinverse, "inverse",
                "linalg_inv", "linalg_inv_ex", "linalg_pinv", "pinverse"],
    "det": [torch.det, torch.linalg.det, "det", "linalg_det", "_linalg_det"],
    "logdet": [torch.logdet, torch.slogdet, torch.linalg.slogdet, "logdet", "slogdet", "linalg_slogdet", "_linalg_slogdet"],
    "cholesky": [torch.cholesky, torch.linalg.cholesky, torch.linalg.cholesky_ex, "cholesky", "linalg_cholesky",
                 "linalg_cholesky_ex"],
    "matrix_exp": [torch.matrix_exp, torch.linalg.matrix_exp, "matrix_exp", "linalg_matrix_exp"],
    "matrix_power": [torch.matrix_power, torch.linalg.matrix_power, "matrix_power", "linalg_matrix_power"],
    "linalg_solve": [torch.linalg.solve, torch.linalg.solve_ex, "linalg_solve", "linalg_solve_ex", "_linalg_solve_ex"],
    # rules/softmax.py, rules/extra.py
    "softmin": [nn.Softmin, F.softmin, "softmin"],
    "softmax2d": [nn.Softmax2d],
    "abs": [torch.abs, torch.absolute, "abs", "absolute"],
    "flip": [torch.flip, torch.fliplr, torch.flipud, "flip", "fliplr", "flipud"],
    "roll": [torch.roll, "roll"],
    "rot90": [torch.rot90, "rot90"],
    # clamp broadcasts x against tensor bounds (copies x): its own key, not hardtanh's. Listed after "hardtanh",
    # so these spellings override the clamp/clip entries there.
    "clamp": [torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max, "clamp", "clip", "clamp_min", "clamp_max"],
    "maximum": [torch.maximum, torch.fmax, "maximum", "fmax"],
    "minimum": [torch.minimum, torch.fmin, "minimum", "fmin"],
    "max": [torch.max, "max"],  # reduction over dims, or torch.max(a, b) of two tensors
    "min": [torch.min, "min"],
    "amax": [torch.amax, "amax"],
    "amin": [torch.amin, "amin"],
    "argmax": [torch.argmax, "argmax"],
    "argmin": [torch.argmin, "argmin"],
    "sort": [torch.sort, "sort"],
    "topk": [torch.topk, "topk"],
    "norm": [torch.norm, "norm"],
    "linalg_vector_norm": [torch.linalg.vector_norm, "linalg_vector_norm", "vector_norm"],
    "linalg_norm": [torch.linalg.norm, "linalg_norm"],
}

MODULE_KEYS: dict[type, str] = {}
FUNCTION_KEYS: dict[int, str] = {}  # id(function) -> key (builtins are not always hashable by value)
NAME_KEYS: dict[str, str] = {}  # tensor method and aten op names -> key
for _key, _spellings in _SPELLINGS.items():
    for _s in _spellings:
        if isinstance(_s, str):
            NAME_KEYS[_s] = _key
        elif isinstance(_s, type):
            MODULE_KEYS[_s] = _key
        else:
            FUNCTION_KEYS[id(_s)] = _key
    NAME_KEYS.setdefault(_key, _key)

# fx containers are never leaves; every other torch.nn module without a rule stays a leaf (and is reported).
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def is_torch_owned(fn: Any) -> bool:
    """``fn`` is defined by torch (a torch function, an ``aten`` overload, a builtin of ``torch._C``)."""
    module = getattr(fn, "__module__", None) or ""
    return module == "torch" or module.startswith("torch.") or module.startswith("torch._C")


def function_key(fn: Any) -> str | None:
    """Key of a ``call_function`` target: a torch function, an operator, or an ``aten`` overload."""
    key = FUNCTION_KEYS.get(id(fn))
    if key:
        return key
    schema = getattr(fn, "_schema", None)
    if schema is not None:  # aten.relu.default -> "relu"
        return canonical_name(schema.name.split("::", 1)[-1])
    if is_torch_owned(fn) and getattr(fn, "__name__", None):
        return canonical_name(fn.__name__)
    return None


def canonical_name(name: str) -> str:
    """Key of a torch function, tensor method or ``aten`` op name: its entry in the table; else an in-place
    variant is its op (``exp_`` -> ``exp``) and ``special_X`` (torch.special's alias of ``torch.X``, or its own
    ``X``) is X's key (``special_expit`` -> ``sigmoid``, ``special_erfcx`` -> ``erfcx``); else the name itself."""
    if name in NAME_KEYS:
        return NAME_KEYS[name]
    if name.endswith("_") and not name.startswith("_"):
        return canonical_name(name.rstrip("_"))
    if name.startswith("special_"):
        return canonical_name(name[len("special_"):])
    return name


def method_key(name: str) -> str:
    """Key of a ``call_method`` target (a tensor method name)."""
    return canonical_name(name)


def module_key(cls: type, alias_of) -> str | None:
    """Key of a module class: the first class along the MRO that has a key, if ``cls`` inherits its ``forward``.

    A subclass that overrides ``forward`` (say, weight standardisation on top of ``nn.Conv2d``) computes
    something else than its base: it gets no key and is traced through instead, which stays sound.
    ``alias_of`` looks up user registrations (module classes -> keys).
    """
    for base in cls.__mro__:
        key = alias_of(base) or MODULE_KEYS.get(base)
        if key is not None:
            return key if base is cls or getattr(cls, "forward", None) is getattr(base, "forward", None) else None
    return None


def node_key(gm: Any, node: Any, alias_of) -> str | None:
    """Canonical key of an fx op node of ``gm`` (module, method, function, ``x.T``-style attribute, or a pattern's
    compound, which carries its key); ``alias_of`` looks up user registrations."""
    if node.op == "call_module":
        return module_key(type(gm.get_submodule(node.target)), alias_of)
    if node.op == "call_method":
        return method_key(node.target)
    if node.op == "call_function" and node.target is getattr:  # x.T, x.mT: attributes computing tensors
        return method_key(node.args[1])
    if node.op == "call_function":
        compound = getattr(node.target, "lipgraph_op_key", None)
        return compound if isinstance(compound, str) else alias_of(node.target) or function_key(node.target)
    return None


def display_name(target: Any) -> str:
    """A copy-pasteable name of a function, module class or method, for messages and rule stubs."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    if module.startswith("torch._C") or module.startswith("torch._ops"):
        module = "torch"
    return f"{module}.{name}" if module else name
