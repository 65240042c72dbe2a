"""``edgesplit bench strategies``: split, pipeline, data-parallel and single, side by side on the testbed.

For each link rate, the fleet's devices are made as emulated devices (``edgesplit.testbed``: a namespace
behind a shaped link, a CPU quota) and each strategy is served through the same plan/connect API:
latency at one request in flight, throughput with ``in_flight`` requests, bytes per inference read from
the links' interfaces, and what happens to ``kill_requests`` requests when one device's worker is
killed a third of the way through (answered exactly, degraded, failed; lost: none may be). Models
have random weights (speed and bytes do not depend on them); accuracy is the trained models' in
docs/results.md.

Each measurement is set beside the prediction of ``codesign/strategies.py`` (what ``plan --strategy auto``
prints), made before it from two calibrations that share no model with the strategies: each part's time on
one core of this machine, in this process (scaled by each device's CPU share), and the runtime's costs per call
(:class:`~edgesplit.codesign.strategies.Overheads`), measured with a tiny model on the first device.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgesplit.bench.config import StrategiesBench
from edgesplit.bench.figures import figure, save
from edgesplit.bench.serve import _export_random, machine_info
from edgesplit.codesign.strategies import CallCost, FleetNode, Overheads, Prediction, predict_all
from edgesplit.runtime.stats import latency_summary

STRATEGY_ORDER = ("split", "pipeline", "data-parallel", "single")


def _exports(cfg: StrategiesBench, shares: list[float], root: Path) -> dict[str, Path]:
    """Random-weight exports: the split model, the unsplit one whole, and cut into a stage per device (the stages'
    MACs in proportion to the devices' CPU shares)."""
    from edgesplit.models import create_model

    k = min(len(shares), len(create_model(cfg.unsplit_model).sequential_blocks()))
    speeds = sorted(shares, reverse=True)[:k]
    split = _export_random(cfg.split_model, cfg.input_shape, cfg.num_classes, root / "split")
    whole = _export_random(cfg.unsplit_model, cfg.input_shape, cfg.num_classes, root / "whole")
    stages = _export_random(cfg.unsplit_model, cfg.input_shape, cfg.num_classes, root / "pipeline", k, speeds)
    return {"split": split, "pipeline": stages, "data-parallel": whole, "single": whole}


CALIBRATION_CONVS = (0, 2, 4, 8, 16, 24, 40)  # 3x3 convolutions of the calibration models: none (the call alone), more and more
CALIBRATION_WIDTH = 32


def _calibration_export(input_shape: tuple[int, int, int], convs: int, out_dir: Path) -> Path:
    """A calibration model with the strategies' input and none of their layers: a strided convolution to
    ``CALIBRATION_WIDTH`` channels (none when ``convs`` is 0: the image's mean per channel), ``convs`` more 3x3
    convolutions, the mean per channel. Random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgesplit.manifest import PartSpec, TensorSpec, sha256_file, write_manifest

    c, h, w = input_shape
    rng = np.random.default_rng(convs)
    nodes, inits, x, chans = [], [], "input", c
    for i in range(convs + 1 if convs else 0):
        weight = (rng.standard_normal((CALIBRATION_WIDTH, chans, 3, 3)) * 0.1).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        stride = 2 if i == 0 else 1
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]  # fmt: skip
        x, chans = f"r{i}", CALIBRATION_WIDTH
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["logits"])]
    graph = helper.make_graph(
        nodes,
        f"calibration{convs}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", chans])],
        inits,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), out_dir / "model.onnx")
    part = PartSpec("model", "model", "model.onnx", sha256_file(out_dir / "model.onnx"),
                    (TensorSpec("input", (-1, c, h, w), "float32"),), (TensorSpec("logits", (-1, chans), "float32"),))  # fmt: skip
    body = {"model": f"calibration{convs}", "model_kwargs": {}, "input_shape": [c, h, w],
            "preprocess": {"size": [h, w], "mean": [0.5] * c, "std": [0.25] * c}, "classes": [str(i) for i in range(chans)],
            "feature_dims": [], "parts": [part.to_dict()], "opset": 17}  # fmt: skip
    write_manifest(out_dir, body)
    return out_dir


EVICT_BYTES = 64 << 20  # written between timed runs: twice this VM's 32 MiB L3 (lscpu)


def _part_ms(exports, runs: int = 40) -> dict[Path, float]:
    """Median ms of each part of ``exports`` on one core of this machine, in this process, as a worker runs it
    (ONNX Runtime, one thread) between other work: each run after the caches are overwritten. Timed back to back
    instead, a half-width branch took half as long, its weights still cached, as it never is in a worker that
    shares the machine (docs/benchmarks.md)."""
    from edgesplit.manifest import load_manifest
    from edgesplit.runtime.engines.onnxruntime_engine import OnnxRuntimeEngine

    junk = np.zeros(EVICT_BYTES, np.uint8)
    out: dict[Path, float] = {}
    for export in set(exports):
        manifest = load_manifest(export, verify=False)
        for part in manifest.parts:
            engine = OnnxRuntimeEngine(manifest.path(part), threads=1)
            feeds = {t.name: np.random.default_rng(0).random([max(1, d) for d in t.shape], np.float32) for t in engine.inputs}
            for _ in range(3):
                engine.run(feeds)
            times = []
            for _ in range(runs):
                junk += 1
                t0 = time.perf_counter()
                engine.run(feeds)
                times.append((time.perf_counter() - t0) * 1e3)
            out[manifest.path(part)] = float(np.median(times))
    return out


def _measure_calls(tb, i: int, export: Path, images: np.ndarray, cfg: StrategiesBench) -> dict:
    """One calibration model on device ``i``: latency at one request in flight, throughput at ``in_flight``, and per
    request the coordinator's CPU and the link's bytes."""
    import edgesplit
    from edgesplit.runtime.plan import PartPlacement, Plan

    device = tb.devices[i]
    plan = Plan(str(export), (PartPlacement("model", (tb.start_worker(i, export, "model"),)),))
    n = cfg.calibration_requests
    with edgesplit.connect(plan) as client:
        for x in images[: cfg.warmup]:
            client.infer(x)
        lat, coord0, bytes0 = [], time.process_time(), tb.link_bytes()[device.namespace]
        for j in range(n):
            t0 = time.perf_counter()
            client.infer(images[j % len(images)])
            lat.append((time.perf_counter() - t0) * 1e3)
        coord_s, bytes1 = time.process_time() - coord0, tb.link_bytes()[device.namespace]
        t0 = time.perf_counter()
        client.infer_many([images[j % len(images)] for j in range(n)], in_flight=cfg.in_flight)
        throughput = n / (time.perf_counter() - t0)
    tb.stop_worker(i)
    return {
        "p50_ms": float(np.median(lat)),
        "throughput_rps": throughput,
        "coordinator_ms": coord_s * 1e3 / n,
        "bytes": sum(bytes1[k] - bytes0[k] for k in bytes1) / n,
    }


def _calibrate(tb, exports: list[Path], part_ms: dict[Path, float], images: np.ndarray, cfg: StrategiesBench):
    """The runtime's costs, from the calibration models: on the first device of each CPU share, each model's
    latency and throughput against its time on one core here give that share's :class:`CallCost` (least squares;
    the busy time from the models that compute, the call alone being bound by the coordinator); the model that
    computes nothing gives the coordinator's CPU per call and the protocol's bytes per message."""
    from edgesplit.testbed import tbf_burst_bytes

    c, h, w = cfg.input_shape
    overheads, calls, measured = Overheads(), {}, {}
    for share in sorted({d.cpu_share for d in tb.devices}):
        device = next(d for d in tb.devices if d.cpu_share == share)
        rows = [(part_ms[e / "model.onnx"], _measure_calls(tb, device.index, e, images, cfg)) for e in exports]
        measured[f"{share:g}"] = [{"part_ms": ms, **m} for ms, m in rows]
        burst = tbf_burst_bytes(device.link_mbps)  # per message, as the prediction counts it
        wire_ms = [max(0.0, m["bytes"] - 2 * burst) * 8 / (device.link_mbps * 1e3) for _, m in rows]
        x = np.array([ms for ms, _ in rows])
        lat = np.polyfit(x, [m["p50_ms"] - wm for (_, m), wm in zip(rows, wire_ms)], 1)
        busy = np.polyfit(x[1:], [1e3 / m["throughput_rps"] for _, m in rows[1:]], 1)
        calls[share] = CallCost(float(lat[1]), float(lat[0]), float(busy[1]), float(busy[0]))
        if share == min(d.cpu_share for d in tb.devices):
            tiny = rows[0][1]
            payload = c * h * w + 4 * c  # uint8 image in, float32 means out
            headers = overheads.wire_bytes(c * h * w) + overheads.wire_bytes(4 * c) - 2 * overheads.message_bytes - payload
            overheads = Overheads(
                coordinator_ms=tiny["coordinator_ms"],
                message_bytes=max(0.0, (tiny["bytes"] - payload - headers) / 2),
                shared_cores=float(os.cpu_count() or 1),
            )
    return overheads, calls, measured


def _predict(tb, exports: dict[str, Path], part_ms: dict[Path, float], overheads: Overheads, calls, cfg) -> dict[str, Prediction]:
    """Each strategy on the testbed's devices: part times measured on one core here, each device's calls costed
    as calibrated for its CPU share."""
    from edgesplit.testbed import tbf_burst_bytes

    nodes = [
        FleetNode(d.address, d.device, d.link_mbps, calls[d.cpu_share], d.cpu_share, tbf_burst_bytes(d.link_mbps))
        for d in tb.devices
    ]

    def cost(path: Path, node: FleetNode | None) -> float:
        return part_ms[path]

    unique = {str(p): p for p in exports.values()}
    return predict_all(list(unique.values()), nodes, cost, overheads, cfg.in_flight)


def _serve(tb, prediction: Prediction, export: Path):
    """Start the workers of a predicted strategy's placement, on the devices its addresses name; the plan."""
    from edgesplit.runtime.plan import PartPlacement, Plan, parts_by_address

    by_address = {d.address: d.index for d in tb.devices}
    plan = Plan(str(export), tuple(PartPlacement(p, tuple(r)) for p, r in prediction.placement.items()))
    for address, names in parts_by_address(plan).items():
        tb.start_worker(by_address[address], export, ",".join(names))
    return plan


