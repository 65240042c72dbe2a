"""An exported model run in this process with ONNX Runtime: its stages in order, parts one after another.

The reference the distributed runtime is checked against, and the ``--in-process``
mode of the demo (Capella's ``--cpu``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesplit.data.preprocess import Preprocess, nhwc_to_nchw
from edgesplit.manifest import load_manifest
from edgesplit.coding import merge_blocks
from edgesplit.runtime.engines import OnnxRuntimeEngine


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class LocalModel:
    def __init__(self, export_dir: str | Path, threads: int = 1):
        self.manifest = load_manifest(export_dir)
        self.pre = Preprocess.from_dict(self.manifest.preprocess)
        self.engines = {p.name: OnnxRuntimeEngine(self.manifest.path(p), threads=threads) for p in self.manifest.parts}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32, already normalised -> logits (B, num_classes). Runs the manifest's stages in
        order; a coded stage from its data blocks alone (the code is systematic)."""
        for stage in self.manifest.stages:
            if stage.merge == "concat":
                x = np.concatenate([self.engines[p].run({stage.input: x})[stage.output] for p in stage.parts], axis=1)
            elif stage.merge == "decode":
                blocks = np.stack([self.engines[p].run({stage.input: x})[stage.output] for p in stage.parts[: stage.code_k]])
                x = merge_blocks(blocks, stage.out_features)
                x = np.maximum(x, 0) if stage.activation == "relu" else x
            else:
                (part,) = stage.parts
                x = self.engines[part].run({stage.input: x})[stage.output]
        return x

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, C) uint8 at the model's size -> normalised (B, C, H, W) float32."""
        return self.pre.normalize(nhwc_to_nchw(images))

    def top_k(self, images: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        probs = softmax(self(self.prepare(images)))
        order = np.argsort(-probs, axis=1)[:, :k]
        return [[(self.manifest.classes[j], float(p[j])) for j in row] for p, row in zip(probs, order)]
