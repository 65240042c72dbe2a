"""The ``hls-csim`` inference engine: a branch served through its generated accelerator's C simulation.

A worker started with ``--engine hls-csim --hls DIR`` answers with the code ``edgesplit hls``
wrote into DIR, compiled with g++ as a shared library and called through ctypes: the same
integers the board would compute, as float32 (integers x 2^-frac). Input and output names and
shapes are the export's ONNX part's, so the coordinator sees the part it planned for.
No torch and no ONNX Runtime session: the part's ONNX file is read for its metadata only.
"""

from __future__ import annotations

import ctypes
import json
import threading
from pathlib import Path

import numpy as np

from edgesplit.errors import EdgesplitError
from edgesplit.manifest import TensorSpec


def _onnx_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output tensors of an ONNX file, from its protobuf (the worker's vendored ONNX subset)."""
    from edgesplit.runtime.onnx_subset_pb2 import ModelProto

    model = ModelProto()
    model.ParseFromString(Path(path).read_bytes())
    inits = {t.name for t in model.graph.initializer}

    def tensors(values) -> list[TensorSpec]:
        out = []
        for v in values:
            if v.name in inits:
                continue
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
            out.append(TensorSpec(v.name, dims, "float32"))
        return out

    return tensors(model.graph.input), tensors(model.graph.output)


class HlsCsimEngine:
    def __init__(self, onnx_path: str | Path, hls_dir: str | Path | None):
        if not hls_dir:
            raise EdgesplitError("--engine hls-csim needs --hls DIR: a project written by `edgesplit hls`")
        from edgesplit.hls.csim import compile_library

        self.dir = Path(hls_dir)
        if not (self.dir / "layout.json").is_file():
            raise EdgesplitError(f"{self.dir} is not a project written by `edgesplit hls` (no layout.json)")
        self.layout = json.loads((self.dir / "layout.json").read_text())
        self.inputs, self.outputs = _onnx_io(Path(onnx_path))
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise EdgesplitError(
                f"hls-csim serves parts with one input and one output; {onnx_path} has {len(self.inputs)} and {len(self.outputs)}"
            )
        n_in, n_out = int(np.prod(self.layout["input"]["shape"])), int(np.prod(self.layout["output"]["shape"]))
        want_in = int(np.prod([d for d in self.inputs[0].shape[1:]]))
        if want_in != n_in:
            raise EdgesplitError(
                f"the HLS project in {self.dir} takes {n_in} input values, the part {onnx_path} {want_in}: "
                "build the project for this branch (edgesplit hls RUN --branch K)"
            )
        self._lib = ctypes.CDLL(str(compile_library(self.dir)))
        weights = np.fromfile(self.dir / "weights.bin", "<i2")
        biases = np.fromfile(self.dir / "bias.bin", "<i4")
        self._lib.edgesplit_init(
            weights.ctypes.data_as(ctypes.POINTER(ctypes.c_short)), biases.ctypes.data_as(ctypes.POINTER(ctypes.c_int))
        )
        self._n_in, self._n_out = n_in, n_out
        self._scale = np.float32(2.0 ** -self.layout["output"]["frac"])
        self._lock = threading.Lock()  # the library's buffers are static: one image at a time

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(feeds[self.inputs[0].name], dtype=np.float32)
        batch = x.shape[0]
        x = x.reshape(batch, self._n_in)
        out = np.empty((batch, self._n_out), np.int16)
        with self._lock:
            for b in range(batch):
                self._lib.edgesplit_run(
                    x[b].ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out[b].ctypes.data_as(ctypes.POINTER(ctypes.c_short))
                )
        shape = (batch, *[d for d in self.outputs[0].shape[1:]])
        return {self.outputs[0].name: (out.astype(np.float32) * self._scale).reshape(shape)}
