"""Fixed-point formats and the bit-accurate integer reference execution (numpy only).

A value ``v`` in format ``Fixed(bits, frac)`` is the signed integer
``q = clip(floor(v * 2**frac + 1/2), -2**(bits-1), 2**(bits-1) - 1)`` (round half up,
saturate). Weights, biases and every feature map (each op's output) have their own
format: per-layer widths with integer and fraction bits. A weight tensor may instead have
one fraction-bit count per output channel (``frac`` a tuple; axis 0 of the weights): in
hardware a per-channel shift of the accumulator before the output is rounded.

``run_integer`` executes a :class:`QGraph` with integer tensors only (int64
accumulators, shifts with rounding, saturation). The fake-quantized PyTorch model
(``quant/qnet.py``) computes the same numbers in float64, where every intermediate is
exact (products of <=16-bit values summed over <= 2**20 terms stay below 2**53), so
the two agree bit for bit; the tests check it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgesplit.errors import EdgesplitError

MIN_BITS, MAX_BITS = 2, 16  # float64 fake quantization stays exact up to 16-bit operands
BIAS_BITS = 32  # biases live in the accumulator's format
MAX_FRAC = 40  # no format finer than 2**-40: every shift of the integer reference stays inside int64


@dataclass(frozen=True)
class Fixed:
    bits: int
    frac: int | tuple[int, ...]  # fraction bits; integer bits (with sign) = bits - frac. tuple: one per output channel

    @property
    def per_channel(self) -> bool:
        return isinstance(self.frac, tuple)

    def frac_along(self, ndim: int, axis: int = 0) -> int | np.ndarray:
        """The fraction bits shaped to broadcast over a tensor of ``ndim`` dims with channels on ``axis``."""
        return channel_frac(self.frac, ndim, axis)

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def __str__(self) -> str:
        if self.per_channel:
            return f"Q{self.bits}[frac {min(self.frac)}..{max(self.frac)} per channel]"
        return f"Q{self.bits - self.frac}.{self.frac}"


def channel_frac(frac, ndim: int, axis: int) -> int | np.ndarray:
    """Scalar fraction bits as they are; per-channel ones (a sequence) shaped (1,..,C,..,1) with C on ``axis``."""
    if np.ndim(frac) == 0:
        return int(frac)
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(frac, np.int64).reshape(shape)


def check_bits(name: str, bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise EdgesplitError(f"--{name} must be between {MIN_BITS} and {MAX_BITS}, got {bits}")


def int_bits(max_abs: float) -> int:
    """Bits left of the binary point (sign excluded) that ``max_abs`` needs; negative below 1/2."""
    return math.floor(math.log2(max_abs)) + 1 if max_abs > 0 and math.isfinite(max_abs) else 0


def format_for(max_abs: float, bits: int, max_frac: int = MAX_FRAC) -> Fixed:
    """The format with the most fraction bits (at most ``max_frac``) whose range still holds ``max_abs``.

    Values under 1/2 get more than ``bits - 1`` fraction bits (negative integer bits): a layer whose
    weights all lie in (-0.1, 0.1) uses its whole width instead of its lowest bits."""
    if max_abs <= 0 or not math.isfinite(max_abs):
        return Fixed(bits, min(bits - 1, max_frac))
    return Fixed(bits, min(bits - 1 - int_bits(max_abs), max_frac))


def weight_frac_limit(bias_max_abs: float, input_frac: int) -> int:
    """The most fraction bits a layer's weights may have so that its bias, in the accumulator's format
    (weights' + input's fraction bits, :data:`BIAS_BITS` wide), does not saturate."""
    return min(MAX_FRAC, BIAS_BITS - 1 - max(0, int_bits(bias_max_abs)) - input_frac)


def format_per_channel(max_abs: np.ndarray, bits: int, max_frac: int | np.ndarray = MAX_FRAC) -> Fixed:
    """:func:`format_for` for each output channel's largest magnitude: one fraction-bit count per channel."""
    max_abs = np.asarray(max_abs, np.float64).reshape(-1)
    limits = np.broadcast_to(np.asarray(max_frac), max_abs.shape)
    return Fixed(bits, tuple(format_for(float(m), bits, int(f)).frac for m, f in zip(max_abs, limits)))


