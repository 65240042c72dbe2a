"""``edgesplit bench strategies``: split, pipeline, data-parallel and single, side by side on the testbed.

For each link rate, the fleet's devices are made as emulated devices (``edgesplit.testbed``: a namespace
behind a shaped link, a CPU quota) and each strategy is served through the same plan/connect API:
latency at one request in flight, throughput with ``in_flight`` requests, bytes per inference read from
the links' interfaces, and what happens to ``kill_requests`` requests when one device's worker is
killed a third of the way through (answered exactly, degraded, failed; lost: none may be). Models
have random weights (speed and bytes do not depend on them); accuracy is the trained models' in
docs/results.md.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgesplit.bench.config import StrategiesBench
from edgesplit.bench.serve import _export_random, machine_info
from edgesplit.runtime.stats import latency_summary

STRATEGY_ORDER = ("split", "pipeline", "data-parallel", "single")


def _exports(cfg: StrategiesBench, devices: int, root: Path) -> dict[str, Path]:
    """Random-weight exports: the split model, the unsplit one whole, and cut into a stage per device."""
    from edgesplit.models import create_model

    blocks = len(create_model(cfg.unsplit_model).sequential_blocks())
    split = _export_random(cfg.split_model, cfg.input_shape, cfg.num_classes, root / "split")
    whole = _export_random(cfg.unsplit_model, cfg.input_shape, cfg.num_classes, root / "whole")
    stages = _export_random(cfg.unsplit_model, cfg.input_shape, cfg.num_classes, root / "pipeline", min(devices, blocks))
    return {"split": split, "pipeline": stages, "data-parallel": whole, "single": whole}


def _serve(tb, export: Path, strategy: str):
    """Start the workers a strategy's plan asks for, on the devices its addresses name; the plan."""
    from edgesplit.runtime.plan import make_plan, parts_by_address

    by_address = {d.address: d.index for d in tb.devices}
    plan = make_plan(str(export), list(by_address), strategy=strategy)
    for address, names in parts_by_address(plan).items():
        tb.start_worker(by_address[address], export, ",".join(names))
    return plan


def _one_strategy(tb, export: Path, strategy: str, cfg: StrategiesBench, images: np.ndarray) -> dict:
    import edgesplit

    plan = _serve(tb, export, strategy)
    used = sorted({a for p in plan.parts for a in p.replicas})
    with edgesplit.connect(plan) as client:
        for x in images[: cfg.warmup]:
            client.infer(x)
        before, lat = tb.link_bytes(), []
        for x in images[: cfg.requests]:
            t0 = time.perf_counter()
            client.infer(x)
            lat.append((time.perf_counter() - t0) * 1e3)
        after = tb.link_bytes()
        t0 = time.perf_counter()
        client.infer_many(list(images[: cfg.requests]), in_flight=cfg.in_flight)
        throughput = cfg.requests / (time.perf_counter() - t0)
        killed = _kill_one(tb, client, plan, images[: cfg.kill_requests])
    for i in list(tb.workers):
        tb.stop_worker(i)
    link = {ns: {k: after[ns][k] - before[ns][k] for k in after[ns]} for ns in after}
    return {
        "devices_used": len(used),
        "latency": latency_summary(lat),
        "throughput_rps": throughput,
        "bytes_per_inference": sum(v for d in link.values() for v in d.values()) / cfg.requests,
        "bytes_per_inference_by_link": {ns: {k: v / cfg.requests for k, v in d.items()} for ns, d in link.items()},
        "device_killed": killed,
    }


def _kill_one(tb, client, plan, images: np.ndarray) -> dict:
    """``images`` one at a time; a third of the way through, the worker of the device the plan names first is
    killed (SIGKILL: a device unplugged). Every request must end answered (exact or degraded) or failed; one
    still unanswered after 10 minutes is lost."""
    first = plan.parts[0].replicas[0]
    victim = next(d.index for d in tb.devices if d.address == first)
    counts = {"exact": 0, "degraded": 0, "failed": 0}
    done = threading.Event()

    def run():
        for i, x in enumerate(images):
            if i == len(images) // 3:
                tb.kill_worker(victim)
            try:
                r = client.infer_result(x)
                counts["degraded" if r.parameters.get("degraded") else "exact"] += 1
            except Exception:  # noqa: BLE001 (counted; what the coordinator raised is in its log)
                counts["failed"] += 1
        done.set()

    threading.Thread(target=run, daemon=True).start()
    finished = done.wait(timeout=600)
    return {"device": tb.devices[victim].namespace, **counts, "lost": 0 if finished else len(images) - sum(counts.values())}


def bench_strategies(cfg: StrategiesBench) -> dict:
    from edgesplit.testbed import Testbed

    rng = np.random.default_rng(0)
    n = max(cfg.requests, cfg.kill_requests, cfg.warmup)
    images = rng.integers(0, 256, size=(n, 1, *cfg.input_shape), dtype=np.uint8)  # (N, 1, C, H, W)
    results: dict[str, dict] = {}
    devices, exports = None, None
    with tempfile.TemporaryDirectory(prefix="edgesplit-strategies-") as tmp:
        for mbps in cfg.links:
            with Testbed(cfg.fleet, "bench", link_mbps=mbps) as tb:
                devices = tb.devices
                exports = exports or _exports(cfg, len(tb.devices), Path(tmp))
                for strategy in STRATEGY_ORDER:
                    results.setdefault(strategy, {})[f"{mbps:g}"] = _one_strategy(tb, exports[strategy], strategy, cfg, images)
    return {
        "benchmark": "strategies",
        "machine": machine_info(),
        "fleet": str(cfg.fleet),
        "devices": [{"namespace": d.namespace, "device": d.device, "cpu_share": d.cpu_share} for d in devices],
        "models": {"split": cfg.split_model, "others": cfg.unsplit_model, "input_shape": list(cfg.input_shape)},
        "links_mbps": list(cfg.links),
        "requests": cfg.requests,
        "in_flight": cfg.in_flight,
        "strategies": results,
    }


def text_report(r: dict) -> str:
    """What ``edgesplit bench strategies`` prints of a result."""
    devices = ", ".join(f"{d['device']} {d['cpu_share']:.0%} core" for d in r["devices"])
    lines = [
        f"{r['models']['split']} (split) / {r['models']['others']} (the others), "
        f"{'x'.join(map(str, r['models']['input_shape']))}, {len(r['devices'])} emulated devices "
        f"({devices}), {r['requests']} requests",
        f"{'strategy':<14}{'Mbit/s':>7}{'devs':>5}{'p50 ms':>8}{'p99 ms':>8}{'req/s':>8}{'kB/inf':>8}"
        f"  one device killed: exact/degraded/failed/lost",
    ]
    for strategy, by_link in r["strategies"].items():
        for mbps, m in by_link.items():
            k = m["device_killed"]
            lines.append(
                f"{strategy:<14}{mbps:>7}{m['devices_used']:>5}{m['latency']['p50_ms']:>8.2f}{m['latency']['p99_ms']:>8.2f}"
                f"{m['throughput_rps']:>8.1f}{m['bytes_per_inference'] / 1e3:>8.1f}  "
                f"{k['exact']}/{k['degraded']}/{k['failed']}/{k['lost']}"
            )
    return "\n".join(lines)
