"""The main job: a split model served by local worker processes, against the unsplit model.

1. Train a small ``resnet18-split2`` and the unsplit ``resnet18`` of the same total width
   on Fashion-MNIST, or reuse the checkpoints cached in ``work_dir``; export both.
2. Start one worker process per branch on 127.0.0.1 (each pinned to its own core when
   there are enough) and a coordinator.
3. Run the test set (or ``--images DIR``) one image at a time through each mode and
   report accuracy, latency (mean, std, p50, p95, p99) and throughput with several
   requests in flight; write a latency histogram and an HTML report.

Modes: ``split`` (distributed over the workers), ``in-process`` (the split model run
in this process: Capella's ``--cpu``), ``nonsplit`` (the unsplit model in ONNX
Runtime with all cores).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgesplit.data.datasets import IMAGE_SUFFIXES, load_fashion_mnist, load_image
from edgesplit.demo.config import DEMO_MODELS, MODES, DemoConfig
from edgesplit.errors import EdgesplitError
from edgesplit.runtime.local import LocalModel, softmax
from edgesplit.runtime.stats import latency_summary

log = logging.getLogger(__name__)


def _ensure_export(cfg: DemoConfig, role: str) -> Path:
    """Checkpoint and export for ``role``, reusing the cache unless ``retrain``."""
    from edgesplit.export.onnx_export import export_model
    from edgesplit.training.checkpoint import load_model
    from edgesplit.training.train import TrainConfig, train

    run_dir = Path(cfg.work_dir) / role
    export_dir = run_dir / "export"
    tcfg = TrainConfig(
        model=DEMO_MODELS[role],
        data_dir=cfg.data_dir,
        model_kwargs={"width_mult": cfg.width_mult},
        epochs=cfg.epochs,
        val_size=0,
        lr=0.2,
        max_train_samples=cfg.max_train_samples,
        branch_dropout=cfg.branch_dropout if role == "split" else 0.0,
    )
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists() and not cfg.retrain:
        from edgesplit.training.checkpoint import read_checkpoint

        saved = read_checkpoint(ckpt_path)["config"]
        if {**saved, "input_size": None} != {**asdict(tcfg), "input_size": None}:
            print(f"[demo] cached {role} model was trained with other settings: training it again", flush=True)
            cfg = type(cfg)(**{**cfg.__dict__, "retrain": True})
    if cfg.retrain:
        for f in (ckpt_path, run_dir / "history.json"):
            f.unlink(missing_ok=True)
    cached = ckpt_path.exists()
    print(
        f"[demo] {'reusing' if cached else 'training'} {tcfg.model} (width x{cfg.width_mult}, {cfg.epochs} epochs) in {run_dir}",
        flush=True,
    )
    train(tcfg, run_dir, resume=True)  # a finished run returns at once
    manifest = export_dir / "manifest.json"
    if not manifest.exists() or ckpt_path.stat().st_mtime > manifest.stat().st_mtime:
        model, ckpt = load_model(ckpt_path)
        export_model(model, ckpt, export_dir)
    return export_dir


def _class_key(name: str) -> str:
    """A class or folder name compared without case or punctuation: ``T-shirt/top`` and ``T-shirt_top`` match."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def folder_labels(files: list[Path], root: Path, classes: tuple[str, ...]) -> np.ndarray | None:
    """Each image's class from its folder's name (-1 for a folder that names no class), or None when no folder
    names one. The folders that match no class are said, with the class names they could have."""
    index = {_class_key(c): i for i, c in enumerate(classes)}
    labels = np.asarray([index.get(_class_key(f.parent.name), -1) if f.parent != root else -1 for f in files])
    if (labels < 0).all():
        return None
    unmatched = sorted({f.parent.name for f, y in zip(files, labels) if y < 0 and f.parent != root})
    if unmatched:
        print(
            f"[demo] folders that name no class (their images count in no accuracy): {', '.join(unmatched)}; "
            f"the classes are: {', '.join(classes)}",
            flush=True,
        )
    return labels


def accuracy(preds: np.ndarray, labels: np.ndarray | None) -> float | None:
    """Top-1 over the images with a label (-1: none), or None when none has one."""
    if labels is None:
        return None
    labels = np.asarray(labels)[: len(preds)]
    known = labels >= 0
    return float((np.asarray(preds)[known] == labels[known]).mean()) if known.any() else None


