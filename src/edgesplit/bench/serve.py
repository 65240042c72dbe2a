"""``edgesplit bench serve``: where the time goes when a split model is served by local workers.

Measures, in one run on this machine:
(a) each branch's compute time inside its worker (reported by the worker with every answer),
(b) end-to-end latency through the coordinator and the local workers, one request at a time,
(c) sustained throughput with several requests in flight, and the CPU time per request each process used,
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

from edgesplit.bench.config import ServeBench
from edgesplit.progress import Progress
from edgesplit.runtime.coordinator import TRACE_HOPS
from edgesplit.runtime.stats import latency_summary
from edgesplit.runtime.tuning import deferring_to_workers


def _export_random(
    model_name: str, input_shape, num_classes: int, out_dir: Path, pipeline: int = 0, pipeline_speeds=None
) -> Path:
    """``model_name`` with its initial (random) weights, exported (cut into ``pipeline`` stages when given, balanced
    for ``pipeline_speeds``): speed and bytes do not depend on the weights."""
    import torch

    from edgesplit.export.onnx_export import export_model
    from edgesplit.models import create_model

    c, h, w = input_shape
    kw = {"num_classes": num_classes, "in_chans": c, "input_size": [h, w]}
    torch.manual_seed(0)
    model = create_model(model_name, **kw).eval()
    ckpt = {
        "model": model_name,
        "model_kwargs": kw,
        "classes": [str(i) for i in range(num_classes)],
        "preprocess": {"size": [h, w], "mean": [0.5] * c, "std": [0.25] * c},
    }
    export_model(model, ckpt, out_dir, pipeline=pipeline, pipeline_speeds=pipeline_speeds)
    return out_dir


async def _drive_coordinator(
    plan, send: np.ndarray, warmup: int, in_flight: int, pids: dict[str, int], unsplit, x_float: list[np.ndarray], block: int
):
    """(a) + (b): one request at a time through the coordinator, traced; then (c) and (d) in alternating blocks of
    ``block`` images: the split model with ``in_flight`` requests at once, and the unsplit engine (``unsplit``) one
    image at a time, so that both throughputs are measured under the same conditions of this shared machine.
    Returns end-to-end latencies, each part's timings per request (from the answer's parameters), the split and
    unsplit wall times of the throughput blocks, the unsplit latencies, and the CPU time per request the split blocks
    took in this process (the coordinator) and in each worker (``pids``)."""
    from edgesplit.runtime.client import AsyncClient

    client = await AsyncClient.connect(plan)
    try:
        with deferring_to_workers():  # the coordinator's thread, as Client and edgesplit serve run it beside local workers
            for img in send[:warmup]:
                await client.infer(img)
            client.coordinator.trace = True  # per-hop times for the breakdown (this run only: one request at a time)
            lat, parts = [], {}
            for img in send:
                t0 = time.perf_counter()
                r = await client.infer_result(img)
                lat.append((time.perf_counter() - t0) * 1e3)
                for k, v in r.parameters.items():
                    for key in PART_KEYS:
                        if k.endswith("_" + key):
                            parts.setdefault(k[: -len(key) - 1], {}).setdefault(key, []).append(v)
            client.coordinator.trace = False
            sem = asyncio.Semaphore(in_flight)

            async def one(img):
                async with sem:
                    await client.infer(img)

            await asyncio.gather(*(one(img) for img in send[:warmup]))
        for x in x_float[:warmup]:
            unsplit.run({"input": x})
        return (lat, parts, *await _throughput_blocks(one, send, pids, unsplit, x_float, block))
    finally:
        await client.close()


async def _throughput_blocks(
    one, send: np.ndarray, pids: dict[str, int], unsplit, x_float: list[np.ndarray], block: int
) -> tuple[float, dict[str, float], list[float], float]:
    """(c) and (d): blocks of ``block`` images, alternately through the split model (``one(image)``, as many in
    flight as it allows) and the unsplit engine (one at a time). Returns the split blocks' wall time and CPU per
    request (this process, the coordinator, and each worker of ``pids``), the unsplit latencies and wall time."""
    split_wall = unsplit_wall = own = 0.0
    cpu = dict.fromkeys(pids, 0.0)
    unsplit_lat = []
    for i, start in enumerate(range(0, len(send), block)):
        for phase in ("unsplit", "split") if i % 2 == 0 else ("split", "unsplit"):
            await asyncio.sleep(SETTLE_S)  # the unsplit engine's spinning thread pool has stopped spinning
            if phase == "unsplit":
                t_block = time.perf_counter()
                for x in x_float[start : start + block]:
                    t0 = time.perf_counter()
                    unsplit.run({"input": x})
                    unsplit_lat.append((time.perf_counter() - t0) * 1e3)
                unsplit_wall += time.perf_counter() - t_block
                continue
            cpu0 = {name: process_cpu_s(pid) for name, pid in pids.items()}
            t0, own0 = time.perf_counter(), time.process_time()
            with deferring_to_workers():  # the unsplit baseline runs with the default policy
                await asyncio.gather(*(one(img) for img in send[start : start + block]))
            split_wall += time.perf_counter() - t0
            own += time.process_time() - own0
            for name, pid in pids.items():
                cpu[name] += process_cpu_s(pid) - cpu0[name]
    cpu_ms = {"coordinator": own / len(send) * 1e3, **{name: c / len(send) * 1e3 for name, c in cpu.items()}}
    return split_wall, cpu_ms, unsplit_lat, unsplit_wall


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) another process has used so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


# ONNX Runtime's spinning thread pool (the unsplit baseline's) keeps burning CPU for tens of ms after its last run;
# throughput blocks start this long after the previous one, so that neither model pays for the other
SETTLE_S = 0.15

PART_KEYS = ("compute_ms", "server_ms", "arrival_ms", *TRACE_HOPS)


def breakdown(lat: list[float], parts: dict[str, dict[str, list[float]]]) -> dict:
    """Where one request's time goes, as medians over requests (ms). Per part: ``compute`` (the engine),
    ``handler`` (the worker's decoding, checks, uint8 normalisation, encoding), ``transport`` (from the
    stage's start to the answer's arrival, minus the worker's handler time: serialising, the socket or
    gRPC, waking the worker). Then ``wait_for_slowest`` (the stage ends with its last part: the slowest
    arrival minus the median arrival of the parts) and ``coordinator`` (everything else: input checks,
    concatenation, the head, asyncio).

    ``hops`` splits each part's transport by the traced times (``Coordinator.trace``; ms, medians):
    ``before_send`` (request start to the request handed to the transport: input checks, the shared-memory
    copy, encoding; the later part's includes the earlier one's send), ``to_worker`` (until the worker had it: the socket,
    waking the worker), ``worker_dispatch`` (the worker's time around its handler: reading the frame,
    scheduling, parsing), ``back`` (answer ready to decoded here: encoding, the socket, waking the
    coordinator, decoding); and ``after_last_answer`` (the last decoded answer to the end: the stage's
    bookkeeping, concatenation, the head, returning)."""
    arrival = np.array([parts[p]["arrival_ms"] for p in parts])  # (P, N)
    server = np.array([parts[p]["server_ms"] for p in parts])
    compute = np.array([parts[p]["compute_ms"] for p in parts])
    e2e = np.asarray(lat)
    per_part = {
        p: {
            "compute": float(np.median(compute[i])),
            "handler": float(np.median(server[i] - compute[i])),
            "transport": float(np.median(arrival[i] - server[i])),
        }
        for i, p in enumerate(parts)
    }
    out = {
        "parts": per_part,
        "wait_for_slowest": float(np.median(arrival.max(axis=0) - np.median(arrival, axis=0))),
        "coordinator": float(np.median(e2e - arrival.max(axis=0))),
        "end_to_end": float(np.median(e2e)),
    }
    if all(len(parts[p].get(k, ())) == len(e2e) for p in parts for k in TRACE_HOPS):
        hop = {k: np.array([parts[p][k] for p in parts]) for k in TRACE_HOPS}  # (P, N) each
        out["hops"] = {
            "parts": {
                p: {
                    "before_send": float(np.median(hop["sent_ms"][i])),
                    "to_worker": float(np.median(hop["received_ms"][i] - hop["sent_ms"][i])),
                    "worker_dispatch": float(np.median(hop["answered_ms"][i] - hop["received_ms"][i] - server[i])),
                    "back": float(np.median(hop["decoded_ms"][i] - hop["answered_ms"][i])),
                }
                for i, p in enumerate(parts)
            },
            "after_last_answer": float(np.median(e2e - hop["decoded_ms"].max(axis=0))),
        }
    return out


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


def bench_serve(cfg: ServeBench) -> dict:
    """Each round measures the split model over each transport (``ipc``: the local cluster's Unix sockets, the
    default; ``grpc``: loopback gRPC) in turn: its latencies one request at a time, then its throughput in blocks
    of ``block`` images alternating with blocks of the unsplit baseline, so that each speedup compares two
    throughputs measured under the same conditions. Ratios are computed per round and their medians reported (this
    machine is shared and noisy). The headline figures are the first transport's. ``poll_ms``: the workers'
    ``--poll-ms`` (Unix socket only)."""
    model, input_shape, requests, in_flight, num_classes = (
        cfg.model,
        cfg.input_shape,
        cfg.requests,
        cfg.in_flight,
        cfg.num_classes,
    )
    warmup, input_dtype, rounds, transports, poll_ms, block = (
        cfg.warmup,
        cfg.input_dtype,
        cfg.rounds,
        cfg.transports,
        cfg.poll_ms,
        cfg.block,
    )
    from contextlib import ExitStack

    import edgesplit
    from edgesplit.models import create_model
    from edgesplit.runtime.cluster import LocalCluster
    from edgesplit.runtime.engines import OnnxRuntimeEngine
    from edgesplit.runtime.local import LocalModel

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(requests, 1, *input_shape), dtype=np.uint8)  # (N, 1, C, H, W)
    unsplit_name = getattr(create_model(model), "unsplit_name", None) or model
    ncores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_round = []
    with tempfile.TemporaryDirectory(prefix="edgesplit-bench-") as tmp, ExitStack() as stack:
        split_dir = _export_random(model, input_shape, num_classes, Path(tmp) / "split")
        unsplit_dir = _export_random(unsplit_name, input_shape, num_classes, Path(tmp) / "unsplit")
        pre = LocalModel(split_dir).pre
        x_float = [pre.normalize(img) for img in images]
        send = images if input_dtype == "uint8" else np.stack(x_float)
        # the baseline as a user would run it: all cores, ONNX Runtime defaults (spinning thread pool)
        unsplit = OnnxRuntimeEngine(Path(unsplit_dir) / "model.onnx", threads=ncores, spin=True)
        clusters = {
            t: stack.enter_context(
                LocalCluster(split_dir, input_dtype=input_dtype, timeout_ms=10_000, transport=t, poll_ms=poll_ms)
            )
            for t in transports
        }
        cpus = {p: w.cpus for p, w in clusters[transports[0]].workers.items()}
        bar = stack.enter_context(Progress(rounds, "bench serve", "round"))
        for _ in range(rounds):
            row = {}
            for t, cluster in clusters.items():
                pids = {name: w.proc.pid for name, w in cluster.workers.items()}
                lat, parts, split_wall, cpu_ms, base_lat, base_wall = asyncio.run(
                    _drive_coordinator(cluster.plan(), send, warmup, in_flight, pids, unsplit, x_float, block)
                )
                branch = {name: latency_summary(v["compute_ms"]) for name, v in parts.items()}
                e2e = latency_summary(lat)
                split_rps, base_rps = requests / split_wall, requests / base_wall
                row[t] = {
                    "branch_compute": branch,
                    "end_to_end": e2e,
                    "split_throughput_rps": split_rps,
                    "unsplit": {"latency": latency_summary(base_lat), "throughput_rps": base_rps},
                    "breakdown_ms": breakdown(lat, parts),
                    "cpu_ms_per_request": cpu_ms,
                    "overhead_ratio": e2e["p50_ms"] / max(b["p50_ms"] for b in branch.values()),
                    "throughput_speedup": split_rps / base_rps,
                }
            per_round.append(row)
            bar.update(1)
        bar.close()
        with edgesplit.connect(clusters[transports[0]].plan()) as client:  # the blocking API, for reference
            for img in send[:warmup]:
                client.infer(img)
            blocking = []
            for img in send:
                t0 = time.perf_counter()
                client.infer(img)
                blocking.append((time.perf_counter() - t0) * 1e3)

    def med(values) -> float:
        return float(np.median(list(values)))

    def summary(t: str) -> dict:
        rs = [r[t] for r in per_round]
        parts = rs[0]["branch_compute"]
        return {
            "overhead_ratio": med(r["overhead_ratio"] for r in rs),
            "throughput_speedup": med(r["throughput_speedup"] for r in rs),
            "branch_compute_p50_ms": {n: med(r["branch_compute"][n]["p50_ms"] for r in rs) for n in parts},
            "end_to_end_p50_ms": med(r["end_to_end"]["p50_ms"] for r in rs),
            "end_to_end_p99_ms": med(r["end_to_end"]["p99_ms"] for r in rs),
            "split_throughput_rps": med(r["split_throughput_rps"] for r in rs),
            "unsplit_p50_ms": med(r["unsplit"]["latency"]["p50_ms"] for r in rs),  # in the blocks beside the split ones
            "unsplit_throughput_rps": med(r["unsplit"]["throughput_rps"] for r in rs),
            "cpu_ms_per_request": {k: med(r["cpu_ms_per_request"][k] for r in rs) for k in rs[0]["cpu_ms_per_request"]},
            "breakdown_ms": {
                "parts": {
                    n: {k: med(r["breakdown_ms"]["parts"][n][k] for r in rs) for k in ("compute", "handler", "transport")}
                    for n in parts
                },
                **{k: med(r["breakdown_ms"][k] for r in rs) for k in ("wait_for_slowest", "coordinator", "end_to_end")},
                **(
                    {
                        "hops": {
                            "parts": {
                                n: {
                                    k: med(r["breakdown_ms"]["hops"]["parts"][n][k] for r in rs)
                                    for k in rs[0]["breakdown_ms"]["hops"]["parts"][n]
                                }
                                for n in parts
                            },
                            "after_last_answer": med(r["breakdown_ms"]["hops"]["after_last_answer"] for r in rs),
                        }
                    }
                    if all("hops" in r["breakdown_ms"] for r in rs)
                    else {}
                ),
            },
        }

    by_transport = {t: summary(t) for t in transports}
    return {
        "benchmark": "serve",
        "model": model,
        "unsplit_model": unsplit_name,
        "input_shape": list(input_shape),
        "input_dtype": input_dtype,
        "requests": requests,
        "in_flight": in_flight,
        "rounds": rounds,
        "worker_poll_ms": poll_ms,
        "throughput_block": block,
        "machine": machine_info(),
        "worker_cpus": cpus,
        "unsplit_threads": ncores,
        "transport": transports[0],
        **by_transport[transports[0]],  # the headline figures, unsplit ones included (measured beside this transport)
        "end_to_end_blocking_client": latency_summary(blocking),
        "transports": by_transport,
        "per_round": per_round,
    }


def text_report(r: dict) -> str:
    """What ``edgesplit bench serve`` prints of a result."""
    lines = [
        f"{r['model']} {'x'.join(map(str, r['input_shape']))} on {r['machine']['cores']} cores ({r['machine']['cpu']}), "
        f"medians of {r['rounds']} rounds of {r['requests']} requests",
        f"  unsplit {r['unsplit_model']} ORT x{r['unsplit_threads']} threads  p50 {r['unsplit_p50_ms']:7.3f} ms, "
        f"{r['unsplit_throughput_rps']:.1f} req/s",
    ]
    for t, m in r["transports"].items():
        b = m["breakdown_ms"]
        lines.append(f"  split over {t}:")
        for name, part in b["parts"].items():
            lines.append(
                f"    {name}: compute {part['compute']:6.3f} ms  worker handler {part['handler']:5.3f} ms  "
                f"transport {part['transport']:5.3f} ms"
            )
        lines.append(f"    waiting for the slower branch {b['wait_for_slowest']:.3f} ms, coordinator {b['coordinator']:.3f} ms")
        if "hops" in b:
            for name, h in b["hops"]["parts"].items():
                lines.append(
                    f"    {name} transport, traced: before send {h['before_send']:.3f}  to worker {h['to_worker']:.3f}  "
                    f"worker dispatch {h['worker_dispatch']:.3f}  back {h['back']:.3f} ms"
                )
            lines.append(f"    after the last answer (concatenation, head, return) {b['hops']['after_last_answer']:.3f} ms")
        lines.append(
            f"    end to end, 1 in flight p50 {m['end_to_end_p50_ms']:7.3f} ms   p99 {m['end_to_end_p99_ms']:7.3f} ms;  "
            f"{r['in_flight']} in flight {m['split_throughput_rps']:6.1f} req/s "
            f"(unsplit in the blocks between: {m['unsplit_throughput_rps']:.1f} req/s)"
        )
        lines.append(
            f"    CPU per request at {r['in_flight']} in flight: "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in m["cpu_ms_per_request"].items())
        )
        lines.append(f"    overhead_ratio {m['overhead_ratio']:.3f}   throughput_speedup {m['throughput_speedup']:.3f}")
    lines.append(f"  blocking client over {r['transport']}: end to end p50 {r['end_to_end_blocking_client']['p50_ms']:.3f} ms")
    return "\n".join(lines)
