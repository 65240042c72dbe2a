"""Inference engines: the small interface a worker runs a model part through.

Implementations are named after their technology and imported only when chosen
(``create_engine``): a board that has only ONNX Runtime never imports anything else.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.engines.base import InferenceEngine, TensorSpec
from edgesplit.runtime.engines.onnxruntime_engine import OnnxRuntimeEngine  # onnxruntime itself loads on first use

log = logging.getLogger(__name__)

__all__ = ["ENGINES", "TensorSpec", "InferenceEngine", "OnnxRuntimeEngine", "create_engine"]


ENGINES = ("onnxruntime", "numpy", "auto", "hls-csim")


def create_engine(kind: str, path: str | Path, hls_dir: str | Path | None = None, **kwargs) -> InferenceEngine:
    """``onnxruntime``; ``numpy`` (graphs of fully connected layers only: :mod:`~edgesplit.runtime.engines.numpy_engine`);
    ``auto``: numpy where it can run the graph (faster for the small heads a coordinator runs), else ONNX Runtime;
    ``hls-csim``: the part's generated accelerator in C simulation (:mod:`~edgesplit.runtime.engines.hls_csim`, project ``hls_dir``).
    ``kwargs`` are ONNX Runtime's (threads, providers); numpy and hls-csim run on the calling thread."""
    if kind == "hls-csim":
        from edgesplit.runtime.engines.hls_csim import HlsCsimEngine

        return HlsCsimEngine(path, hls_dir)
    if kind == "onnxruntime":
        return OnnxRuntimeEngine(path, **kwargs)
    if kind in ("numpy", "auto"):
        from edgesplit.runtime.engines.numpy_engine import NumpyEngine, UnsupportedGraph

        try:
            return NumpyEngine(path)
        except UnsupportedGraph as err:
            if kind == "numpy":
                raise
            log.debug("%s", err)
            return OnnxRuntimeEngine(path, **kwargs)
    raise EdgesplitError(f"unknown engine {kind!r}; available: {', '.join(ENGINES)}")
