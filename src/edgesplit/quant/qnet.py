"""Post-training quantization, quantization-aware training and the fake-quantized PyTorch model.

A trained model is exported to ONNX in eval mode (batch norm folded into the convs)
and read into a :class:`~edgesplit.quant.fixed.QGraph`. :class:`QuantNet` runs that
graph in PyTorch with every weight and feature map rounded to its fixed-point format
(``fake quantization``); the rounding passes gradients straight through (STE) so the
same module trains (QAT). In float64 it computes exactly what the integer reference
``fixed.run_integer`` computes.

Formats come from calibration (post-training quantization): the largest magnitude of
each weight tensor (or of each of its output channels, ``per_channel``) and of each
feature map over calibration images sets its integer bits; the rest of the width is
fraction bits.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgesplit.errors import EdgesplitError
from edgesplit.quant.fixed import (
    BIAS_BITS,
    MAX_FRAC,
    Fixed,
    QGraph,
    QOp,
    QScheme,
    check_bits,
    format_for,
    format_per_channel,
    pool_pads,
    weight_frac_limit,
)

PASS_THROUGH = ("relu", "maxpool", "flatten")  # outputs keep their input's format: no rounding needed


# ---------------------------------------------------------------- ONNX -> QGraph
def qgraph_from_model(model: nn.Module, input_shape: tuple[int, ...]) -> QGraph:
    import onnx
    from onnx import numpy_helper

    from edgesplit.models.to_onnx import onnx_bytes

    proto = onnx.load_from_string(onnx_bytes(model, input_shape, constant_folding=True))
    consts = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in proto.graph.initializer}
    alias: dict[str, str] = {}
    ops: list[QOp] = []

    def name_of(t: str) -> str:
        return alias.get(t, t)

    for i, node in enumerate(proto.graph.node):
        nname = node.name or f"{node.op_type}_{i}"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        ins = [name_of(t) for t in node.input if t]
        if node.op_type == "Identity":
            if ins[0] in consts:
                consts[node.output[0]] = consts[ins[0]]
            else:
                alias[node.output[0]] = ins[0]
            continue
        if node.op_type == "Conv":
            pads = tuple(attrs.get("pads", [0, 0, 0, 0]))
            ops.append(
                QOp(
                    "conv",
                    nname,
                    [ins[0]],
                    node.output[0],
                    {"stride": int(attrs.get("strides", [1, 1])[0]), "pads": pads, "groups": int(attrs.get("group", 1))},
                    consts[ins[1]],
                    consts[ins[2]] if len(ins) > 2 else None,
                )
            )
        elif node.op_type == "Gemm":
            w = consts[ins[1]] if attrs.get("transB", 0) else consts[ins[1]].T
            ops.append(
                QOp(
                    "linear",
                    nname,
                    [ins[0]],
                    node.output[0],
                    {},
                    np.ascontiguousarray(w),
                    consts[ins[2]] if len(ins) > 2 else None,
                )
            )
        elif node.op_type == "Relu":
            ops.append(QOp("relu", nname, ins, node.output[0]))
        elif node.op_type == "MaxPool":
            k = attrs["kernel_shape"]
            ops.append(
                QOp(
                    "maxpool",
                    nname,
                    ins,
                    node.output[0],
                    {
                        "kernel": int(k[0]),
                        "stride": int(attrs.get("strides", k)[0]),
                        "pads": tuple(attrs.get("pads", [0, 0, 0, 0])),
                        "ceil_mode": bool(attrs.get("ceil_mode", 0)),
                    },
                )
            )
        elif node.op_type == "GlobalAveragePool":
            ops.append(QOp("gap", nname, ins, node.output[0]))
        elif node.op_type == "Add" and len(ins) == 2 and not any(t in consts for t in ins):
            ops.append(QOp("add", nname, ins, node.output[0]))
        elif node.op_type == "Concat" and int(attrs.get("axis", 1)) == 1:
            ops.append(QOp("concat", nname, ins, node.output[0]))
        elif node.op_type == "Flatten":
            ops.append(QOp("flatten", nname, ins, node.output[0]))
        else:
            raise EdgesplitError(
                f"quantization has no fixed-point rule for {nname} ({node.op_type}); "
                "supported: Conv, Gemm, Relu, MaxPool, GlobalAveragePool, Add, Concat, Flatten"
            )
    return QGraph(proto.graph.input[0].name, name_of(proto.graph.output[0].name), tuple(input_shape), ops)


# ---------------------------------------------------------------- fake quantization
def fake_quant(x: torch.Tensor, fmt: Fixed) -> torch.Tensor:
    """Round to ``fmt`` (half up, saturating; per-channel formats along axis 0); the gradient passes straight through (STE)."""
    scale = 2.0 ** fmt.frac_along(x.dim())
    if fmt.per_channel:
        scale = torch.from_numpy(scale).to(x.dtype)
    q = torch.clamp(torch.floor(x * scale + 0.5), fmt.qmin, fmt.qmax) / scale
    return x + (q - x).detach()


def _quant(x: torch.Tensor, fmt: Fixed | None) -> torch.Tensor:
    return x if fmt is None else fake_quant(x, fmt)  # None: a part left in float


class QuantNet(nn.Module):
    """A :class:`QGraph` in PyTorch; quantized when ``scheme`` is set, float otherwise (calibration)."""

    def __init__(self, graph: QGraph):
        super().__init__()
        self.graph = graph
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for i, op in enumerate(graph.ops):
            if op.has_weights:
                self.weights[str(i)] = nn.Parameter(torch.from_numpy(op.weight.copy()))
                if op.bias is not None:
                    self.biases[str(i)] = nn.Parameter(torch.from_numpy(op.bias.copy()))
        self.scheme: QScheme | None = None
        self._observe: dict[str, float] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        s = self.scheme
        feats = s.features if s else None
        vals = {self.graph.input_name: _quant(x, feats[self.graph.input_name]) if s else x}
        self._record(self.graph.input_name, x)
        for i, op in enumerate(self.graph.ops):
            a = vals[op.inputs[0]]
            if op.op in ("conv", "linear"):
                w = self.weights[str(i)].to(a.dtype)
                b = self.biases[str(i)].to(a.dtype) if str(i) in self.biases else None
                if s and s.weights[op.name] is not None:
                    w = fake_quant(w, s.weights[op.name])
                    if b is not None and feats[op.inputs[0]] is not None:  # the bias's format follows its input's
                        b = fake_quant(b, Fixed(BIAS_BITS, s.bias_frac(op)))
                if op.op == "conv":
                    t, left, bottom, right = op.attrs["pads"]
                    y = F.conv2d(F.pad(a, (left, right, t, bottom)), w, b, op.attrs["stride"], 0, 1, op.attrs["groups"])
                else:
                    y = F.linear(a.flatten(1), w, b)
            elif op.op == "relu":
                y = F.relu(a)
            elif op.op == "maxpool":
                t, left, bottom, right = pool_pads(
                    a.shape[2], a.shape[3], op.attrs["kernel"], op.attrs["stride"], op.attrs["pads"], op.attrs["ceil_mode"]
                )
                y = F.max_pool2d(F.pad(a, (left, right, t, bottom), value=float("-inf")), op.attrs["kernel"], op.attrs["stride"])
            elif op.op == "gap":
                y = a.mean(dim=(2, 3), keepdim=True)
            elif op.op == "add":
                y = a + vals[op.inputs[1]]
            elif op.op == "concat":
                y = torch.cat([vals[t] for t in op.inputs], 1)
            else:  # flatten
                y = a.flatten(1)
            self._record(op.output, y)
            if s and op.op not in PASS_THROUGH:
                y = _quant(y, feats[op.output])
            vals[op.output] = y
        return vals[self.graph.output_name].flatten(1)

    def _record(self, name: str, t: torch.Tensor) -> None:
        if self._observe is not None:
            self._observe[name] = max(self._observe.get(name, 0.0), float(t.detach().abs().max()))

    # ------------------------------------------------------------ calibration
    @torch.no_grad()
    def calibrate(
        self,
        batches: Iterable[torch.Tensor],
        wbits: int,
        fbits: int,
        overrides: dict[str, tuple[int, int] | None] | None = None,
        per_channel: bool = False,
    ) -> QScheme:
        """Post-training quantization: formats from the largest magnitudes seen on ``batches``.

        ``per_channel``: each output channel of a weight tensor gets its own fraction bits (batch-norm
        folding leaves the channels of one layer with very different ranges).

        ``overrides``: op-name prefix (e.g. ``/branches.1/``, one device's branch) -> its own
        (weight, feature-map) widths, or None to leave those ops in float (a CPU branch, a head run in
        float32 by the coordinator). The network input keeps ``fbits``."""
        check_bits("wbits", wbits)
        check_bits("fbits", fbits)
        for w_f in (overrides or {}).values():
            if w_f is not None:
                check_bits("wbits", w_f[0])
                check_bits("fbits", w_f[1])
        self.scheme, self._observe = None, {}
        try:
            for x in batches:
                self(x)
            observed = self._observe
        finally:
            self._observe = None

        def widths(op) -> tuple[int, int] | None:
            for prefix, w_f in (overrides or {}).items():
                if op.name.startswith(prefix):
                    return w_f
            return wbits, fbits

        feats: dict[str, Fixed | None] = {self.graph.input_name: format_for(observed[self.graph.input_name], fbits)}
        weights: dict[str, Fixed | None] = {}
        for i, op in enumerate(self.graph.ops):  # in order, so pass-through ops can copy their input's format
            w_f = widths(op)
            if op.op in PASS_THROUGH:
                feats[op.output] = feats[op.inputs[0]]
            else:
                feats[op.output] = None if w_f is None else format_for(observed[op.output], w_f[1])
            if op.has_weights and w_f is None:
                weights[op.name] = None
            elif op.has_weights:  # as fine as the weights allow, but never so fine that the bias saturates
                w = self.weights[str(i)].detach().abs().flatten(1)  # (out channels, fan-in)
                b = self.biases[str(i)].detach().abs() if str(i) in self.biases else torch.zeros(len(w))
                in_fmt = feats[op.inputs[0]]
                if per_channel:
                    limits = [weight_frac_limit(float(bc), in_fmt.frac) if in_fmt else MAX_FRAC for bc in b]
                    weights[op.name] = format_per_channel(w.amax(1).numpy(), w_f[0], np.array(limits))
                else:
                    limit = weight_frac_limit(float(b.max()), in_fmt.frac) if in_fmt else MAX_FRAC
                    weights[op.name] = format_for(float(w.max()), w_f[0], limit)
        self.scheme = QScheme(wbits, fbits, feats, weights)
        return self.scheme

    def export_graph(self) -> QGraph:
        """The graph with the (possibly QAT-trained) weights, for the integer reference."""
        ops = []
        for i, op in enumerate(self.graph.ops):
            if op.has_weights:
                b = self.biases[str(i)].detach().numpy().copy() if str(i) in self.biases else None
                op = QOp(op.op, op.name, op.inputs, op.output, op.attrs, self.weights[str(i)].detach().numpy().copy(), b)
            ops.append(op)
        return QGraph(self.graph.input_name, self.graph.output_name, self.graph.input_shape, ops)

    def ranges(self) -> list[dict]:
        """Per weighted layer: weight range and format, output feature-map format."""
        s = self.scheme
        out = []
        for i, op in enumerate(self.graph.ops):
            if op.has_weights:
                w = self.weights[str(i)].detach()
                out.append(
                    {
                        "layer": op.name,
                        "op": op.op,
                        "weights": int(w.numel()),
                        "weight_max_abs": float(w.abs().max()),
                        "weight_format": str(s.weights[op.name]) if s else None,
                        "output_format": str(s.features[op.output]) if s else None,
                    }
                )
        return out