def _one_strategy(tb, export: Path, prediction: Prediction, cfg: StrategiesBench, images: np.ndarray) -> dict:
    import edgesplit

    plan = _serve(tb, prediction, export)
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
        "predicted": {k: v for k, v in prediction.to_dict().items() if k not in ("export", "strategy")},
        "prediction_error": {  # predicted / measured - 1
            "latency": prediction.latency_ms / float(np.median(lat)) - 1,
            "throughput": prediction.throughput_rps / throughput - 1,
            "bytes": prediction.bytes_per_inference / (sum(v for d in link.values() for v in d.values()) / cfg.requests) - 1,
        },
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
    from edgesplit.testbed import Testbed, host_core_gflops

    rng = np.random.default_rng(0)
    n = max(cfg.requests, cfg.kill_requests, cfg.warmup)
    images = rng.integers(0, 256, size=(n, 1, *cfg.input_shape), dtype=np.uint8)  # (N, 1, C, H, W)
    results: dict[str, dict] = {}
    calibration: dict[str, dict] = {}
    devices, exports, part_ms, overheads = None, None, None, None
    from edgesplit.progress import Progress

    total = 0 if cfg.calibrate_only else len(cfg.links) * len(STRATEGY_ORDER)
    with tempfile.TemporaryDirectory(prefix="edgesplit-strategies-") as tmp, Progress(total, "bench strategies", "run") as bar:
        for mbps in cfg.links:
            with Testbed(cfg.fleet, "bench", link_mbps=mbps) as tb:
                devices = tb.devices
                if exports is None:
                    exports = {} if cfg.calibrate_only else _exports(cfg, [d.cpu_share for d in tb.devices], Path(tmp))
                    probes = [_calibration_export(cfg.input_shape, n, Path(tmp) / f"calibration{n}") for n in CALIBRATION_CONVS]
                    part_ms = _part_ms([*exports.values(), *probes])
                    overheads, calls, measured = _calibrate(tb, probes, part_ms, images, cfg)
                    calibration = {
                        "part_ms_one_core": {f"{p.parent.name}/{p.name}": ms for p, ms in sorted(part_ms.items())},
                        "overheads": overheads.__dict__,
                        "calls": {f"{s:g}": c.__dict__ for s, c in calls.items()},
                        "measured": measured,
                        "link_mbps": mbps,
                        "core_gflops": host_core_gflops(),
                    }
                if cfg.calibrate_only:
                    break
                predictions = _predict(tb, exports, part_ms, overheads, calls, cfg)
                for strategy in STRATEGY_ORDER:
                    results.setdefault(strategy, {})[f"{mbps:g}"] = _one_strategy(
                        tb, exports[strategy], predictions[strategy], cfg, images
                    )
                    bar.update(1, done=f"{strategy} at {mbps:g} Mbit/s")
    result = {
        "benchmark": "strategies",
        "machine": machine_info(),
        "fleet": str(cfg.fleet),
        "devices": [{"namespace": d.namespace, "device": d.device, "cpu_share": d.cpu_share} for d in devices],
        "models": {"split": cfg.split_model, "others": cfg.unsplit_model, "input_shape": list(cfg.input_shape)},
        "links_mbps": list(cfg.links),
        "requests": cfg.requests,
        "in_flight": cfg.in_flight,
        "calibration": calibration,
        "strategies": results,
    }
    if cfg.plot and results:
        plot(result, cfg.plot)
        result["plot"] = cfg.plot
    return result


