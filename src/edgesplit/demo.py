"""The main job: a split model and its unsplit counterpart, trained (or reused), exported and timed.

1. Train a small ``resnet18-split2`` and the unsplit ``resnet18`` of the same width on
   Fashion-MNIST, or reuse the checkpoints cached in ``work_dir``.
2. Export both to ONNX (manifest + sha256).
3. Run the test set, one image at a time, through both in ONNX Runtime and report
   accuracy and per-image latency.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgesplit.data.datasets import load_fashion_mnist
from edgesplit.runtime.local import LocalModel
from edgesplit.runtime.stats import latency_summary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    work_dir: str = "runs/demo"
    data_dir: str | None = None
    limit: int | None = None  # first N test images; None: all 10,000
    retrain: bool = False
    width_mult: float = 0.25  # small enough to train on 2 cores in about a minute per model
    epochs: int = 2


DEMO_MODELS = {"split": "resnet18-split2", "unsplit": "resnet18"}


def _ensure_export(cfg: DemoConfig, role: str) -> Path:
    """Checkpoint and export for ``role``, reusing the cache unless ``retrain``."""
    from edgesplit.export.onnx_export import export_model
    from edgesplit.training.checkpoint import load_model
    from edgesplit.training.train import TrainConfig, train

    run_dir = Path(cfg.work_dir) / role
    export_dir = run_dir / "export"
    tcfg = TrainConfig(model=DEMO_MODELS[role], data_dir=cfg.data_dir, model_kwargs={"width_mult": cfg.width_mult},
                       epochs=cfg.epochs, val_size=0, lr=0.2)
    ckpt_path = run_dir / "checkpoint.pt"
    if cfg.retrain and run_dir.exists():
        for f in [ckpt_path, run_dir / "history.json"]:
            f.unlink(missing_ok=True)
    if ckpt_path.exists():
        log.info("reusing %s", ckpt_path)
    print(f"[demo] {'reusing' if ckpt_path.exists() else 'training'} {tcfg.model} (width x{cfg.width_mult}, {cfg.epochs} epochs) in {run_dir}", flush=True)
    train(tcfg, run_dir, resume=True)  # finished runs return at once
    if not (export_dir / "manifest.json").exists() or ckpt_path.stat().st_mtime > (export_dir / "manifest.json").stat().st_mtime:
        model, ckpt = load_model(ckpt_path)
        export_model(model, ckpt, export_dir)
    return export_dir


def _time_model(model: LocalModel, images: np.ndarray, labels: np.ndarray) -> dict:
    x_all = model.prepare(images)
    model(x_all[:1])  # warm-up
    lat_ms, correct = [], 0
    for i in range(len(x_all)):
        t0 = time.perf_counter()
        logits = model(x_all[i : i + 1])
        lat_ms.append((time.perf_counter() - t0) * 1e3)
        correct += int(logits.argmax(1)[0] == labels[i])
    return {"model": model.manifest.model, "accuracy": correct / len(labels), **latency_summary(lat_ms)}


def run_demo(cfg: DemoConfig, json_path: str | None = None) -> dict:
    t_start = time.perf_counter()
    exports = {role: _ensure_export(cfg, role) for role in DEMO_MODELS}
    test = load_fashion_mnist("test", cfg.data_dir)
    n = min(cfg.limit or len(test), len(test))
    images, labels = test.data[:n], test.targets[:n]
    results = {}
    for role, export_dir in exports.items():
        print(f"[demo] running {n} test images through the {role} model ({DEMO_MODELS[role]}) in ONNX Runtime", flush=True)
        results[role] = _time_model(LocalModel(export_dir), images, labels)
    print(f"\n{'':<10}{'model':<18}{'accuracy':>9}{'mean ms':>9}{'std':>8}{'p50':>8}{'p99':>8}")
    for role, r in results.items():
        print(f"{role:<10}{r['model']:<18}{r['accuracy']:>9.4f}{r['mean_ms']:>9.3f}{r['std_ms']:>8.3f}{r['p50_ms']:>8.3f}{r['p99_ms']:>8.3f}")
    report = {"config": asdict(cfg), "test_images": n, "results": results, "wall_time_s": time.perf_counter() - t_start}
    print(f"\n[demo] done in {report['wall_time_s']:.0f} s")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return report