def _load_images(cfg: DemoConfig, shape: tuple[int, int, int], classes: tuple[str, ...]):
    """(N, C, H, W) uint8 images, labels (or None when unknown), names."""
    c, h, w = shape
    if cfg.images_dir:
        root = Path(cfg.images_dir)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else []
        if not files:
            raise EdgesplitError(
                f"no JPEG/PNG images under {root}; pass a folder of images (sub-folders named after classes give accuracy)"
            )
        files = files[: cfg.limit] if cfg.limit else files
        images = np.stack([load_image(f, (h, w), c) for f in files]).transpose(0, 3, 1, 2)
        names = [str(f) for f in files]
        labels = folder_labels(files, root, classes)
        return np.ascontiguousarray(images), labels, names
    test = load_fashion_mnist("test", cfg.data_dir)
    n = min(cfg.limit or len(test), len(test))
    return np.ascontiguousarray(test.data[:n].transpose(0, 3, 1, 2)), test.targets[:n], [f"test[{i}]" for i in range(n)]


def _run_sequential(infer, images: np.ndarray) -> tuple[np.ndarray, list[float]]:
    infer(images[:1])  # warm-up
    preds, lat_ms = [], []
    for i in range(len(images)):
        t0 = time.perf_counter()
        logits = infer(images[i : i + 1])
        lat_ms.append((time.perf_counter() - t0) * 1e3)
        preds.append(int(logits.argmax(1)[0]))
    return np.asarray(preds), lat_ms


def _mode_report(mode: str, model: str, preds: np.ndarray, labels, lat_ms: list[float], rps: float) -> dict:
    acc = accuracy(preds, labels)
    return {
        "mode": mode,
        "model": model,
        "accuracy": acc,
        "throughput_rps": rps,
        **latency_summary(lat_ms),
        "predictions": [int(v) for v in preds],
        "latencies_ms": lat_ms,
    }


