"""``edgesplit hls``: a model (or one branch of a split model) in, a verified Vitis HLS project out.

The network is exported and quantized exactly as ``edgesplit quantize`` does (formats
calibrated per tensor on training images), written as a project (``project.py``), and,
with ``csim_images``, compiled with g++ and run on that many real test images: every
tensor must equal the integer reference's (``quant.fixed.run_integer_tensors``) bit for
bit, and each call's pipelined-loop iterations are set beside the cost model's cycles.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgesplit.errors import EdgesplitError
from edgesplit.hardware.config import AccelConfig
from edgesplit.hls.project import HlsConfig, write_project

log = logging.getLogger(__name__)
CALIBRATION_IMAGES = 500


def _load(spec: str, branch: int | None, data_dir: str | None, image_size: int | None = None):
    """(module, name, preprocess, input shape (C, H, W), dataset name) of a checkpoint or registered model."""
    from edgesplit.data.datasets import load_dataset
    from edgesplit.data.preprocess import Preprocess

    path = Path(spec)
    if (path / "manifest.json").is_file():
        raise EdgesplitError(
            f"{path} is an export: float ONNX parts without fixed-point formats; pass the checkpoint "
            "(run folder) it came from, with --branch K for one branch"
        )
    if path.exists():
        if image_size:
            raise EdgesplitError("--image-size applies to registered model names; a checkpoint keeps its own input size")
        from edgesplit.training.checkpoint import checkpoint_preprocess, load_model

        model, ckpt = load_model(path)
        pre = checkpoint_preprocess(ckpt)
        name, in_chans, data = ckpt["model"], ckpt["model_kwargs"]["in_chans"], ckpt.get("dataset") or "fashion-mnist"
    else:
        from edgesplit.models import create_model, list_models

        if spec not in list_models():
            raise EdgesplitError(f"{spec!r} is neither a checkpoint nor a registered model ({', '.join(list_models())})")
        size = (image_size, image_size) if image_size else (28, 28)  # Fashion-MNIST, resized when asked
        test = load_dataset("fashion-mnist", "test", data_dir, size=(28, 28), in_chans=1)
        pre = Preprocess(size, test.mean, test.std)
        model, name, in_chans, data = create_model(spec, num_classes=10, in_chans=1, input_size=size), spec, 1, "fashion-mnist"
    model.eval()
    if branch is not None:
        branches = getattr(model, "branches", None)
        if branches is None:
            raise EdgesplitError(f"{name} is not a split model; --branch applies to split models only")
        if not 0 <= branch < len(branches):
            raise EdgesplitError(f"--branch must be between 0 and {len(branches) - 1} for {name}, got {branch}")
        model, name = branches[branch], f"{name}-branch{branch}"
    return model, name, pre, (in_chans, *pre.size), data


def build_hls(
    spec: str,
    out_dir: str | Path,
    wbits: int,
    fbits: int,
    cfg: HlsConfig,
    csim_images: int = 0,
    branch: int | None = None,
    data_dir: str | None = None,
    tuned_device=None,
    image_size: int | None = None,
) -> dict:
    """Write the project for ``spec``; with ``csim_images``, compile and check it. Returns a report."""
    import torch

    from edgesplit.data.datasets import load_dataset, train_val_split
    from edgesplit.data.transforms import to_tensor
    from edgesplit.quant.fixed import check_bits, run_integer_tensors
    from edgesplit.quant.qnet import QuantNet, qgraph_from_model
    from edgesplit.quant.quantize import calibration_batches

    check_bits("wbits", wbits)
    check_bits("fbits", fbits)
    if csim_images < 0:
        raise EdgesplitError(f"--csim must be 0 or more images, got {csim_images}")
    t0 = time.perf_counter()
    if image_size is not None and image_size < 8:
        raise EdgesplitError(f"--image-size must be at least 8 pixels, got {image_size}")
    model, name, pre, shape, data = _load(spec, branch, data_dir, image_size)
    if tuned_device is not None:
        cfg = _tuned(model, shape, name, tuned_device, wbits, fbits, cfg)
    train = load_dataset(data, "train", data_dir, size=pre.size, in_chans=shape[0])
    test = load_dataset(data, "test", data_dir, size=pre.size, in_chans=shape[0])
    train_idx, _ = train_val_split(len(train), 5000)
    qnet = QuantNet(qgraph_from_model(model, shape))
    with torch.no_grad():
        scheme = qnet.calibrate(calibration_batches(train, train_idx, pre, CALIBRATION_IMAGES), wbits, fbits)
    graph = qnet.export_graph()
    n_images = max(csim_images, 1)
    images = to_tensor(test.images(np.arange(n_images)), pre).numpy()  # real test images, preprocessed
    reference = run_integer_tensors(graph, scheme, images.astype(np.float64))
    layout = write_project(graph, scheme, cfg, Path(out_dir), images, {k: v[:1] for k, v in reference.items()}, name)
    # the integer reference's outputs for images.bin: what the board (and the hls-csim engine) must answer
    reference[graph.output_name].reshape(len(images), -1).astype("<i2").tofile(Path(out_dir) / "expected.bin")
    report = {
        "model": name,
        "out": str(out_dir),
        "input_shape": list(shape),
        "wbits": wbits,
        "fbits": fbits,
        "config": layout["config"],
        "calls": len(layout["calls"]),
        "generate_s": time.perf_counter() - t0,
    }
    if csim_images:
        from edgesplit.hls.csim import compare, compile_csim, run_csim

        _, report["compile_s"] = compile_csim(Path(out_dir))
        arenas, iterations, report["csim_s"] = run_csim(Path(out_dir), csim_images)
        report["csim_images"] = csim_images
        report["csim_images_per_s"] = csim_images / report["csim_s"]
        mismatches = [m for i, a in enumerate(arenas) if (m := compare(layout, a, reference, i))]
        report["bit_exact"] = not mismatches
        report["first_mismatch"] = mismatches[0] if mismatches else None
        if branch is None:  # a whole classifier: its top-1 on the checked images (a branch outputs features)
            report["labels"] = [int(v) for v in test.labels(np.arange(csim_images))]
            out = layout["output"]
            report["predictions"] = [
                int(np.argmax(a[out["offset"] : out["offset"] + int(np.prod(out["shape"]))])) for a in arenas
            ]
        report["cycles"] = cycle_table(model, shape, name, layout, iterations, wbits, fbits)
        report["cycles_within_10_percent"] = all(r["ratio"] is not None and abs(r["ratio"] - 1) <= 0.10 for r in report["cycles"])
    return report


CODESIGN_CSIM_IMAGES = 8


def build_for_design(
    checkpoint: str | Path,
    out_dir: Path,
    bits: tuple[int, int],
    accelerator: AccelConfig,
    device,
    branch: int | None = None,
    data_dir: str | None = None,
) -> dict:
    """The HLS project of one designed network or branch (``codesign``): the tiling ``tune`` chose for ``device``,
    checked in C simulation on a few real images. A failure (no g++, no headers) is recorded, not raised: the
    search's result stands without it."""
    from edgesplit.hls.project import hls_config_for

    cfg = hls_config_for(device, **{k: getattr(accelerator, k) for k in ("tm", "tn", "td", "tr", "tc")})
    try:
        r = build_hls(str(checkpoint), out_dir, bits[0], bits[1], cfg, CODESIGN_CSIM_IMAGES, branch, data_dir)
    except EdgesplitError as err:
        return {"out": str(out_dir), "error": str(err)}
    return {
        k: r[k]
        for k in (
            "out",
            "model",
            "wbits",
            "fbits",
            "config",
            "calls",
            "bit_exact",
            "first_mismatch",
            "cycles_within_10_percent",
            "csim_images",
        )
    }


