"""Fixed-point formats and the bit-accurate integer reference execution (numpy only).

A value ``v`` in format ``Fixed(bits, frac)`` is the signed integer
``q = clip(floor(v * 2**frac + 1/2), -2**(bits-1), 2**(bits-1) - 1)`` (round half up,
saturate). Weights, biases and every feature map (each op's output) have their own
format: per-layer widths with integer and fraction bits.

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


@dataclass(frozen=True)
class Fixed:
    bits: int
    frac: int  # fraction bits; integer bits (with sign) = bits - frac

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def __str__(self) -> str:
        return f"Q{self.bits - self.frac}.{self.frac}"


def check_bits(name: str, bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise EdgesplitError(f"--{name} must be between {MIN_BITS} and {MAX_BITS}, got {bits}")


def format_for(max_abs: float, bits: int) -> Fixed:
    """The format with the most fraction bits whose range still holds ``max_abs``."""
    if max_abs <= 0 or not math.isfinite(max_abs):
        return Fixed(bits, bits - 1)
    int_bits = max(0, math.floor(math.log2(max_abs)) + 1)  # bits left of the point, sign excluded
    return Fixed(bits, bits - 1 - int_bits)


def quantize(x: np.ndarray, fmt: Fixed) -> np.ndarray:
    """Real values -> integers of ``fmt`` (int64)."""
    q = np.floor(np.asarray(x, np.float64) * 2.0 ** fmt.frac + 0.5)
    return np.clip(q, fmt.qmin, fmt.qmax).astype(np.int64)


def requantize(q: np.ndarray, frac_in: int, fmt: Fixed) -> np.ndarray:
    """Integers with ``frac_in`` fraction bits -> ``fmt``: an arithmetic shift with round half up, then saturate."""
    shift = frac_in - fmt.frac
    if shift > 0:
        q = (q + (1 << (shift - 1))) >> shift
    elif shift < 0:
        q = q << (-shift)
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
    weights: dict[str, Fixed | None]

    def bias_frac(self, op: QOp) -> int:
        return self.weights[op.name].frac + self.features[op.inputs[0]].frac


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
        xg = win[:, g * cg:(g + 1) * cg]
        wg = w[g * mg:(g + 1) * mg]
        outs.append(np.einsum("bchwij,mcij->bmhw", xg, wg, optimize=True))
    return np.concatenate(outs, axis=1) if groups > 1 else outs[0]


def run_integer(graph: QGraph, scheme: QScheme, x: np.ndarray) -> tuple[np.ndarray, Fixed]:
    """Run ``graph`` on real input ``x`` (B, C, H, W) with integers only; returns the output integers and their format."""
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
                acc = acc + (bq[None, :, None, None] if op.bias is not None else 0)
            else:
                acc = a.reshape(a.shape[0], -1) @ wq.T + bq
            y = requantize(acc, bias_frac, fo)
        elif op.op == "relu":
            y = requantize(np.maximum(a, 0), fa, fo)
        elif op.op == "maxpool":
            k, s = op.attrs["kernel"], op.attrs["stride"]
            pads = pool_pads(a.shape[2], a.shape[3], k, s, op.attrs["pads"], op.attrs["ceil_mode"])
            y = requantize(_windows(_pad(a, pads, fo.qmin * 2 ** 40), k, k, s).max(axis=(4, 5)), fa, fo)
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
    return vals[graph.output_name], feats[graph.output_name]
