"""``edgesplit bench int8``: float32 against int8 QDQ parts in ONNX Runtime, speed and accuracy, in one run.

Both exports come from the same checkpoint. Speed: each part at batch 1 on one
thread (what one worker on a small board runs), float and int8 calls interleaved
so machine noise hits both alike, medians per round and the median of rounds.
Accuracy: the whole split model in this process (``LocalModel``) on the test set.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from edgesplit.bench.config import Int8Bench


def _time_parts(float_dir: Path, int8_dir: Path, calls: int, rounds: int) -> dict:
    from edgesplit.manifest import load_manifest
    from edgesplit.runtime.engines import OnnxRuntimeEngine

    m = load_manifest(float_dir)
    rng = np.random.default_rng(0)
    out = {}
    for part in m.parts:
        spec = part.inputs[0]
        x = rng.standard_normal((1, *spec.shape[1:])).astype(np.float32)
        engines = {
            "float32": OnnxRuntimeEngine(float_dir / part.file, threads=1),
            "int8": OnnxRuntimeEngine(int8_dir / part.file, threads=1),
        }
        for e in engines.values():
            for _ in range(3):
                e.run({spec.name: x})
        per_round = {k: [] for k in engines}
        for _ in range(rounds):
            times = {k: [] for k in engines}
            for _ in range(calls):
                for k, e in engines.items():
                    t0 = time.perf_counter()
                    e.run({spec.name: x})
                    times[k].append((time.perf_counter() - t0) * 1e3)
            for k in engines:
                per_round[k].append(float(np.median(times[k])))
        f, q = float(np.median(per_round["float32"])), float(np.median(per_round["int8"]))
        out[part.name] = {
            "float32_ms": f,
            "int8_ms": q,
            "speedup": f / q,
            "rounds_float32_ms": per_round["float32"],
            "rounds_int8_ms": per_round["int8"],
            "float32_bytes": (float_dir / part.file).stat().st_size,
            "int8_bytes": (int8_dir / part.file).stat().st_size,
        }
    return out


def _accuracy(export_dir: Path, ckpt: dict, n: int, data_dir: str | None) -> float:
    from edgesplit.data.datasets import load_dataset
    from edgesplit.runtime.local import LocalModel

    model = LocalModel(export_dir, threads=1)
    c, h, w = model.manifest.input_shape
    test = load_dataset(ckpt.get("dataset") or "fashion-mnist", "test", data_dir, size=(h, w), in_chans=c)
    idx = np.arange(min(n, len(test)))
    correct = 0
    for start in range(0, len(idx), 500):
        b = idx[start : start + 500]
        correct += int((model(model.prepare(test.images(b))).argmax(1) == test.labels(b)).sum())
    return correct / len(idx)


def bench_int8(cfg: Int8Bench) -> dict:
    """``checkpoint``: a trained run (speed and accuracy), or a model name with ``input_shape`` (random weights: speed only)."""
    checkpoint, calls, rounds, test_images = cfg.checkpoint, cfg.calls, cfg.rounds, cfg.test_images
    calib_images, data_dir, input_shape = cfg.calib_images, cfg.data_dir, cfg.input_shape
    import os

    from edgesplit.export.int8 import calibration_images, int8_export
    from edgesplit.export.onnx_export import export_model

    trained = input_shape is None
    with tempfile.TemporaryDirectory() as tmp:
        float_dir, int8_dir = Path(tmp) / "float32", Path(tmp) / "int8"
        if trained:
            from edgesplit.training.checkpoint import load_model

            model, ckpt = load_model(checkpoint)
            export_model(model, ckpt, float_dir)
            calib = calibration_images(ckpt, calib_images, data_dir)
        else:
            from edgesplit.bench.serve import _export_random

            _export_random(checkpoint, input_shape, 10, float_dir)
            ckpt = {"model": checkpoint, "model_kwargs": {"in_chans": input_shape[0], "input_size": list(input_shape[1:])}}
            calib = np.random.default_rng(0).standard_normal((calib_images, *input_shape)).astype(np.float32)
        from edgesplit.progress import Progress

        with Progress(3 if trained else 2, "bench int8", "step") as bar:
            int8_export(float_dir, int8_dir, calib)
            bar.update(1, done="int8 export")
            parts = _time_parts(float_dir, int8_dir, calls, rounds)
            bar.update(1, done="timing")
            acc = (
                {k: _accuracy(d, ckpt, test_images, data_dir) for k, d in (("float32", float_dir), ("int8", int8_dir))}
                if trained
                else None
            )
            bar.update(1 if trained else 0, done="accuracy")

    return {
        "checkpoint": str(checkpoint),
        "model": ckpt["model"],
        "input_shape": [ckpt["model_kwargs"]["in_chans"], *ckpt["model_kwargs"]["input_size"]],
        "calls": calls,
        "rounds": rounds,
        "threads": 1,
        "batch": 1,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "parts": parts,
        "test_images": min(test_images, 10000) if trained else 0,
        "top1": acc,
        "branch_speedup_median": float(np.median([p["speedup"] for n, p in parts.items() if n != "head"] or [0.0])),
    }


def text_report(r: dict) -> str:
    """What ``edgesplit bench int8`` prints of a result."""
    lines = [
        f"{r['model']} {'x'.join(map(str, r['input_shape']))}, batch 1, 1 thread, medians of {r['rounds']} rounds of {r['calls']} calls",
    ]
    for name, p in r["parts"].items():
        lines.append(
            f"  {name:<10} float32 {p['float32_ms']:8.3f} ms   int8 {p['int8_ms']:8.3f} ms   speedup {p['speedup']:.2f}x   "
            f"{p['float32_bytes'] / 1e6:.2f} -> {p['int8_bytes'] / 1e6:.2f} MB"
        )
    if r["top1"]:
        lines.append(
            f"  top-1 on {r['test_images']} test images: float32 {r['top1']['float32']:.4f}, int8 {r['top1']['int8']:.4f}"
        )
    return "\n".join(lines)