def _tuned(model, shape, name, device, wbits, fbits, cfg: HlsConfig) -> HlsConfig:
    from edgesplit.hardware.accelerator import tune
    from edgesplit.hardware.graph import graph_from_model

    best = tune(graph_from_model(model, shape, name), device, AccelConfig(wbits=wbits, fbits=fbits)).best.config
    return replace(cfg, **{k: getattr(best, k) for k in ("tm", "tn", "td", "tr", "tc")})


def cycle_table(model, shape, name, layout: dict, counts: dict[int, dict], wbits: int, fbits: int) -> list[dict]:
    """Each call's cycles from the C simulation beside the cost model's, for the same layer and parallelism.

    C simulation: the compute loops' iterations at II=1 plus one pipeline fill
    (``PIPELINE_DEPTH_CYCLES``, the model's assumed depth) per entry of a compute loop nest;
    the tile loads separately (the generated engine does not overlap them with compute).
    Model: ``LAYER_CYCLES`` of the layer, and its DRAM time in cycles at the board's clock.
    """
    from edgesplit.hardware.accelerator import LAYER_CYCLES, PIPELINE_DEPTH_CYCLES, AccelConfig, bundle_cycles
    from edgesplit.hardware.graph import graph_from_model

    c = layout["config"]
    cfg = AccelConfig(wbits=wbits, fbits=fbits, tm=c["tm"], tn=c["tn"], td=c["td"], tr=c["tr"], tc=c["tc"], fuse=False)
    hw = {ly.name: ly for ly in graph_from_model(model, shape, name).layers}
    rows = []

    def row(call: dict, layer: str, kind: str, iterations: int, invocations: int, loads: int, model_cycles: int) -> dict:
        csim = iterations + invocations * PIPELINE_DEPTH_CYCLES
        return {
            "call": call["index"],
            "layer": layer,
            "kind": kind,
            "csim_compute_cycles": csim,
            "csim_iterations": iterations,
            "csim_load_cycles": loads,
            "model_compute_cycles": model_cycles,
            "ratio": csim / model_cycles if model_cycles else None,
        }

    for call in layout["calls"]:
        n = counts.get(call["index"], {"iterations": 0, "invocations": 0, "loads": 0, "dw_iterations": 0, "dw_invocations": 0})
        if call["kind"] == "bundle":  # ops: DW conv, its ReLU, PW conv, ...
            dw, pw = hw.get(call["ops"][0]), hw.get(call["ops"][2])
            if dw is None or pw is None:
                continue
            dw_model, pw_model = bundle_cycles(dw, pw, cfg)
            rows.append(row(call, dw.name, "bundle-dw", n["dw_iterations"], n["dw_invocations"], 0, dw_model))
            rows.append(row(call, pw.name, "bundle-pw", n["iterations"], n["invocations"], n["loads"], pw_model))
            continue
        ly = hw.get(call["ops"][0])
        if ly is None or call["kind"] not in ("conv", "dwconv", "linear", "maxpool"):
            continue  # element-wise and copy calls: the model costs them on the vector unit, not compared here
        rows.append(row(call, ly.name, call["kind"], n["iterations"], n["invocations"], n["loads"], LAYER_CYCLES[ly.op](ly, cfg)))
    return rows


