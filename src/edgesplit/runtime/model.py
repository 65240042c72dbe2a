"""What a server serves: a named model with tensor metadata and an async ``infer``.

A worker serves one ONNX part (:class:`edgesplit.runtime.worker.PartModel`); the
coordinator serves the whole split model (:class:`edgesplit.runtime.coordinator.Coordinator`).
The KServe v2 transport only sees this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edgesplit.manifest import TensorSpec
from edgesplit.runtime.errors import InferError


@dataclass(frozen=True)
class ModelMeta:
    name: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    versions: tuple[str, ...] = ("1",)


# Tracing a call (for benchmarks on one machine): a request whose parameters hold TRACE = True is answered
# with the times, on the machine's monotonic clock (time.monotonic(), seconds, the same in every process on
# Linux), when the server received it and when its answer was ready; the caller's peer handle adds when it
# sent the request and when the decoded answer was in its hands. The coordinator turns them into per-hop
# times (Coordinator.trace).
TRACE = "edgesplit_trace"
# A request's ``stream`` parameter (a string): the frames of one camera or video stream. A model that serves
# streams (``runtime/streams.py: StreamRouter``) has ``infer_stream(inputs, stream)`` and is asked through it.
STREAM = "stream"
TRACE_SENT, TRACE_RECEIVED, TRACE_ANSWERED, TRACE_DECODED = "sent_at_s", "received_at_s", "answered_at_s", "decoded_at_s"


@dataclass
class InferResult:
    outputs: dict[str, np.ndarray]
    parameters: dict[str, object] = field(default_factory=dict)  # e.g. degraded=True, compute_ms


class ServedModel(Protocol):
    """What a server serves. A model whose work is synchronous may also have ``infer_now(inputs) -> InferResult``,
    which the Unix socket server calls directly when it is idle (a worker's :class:`PartModel` does)."""

    meta: ModelMeta

    def ready(self) -> bool: ...

    async def infer(self, inputs: dict[str, np.ndarray]) -> InferResult: ...


_UINT8, _FLOAT32 = np.dtype(np.uint8), np.dtype(np.float32)  # dtype objects: compared without a conversion


# A call whose inputs are larger than this runs off the event loop (a worker's one engine thread), so that health
# checks and small calls are still answered while it computes; smaller ones run on the loop (no thread hop).
INLINE_INFER_MAX_BYTES = 256 << 10


def runs_inline(inputs: dict[str, np.ndarray]) -> bool:
    return sum(a.nbytes for a in inputs.values()) <= INLINE_INFER_MAX_BYTES


def input_specs(specs) -> dict:
    """``{name: (TensorSpec, its numpy dtype)}`` for :func:`check_inputs` (``dtype.name`` is slow with cold caches:
    the dtype object is made once, never per call)."""
    return {t.name: (t, np.dtype(t.dtype)) for t in specs}


def check_inputs(model: str, specs: dict, inputs: dict[str, np.ndarray], pixels=None) -> dict[str, np.ndarray]:
    """A request's inputs checked against ``specs`` (:func:`input_specs`), or :class:`InferError` saying what is wrong:
    the worker's and the coordinator's one checker. ``pixels``: for a float32 image input, uint8 pixels are accepted
    too and passed through this function (the worker normalises them; a coordinator that forwards pixels keeps
    them); None: uint8 is refused like any other datatype."""
    if inputs.keys() != specs.keys():
        raise InferError(f"model {model!r} takes inputs {sorted(specs)}, got {sorted(inputs)}")
    feeds = {}
    for name, arr in inputs.items():
        spec, dtype = specs[name]
        if arr.ndim != len(spec.shape) or any(s not in (-1, d) for s, d in zip(spec.shape, arr.shape)):
            want = "x".join("B" if s == -1 else str(s) for s in spec.shape)
            raise InferError(f"input {name!r}: shape {'x'.join(map(str, arr.shape))}, expected {want}")
        if arr.shape[0] == 0:
            raise InferError(f"input {name!r}: empty batch")
        image = pixels is not None and dtype == _FLOAT32 and len(spec.shape) == 4
        if arr.dtype == _UINT8 and image:
            arr = pixels(arr)
        elif arr.dtype != dtype:
            raise InferError(
                f"input {name!r}: datatype {arr.dtype.name}, expected {spec.dtype}" + (" or uint8 pixels" if image else "")
            )
        elif arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InferError(f"input {name!r} contains NaN or Inf")
        feeds[name] = arr
    return feeds
