"""Batch transforms in torch: uint8 (B, H, W, C) -> normalised float (B, C, H, W), and augmentation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgesplit.data.preprocess import Preprocess, nhwc_to_nchw


def to_tensor(images: np.ndarray, pre: Preprocess) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H', W') float32, normalised and resized (bilinear) to ``pre.size``."""
    x = torch.from_numpy(pre.normalize(nhwc_to_nchw(images)))
    if tuple(x.shape[-2:]) != tuple(pre.size):  # bilinear is linear: resizing after normalising is the same
        x = F.interpolate(x, size=tuple(pre.size), mode="bilinear", align_corners=False)
    return x


def augment(images: np.ndarray, rng: np.random.Generator, pad: int, flip: bool = True) -> np.ndarray:
    """Standard light augmentation on uint8 (B, H, W, C): random crop after zero padding, horizontal flip."""
    b, h, w, _ = images.shape
    out = np.empty_like(images)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else images
    dy = rng.integers(0, 2 * pad + 1, size=b)
    dx = rng.integers(0, 2 * pad + 1, size=b)
    flips = rng.random(b) < 0.5 if flip else np.zeros(b, dtype=bool)
    for i in range(b):
        crop = padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop[:, ::-1] if flips[i] else crop
    return out


def batches(n: int, batch_size: int, shuffle: bool, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    order = rng.permutation(n) if shuffle else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]
