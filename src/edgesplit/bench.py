"""``edgesplit bench serve``: where the time goes when a split model is served by local workers.

Measures, in one run on this machine:
(a) each branch's compute time inside its worker (reported by the worker with every answer),
(b) end-to-end latency through the coordinator and the local workers, one request at a time,
(c) sustained throughput with several requests in flight,
(d) the unsplit model in ONNX Runtime with all cores, the baseline a user would otherwise pick.
Weights are random (timing does not depend on them); the export is made in a temp folder.
"""
from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from edgesplit.runtime.stats import latency_summary


def _export_random(model_name: str, input_shape, num_classes: int, out_dir: Path) -> Path:
    import torch

    from edgesplit.export.onnx_export import export_model
    from edgesplit.models import create_model

    c, h, w = input_shape
    kw = {"num_classes": num_classes, "in_chans": c, "input_size": [h, w]}
    torch.manual_seed(0)
    model = create_model(model_name, **kw).eval()
    ckpt = {"model": model_name, "model_kwargs": kw, "classes": [str(i) for i in range(num_classes)],
            "preprocess": {"size": [h, w], "mean": [0.5] * c, "std": [0.25] * c}}
    export_model(model, ckpt, out_dir)
    return out_dir


async def _drive_coordinator(plan, send: np.ndarray, warmup: int, in_flight: int):
    """(a) + (b): one request at a time through the coordinator; (c): ``in_flight`` at once."""
    from edgesplit.runtime.client import AsyncClient

    client = await AsyncClient.connect(plan)
    try:
        for img in send[:warmup]:
            await client.infer(img)
        lat, compute = [], {}
        for img in send:
            t0 = time.perf_counter()
            r = await client.infer_result(img)
            lat.append((time.perf_counter() - t0) * 1e3)
            for k, v in r.parameters.items():
                if k.endswith("_compute_ms"):
                    compute.setdefault(k[: -len("_compute_ms")], []).append(v)
        sem = asyncio.Semaphore(in_flight)

        async def one(img):
            async with sem:
                await client.infer(img)

        await asyncio.gather(*(one(img) for img in send[:warmup]))
        t0 = time.perf_counter()
        await asyncio.gather(*(one(img) for img in send))
        return lat, compute, time.perf_counter() - t0
    finally:
        await client.close()


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def _baseline_round(engine, x_float: list[np.ndarray], warmup: int) -> tuple[list[float], float]:
    for x in x_float[:warmup]:
        engine.run({"input": x})
    lat = []
    t_start = time.perf_counter()
    for x in x_float:
        t0 = time.perf_counter()
        engine.run({"input": x})
        lat.append((time.perf_counter() - t0) * 1e3)
    return lat, time.perf_counter() - t_start


def bench_serve(model: str = "resnet18-split2", input_shape=(3, 224, 224), requests: int = 200, in_flight: int = 4,
                num_classes: int = 1000, warmup: int = 20, input_dtype: str = "uint8", rounds: int = 3) -> dict:
    """Each round measures the unsplit baseline, then the split model, back to back; the ratios are
    computed per round and their medians reported (this machine is shared and noisy)."""
    import edgesplit
    from edgesplit.models import create_model
    from edgesplit.runtime.cluster import LocalCluster
    from edgesplit.runtime.engine import OnnxRuntimeEngine
    from edgesplit.runtime.local import LocalModel

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(requests, 1, *input_shape), dtype=np.uint8)  # (N, 1, C, H, W)
    unsplit_name = getattr(create_model(model), "unsplit_name", None) or model
    ncores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_round = []
    with tempfile.TemporaryDirectory(prefix="edgesplit-bench-") as tmp:
        split_dir = _export_random(model, input_shape, num_classes, Path(tmp) / "split")
        unsplit_dir = _export_random(unsplit_name, input_shape, num_classes, Path(tmp) / "unsplit")
        pre = LocalModel(split_dir).pre
        x_float = [pre.normalize(img) for img in images]
        send = images if input_dtype == "uint8" else np.stack(x_float)
        # the baseline as a user would run it: all cores, ONNX Runtime defaults (spinning thread pool)
        unsplit = OnnxRuntimeEngine(Path(unsplit_dir) / "model.onnx", threads=ncores, spin=True)
        with LocalCluster(split_dir, input_dtype=input_dtype, timeout_ms=10_000) as cluster:
            cpus = {p: w.cpus for p, w in cluster.workers.items()}
            for _ in range(rounds):
                base_lat, base_wall = _baseline_round(unsplit, x_float, warmup)  # (d)
                lat, compute, split_wall = asyncio.run(_drive_coordinator(cluster.plan(), send, warmup, in_flight))
                branch = {name: latency_summary(v) for name, v in compute.items()}
                e2e = latency_summary(lat)
                split_rps, base_rps = requests / split_wall, requests / base_wall
                per_round.append({
                    "branch_compute": branch, "end_to_end": e2e, "split_throughput_rps": split_rps,
                    "unsplit": {"latency": latency_summary(base_lat), "throughput_rps": base_rps},
                    "overhead_ratio": e2e["p50_ms"] / max(b["p50_ms"] for b in branch.values()),
                    "throughput_speedup": split_rps / base_rps,
                })
            with edgesplit.connect(cluster.plan()) as client:  # the blocking API, for reference
                for img in send[:warmup]:
                    client.infer(img)
                blocking = []
                for img in send:
                    t0 = time.perf_counter()
                    client.infer(img)
                    blocking.append((time.perf_counter() - t0) * 1e3)

    def med(key, sub=None):
        vals = [r[key] if sub is None else r[key][sub] for r in per_round]
        return float(np.median(vals))

    return {
        "benchmark": "serve", "model": model, "unsplit_model": unsplit_name, "input_shape": list(input_shape),
        "input_dtype": input_dtype, "requests": requests, "in_flight": in_flight, "rounds": rounds,
        "machine": machine_info(), "worker_cpus": cpus, "unsplit_threads": ncores,
        "overhead_ratio": med("overhead_ratio"), "throughput_speedup": med("throughput_speedup"),
        "branch_compute_p50_ms": {n: float(np.median([r["branch_compute"][n]["p50_ms"] for r in per_round])) for n in per_round[0]["branch_compute"]},
        "end_to_end_p50_ms": med("end_to_end", "p50_ms"), "end_to_end_p99_ms": med("end_to_end", "p99_ms"),
        "split_throughput_rps": med("split_throughput_rps"),
        "unsplit_p50_ms": float(np.median([r["unsplit"]["latency"]["p50_ms"] for r in per_round])),
        "unsplit_throughput_rps": float(np.median([r["unsplit"]["throughput_rps"] for r in per_round])),
        "end_to_end_blocking_client": latency_summary(blocking),
        "per_round": per_round,
    }
