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


@dataclass
class InferResult:
    outputs: dict[str, np.ndarray]
    parameters: dict[str, object] = field(default_factory=dict)  # e.g. degraded=True, compute_ms


class ServedModel(Protocol):
    meta: ModelMeta

    def ready(self) -> bool: ...

    async def infer(self, inputs: dict[str, np.ndarray]) -> InferResult: ...
