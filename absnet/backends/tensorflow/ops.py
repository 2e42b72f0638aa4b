"""TfOps: the tensor-ops facade realised natively in TensorFlow (eager or inside ``tf.function``).

The semantics are TorchOps' (``backends/torch/ops.py``), op for op: images are NCHW as the facade
uses them; TensorFlow's CPU convolutions only take NHWC, so ``conv``/``conv_transpose`` transpose
around ``tf.nn.conv2d``/``conv2d_transpose`` (exact: a transpose moves values, it does not round).
Where TensorFlow's gradient conventions differ from torch autograd's, the op carries torch's:
``maximum``/``minimum`` split the gradient evenly between tied operands (TensorFlow gives all of
it to the first), so a training step matches torch's even at ties.

TensorFlow is an optional extra (``pip install 'absnet[tensorflow]'``): this module imports without
it, and constructing :class:`TfOps` without it raises E505.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic

try:  # the optional extra: everything below needs it only when called
    import tensorflow as tf
except ImportError:  # pragma: no cover - exercised where TensorFlow is absent
    tf = None

INSTALL = "pip install 'absnet[tensorflow]'  (or: pip install 'tensorflow-cpu>=2.16')"


def require_tensorflow() -> Any:
    """The ``tensorflow`` module; E505 with the pip command when it is not installed."""
    if tf is None:
        raise AbsnetError(Diagnostic(
            "E505", "the TensorFlow backend needs TensorFlow, which is not installed", help=INSTALL))
    return tf


class TfOps:
    """TensorFlow implementation of :class:`absnet.transformers.tensor_ops.TensorOps`.

    Shapes are static: inside ``tf.function`` the traced batch size must be known (trace once per
    batch size, as :class:`~absnet.backends.tensorflow.analysis.TfAnalysis` does). ``generator``
    (a ``tf.random.Generator``, default seeded with 0) feeds :meth:`rand_like`.
    """

    name = "tensorflow"

    def __init__(self, generator: Any = None, seed: int = 0):
        require_tensorflow()
        self.generator = generator if generator is not None else tf.random.Generator.from_seed(seed)

    # ------------------------------------------------------------------ elementwise
    def add(self, a: Any, b: Any) -> Any:
        return tf.add(*_tensors(a, b))

    def sub(self, a: Any, b: Any) -> Any:
        return tf.subtract(*_tensors(a, b))

    def mul(self, a: Any, b: Any) -> Any:
        return tf.multiply(*_tensors(a, b))

    def div(self, a: Any, b: Any) -> Any:
        return tf.divide(*_tensors(a, b))

    def neg(self, a: Any) -> Any:
        return tf.negative(a)

    def abs(self, a: Any) -> Any:
        return tf.abs(a)

    def exp(self, a: Any) -> Any:
        return tf.exp(a)

    def log(self, a: Any) -> Any:
        return tf.math.log(a)

    def sqrt(self, a: Any) -> Any:
        return tf.sqrt(a)

    def relu(self, a: Any) -> Any:
        return tf.nn.relu(a)  # gradient 0 at 0, as torch's

    def minimum(self, a: Any, b: Any) -> Any:
        return _tie_split(tf.minimum, tf.less, *_tensors(a, b))

    def maximum(self, a: Any, b: Any) -> Any:
        return _tie_split(tf.maximum, tf.greater, *_tensors(a, b))

    def greater(self, a: Any, b: Any) -> Any:
        return tf.greater(*_tensors(a, b))

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return tf.where(cond, *_tensors(a, b))

    # ------------------------------------------------------------------ linear algebra
    def matmul(self, a: Any, b: Any) -> Any:
        a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
        if a.shape.rank == 1:  # torch.matmul: a vector is a row, removed again afterwards
            return tf.squeeze(tf.matmul(a[None, :], b), -2)
        if b.shape.rank == 1:
            return tf.squeeze(tf.matmul(a, b[:, None]), -1)
        return tf.matmul(a, b)

    def conv(self, x: Any, w: Any, bias: Any, stride: Sequence[int], padding: Sequence[int],
             dilation: Sequence[int], groups: int) -> Any:
        """torch's ``F.conv2d`` (NCHW; weight (C_out, C_in/groups, kh, kw); symmetric padding)."""
        ph, pw = padding
        y = tf.pad(_nhwc(x), [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        y = _conv_valid(y, tf.transpose(w, (2, 3, 1, 0)), stride, dilation, groups)
        if bias is not None:
            y = y + bias  # the channel axis is last here
        return _nchw(y)

    def conv_transpose(self, x: Any, w: Any, stride: Sequence[int], padding: Sequence[int],
                       output_padding: Sequence[int], dilation: Sequence[int], groups: int) -> Any:
        """torch's ``F.conv_transpose2d`` without bias (weight (C_in, C_out/groups, kh, kw))."""
        n, _, h, wd = self.shape(x)
        kh, kw = int(w.shape[2]), int(w.shape[3])
        out = [(size - 1) * s - 2 * p + d * (k - 1) + op + 1 for size, s, p, d, k, op in
               zip((h, wd), stride, padding, dilation, (kh, kw), output_padding)]
        if groups == 1 and tuple(dilation) == (1, 1):
            # the full (unpadded) transpose, output_padding rows added at the end, then cropped by padding
            full = [(size - 1) * s + k + op for size, s, k, op in zip((h, wd), stride, (kh, kw), output_padding)]
            y = tf.nn.conv2d_transpose(_nhwc(x), tf.transpose(w, (2, 3, 1, 0)),
                                       tf.stack([tf.shape(x)[0], full[0], full[1], int(w.shape[1])]),
                                       list(stride), "VALID")
            y = y[:, padding[0]:padding[0] + out[0], padding[1]:padding[1] + out[1], :]
            return _nchw(tf.ensure_shape(y, (n, out[0], out[1], int(w.shape[1]))))
        return _conv_transpose_as_conv(x, w, stride, padding, output_padding, dilation, groups)

    # ------------------------------------------------------------------ reductions
    def sum(self, x: Any, axes: Sequence[int], keepdims: bool = False) -> Any:
        return tf.reduce_sum(x, axis=list(axes), keepdims=keepdims)

    def max(self, x: Any, axes: Sequence[int], keepdims: bool = False) -> Any:
        return tf.reduce_max(x, axis=list(axes), keepdims=keepdims)  # ties share the gradient, like amax

    # ------------------------------------------------------------------ shape and indexing
    def shape(self, x: Any) -> tuple[int, ...]:
        dims = tuple(tf.convert_to_tensor(x).shape)
        if any(d is None for d in dims):
            raise AbsnetError(Diagnostic(
                "E505", f"TfOps needs static shapes, got {list(dims)}",
                help="trace the tf.function with a fixed batch size (an input_signature without None)"))
        return tuple(int(d) for d in dims)

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        return tf.reshape(x, [int(d) for d in shape])

    def transpose(self, x: Any, perm: Sequence[int]) -> Any:
        return tf.transpose(x, list(perm))

    def concat(self, xs: Sequence[Any], axis: int) -> Any:
        return tf.concat(list(xs), axis)

    def slice(self, x: Any, axis: int, start: int, end: int, step: int = 1) -> Any:
        idx = [slice(None)] * len(self.shape(x))
        idx[axis] = slice(start, end, step)
        return x[tuple(idx)]

    def pad(self, x: Any, pads: Sequence[tuple[int, int]], value: float = 0.0) -> Any:
        # like F.pad, the pairs apply to the last len(pads) axes
        pads = [(0, 0)] * (len(self.shape(x)) - len(pads)) + [(int(a), int(b)) for a, b in pads]
        if any(a < 0 or b < 0 for a, b in pads):  # F.pad crops on negative pads
            x = x[tuple(slice(max(-a, 0), (d - max(-b, 0))) for (a, b), d in zip(pads, self.shape(x)))]
            pads = [(max(a, 0), max(b, 0)) for a, b in pads]
        return tf.pad(x, pads, constant_values=tf.cast(value, x.dtype))

    def topk(self, x: Any, k: int, axis: int) -> tuple[Any, Any]:
        """The ``k`` largest along ``axis``, sorted descending (ties: the lower index first)."""
        rank = len(self.shape(x))
        axis %= rank
        perm = [*(i for i in range(rank) if i != axis), axis]
        inv = [perm.index(i) for i in range(rank)]
        v, i = tf.math.top_k(tf.transpose(x, perm) if axis != rank - 1 else x, k=k, sorted=True)
        if axis != rank - 1:
            v, i = tf.transpose(v, inv), tf.transpose(i, inv)
        return v, tf.cast(i, tf.int64)

    def gather(self, x: Any, indices: Any, axis: int) -> Any:
        """``torch.gather`` / ONNX GatherElements: out[..., i, ...] = x[..., indices[..., i, ...], ...]."""
        return tf.gather_nd(x, _element_indices(indices, axis))

    def scatter(self, x: Any, indices: Any, updates: Any, axis: int) -> Any:
        """``torch.scatter`` / ONNX ScatterElements (no reduction): a copy of x with updates written in."""
        return tf.tensor_scatter_nd_update(x, _element_indices(indices, axis), updates)

    # ------------------------------------------------------------------ constants and randomness
    def constant(self, value: Any, like: Any) -> Any:
        return tf.cast(tf.convert_to_tensor(value), tf.convert_to_tensor(like).dtype)

    def zeros_like(self, x: Any) -> Any:
        return tf.zeros_like(x)

    def rand_like(self, x: Any) -> Any:
        """Uniform [0, 1) draws of x's shape from the seeded ``tf.random.Generator``."""
        return self.generator.uniform(self.shape(x), dtype=tf.convert_to_tensor(x).dtype)

    def detach(self, x: Any) -> Any:
        return tf.stop_gradient(x)


def _tensors(a: Any, b: Any) -> tuple[Any, Any]:
    """Both operands as tensors, a Python number or array taking the other operand's dtype."""
    if not tf.is_tensor(a) and not isinstance(a, tf.Variable):
        a = tf.cast(a, tf.convert_to_tensor(b).dtype) if tf.is_tensor(b) or isinstance(b, tf.Variable) else a
    if not tf.is_tensor(b) and not isinstance(b, tf.Variable):
        b = tf.cast(b, tf.convert_to_tensor(a).dtype)
    return a, b


def _tie_split(op: Any, wins: Any, a: Any, b: Any) -> Any:
    """``op`` (tf.maximum/minimum) whose gradient goes to the winner and is halved at ties (torch's)."""

    @tf.custom_gradient
    def f(a: Any, b: Any) -> Any:
        out = op(a, b)

        def grad(g: Any) -> tuple[Any, Any]:
            half = 0.5 * tf.cast(tf.equal(a, b), g.dtype)
            ga = g * (tf.cast(wins(a, b), g.dtype) + half)
            gb = g * (tf.cast(wins(b, a), g.dtype) + half)
            ra, rb = tf.raw_ops.BroadcastGradientArgs(s0=tf.shape(a), s1=tf.shape(b))
            ga = tf.reshape(tf.reduce_sum(tf.broadcast_to(ga, tf.shape(out)), ra), tf.shape(a))
            gb = tf.reshape(tf.reduce_sum(tf.broadcast_to(gb, tf.shape(out)), rb), tf.shape(b))
            return ga, gb

        return out, grad

    return f(a, b)


def _nhwc(x: Any) -> Any:
    return tf.transpose(x, (0, 2, 3, 1))


def _nchw(x: Any) -> Any:
    return tf.transpose(x, (0, 3, 1, 2))


def _element_indices(indices: Any, axis: int) -> Any:
    """Full coordinates (*indices.shape, rank) for GatherElements/ScatterElements along ``axis``."""
    indices = tf.cast(indices, tf.int64)
    rank = indices.shape.rank
    axis %= rank
    grids = tf.meshgrid(*[tf.range(tf.shape(indices, out_type=tf.int64)[d]) for d in range(rank)], indexing="ij")
    grids[axis] = indices
    return tf.stack(grids, axis=-1)


def _conv_transpose_as_conv(x: Any, w: Any, stride: Sequence[int], padding: Sequence[int],
                            output_padding: Sequence[int], dilation: Sequence[int], groups: int) -> Any:
    """A transposed convolution as a stride-1 convolution of the zero-stuffed input with the flipped,
    transposed kernel (TensorFlow's CPU ``conv2d_transpose`` has neither dilation nor groups).

    Exact: the inserted zeros contribute exact zeros, and every output sums the same products.
    """
    n, c, h, wd = (int(d) for d in x.shape)
    sh, sw = stride
    kh, kw = int(w.shape[2]), int(w.shape[3])
    co_g = int(w.shape[1])
    y = _nhwc(x)
    if sh > 1 or sw > 1:  # insert s − 1 zeros between neighbours
        y = tf.reshape(y, (n, h, 1, wd, 1, c))
        y = tf.pad(y, [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]])
        y = tf.reshape(y, (n, h * sh, wd * sw, c))[:, :(h - 1) * sh + 1, :(wd - 1) * sw + 1, :]
    pads = []
    for d, k, p, op in zip(dilation, (kh, kw), padding, output_padding):
        edge = d * (k - 1) - p
        pads.append((edge, edge + op))
    y = y[:, max(-pads[0][0], 0):y.shape[1] - max(-pads[0][1], 0), max(-pads[1][0], 0):y.shape[2] - max(-pads[1][1], 0)]
    y = tf.pad(y, [[0, 0], [max(pads[0][0], 0), max(pads[0][1], 0)], [max(pads[1][0], 0), max(pads[1][1], 0)], [0, 0]])
    # (C_in, C_out/g, kh, kw) → per group (C_out/g, C_in/g) → HWIO (kh, kw, C_in/g, C_out), flipped
    k = tf.reshape(w, (groups, c // groups, co_g, kh, kw))
    k = tf.reshape(tf.transpose(k, (0, 2, 1, 3, 4)), (groups * co_g, c // groups, kh, kw))
    k = tf.reverse(tf.transpose(k, (2, 3, 1, 0)), axis=[0, 1])
    return _nchw(_conv_valid(y, k, (1, 1), dilation, groups))


def _conv_valid(y: Any, k: Any, stride: Sequence[int], dilation: Sequence[int], groups: int) -> Any:
    """An unpadded NHWC convolution with an HWIO kernel (I = channels per group).

    TensorFlow's CPU kernels differentiate neither grouped nor dilated ``conv2d``: a depthwise
    convolution (groups = channels) uses ``depthwise_conv2d``, other groups run one convolution per
    group, and a dilated one goes through ``tf.nn.convolution``'s space-to-batch form at stride 1,
    a stride then keeping every s-th output (the same outputs).
    """
    channels = int(y.shape[-1])
    if groups > 1 and groups == channels and tuple(dilation) == (1, 1):
        kh, kw, _, co = (int(d) for d in k.shape)
        return tf.nn.depthwise_conv2d(y, tf.reshape(k, (kh, kw, channels, co // channels)),
                                      [1, *stride, 1], "VALID")
    if groups > 1:
        ys = tf.split(y, groups, axis=-1)
        ks = tf.split(k, groups, axis=-1)
        return tf.concat([_conv_valid(a, b, stride, dilation, 1) for a, b in zip(ys, ks)], axis=-1)
    if tuple(dilation) == (1, 1):
        return tf.nn.conv2d(y, k, list(stride), "VALID")
    y = tf.nn.convolution(y, k, strides=1, padding="VALID", dilations=list(dilation))
    return y[:, ::stride[0], ::stride[1], :]