def quantize(x: np.ndarray, fmt: Fixed) -> np.ndarray:
    """Real values -> integers of ``fmt`` (int64); a per-channel format along axis 0."""
    x = np.asarray(x, np.float64)
    q = np.floor(x * 2.0 ** fmt.frac_along(x.ndim) + 0.5)
    return np.clip(q, fmt.qmin, fmt.qmax).astype(np.int64)


def requantize(q: np.ndarray, frac_in: int | np.ndarray, fmt: Fixed) -> np.ndarray:
    """Integers with ``frac_in`` fraction bits (a scalar or an array broadcasting over ``q``, one per channel)
    -> ``fmt``: an arithmetic shift with round half up, then saturate."""
    shift = np.asarray(frac_in - fmt.frac, np.int64)
    right, left = np.maximum(shift, 0), np.maximum(-shift, 0)
    q = (np.left_shift(q, left) + (np.left_shift(1, right) >> 1)) >> right  # right > 0: (q + 2**(right-1)) >> right
    return np.clip(q, fmt.qmin, fmt.qmax)


def divide_round(q: np.ndarray, n: int, frac_in: int, fmt: Fixed) -> np.ndarray:
    """(q / n) with ``frac_in`` fraction bits -> ``fmt``, rounded half up exactly (an average pool)."""
    d = fmt.frac - frac_in
    num = q * (1 << d) if d >= 0 else q
    den = n if d >= 0 else n * (1 << -d)
    return np.clip((2 * num + den) // (2 * den), fmt.qmin, fmt.qmax)


# ---------------------------------------------------------------- the graph both executions share
@dataclass
class QOp:
    op: str  # conv | linear | relu | maxpool | gap | add | concat | flatten
    name: str
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)  # conv: stride, pads, groups; maxpool: kernel, stride, pads
    weight: np.ndarray | None = None  # float32, folded with batch norm
    bias: np.ndarray | None = None

    @property
    def has_weights(self) -> bool:
        return self.weight is not None


@dataclass
class QGraph:
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]  # (C, H, W)
    ops: list[QOp]


@dataclass
class QScheme:
    """Formats per tensor (feature maps, by tensor name) and per weighted op (weights, by op name)."""

    wbits: int
    fbits: int
    features: dict[str, Fixed | None]  # None: left in float (QuantNet only; the integer reference refuses it)
    weights: dict[str, Fixed | None]  # a per-channel Fixed for per-channel weight formats

    def bias_frac(self, op: QOp) -> int | tuple[int, ...]:
        """The accumulator's fraction bits (weights' + input's): one per output channel for per-channel weights."""
        w, a = self.weights[op.name].frac, self.features[op.inputs[0]].frac
        return tuple(f + a for f in w) if isinstance(w, tuple) else w + a


# ---------------------------------------------------------------- integer execution
def _pad(x: np.ndarray, pads: tuple[int, int, int, int], value: int = 0) -> np.ndarray:
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _windows(x: np.ndarray, kh: int, kw: int, stride: int) -> np.ndarray:
    """(B, C, H, W) -> (B, C, Ho, Wo, kh, kw) view of the sliding windows."""
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return win[:, :, ::stride, ::stride]


