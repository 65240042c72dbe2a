"""What every inference engine offers a worker or the coordinator: its tensors and ``run``."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from edgesplit.manifest import TensorSpec  # (name, shape, dtype): one type for every tensor description


class InferenceEngine(Protocol):
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One synchronous inference; thread-safe."""
        ...
