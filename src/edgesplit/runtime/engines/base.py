"""What every inference engine offers a worker or the coordinator: its tensors and ``run``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class EngineTensor:
    name: str
    shape: tuple[int, ...]  # -1 for dynamic dimensions
    dtype: str  # numpy dtype name


class InferenceEngine(Protocol):
    inputs: Sequence[EngineTensor]
    outputs: Sequence[EngineTensor]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One synchronous inference; thread-safe."""
        ...