def plot(r: dict, path: str) -> None:
    """Latency (p50) and throughput against link rate, each strategy measured (solid) and predicted (dashed)."""
    fig, (lat, thr) = figure(2, (10, 3.8))
    for i, (strategy, by_link) in enumerate(r["strategies"].items()):
        rates = sorted(by_link, key=float)
        x = [float(m) for m in rates]
        color = f"C{i}"
        lat.plot(x, [by_link[m]["latency"]["p50_ms"] for m in rates], "o-", color=color, label=strategy)
        lat.plot(x, [by_link[m]["predicted"]["latency_ms"] for m in rates], "x--", color=color)
        thr.plot(x, [by_link[m]["throughput_rps"] for m in rates], "o-", color=color, label=strategy)
        thr.plot(x, [by_link[m]["predicted"]["throughput_rps"] for m in rates], "x--", color=color)
    for ax, label in ((lat, "p50 latency, ms (one in flight)"), (thr, f"requests/s ({r['in_flight']} in flight)")):
        ax.set_xscale("log")
        ax.set_xlabel("link rate, Mbit/s")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    lat.set_yscale("log")
    lat.legend(title="measured (o), predicted (x)", fontsize=8)
    devices = ", ".join(f"{d['cpu_share']:g}" for d in r["devices"])
    fig.suptitle(f"{len(r['devices'])} emulated devices (shares of a core: {devices})", fontsize=10)
    save(fig, path)