def format_report(r: dict) -> str:
    c = r["config"]
    lines = [
        f"{r['model']}: W{r['wbits']}/F{r['fbits']}, tm={c['tm']} tn={c['tn']} td={c['td']} tiles {c['tr']}x{c['tc']}, "
        f"{c['part']} at {c['clock_mhz']:g} MHz: {r['calls']} layer calls written to {r['out']} "
        f"({r['generate_s']:.1f} s)"
    ]
    if "csim_images" not in r:
        lines.append("not compiled (pass --csim N to check it in C simulation)")
        return "\n".join(lines)
    lines.append(
        f"C simulation: compiled in {r['compile_s']:.1f} s, {r['csim_images']} real test image(s) in "
        f"{r['csim_s']:.2f} s ({r['csim_images_per_s']:.1f} images/s): "
        + ("bit-exact with the integer reference on every tensor" if r["bit_exact"] else "MISMATCH")
    )
    if "predictions" in r:
        lines.append(f"predicted classes {r['predictions']}, labels {r['labels']}")
    lines.append(f"{'call':>4}  {'layer':<40}{'kind':<8}{'csim cycles':>12}{'model cycles':>13}{'ratio':>7}{'loads':>9}")
    for row in r["cycles"]:
        name = row["layer"] if len(row["layer"]) <= 39 else "..." + row["layer"][-36:]
        lines.append(
            f"{row['call']:>4}  {name:<40}{row['kind']:<8}{row['csim_compute_cycles']:>12}"
            f"{row['model_compute_cycles']:>13}{row['ratio']:>7.3f}{row['csim_load_cycles']:>9}"
        )
    lines.append(
        "compute cycles "
        + ("agree within 10% on every layer" if r["cycles_within_10_percent"] else "DIFFER by more than 10% on some layer")
        + "; the generated engine loads tiles between computes (cost it with `estimate --no-overlap`)"
    )
    return "\n".join(lines)
