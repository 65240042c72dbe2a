"""What a server serves: a named model with tensor metadata and an async ``infer``.

A worker serves one ONNX part (:class:`edgesplit.runtime.worker.PartModel`); the
coordinator serves the whole split model (:class:`edgesplit.runtime.coordinator.Coordinator`).
The KServe v2 transport only sees this interface.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str  # numpy dtype name
    shape: tuple[int, ...]  # -1 for the batch dimension


@dataclass(frozen=True)
class ModelMeta:
    name: str
    platform: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    versions: tuple[str, ...] = ("1",)


# Tracing a call (for benchmarks on one machine): a request whose parameters hold TRACE = True is answered
# with the times, on the machine's monotonic clock (time.monotonic(), seconds, the same in every process on
# Linux), when the server received it and when its answer was ready; the caller's peer handle adds when it
# sent the request and when the decoded answer was in its hands. The coordinator turns them into per-hop
# times (Coordinator.trace).
TRACE = "edgesplit_trace"
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
