"""A float export -> an int8 export: every part quantized to ONNX QDQ with ONNX Runtime's static quantizer.

Weights are int8 per output channel, activations uint8 per tensor (the pairing ONNX
Runtime's CPU kernels run fastest on x86 and Arm), calibrated on real preprocessed
images (the head on the features the float branches compute for them). The model is
shape-inferred and optimised first (``quant_pre_process``), without which the int8
model was measured slower than float here. The int8 export has the same parts,
tensors and manifest as the float one, plus ``"precision": "int8-qdq"``, so a worker
serves it unchanged. Needs ``onnxruntime`` and ``onnx``, not torch.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from edgesplit.errors import EdgesplitError
from edgesplit.manifest import MANIFEST_NAME, load_manifest, sha256_file, write_manifest

log = logging.getLogger(__name__)
CALIB_BATCH = 16


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over an array, in batches."""

    def __init__(self, name: str, data: np.ndarray):
        self._it = iter([{name: data[i : i + CALIB_BATCH]} for i in range(0, len(data), CALIB_BATCH)])

    def get_next(self):
        return next(self._it, None)


def calibration_images(ckpt: dict, n: int, data_dir: str | None = None) -> np.ndarray:
    """The first ``n`` training images of the checkpoint's dataset (not the validation or test ones), normalised."""
    from edgesplit.data.datasets import load_dataset, train_val_split
    from edgesplit.data.preprocess import Preprocess, nhwc_to_nchw

    pre = Preprocess.from_dict(ckpt["preprocess"])
    data = load_dataset(
        ckpt.get("dataset") or "fashion-mnist", "train", data_dir, size=pre.size, in_chans=ckpt["model_kwargs"]["in_chans"]
    )
    train_idx, _ = train_val_split(len(data), ckpt.get("config", {}).get("val_size", 5000))
    return pre.normalize(nhwc_to_nchw(data.images(train_idx[:n]))).astype(np.float32)


def int8_export(float_dir: str | Path, out_dir: str | Path, calib: np.ndarray) -> dict:
    """Quantize the export in ``float_dir`` into ``out_dir``; ``calib``: (N, C, H, W) float32 normalised images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgesplit.runtime.engines import OnnxRuntimeEngine

    if len(calib) < 1:
        raise EdgesplitError("int8 export needs at least one calibration image")
    manifest = load_manifest(float_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if manifest.is_split:
        feats = [OnnxRuntimeEngine(manifest.path(b)).run({"input": calib})["features"] for b in manifest.branches]
        head_calib = np.concatenate(feats, axis=1)
    body = json.loads((Path(float_dir) / MANIFEST_NAME).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for part in body["parts"]:
            src = Path(float_dir) / part["file"]
            pre = Path(tmp) / part["file"]
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            data = head_calib if part["role"] == "head" else calib
            dst = out_dir / part["file"]
            quantize_static(
                str(pre),
                str(dst),
                _Reader(part["inputs"][0]["name"], data),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
            part["sha256"] = sha256_file(dst)
            log.info("int8 %s: %.1f kB -> %.1f kB", part["name"], src.stat().st_size / 1e3, dst.stat().st_size / 1e3)
    body.update(precision="int8-qdq", calibration_images=int(len(calib)), float_export=str(float_dir))
    body.pop("parity_max_abs_diff", None)  # int8 is not within the float parity tolerance by design
    write_manifest(out_dir, body)
    return body
