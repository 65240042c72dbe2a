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

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgesplit.errors import EdgesplitError
from edgesplit.manifest import TensorSpec
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
class _Gemm:
    """``a @ w + c`` with ``w`` (K, N) and ``c`` (N,) or None: ONNX Gemm with alpha and beta folded in."""

    def __init__(self, w: np.ndarray, c: np.ndarray | None):
        self.w, self.c = w, c

    def __call__(self, a, *_):  # (B, K) -> (B, N)
        y = a @ self.w
        if self.c is not None:
            y += self.c
        return y


def _gemm(node, attrs, consts) -> _Gemm | None:
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
    return _Gemm(w, c)


def _matmul(node, attrs, consts) -> Callable:
    w = consts.get(node.input[1])
    return _Gemm(np.ascontiguousarray(w), None) if w is not None and w.ndim == 2 else np.matmul


def _flatten(node, attrs, consts) -> Callable | None:
    axis = attrs.get("axis", 1)
    return lambda x: x.reshape(int(np.prod(x.shape[:axis])), -1)


OPS: dict[str, Callable] = {
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": lambda node, attrs, consts: np.add,
    "Sub": lambda node, attrs, consts: np.subtract,
    "Mul": lambda node, attrs, consts: np.multiply,
    "Relu": lambda node, attrs, consts: lambda x: np.maximum(x, 0),
    "Flatten": _flatten,
    "Identity": lambda node, attrs, consts: lambda x: x,
}


def _tensor_info(v) -> TensorSpec:
    t = v.type.tensor_type
    shape = tuple(d.dim_value if d.WhichOneof("value") == "dim_value" else -1 for d in t.shape.dim)
    return TensorSpec(v.name, shape, np.dtype(ONNX_DTYPES[t.elem_type]).name)


class NumpyEngine:
    """Runs an ONNX graph of the operators in ``OPS`` with numpy, node by node in the file's order (ONNX
    graphs are stored topologically sorted). Thread-safe: nothing is written after construction."""

    def __init__(self, path: str | Path):
        try:
            model = ModelProto.FromString(Path(path).read_bytes())
        except Exception as err:
            raise EdgesplitError(f"cannot read {path} as an ONNX model: {err}") from None
        g = model.graph
        unsupported = sorted(
            {f"external data ({t.name})" for t in g.initializer if t.data_location == EXTERNAL}
            | {f"data type {t.data_type} ({t.name})" for t in g.initializer if t.data_type not in ONNX_DTYPES}
        )
        consts = {t.name: _array(t) for t in g.initializer if t.data_location != EXTERNAL and t.data_type in ONNX_DTYPES}
        self._steps: list[tuple[Callable, list[str], str]] = []
        for node in g.node:
            make = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            fn = make(node, _attrs(node), consts) if make else None
            if fn is None:
                unsupported.append(
                    f"op {node.op_type}" + (f" ({node.name}: transA, or weights that are not constants)" if make else "")
                )
                continue
            if len(node.output) != 1:
                unsupported.append(f"op {node.op_type} with {len(node.output)} outputs")
                continue
            args = [i for i in node.input if i]
            if isinstance(fn, _Gemm):
                args = args[:1]  # the constant weights are in the step
            self._steps.append((fn, args, node.output[0]))
        unsupported += [
            f"{v.name} of data type {v.type.tensor_type.elem_type}"
            for v in [*g.input, *g.output]
            if v.name not in consts and v.type.tensor_type.elem_type not in ONNX_DTYPES
        ]
        if unsupported:
            raise UnsupportedGraph(path, unsupported)
        inits = set(consts)
        self.inputs = [_tensor_info(v) for v in g.input if v.name not in inits]
        self.outputs = [_tensor_info(v) for v in g.output]
        self._consts = consts
        self.providers = ["numpy"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run_steps(self._steps, feeds)

    def _run_steps(self, steps, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = {**self._consts, **values}
        for fn, args, out in steps:
            values[out] = fn(*(values[a] for a in args))
        return {t.name: values[t.name] for t in self.outputs}

    def blockwise(self, widths: Sequence[int]) -> "BlockwiseGemm | None":
        """When the graph begins with a Gemm that alone reads the (only) input: that Gemm as one product per
        block of ``widths`` input columns (split-network branches' features, side by side), so a caller can
        multiply each branch's block as it arrives. None for any other graph."""
        if len(self.inputs) != 1 or not self._steps:
            return None
        name = self.inputs[0].name
        (first, args, out), rest = self._steps[0], self._steps[1:]
        if not isinstance(first, _Gemm) or args != [name] or any(name in a for _, a, _ in rest):
            return None
        if sum(widths) != first.w.shape[0] or min(widths, default=0) <= 0:
            return None
        bounds = np.cumsum([0, *widths])
        blocks = tuple(np.ascontiguousarray(first.w[a:b]) for a, b in zip(bounds, bounds[1:]))
        return BlockwiseGemm(blocks, first.c, lambda y: self._run_steps(rest, {out: y}))


@dataclass(frozen=True)
class BlockwiseGemm:
    """A graph's first Gemm split by input blocks: ``finish(sum of partial(i, x_i))`` is the graph's output
    for the input ``concatenate(x_0, x_1, ...)``, and a block left out counts as zeros."""

    blocks: tuple[np.ndarray, ...]  # (K_i, N) each
    bias: np.ndarray | None  # (N,)
    rest: Callable[[np.ndarray], dict[str, np.ndarray]]  # the graph's other steps, from the Gemm's output

    def partial(self, i: int, x: np.ndarray) -> np.ndarray:
        return x @ self.blocks[i]  # (B, K_i) @ (K_i, N) -> (B, N)

    def finish(self, total: np.ndarray) -> dict[str, np.ndarray]:
        if self.bias is not None:
            total = total + self.bias
        return self.rest(total)
