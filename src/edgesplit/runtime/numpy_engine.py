"""NumpyEngine: small ONNX graphs of fully connected layers (a split model's head, coded FC blocks) in numpy.

Why: the head runs in the coordinator right after the last branch answers, with its weights
out of cache after the branches' compute. There, ONNX Runtime's Gemm took about twice as long
as numpy's matrix-vector product on the same weights (docs/benchmarks.md), and the head is on
every request's critical path. Only the operators below are supported; a graph with any other
goes into ``UnsupportedGraph`` with the list, and ``create_engine("auto", ...)`` then uses ONNX
Runtime. The ONNX file is read with a vendored subset of ONNX's schema (``onnx_subset.proto``),
so neither onnx nor torch is needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.engine import EngineTensor
from edgesplit.runtime.onnx_subset_pb2 import ModelProto

# ONNX TensorProto.DataType -> numpy
ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 11: np.float64}
_TYPED_DATA = {1: "float_data", 6: "int32_data", 7: "int64_data", 11: "double_data", 2: "int32_data", 3: "int32_data"}
EXTERNAL = 1  # TensorProto.DataLocation


class UnsupportedGraph(EdgesplitError):
    """The graph uses something NumpyEngine does not run (``unsupported`` lists what)."""

    def __init__(self, path, unsupported: list[str]):
        super().__init__(f"NumpyEngine cannot run {path}: {', '.join(unsupported)}; use the onnxruntime engine")
        self.unsupported = unsupported


def _attrs(node) -> dict:
    out = {}
    for a in node.attribute:
        out[a.name] = {1: a.f, 2: a.i, 3: a.s, 6: list(a.floats), 7: list(a.ints)}.get(a.type, a)
    return out


def _array(t) -> np.ndarray:
    dtype = ONNX_DTYPES[t.data_type]
    shape = tuple(t.dims)
    if t.raw_data:
        return np.frombuffer(t.raw_data, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype, copy=True).reshape(shape)
    return np.asarray(getattr(t, _TYPED_DATA[t.data_type]), dtype=dtype).reshape(shape)


# Each op: (node, attributes, constants {name: array}) -> a function of its input arrays, or None when the
# node's attributes are outside what is supported. Weights are prepared once here (e.g. Gemm's B transposed
# to the layout numpy reads fastest), not per call.
def _gemm(node, attrs, consts) -> Callable | None:
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
    b_name = node.input[1]
    if trans_a or b_name not in consts:
        return None
    w = consts[b_name].T if trans_b else consts[b_name]  # (K, N)
    w = np.ascontiguousarray(w * alpha if alpha != 1.0 else w)
    c = None
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in consts:
            return None
        c = consts[node.input[2]] * beta if beta != 1.0 else consts[node.input[2]]

    def gemm(a, *_):  # (B, K) @ (K, N) + (N,)
        y = a @ w
        if c is not None:
            y += c
        return y

    return gemm


def _flatten(node, attrs, consts) -> Callable | None:
    axis = attrs.get("axis", 1)
    return lambda x: x.reshape(int(np.prod(x.shape[:axis])), -1)


OPS: dict[str, Callable] = {
    "Gemm": _gemm,
    "MatMul": lambda node, attrs, consts: np.matmul,
    "Add": lambda node, attrs, consts: np.add,
    "Sub": lambda node, attrs, consts: np.subtract,
    "Mul": lambda node, attrs, consts: np.multiply,
    "Relu": lambda node, attrs, consts: lambda x: np.maximum(x, 0),
    "Flatten": _flatten,
    "Identity": lambda node, attrs, consts: lambda x: x,
}


def _tensor_info(v) -> EngineTensor:
    t = v.type.tensor_type
    shape = tuple(d.dim_value if d.WhichOneof("value") == "dim_value" else -1 for d in t.shape.dim)
    return EngineTensor(v.name, shape, np.dtype(ONNX_DTYPES.get(t.elem_type, np.float32)).name)


class NumpyEngine:
    """Runs an ONNX graph of the operators in ``OPS`` with numpy, node by node in the file's order (ONNX
    graphs are stored topologically sorted). Thread-safe: nothing is written after construction."""

    def __init__(self, path: str | Path):
        try:
            model = ModelProto.FromString(Path(path).read_bytes())
        except Exception as err:
            raise EdgesplitError(f"cannot read {path} as an ONNX model: {err}") from None
        g = model.graph
        unsupported = sorted({f"external data ({t.name})" for t in g.initializer if t.data_location == EXTERNAL} |
                             {f"data type {t.data_type} ({t.name})" for t in g.initializer if t.data_type not in ONNX_DTYPES})
        consts = {t.name: _array(t) for t in g.initializer if t.data_location != EXTERNAL and t.data_type in ONNX_DTYPES}
        self._steps: list[tuple[Callable, list[str], str]] = []
        for node in g.node:
            make = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            fn = make(node, _attrs(node), consts) if make else None
            if fn is None:
                unsupported.append(f"op {node.op_type}" + (" with these attributes" if make else ""))
                continue
            if len(node.output) != 1:
                unsupported.append(f"op {node.op_type} with {len(node.output)} outputs")
                continue
            args = [i for i in node.input if i]
            if node.op_type == "Gemm":
                args = args[:1]  # B and C are folded into the step
            self._steps.append((fn, args, node.output[0]))
        if unsupported:
            raise UnsupportedGraph(path, unsupported)
        inits = set(consts)
        self.inputs = [_tensor_info(v) for v in g.input if v.name not in inits]
        self.outputs = [_tensor_info(v) for v in g.output]
        self._consts = consts
        self.providers = ["numpy"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = dict(self._consts)
        values.update(feeds)
        for fn, args, out in self._steps:
            values[out] = fn(*(values[a] for a in args))
        return {t.name: values[t.name] for t in self.outputs}
