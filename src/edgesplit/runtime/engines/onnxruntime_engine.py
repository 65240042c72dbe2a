"""ONNX Runtime as an inference engine (imported only when chosen)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgesplit.errors import EdgesplitError
from edgesplit.manifest import TensorSpec


LARGE_RUN_BYTES = 256 << 10  # a run with inputs this large gives its scratch memory back afterwards (see run)

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(uint8)": "uint8",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(double)": "float64",
}


class OnnxRuntimeEngine:
    """ONNX Runtime session. ``threads``: intra-op threads (1 per worker core is best here);
    ``providers``: execution providers in order of preference, the CPU one always last.

    Inter-op threads are 1 and spinning is off: a busy-waiting thread pool on a small
    board takes cores from the other processes (the coordinator, other workers).
    """

    def __init__(self, path: str | Path, threads: int = 1, providers: Sequence[str] | None = None, spin: bool = False):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        available = ort.get_available_providers()
        wanted = [p for p in (providers or available) if p in available]
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise EdgesplitError(f"ONNX Runtime cannot load {path}: {str(err).splitlines()[0][:200]}") from None
        self.providers = self.session.get_providers()
        self.inputs = [
            TensorSpec(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape), _ORT_DTYPES.get(i.type, i.type))
            for i in self.session.get_inputs()
        ]
        self.outputs = [
            TensorSpec(o.name, tuple(d if isinstance(d, int) else -1 for d in o.shape), _ORT_DTYPES.get(o.type, o.type))
            for o in self.session.get_outputs()
        ]
        self._output_names = [o.name for o in self.outputs]
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # ONNX Runtime's arena keeps what its largest run needed; a rare large batch shrinks it again after the run,
        # so that the worker's memory returns to its base (small runs keep the arena: no allocation per call)
        large = sum(a.nbytes for a in feeds.values()) > LARGE_RUN_BYTES
        return dict(zip(self._output_names, self.session.run(self._output_names, feeds, self._shrink if large else None)))
