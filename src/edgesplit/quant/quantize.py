"""``edgesplit quantize``: accuracy of a checkpoint before and after fixed-point quantization.

Post-training quantization calibrates the formats on training images; optional
quantization-aware training then fine-tunes the folded weights through the fake
quantizers (STE) with the formats kept. Test accuracy is measured with the
fake-quantized model in float64, which equals the integer reference bit for bit.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from edgesplit.data.datasets import load_dataset, train_val_split
from edgesplit.errors import EdgesplitError
from edgesplit.data.transforms import augment, batches, to_tensor
from edgesplit.quant.fixed import BIAS_BITS, check_bits
from edgesplit.quant.qnet import QuantNet, qgraph_from_model
from edgesplit.training.checkpoint import checkpoint_preprocess, load_model
from edgesplit.training.evaluate import predict_logits

log = logging.getLogger(__name__)
QAT_LR = 0.01  # peak of a cosine schedule; the folded weights are already trained
EVAL_BATCH = 500


@torch.no_grad()
def quantized_top1(qnet: QuantNet, dataset, idx: np.ndarray, pre) -> float:
    """Test top-1 of the fake-quantized model, run in float64 (bit-exact with the integer reference)."""
    qnet.double().eval()
    try:
        correct = 0
        for b in batches(len(idx), EVAL_BATCH, shuffle=False):
            x = to_tensor(dataset.images(idx[b]), pre).double()
            correct += int((qnet(x).argmax(1).numpy() == dataset.labels(idx[b])).sum())
    finally:
        qnet.float()
    return correct / len(idx)


def calibration_batches(dataset, idx: np.ndarray, pre, n: int, batch_size: int = 250) -> list[torch.Tensor]:
    """The first ``n`` images of ``idx`` as preprocessed batches, for :meth:`QuantNet.calibrate`."""
    idx = idx[: min(n, len(idx))]
    return [to_tensor(dataset.images(idx[b]), pre) for b in batches(len(idx), batch_size, shuffle=False)]


def qat(
    qnet: QuantNet,
    dataset,
    idx: np.ndarray,
    pre,
    epochs: int,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = QAT_LR,
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Quantization-aware training: SGD through the fake quantizers (cosine from ``lr``), formats fixed."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(qnet.parameters(), lr=lr, momentum=0.9, nesterov=True)
    steps = epochs * math.ceil(len(idx) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    history = []
    qnet.train()
    for epoch in range(epochs):
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        for b in batches(len(idx), batch_size, shuffle=True, rng=rng):
            x = to_tensor(augment(dataset.images(idx[b]), rng, pad=2), pre)
            loss = F.cross_entropy(qnet(x), torch.from_numpy(dataset.labels(idx[b]).astype(np.int64)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(b)
            seen += len(b)
            if progress:
                progress({"epoch": epoch + 1, "epochs": epochs, "seen": seen, "n": len(idx), "loss": loss_sum / seen})
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "time_s": time.perf_counter() - t0})
        log.info("QAT epoch %d/%d loss %.4f", epoch + 1, epochs, loss_sum / seen)
    qnet.eval()
    return history


def model_bytes(qnet: QuantNet, wbits: int) -> dict:
    weights = sum(p.numel() for p in qnet.weights.values())
    biases = sum(p.numel() for p in qnet.biases.values())
    return {"float32_bytes": 4 * (weights + biases), "quantized_bytes": math.ceil(weights * wbits / 8) + biases * BIAS_BITS // 8}


def quantize_checkpoint(
    path: str,
    wbits: int,
    fbits: int,
    qat_epochs: int = 0,
    calib_images: int = 1000,
    data_dir: str | None = None,
    max_test: int | None = None,
    sweep: list[int] | None = None,
    qat_images: int | None = None,
    per_channel: bool = False,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    check_bits("wbits", wbits)
    check_bits("fbits", fbits)
    for b in sweep or []:
        check_bits("sweep", b)
    if qat_epochs < 0:
        raise EdgesplitError(f"--qat-epochs must be 0 or more, got {qat_epochs}")
    if calib_images < 1:
        raise EdgesplitError(f"--calib-images must be at least 1, got {calib_images}")
    model, ckpt = load_model(path)
    pre = checkpoint_preprocess(ckpt)
    in_chans = ckpt["model_kwargs"]["in_chans"]
    data = ckpt.get("dataset") or "fashion-mnist"
    train = load_dataset(data, "train", data_dir, size=pre.size, in_chans=in_chans)
    test = load_dataset(data, "test", data_dir, size=pre.size, in_chans=in_chans)
    train_idx, _ = train_val_split(len(train), ckpt.get("config", {}).get("val_size", 5000))
    test_idx = np.arange(len(test) if max_test is None else min(max_test, len(test)))
    labels = test.labels(test_idx)
    float_top1 = float((predict_logits(model, test, test_idx, pre).argmax(1) == labels).mean())

    qnet = QuantNet(qgraph_from_model(model, (in_chans, *pre.size)))
    calib = calibration_batches(train, train_idx, pre, calib_images)
    report = {
        "checkpoint": str(path),
        "model": ckpt["model"],
        "dataset": data,
        "test_images": int(len(test_idx)),
        "wbits": wbits,
        "fbits": fbits,
        "calibration_images": int(min(calib_images, len(train_idx))),
        "per_channel": per_channel,
        "float_top1": float_top1,
    }
    if sweep:  # one width varied, the other kept at 16 bits: which is more sensitive?
        from edgesplit.progress import Progress

        rows = []
        with Progress(2 * len(sweep), "quantization sweep", unit="width") as bar:
            for bits in sweep:
                for varied, (wb, fb) in (("weights", (bits, 16)), ("features", (16, bits))):
                    qnet.calibrate(calib, wb, fb, per_channel=per_channel)
                    top1 = quantized_top1(qnet, test, test_idx, pre)
                    rows.append({"varied": varied, "wbits": wb, "fbits": fb, "ptq_top1": top1})
                    log.info("sweep W%d/F%d: %.4f", wb, fb, top1)
                    bar.update(1, last=f"W{wb}/F{fb} {top1:.4f}")
        report["sweep"] = rows
    qnet.calibrate(calib, wbits, fbits, per_channel=per_channel)
    report["ptq_top1"] = quantized_top1(qnet, test, test_idx, pre)
    report["layers"] = qnet.ranges()
    report["size"] = model_bytes(qnet, wbits)
    if qat_epochs:
        t0 = time.perf_counter()
        report["qat_images"] = int(len(train_idx) if qat_images is None else min(qat_images, len(train_idx)))
        report["qat_history"] = qat(qnet, train, train_idx[: report["qat_images"]], pre, qat_epochs, progress=progress)
        report["qat_time_s"] = time.perf_counter() - t0
        report["qat_top1"] = quantized_top1(qnet, test, test_idx, pre)
    return report


def text_report(r: dict) -> str:
    """What ``edgesplit quantize`` prints of a :func:`quantize_checkpoint` result."""
    lines = []
    granularity = "per-channel" if r["per_channel"] else "per-tensor"
    lines.append(
        f"{r['model']} on {r['dataset']} test ({r['test_images']} images), W{r['wbits']}/F{r['fbits']} fixed point, "
        f"{granularity} weight formats"
    )
    lines.append(f"{'layer':<40}{'op':<8}{'weights':>9}{'max |w|':>9}{'w format':>10}{'out format':>11}")
    for row in r["layers"]:
        name = row["layer"] if len(row["layer"]) <= 39 else "..." + row["layer"][-36:]
        lines.append(
            f"{name:<40}{row['op']:<8}{row['weights']:>9}{row['weight_max_abs']:>9.3f}{row['weight_format']:>10}{row['output_format']:>11}"
        )
    size = r["size"]
    lines.append(f"model size: {size['float32_bytes'] / 1e6:.2f} MB float32 -> {size['quantized_bytes'] / 1e6:.2f} MB")
    for row in r.get("sweep", []):
        lines.append(f"sweep {row['varied']:<9} W{row['wbits']}/F{row['fbits']}: top-1 {row['ptq_top1']:.4f}")
    line = f"top-1: float {r['float_top1']:.4f}, post-training quantization {r['ptq_top1']:.4f}"
    if "qat_top1" in r:
        line += f", after {len(r['qat_history'])} QAT epoch(s) {r['qat_top1']:.4f}"
    lines.append(line)
    return "\n".join(lines)