def text_report(r: dict) -> str:
    """What ``edgesplit bench strategies`` prints of a result: each figure measured, then predicted."""
    devices = ", ".join(f"{d['device']} {d['cpu_share']:.0%} core" for d in r["devices"])
    lines = [
        f"{r['models']['split']} (split) / {r['models']['others']} (the others), "
        f"{'x'.join(map(str, r['models']['input_shape']))}, {len(r['devices'])} emulated devices "
        f"({devices}), {r['requests']} requests; each figure measured / predicted",
        f"{'strategy':<14}{'Mbit/s':>7}{'devs':>5}{'p50 ms':>14}{'p99 ms':>8}{'req/s':>14}{'kB/inf':>14}"
        f"  one device killed: exact/degraded/failed/lost",
    ]
    for share, c in r["calibration"]["calls"].items():
        lines.insert(
            1,
            f"calibrated, a device at {float(share):.0%} of a core: a call's latency {c['latency_ms']:.2f} ms + "
            f"{c['latency_per_part_ms']:.2f} x the part's ms on one core here, its busy time {c['busy_ms']:.2f} ms + "
            f"{c['busy_per_part_ms']:.2f} x; the coordinator {r['calibration']['overheads']['coordinator_ms']:.2f} ms per call",
        )
    for strategy, by_link in r["strategies"].items():
        for mbps, m in by_link.items():
            k, p = m["device_killed"], m["predicted"]
            lines.append(
                f"{strategy:<14}{mbps:>7}{m['devices_used']:>5}"
                f"{m['latency']['p50_ms']:>7.2f} /{p['latency_ms']:>5.1f}{m['latency']['p99_ms']:>8.2f}"
                f"{m['throughput_rps']:>7.1f} /{p['throughput_rps']:>5.0f}"
                f"{m['bytes_per_inference'] / 1e3:>7.1f} /{p['bytes_per_inference'] / 1e3:>5.1f}  "
                f"{k['exact']}/{k['degraded']}/{k['failed']}/{k['lost']}"
            )
    errors = [abs(e) for by_link in r["strategies"].values() for m in by_link.values() for e in m["prediction_error"].values()]
    if errors:
        lines.append(f"predictions within 20% of the measurement: {sum(e <= 0.2 for e in errors)} of {len(errors)}")
    return "\n".join(lines)
