"""A CNN as the hardware model sees it: a list of costed layers read from ONNX.

Every model reaches the hardware model the same way, as an ONNX graph (graph in,
dict out, as in FINN/QONNX): a registered model name or a checkpoint is exported
in memory first (``graph_from_model``, needs torch), a user's ``.onnx`` file is read
directly (``graph_from_onnx``, needs only the ``onnx`` package).

Operators fall into three groups:

- costed layers (``Layer.op``): ``conv`` (any kernel, stride and groups: standard,
  depth-wise, point-wise), ``linear``, ``maxpool``, ``avgpool``, ``gap`` (global
  average pool), ``add`` (two feature maps), ``concat``;
- operators folded into the layer before them (:data:`FOLDED`): batch norm (folded
  into the conv's weights and bias), ReLU and clipping (a comparator on the output
  path), reshapes and flattening (addressing only);
- everything else is unsupported: it is listed, by node name and operator, in the
  :class:`UnsupportedLayers` error. Nothing is silently costed at zero.

``fuse`` then marks the edges where a producer's output can stay on chip instead of a
DRAM round trip: conv+pool, DW-conv+PW-conv, a Fire module's squeeze+expands, and a
conv's output with the residual add that consumes it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from edgesplit.errors import EdgesplitError

FOLDED = {
    "BatchNormalization": "folded into the previous conv's weights and bias",
    "Relu": "comparator on the output path",
    "Clip": "comparator on the output path",
    "LeakyRelu": "shift-and-select on the output path",
    "Flatten": "addressing only",
    "Reshape": "addressing only",
    "Squeeze": "addressing only",
    "Unsqueeze": "addressing only",
    "Identity": "no operation",
    "Dropout": "no operation at inference",
    "Pad": "the tile loader supplies the zero border (addressing)",
}
POOL_OPS = ("maxpool", "avgpool", "gap", "gmp")
CPU_OPS = ("softmax", "transpose")  # left to the board's processing system (hardware/host.py)
# ONNX operator -> layer kind for the element-wise and data-movement operators (beyond conv, linear and pools)
VECTOR_OPS = {
    "SpaceToDepth": "reorg",
    "DepthToSpace": "reorg",
    "Resize": "resize",
    "Upsample": "resize",
    "Sigmoid": "eltwise",
    "Mul": "eltwise",
    "Sub": "eltwise",
    "Div": "eltwise",
    "Softmax": "softmax",
    "Transpose": "transpose",
}
SUPPORTED = "Conv, Gemm/MatMul, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Add, Concat, " + ", ".join(VECTOR_OPS)


class UnsupportedLayers(EdgesplitError):
    def __init__(self, unsupported: Sequence[str]):
        self.unsupported = list(unsupported)
        shown = ", ".join(self.unsupported[:8]) + (f" and {len(self.unsupported) - 8} more" if len(self.unsupported) > 8 else "")
        super().__init__(
            f"the hardware model cannot cost {len(self.unsupported)} layer(s): {shown}; "
            f"supported: {SUPPORTED} (folded: {', '.join(sorted(FOLDED))})"
        )


@dataclass(frozen=True)
class Layer:
    name: str
    op: str  # conv | linear | maxpool | avgpool | gap | gmp | add | concat | reorg | resize | eltwise | softmax | transpose
    in_shape: tuple[int, int, int]  # (C, H, W) per image; a linear layer is (C, 1, 1)
    out_shape: tuple[int, int, int]
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    groups: int = 1
    inputs: tuple[str, ...] = ()  # producing layers; "input" for the image
    on_chip_in: bool = False  # every input arrives from an on-chip buffer (fused with its producer)
    on_chip_out: bool = False  # the output is consumed on chip only (fused with its consumers)
    arity: int = 1  # feature-map operands read (2 for an add or an element-wise op of two tensors)
    axis: int = 1  # concat: the axis joined (1: channels, written at offsets without a copy)

    @property
    def is_depthwise(self) -> bool:
        return self.op == "conv" and self.groups > 1 and self.groups == self.in_shape[0]

    @property
    def is_pointwise(self) -> bool:
        return self.op == "conv" and self.kernel == (1, 1) and self.groups == 1

    @property
    def weights(self) -> int:
        """Weight values (bias excluded: it is added once per output, folded with batch norm)."""
        if self.op == "conv":
            return self.out_shape[0] * (self.in_shape[0] // self.groups) * self.kernel[0] * self.kernel[1]
        if self.op == "linear":
            return self.out_shape[0] * self.in_shape[0]
        return 0

    @property
    def macs(self) -> int:
        if self.op in ("conv", "linear"):
            return self.weights * self.out_shape[1] * self.out_shape[2]
        return 0

    @property
    def in_values(self) -> int:
        c, h, w = self.in_shape
        return c * h * w * (2 if self.op == "add" else self.arity)

    @property
    def out_values(self) -> int:
        c, h, w = self.out_shape
        return c * h * w


@dataclass(frozen=True)
class Graph:
    name: str
    input_shape: tuple[int, int, int]
    layers: tuple[Layer, ...]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)


# ---------------------------------------------------------------- ONNX reader
def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _chw(shape: Sequence[int], what: str) -> tuple[int, int, int]:
    dims = list(shape)[1:]  # drop the batch dimension
    if len(dims) == 1:
        return (int(dims[0]), 1, 1)
    if len(dims) == 2:  # (N, C, L): a sequence, costed as a one-column image
        return (int(dims[0]), int(dims[1]), 1)
    if len(dims) == 3:
        return tuple(int(d) for d in dims)
    raise EdgesplitError(f"{what}: expected an image (N, C, H, W) or vector (N, C) tensor, got shape {list(shape)}")


def graph_from_onnx(source, name: str = "", input_shape: Sequence[int] | None = None) -> Graph:
    """Read a CNN from an ONNX file, bytes or ``ModelProto``; ``input_shape`` (C, H, W) fixes dynamic sizes."""
    import onnx

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise EdgesplitError(f"ONNX file {path} not found")
        try:
            proto = onnx.load(str(path))
        except Exception as err:
            raise EdgesplitError(f"{path} is not a readable ONNX model ({type(err).__name__})") from None
        name = name or path.stem
    elif isinstance(source, bytes):
        proto = onnx.load_from_string(source)
    else:
        proto = source
    for t in proto.graph.initializer:  # shapes are all the model needs: drop large weight payloads before inference
        if int(np.prod(t.dims)) > 4096:
            t.ClearField("raw_data")
            for field in ("float_data", "int32_data", "int64_data", "double_data"):
                t.ClearField(field)
    inits = {t.name: t for t in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(graph_inputs) != 1:
        raise EdgesplitError(f"the hardware model takes a CNN with one image input; this graph has {len(graph_inputs)} inputs")
    gin = graph_inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in gin.type.tensor_type.shape.dim]
    if input_shape is not None:
        dims = [1, *input_shape]
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        raise EdgesplitError(f"input {gin.name} has shape {dims}: give the image size with --input CxHxW")
    dims[0] = 1
    del gin.type.tensor_type.shape.dim[:]
    for d in dims:
        gin.type.tensor_type.shape.dim.add().dim_value = int(d)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as err:
        raise EdgesplitError(f"ONNX shape inference failed ({str(err).splitlines()[0][:200]}); is this a valid model?") from None
    shapes = {gin.name: dims}
    for vi in list(proto.graph.value_info) + list(proto.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for t in proto.graph.initializer:
        shapes[t.name] = list(t.dims)

    producer = {gin.name: "input"}  # tensor -> layer that computes it (folded ops pass it through)
    layers: list[Layer] = []
    unsupported: list[str] = []

    def src(tensor: str) -> str:
        return producer.get(tensor, "input")

    for i, node in enumerate(proto.graph.node):
        nname = node.name or f"{node.op_type}_{i}"
        a = _attrs(node)
        data_inputs = [t for t in node.input if t and t not in inits]
        op = node.op_type
        if op in FOLDED or op == "Constant":
            if data_inputs:
                for out in node.output:
                    producer[out] = src(data_inputs[0])
            continue
        if not node.output or node.output[0] not in shapes:
            unsupported.append(f"{nname} ({op}: output shape unknown)")
            continue
        out_shape = shapes[node.output[0]]
        try:
            if op == "Conv":
                w = shapes[node.input[1]]
                layer = Layer(
                    nname,
                    "conv",
                    _chw(shapes[node.input[0]], nname),
                    _chw(out_shape, nname),
                    (int(w[2]), int(w[3])),
                    int(a.get("strides", [1, 1])[0]),
                    int(a.get("group", 1)),
                    (src(node.input[0]),),
                )
            elif op in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
                layer = Layer(
                    nname, "linear", _chw(shapes[node.input[0]], nname), _chw(out_shape, nname), inputs=(src(node.input[0]),)
                )
            elif op in ("MaxPool", "AveragePool"):
                k = a["kernel_shape"]
                layer = Layer(
                    nname,
                    "maxpool" if op == "MaxPool" else "avgpool",
                    _chw(shapes[node.input[0]], nname),
                    _chw(out_shape, nname),
                    (int(k[0]), int(k[1])),
                    int(a.get("strides", k)[0]),
                    1,
                    (src(node.input[0]),),
                )
            elif op in ("GlobalAveragePool", "GlobalMaxPool") or (op == "ReduceMean" and len(shapes[node.input[0]]) == 4):
                ins = _chw(shapes[node.input[0]], nname)
                layer = Layer(
                    nname,
                    "gmp" if op == "GlobalMaxPool" else "gap",
                    ins,
                    (ins[0], 1, 1),
                    (ins[1], ins[2]),
                    1,
                    1,
                    (src(node.input[0]),),
                )
            elif op == "Add" and len(data_inputs) == 2:
                layer = Layer(
                    nname,
                    "add",
                    _chw(shapes[data_inputs[0]], nname),
                    _chw(out_shape, nname),
                    inputs=tuple(src(t) for t in data_inputs),
                )
            elif op == "Add" and len(data_inputs) == 1:  # a bias: folded like batch norm
                producer[node.output[0]] = src(data_inputs[0])
                continue
            elif op == "Concat" and data_inputs:
                axis = int(a.get("axis", 1))
                axis = axis + len(out_shape) if axis < 0 else axis
                layer = Layer(
                    nname,
                    "concat",
                    _chw(out_shape, nname),
                    _chw(out_shape, nname),
                    inputs=tuple(src(t) for t in data_inputs),
                    axis=axis,
                )
            elif op in VECTOR_OPS and data_inputs:
                ins = _chw(shapes[data_inputs[0]], nname)
                layer = Layer(
                    nname,
                    VECTOR_OPS[op],
                    ins,
                    _chw(out_shape, nname),
                    inputs=tuple(src(t) for t in data_inputs),
                    arity=len(data_inputs) if op in ("Mul", "Sub", "Div") else 1,
                )
            else:
                unsupported.append(f"{nname} ({op})")
                continue
        except EdgesplitError:
            raise
        except (KeyError, IndexError) as err:
            unsupported.append(f"{nname} ({op}: {err})")
            continue
        producer[node.output[0]] = nname
        layers.append(layer)
    if unsupported:
        raise UnsupportedLayers(unsupported)
    if not layers:
        raise EdgesplitError("the ONNX graph has no layer the hardware model can cost")
    return Graph(name or proto.graph.name or "onnx", tuple(int(d) for d in dims[1:]), tuple(layers))


def graph_from_model(model, input_shape: Sequence[int], name: str = "") -> Graph:
    """Export a PyTorch module to ONNX in memory and read it (needs torch)."""
    from edgesplit.models.to_onnx import onnx_bytes

    return graph_from_onnx(
        onnx_bytes(model, input_shape), name or getattr(model, "model_name", type(model).__name__), input_shape
    )


def load_graph(spec: str, input_shape: Sequence[int] | None = None) -> Graph:
    """MODEL may be a registered model name, a checkpoint (file or run folder) or an ONNX file."""
    path = Path(spec)
    if path.suffix == ".onnx":
        return graph_from_onnx(path, input_shape=input_shape)
    if path.exists():
        from edgesplit.training.checkpoint import load_model

        model, ckpt = load_model(path)
        kw = ckpt["model_kwargs"]
        shape = tuple(input_shape) if input_shape else (kw["in_chans"], *kw["input_size"])
        return graph_from_model(model, shape, ckpt["model"])
    from edgesplit.models import create_model, list_models

    if spec not in list_models():
        raise EdgesplitError(
            f"{spec!r} is neither a registered model ({', '.join(list_models())}), a checkpoint nor an .onnx file"
        )
    shape = tuple(input_shape) if input_shape else (3, 224, 224)
    model = create_model(spec, in_chans=shape[0], input_size=shape[1:])
    return graph_from_model(model, shape, spec)


# ---------------------------------------------------------------- fusion
def fuse(graph: Graph) -> Graph:
    """Mark producer->consumer edges whose feature map stays on chip (see the module docstring)."""
    by_name = {layer.name: layer for layer in graph.layers}
    consumers: dict[str, list[Layer]] = {}
    for layer in graph.layers:
        for src in layer.inputs:
            consumers.setdefault(src, []).append(layer)

    def fusable(prod: Layer, cons: list[Layer]) -> bool:
        if prod.op != "conv" or not cons:
            return False
        if len(cons) == 1:
            c = cons[0]
            if c.op in POOL_OPS:
                return True  # conv + pool (Arora and Lanka's SqueezeNet-on-Zybo "Layer Fusion 2")
            if prod.is_depthwise and c.is_pointwise:
                return True  # DW + PW (the bundle of Zhang, Hao et al.'s co-design paper)
            if c.op == "add":
                return True  # residual add in the conv's output stage
            return False
        # Fire: a 1x1 squeeze whose consumers are convs that all feed one concat ("Layer Fusion 1")
        if prod.is_pointwise and all(c.op == "conv" for c in cons):
            targets = {tuple(x.name for x in consumers.get(c.name, [])) for c in cons}
            return len(targets) == 1 and len(next(iter(targets))) == 1 and by_name[next(iter(targets))[0]].op == "concat"
        return False

    kept = {name for name, cons in consumers.items() if name in by_name and fusable(by_name[name], cons)}
    layers = []
    for layer in graph.layers:
        if layer.op == "add":  # fused with the conv that feeds it; the skip operand is still read from DRAM
            on_in = any(s in kept for s in layer.inputs)
        else:
            on_in = bool(layer.inputs) and all(s in kept for s in layer.inputs)
        layers.append(replace(layer, on_chip_in=on_in, on_chip_out=layer.name in kept))
    return replace(graph, layers=tuple(layers))


def dram_input_values(layer: Layer) -> int:
    """Feature-map values a layer reads from DRAM (0 for inputs kept on chip; the add's skip operand always)."""
    if layer.op == "add":
        return layer.in_values // 2 if layer.on_chip_in else layer.in_values
    return 0 if layer.on_chip_in else layer.in_values