def pool_pads(h: int, w: int, kernel: int, stride: int, pads, ceil_mode: bool) -> tuple[int, int, int, int]:
    """Padding (top, left, bottom, right) after which a floor-mode pool gives the ``ceil_mode`` output size."""
    top, left, bottom, right = pads
    if not ceil_mode:
        return tuple(pads)
    extra = []
    for size in (h + top + bottom, w + left + right):
        out = -(-(size - kernel) // stride) + 1
        if (out - 1) * stride >= size:  # the last window must start inside (PyTorch's and ONNX's rule)
            out -= 1
        extra.append(max(0, (out - 1) * stride + kernel - size))
    return (top, left, bottom + extra[0], right + extra[1])


def conv_int(x: np.ndarray, w: np.ndarray, stride: int, pads, groups: int) -> np.ndarray:
    """Integer 2-D convolution: x (B, C, H, W) int64, w (M, C/g, kh, kw) int64 -> (B, M, Ho, Wo) int64."""
    m, cg, kh, kw = w.shape
    win = _windows(_pad(x, pads), kh, kw, stride)  # (B, C, Ho, Wo, kh, kw)
    outs = []
    mg = m // groups
    for g in range(groups):
        xg = win[:, g * cg : (g + 1) * cg]
        wg = w[g * mg : (g + 1) * mg]
        outs.append(np.einsum("bchwij,mcij->bmhw", xg, wg, optimize=True))
    return np.concatenate(outs, axis=1) if groups > 1 else outs[0]


def run_integer(graph: QGraph, scheme: QScheme, x: np.ndarray) -> tuple[np.ndarray, Fixed]:
    """Run ``graph`` on real input ``x`` (B, C, H, W) with integers only; returns the output integers and their format."""
    vals = run_integer_tensors(graph, scheme, x)
    return vals[graph.output_name], scheme.features[graph.output_name]


def run_integer_tensors(graph: QGraph, scheme: QScheme, x: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`run_integer`, returning every tensor (by name): the reference a generated accelerator is checked against."""
    if any(f is None for f in (*scheme.features.values(), *scheme.weights.values())):
        raise EdgesplitError("the integer reference runs fully quantized schemes only; this one leaves some ops in float")
    feats = scheme.features
    vals: dict[str, np.ndarray] = {graph.input_name: quantize(x, feats[graph.input_name])}
    for op in graph.ops:
        fo = feats[op.output]
        a = vals[op.inputs[0]]
        fa = feats[op.inputs[0]].frac
        if op.op in ("conv", "linear"):
            wq = quantize(op.weight, scheme.weights[op.name])
            bias_frac = scheme.bias_frac(op)
            bq = quantize(op.bias, Fixed(BIAS_BITS, bias_frac)) if op.bias is not None else 0
            if op.op == "conv":
                acc = conv_int(a, wq, op.attrs["stride"], op.attrs["pads"], op.attrs["groups"])
                acc = acc + (bq[None, :, None, None] if op.bias is not None else 0)  # (B, M, Ho, Wo)
            else:
                acc = a.reshape(a.shape[0], -1) @ wq.T + bq  # (B, M)
            y = requantize(acc, channel_frac(bias_frac, acc.ndim, 1), fo)
        elif op.op == "relu":
            y = requantize(np.maximum(a, 0), fa, fo)
        elif op.op == "maxpool":
            k, s = op.attrs["kernel"], op.attrs["stride"]
            pads = pool_pads(a.shape[2], a.shape[3], k, s, op.attrs["pads"], op.attrs["ceil_mode"])
            y = requantize(_windows(_pad(a, pads, fo.qmin * 2**40), k, k, s).max(axis=(4, 5)), fa, fo)
        elif op.op == "gap":
            n = a.shape[2] * a.shape[3]
            y = divide_round(a.sum(axis=(2, 3), keepdims=True), n, fa, fo)
        elif op.op == "add":
            b, fb = vals[op.inputs[1]], feats[op.inputs[1]].frac
            f = max(fa, fb)
            y = requantize((a << (f - fa)) + (b << (f - fb)), f, fo)
        elif op.op == "concat":
            y = np.concatenate([requantize(vals[t], feats[t].frac, fo) for t in op.inputs], axis=1)
        elif op.op == "flatten":
            y = requantize(a.reshape(a.shape[0], -1), fa, fo)
        else:
            raise EdgesplitError(f"integer reference: no rule for {op.op} ({op.name})")
        vals[op.output] = y
    return vals
