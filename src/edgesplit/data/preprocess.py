"""What a deployed model expects of its input; numpy only, so workers and the coordinator share it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from edgesplit.options import parse_sizes


@dataclass(frozen=True)
class Preprocess:
    """uint8 pixels resized to ``size`` (H, W), then ``(x / 255 - mean) / std`` per channel."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(tuple(d["size"]), tuple(d["mean"]), tuple(d["std"]))

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """(B, C, H, W) uint8 -> (B, C, H, W) float32, at the size the images already have."""
        scale, shift = _affine(self.mean, self.std)
        out = images.astype(np.float32)
        out *= scale
        out -= shift
        return out


@lru_cache(maxsize=16)
def _affine(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``x * scale - shift`` == ``(x / 255 - mean) / std``, as (1, C, 1, 1) float32 arrays."""
    std_ = np.asarray(std, dtype=np.float64)
    scale = (1.0 / (255.0 * std_)).astype(np.float32).reshape(1, -1, 1, 1)
    shift = (np.asarray(mean, dtype=np.float64) / std_).astype(np.float32).reshape(1, -1, 1, 1)
    return scale, shift


def nhwc_to_nchw(images: np.ndarray) -> np.ndarray:
    """(B, H, W, C) -> (B, C, H, W), contiguous."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def parse_input_shape(text: str | Sequence[int]) -> tuple[int, int, int]:
    """``"3x224x224"`` -> (3, 224, 224)."""
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    return parse_sizes(text, 3, "input shape", "CxHxW, e.g. 3x224x224")