def run_demo(cfg: DemoConfig, json_path: str | None = None) -> dict:
    import edgesplit
    from edgesplit.runtime.cluster import LocalCluster

    t_start = time.perf_counter()
    exports = {"split": _ensure_export(cfg, "split")}
    if "nonsplit" in cfg.modes:
        exports["unsplit"] = _ensure_export(cfg, "unsplit")
    split_local = LocalModel(exports["split"])
    manifest = split_local.manifest
    images, labels, names = _load_images(cfg, manifest.input_shape, manifest.classes)
    n = len(images)
    results: dict[str, dict] = {}
    tp_images = images[: min(n, cfg.throughput_images)]

    if "split" in cfg.modes or cfg.interactive:
        print(f"[demo] starting {len(manifest.branches)} local workers (one per branch)", flush=True)
        with LocalCluster(exports["split"]) as cluster, edgesplit.connect(cluster.plan()) as client:
            for part, w in cluster.workers.items():
                print(f"[demo]   {part}: {w.address} pid {w.proc.pid} cpus {w.cpus}", flush=True)
            if cfg.dashboard_port is not None:
                print(f"[demo] dashboard: {client.start_dashboard(cfg.dashboard_port, cluster=cluster)}", flush=True)
            if cfg.interactive:
                return _interactive(client, manifest)
            print(f"[demo] split: {n} images one at a time through the coordinator and workers", flush=True)
            preds, lat = _run_sequential(client.infer, images)
            t0 = time.perf_counter()
            client.infer_many([tp_images[i : i + 1] for i in range(len(tp_images))], in_flight=cfg.in_flight)
            rps = len(tp_images) / (time.perf_counter() - t0)
            results["split"] = _mode_report("split", manifest.model, preds, labels, lat, rps)
            if len(manifest.branches) > 1 and cfg.unplug_images:
                unplugged = _unplug(cluster, client, images[: cfg.unplug_images], labels, manifest.branches[-1].name)

    if "in-process" in cfg.modes:
        print("[demo] in-process: the split model in this process (1 thread)", flush=True)
        infer = lambda x: split_local(split_local.pre.normalize(x))  # noqa: E731
        preds, lat = _run_sequential(infer, images)
        results["in-process"] = _mode_report("in-process", manifest.model, preds, labels, lat, 1e3 / np.mean(lat))

    if "nonsplit" in cfg.modes:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        unsplit = LocalModel(exports["unsplit"], threads=threads)
        print(f"[demo] nonsplit: {unsplit.manifest.model} in ONNX Runtime with {threads} threads", flush=True)
        infer = lambda x: unsplit(unsplit.pre.normalize(x))  # noqa: E731
        preds, lat = _run_sequential(infer, images)
        results["nonsplit"] = _mode_report("nonsplit", unsplit.manifest.model, preds, labels, lat, 1e3 / np.mean(lat))

    _print_table(results, n)
    if cfg.images_dir and results:
        _print_predictions(names, labels, next(iter(results.values()))["predictions"], manifest.classes)
    report = {
        "config": asdict(cfg),
        "images": n,
        "source": cfg.images_dir or "fashion-mnist test set",
        "results": {m: {k: v for k, v in r.items() if k != "latencies_ms"} for m, r in results.items()},
        "wall_time_s": time.perf_counter() - t_start,
    }
    if "split" in results and len(manifest.branches) > 1 and cfg.unplug_images:
        report["unplugged"] = unplugged
        acc = f"accuracy {unplugged['accuracy']:.4f}" if unplugged["accuracy"] is not None else "no labels"
        print(
            f"\n{unplugged['part']}'s worker unplugged (SIGKILL): {unplugged['images']} images answered, "
            f"{unplugged['degraded']} flagged degraded, {unplugged['errors']} errors, {acc}, p50 {unplugged['p50_ms']:.3f} ms;"
            f" the worker was restarted and used again: {unplugged['readmitted']}"
        )
    out_dir = Path(cfg.work_dir)
    # a run of some modes only writes its own files: the full run's report is never overwritten by a partial one
    suffix = "" if tuple(cfg.modes) == MODES else "_" + "_".join(m.replace("-", "") for m in cfg.modes)
    png = _histogram(results, out_dir / f"latency{suffix}.png")
    page = out_dir / f"report{suffix}.html"
    page.write_text(_html(report, png))
    print(f"\n[demo] wrote {png} and {page}; done in {report['wall_time_s']:.0f} s")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _print_predictions(names: list[str], labels, preds: list[int], classes: tuple[str, ...], shown: int = 20) -> None:
    """Each image's predicted class (and its folder's, when the folder names one)."""
    print("\nimage  ->  predicted class" + ("  (folder's class)" if labels is not None else ""))
    for i, (name, pred) in enumerate(zip(names[:shown], preds)):
        known = labels is not None and labels[i] >= 0
        mark = "" if not known else f"  ({classes[labels[i]]}{', right' if labels[i] == pred else ''})"
        print(f"{name}  ->  {classes[pred]}{mark}")
    if len(names) > shown:
        print(f"... {len(names) - shown} more in the JSON (--json)")


def _unplug(cluster, client, images: np.ndarray, labels, part: str) -> dict:
    """Kill one branch's worker, answer ``images`` with the rest (flagged degraded), restart it."""
    print(f"[demo] unplugging {part}'s worker (SIGKILL) and running {len(images)} more images", flush=True)
    cluster.kill(part)
    preds, lat, degraded, errors = [], [], 0, 0
    for i in range(len(images)):
        t0 = time.perf_counter()
        try:
            r = client.infer_result(images[i : i + 1])
        except EdgesplitError:
            errors += 1
            preds.append(-1)
            continue
        lat.append((time.perf_counter() - t0) * 1e3)
        degraded += bool(r.parameters.get("degraded"))
        preds.append(int(r.outputs["logits"].argmax(1)[0]))
    cluster.restart(part)
    deadline = time.monotonic() + 10
    readmitted = False
    while time.monotonic() < deadline and not readmitted:
        readmitted = not client.infer_result(images[:1]).parameters.get("degraded")
        time.sleep(0.05)
    acc = accuracy(np.asarray(preds), labels)
    return {
        "part": part,
        "images": len(images),
        "degraded": degraded,
        "errors": errors,
        "accuracy": acc,
        "readmitted": readmitted,
        **latency_summary(lat),
    }


def _print_table(results: dict, n: int) -> None:
    print(f"\n{n} images, one at a time; split throughput with requests in flight")
    print(f"{'mode':<12}{'model':<17}{'accuracy':>9}{'mean ms':>9}{'std':>7}{'p50':>7}{'p95':>7}{'p99':>7}{'img/s':>8}")
    for mode, r in results.items():
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        print(
            f"{mode:<12}{r['model']:<17}{acc:>9}{r['mean_ms']:>9.3f}{r['std_ms']:>7.3f}{r['p50_ms']:>7.3f}"
            f"{r['p95_ms']:>7.3f}{r['p99_ms']:>7.3f}{r['throughput_rps']:>8.0f}"
        )
    if "split" in results and len(results) > 1:
        print(
            "Each split request costs a round trip to every worker (a Unix socket between local processes: about\n"
            "1 ms with the coordinator's work), more than a 28x28 branch computes; splitting pays off when branch\n"
            "compute dominates, as at 224x224 on devices (`edgesplit bench serve`, docs/benchmarks.md)."
        )


def _histogram(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    hi = max(np.percentile(r["latencies_ms"], 99.5) for r in results.values())
    for mode, r in results.items():
        ax.hist(
            r["latencies_ms"], bins=80, range=(0, hi), histtype="step", linewidth=1.5, label=f"{mode} (p50 {r['p50_ms']:.2f} ms)"
        )
    ax.set_xlabel("latency per image (ms)")
    ax.set_ylabel("images")
    ax.set_title("edgesplit demo: per-image latency")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt_acc(acc: float | None) -> str:
    return "-" if acc is None else f"{acc:.4f}"


def _html(report: dict, png: Path) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{html.escape(r['model'])}</td><td>{_fmt_acc(r['accuracy'])}</td>"
        f"<td>{r['mean_ms']:.3f}</td><td>{r['std_ms']:.3f}</td><td>{r['p50_ms']:.3f}</td><td>{r['p95_ms']:.3f}</td>"
        f"<td>{r['p99_ms']:.3f}</td><td>{r['throughput_rps']:.0f}</td></tr>"
        for m, r in report["results"].items()
    )
    img = base64.b64encode(png.read_bytes()).decode()
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>edgesplit demo</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:4px 10px;text-align:right}}</style></head>
<body><h1>edgesplit demo</h1><p>{report["images"]} images from {html.escape(str(report["source"]))}, one at a time.</p>
<table><tr><th>mode</th><th>model</th><th>accuracy</th><th>mean ms</th><th>std</th><th>p50</th><th>p95</th><th>p99</th><th>img/s</th></tr>{rows}</table>
{_unplug_html(report.get("unplugged"))}<img alt="latency histogram" src="data:image/png;base64,{img}">
<pre>{html.escape(json.dumps(report["config"], indent=1))}</pre></body></html>
"""


def _unplug_html(u: dict | None) -> str:
    """The unplug result as the terminal says it, or nothing when the run had none."""
    if not u:
        return ""
    acc = f"accuracy {u['accuracy']:.4f}" if u["accuracy"] is not None else "no labels"
    return (
        f"<p>{html.escape(u['part'])}'s worker unplugged (SIGKILL): {u['images']} images answered, {u['degraded']} "
        f"flagged degraded, {u['errors']} errors, {acc}, p50 {u['p50_ms']:.3f} ms; the worker was restarted and used "
        f"again: {u['readmitted']}.</p>"
    )


def _interactive(client, manifest) -> dict:
    c, h, w = manifest.input_shape
    print("[demo] type an image path (empty line or Ctrl-D to quit)", flush=True)
    answered = 0
    for line in sys.stdin:
        path = line.strip()
        if not path:
            break
        try:
            image = load_image(path, (h, w), c).transpose(2, 0, 1)[None]
        except EdgesplitError as err:
            print(f"  {err}", flush=True)
            continue
        t0 = time.perf_counter()
        probs = softmax(client.infer(np.ascontiguousarray(image)))[0]
        ms = (time.perf_counter() - t0) * 1e3
        top = np.argsort(-probs)[:3]
        print(f"  {', '.join(f'{manifest.classes[j]} {probs[j]:.3f}' for j in top)}  ({ms:.2f} ms)", flush=True)
        answered += 1
    return {"interactive": True, "answered": answered}
