"""``edgesplit bench scale``: how planning grows with the fleet, and how many requests one coordinator routes
(issue 20).

Planning a split network over a fleet (``codesign/fleet.py``) costs the network on each kind of device at each
share of the width and bit width (the hardware model: ``rate_table``), then allocates branches to devices
(``allocate``). Both are timed for fleets of ``sizes`` devices made of ``kinds`` in turn, with a cold hardware
model cache for each size; on fleets up to ``exhaustive_up_to`` devices, the allocation that tries every set of
devices (``allocate_exhaustive``) is timed on the same table and its best throughput compared.

The coordinator's rate: a split model of ``parts`` branches that compute almost nothing (each the mean of a
1x8x8 image; the head one small matrix product) served by local workers over Unix sockets and over loopback
gRPC, ``in_flight`` requests at a time from this process, pinned to one core (the workers share the others).
Its CPU time per request (this process's, all threads) gives the requests/s one coordinator core routes.

The served rate: the real ``edgesplit serve`` (a subprocess) in front of ``groups`` copies of a 2-part tiny split
(a group file when more than one), with ``coordinators`` processes on one address, loaded from this process over
``connections`` gRPC connections of its own; with the CPU time per request of serve's processes and of the client.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from edgesplit.bench.config import ScaleBench
from edgesplit.bench.figures import figure, save
from edgesplit.bench.serve import machine_info
from edgesplit.progress import Progress


def _fleet(kinds: tuple[str, ...], n: int, link_mbps: float, path: Path):
    import yaml

    from edgesplit.codesign.fleet import load_fleet

    counts = {k: len(range(i, n, len(kinds))) for i, k in enumerate(kinds)}
    devices = [{"device": k, "count": c} for k, c in counts.items() if c]
    path.write_text(yaml.safe_dump({"link_mbps": link_mbps, "devices": devices}))
    return load_fleet(path), counts


def _plan_once(cfg: ScaleBench, n: int, root: Path) -> dict:
    from edgesplit.codesign.evaluate import Evaluator, Journal, Targets
    from edgesplit.codesign.fleet import _at_bits, allocate, allocate_exhaustive, bit_options, rate_table
    from edgesplit.codesign.space import Candidate
    from edgesplit.hardware.catalog import get_device

    out = root / f"n{n}"
    out.mkdir(parents=True)
    fleet, counts = _fleet(cfg.kinds, n, cfg.link_mbps, out / "fleet.yaml")
    chosen = Candidate(cfg.bundle)
    ev = Evaluator(
        get_device("pynq-z1"), Targets(30.0), Journal(out / "search.json", {"bench": "scale"}), out, "fashion-mnist", None
    )

    def rate(device, bits, share: float) -> float:
        hw = ev.hardware(_at_bits(chosen, bits), device=device, width_mult=share)
        return hw.fps if hw.fits else 0.0

    h, w = chosen.input_size(ev.image_hw)
    in_bytes, feat_bytes = ev.in_chans * h * w, 4 * chosen.channels[-1]
    t0 = time.perf_counter()
    table = rate_table(rate, fleet, bit_options(chosen))
    t1 = time.perf_counter()
    options = allocate(table, fleet, in_bytes, feat_bytes)
    t2 = time.perf_counter()
    best = options[0]
    row = {
        "devices": n,
        "kinds": counts,
        "table_rows": len(table),
        "table_s": t1 - t0,
        "allocate_s": t2 - t1,
        "plan_s": t2 - t0,
        "best": {k: best[k] for k in ("k", "devices", "bits", "shares", "rate", "link_fps", "fps", "bound")},
    }
    if n <= cfg.exhaustive_up_to:
        t3 = time.perf_counter()
        every = allocate_exhaustive(table, fleet, in_bytes, feat_bytes)
        row["exhaustive"] = {"allocate_s": time.perf_counter() - t3, "fps": every[0]["fps"], "k": every[0]["k"]}
    return row


TINY_SHAPE = (1, 8, 8)


def _tiny_split(k: int, out: Path) -> Path:
    """A split export of ``k`` branches that compute almost nothing: each the mean of the image, the head a
    (k, 10) matrix product."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgesplit.manifest import PartSpec, TensorSpec, sha256_file, write_manifest

    c, h, w = TINY_SHAPE
    out.mkdir(parents=True, exist_ok=True)
    opset = [helper.make_opsetid("", 17)]
    parts = []
    for i in range(k):
        graph = helper.make_graph(
            [helper.make_node("GlobalAveragePool", ["input"], ["p"]), helper.make_node("Flatten", ["p"], ["features"])],
            f"branch{i}",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])],
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", c])],
        )
        onnx.save(helper.make_model(graph, opset_imports=opset), out / f"branch{i}.onnx")
        spec = PartSpec(f"branch{i}", "branch", f"branch{i}.onnx", sha256_file(out / f"branch{i}.onnx"),
                        (TensorSpec("input", (-1, c, h, w), "float32"),), (TensorSpec("features", (-1, c), "float32"),))  # fmt: skip
        parts.append(spec.to_dict())
    weights = numpy_helper.from_array(np.eye(k * c, 10, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits"])],
        "head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", k * c])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [weights],
    )
    onnx.save(helper.make_model(graph, opset_imports=opset), out / "head.onnx")
    head = PartSpec("head", "head", "head.onnx", sha256_file(out / "head.onnx"),
                    (TensorSpec("features", (-1, k * c), "float32"),), (TensorSpec("logits", (-1, 10), "float32"),))  # fmt: skip
    parts.append(head.to_dict())
    body = {"model": f"tiny-split{k}", "model_kwargs": {}, "input_shape": list(TINY_SHAPE),
            "preprocess": {"size": [h, w], "mean": [0.5] * c, "std": [0.25] * c}, "classes": [str(i) for i in range(10)],
            "feature_dims": [c] * k, "parts": parts, "opset": 17}  # fmt: skip
    write_manifest(out, body)
    return out


async def _route(plan, cfg: ScaleBench) -> tuple[float, float]:
    """Requests/s and this process's CPU microseconds per request, ``cfg.in_flight`` requests at a time."""
    from edgesplit.runtime.client import AsyncClient

    client = await AsyncClient.connect(plan)
    try:
        x = np.random.default_rng(0).integers(0, 256, (1, *TINY_SHAPE), dtype=np.uint8)
        for _ in range(50):
            await client.infer(x)
        slots = asyncio.Semaphore(cfg.in_flight)

        async def one():
            async with slots:
                await client.infer(x)

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(cfg.requests))), timeout=600)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await client.close()
    return cfg.requests / wall, cpu / cfg.requests * 1e6


def _coordinator_rate(cfg: ScaleBench, root: Path) -> list[dict]:
    from edgesplit.runtime.cluster import LocalCluster
    from edgesplit.runtime.transport import TRANSPORTS

    rows = []
    before = os.sched_getaffinity(0)
    try:
        for k in cfg.parts:
            export = _tiny_split(k, root / f"tiny{k}")
            for transport in TRANSPORTS:
                with LocalCluster(export, transport=transport) as cluster:
                    os.sched_setaffinity(0, {min(before)})  # the workers, started first, keep the other cores
                    runs = [asyncio.run(_route(cluster.plan(), cfg)) for _ in range(cfg.rounds)]
                    os.sched_setaffinity(0, before)
                rps, us = (float(np.median([r[i] for r in runs])) for i in (0, 1))
                rows.append({"parts": k, "transport": transport, "rps": rps, "cpu_us_per_request": us,
                             "rps_per_core": 1e6 / us, "runs": [list(r) for r in runs]})  # fmt: skip
    finally:
        os.sched_setaffinity(0, before)
    return rows


def _serve_rate(cfg: ScaleBench, root: Path) -> list[dict]:
    """Aggregate requests/s of ``edgesplit serve`` (the real command, a subprocess) over ``groups`` copies of a
    2-part tiny split on local workers, with ``coordinators`` processes on one address; the load from this
    process over ``connections`` connections of its own (``in_flight`` requests in all)."""
    import subprocess
    import sys

    import yaml

    from edgesplit.runtime.cluster import LocalCluster

    export = _tiny_split(2, root / "tiny-served")
    rows = []
    for groups in cfg.groups:
        clusters = [LocalCluster(export).start() for _ in range(groups)]
        try:
            for i, cluster in enumerate(clusters):
                cluster.plan().write(root / f"group{i}.yaml")
            (root / "groups.yaml").write_text(yaml.safe_dump({"groups": [f"group{i}.yaml" for i in range(groups)]}))
            plan = root / ("groups.yaml" if groups > 1 else "group0.yaml")
            for n in cfg.coordinators:
                cmd = [sys.executable, "-m", "edgesplit", "serve", "--plan", str(plan), "--port", "0", "--coordinators", str(n)]
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                try:
                    line = proc.stdout.readline()
                    if not line.startswith("EDGESPLIT-SERVE-READY"):
                        raise RuntimeError(f"edgesplit serve did not start: {line!r}")
                    port = int(line.split("port=")[1])
                    runs = []
                    for _ in range(cfg.rounds):
                        cpu0, own0 = _tree_cpu_s(proc.pid), time.process_time()
                        rps = asyncio.run(_load(port, "tiny-split2", cfg))
                        us = [
                            (_tree_cpu_s(proc.pid) - cpu0) / cfg.requests * 1e6,
                            (time.process_time() - own0) / cfg.requests * 1e6,
                        ]
                        runs.append([rps, *us])
                finally:
                    proc.terminate()
                    proc.wait(60)
                rps, serve_us, client_us = (float(np.median([r[i] for r in runs])) for i in range(3))
                rows.append({"groups": groups, "coordinators": n, "rps": rps, "serve_cpu_us_per_request": serve_us,
                             "client_cpu_us_per_request": client_us, "runs": runs})  # fmt: skip
        finally:
            for cluster in clusters:
                cluster.stop()
    return rows


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and of its children, theirs included."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
    return total


async def _load(port: int, model: str, cfg: ScaleBench) -> float:
    """Requests/s from ``cfg.connections`` connections of their own, ``cfg.in_flight`` requests in flight in all."""
    import grpc

    from edgesplit.runtime.transport.codec import parse_response, serialize_request

    x = np.random.default_rng(0).integers(0, 256, (1, *TINY_SHAPE), dtype=np.uint8)
    body = serialize_request(model, {"input": x})
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(cfg.connections)
    ]
    calls = [ch.unary_unary("/inference.GRPCInferenceService/ModelInfer") for ch in channels]
    try:
        for call in calls:  # connected, and every coordinator warm
            for _ in range(20):
                outputs, _ = parse_response(await call(body, timeout=30))
        assert outputs["logits"].shape == (1, 10)
        slots, turn = asyncio.Semaphore(cfg.in_flight), iter(range(cfg.requests))

        async def one(i: int):
            async with slots:
                await calls[i % len(calls)](body, timeout=30)

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in turn)), timeout=600)
        return cfg.requests / (time.perf_counter() - t0)
    finally:
        for ch in channels:
            await ch.close()


def bench_scale(cfg: ScaleBench) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgesplit-scale-") as tmp:
        # the coordinator first: planning loads torch and the hardware model, a heap that slows every later turn of
        # the event loop's garbage collection
        coordinator = _coordinator_rate(cfg, Path(tmp)) if cfg.parts else []
        served = _serve_rate(cfg, Path(tmp)) if cfg.coordinators and cfg.groups else []
        # a first plan loads the ONNX exporter and fills the CPU's caches: timed apart, once per process
        warm_up = _plan_once(cfg, min(cfg.sizes), Path(tmp) / "warm-up")
        planning = []
        with Progress(len(cfg.sizes), "bench scale: planning", "fleet") as bar:
            for n in cfg.sizes:
                planning.append(_plan_once(cfg, n, Path(tmp)))
                bar.update(1, devices=n)
    result = {
        "benchmark": "scale",
        "machine": machine_info(),
        "network": f"{cfg.bundle} co-design candidate (8-bit), Fashion-MNIST input",
        "link_mbps": cfg.link_mbps,
        "planning_warm_up": {"devices": warm_up["devices"], "plan_s": warm_up["plan_s"]},
        "planning": planning,
        "coordinator": {"in_flight": cfg.in_flight, "requests": cfg.requests, "rounds": cfg.rounds, "rows": coordinator},
        "served": {"connections": cfg.connections, "in_flight": cfg.in_flight, "requests": cfg.requests, "rows": served},
    }
    if cfg.plot:
        plot(result, cfg.plot)
        result["plot"] = cfg.plot
    return result


def plot(r: dict, path: str) -> None:
    """Planning time against fleet size (table, allocation, every set of devices); the coordinator's requests/s;
    serve's requests/s against groups and coordinators."""
    served = r.get("served", {}).get("rows", [])
    fig, (plan, coord, *rest) = figure(3 if served else 2, (15 if served else 10, 3.8))
    rows = r["planning"]
    n = [row["devices"] for row in rows]
    plan.plot(n, [row["table_s"] for row in rows], "o-", label="table of rates (hardware model)")
    plan.plot(n, [row["allocate_s"] for row in rows], "o-", label="allocation by kinds")
    every = [row for row in rows if row.get("exhaustive")]
    if every:
        plan.plot([row["devices"] for row in every], [row["exhaustive"]["allocate_s"] for row in every], "s--",
                  label="every set of devices")  # fmt: skip
    plan.set_xscale("log")
    plan.set_yscale("log")
    plan.set_xlabel("devices in the fleet")
    plan.set_ylabel("seconds")
    plan.legend(fontsize=8)
    plan.grid(alpha=0.3)
    crow = r["coordinator"]["rows"]
    for i, transport in enumerate(sorted({row["transport"] for row in crow})):
        mine = [row for row in crow if row["transport"] == transport]
        coord.plot(
            [row["parts"] for row in mine], [row["rps"] for row in mine], "o-", color=f"C{i}", label=f"{transport}: achieved"
        )
        coord.plot([row["parts"] for row in mine], [row["rps_per_core"] for row in mine], "x--", color=f"C{i}",
                   label=f"{transport}: per coordinator core (CPU time)")  # fmt: skip
    coord.set_xlabel("parts per request")
    coord.set_ylabel("requests/s")
    coord.set_yscale("log")
    coord.legend(fontsize=8)
    coord.grid(alpha=0.3)
    if served:
        ax = rest[0]
        groups = sorted({row["groups"] for row in served})
        counts = sorted({row["coordinators"] for row in served})
        width = 0.8 / len(counts)
        for j, n in enumerate(counts):
            rps = [next((row["rps"] for row in served if row["groups"] == g and row["coordinators"] == n), 0) for g in groups]
            ax.bar([i + j * width for i in range(len(groups))], rps, width, label=f"{n} coordinator(s)")
        ax.set_xticks([i + width * (len(counts) - 1) / 2 for i in range(len(groups))], [f"{g} group(s)" for g in groups])
        ax.set_ylabel("requests/s (edgesplit serve)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    save(fig, path)


def text_report(r: dict) -> str:
    """What ``edgesplit bench scale`` prints of a result."""
    lines = [
        f"planning {r['network']} over fleets of {', '.join(r['planning'][0]['kinds'])} in turn, link {r['link_mbps']:g} Mbit/s",
        f"{'devices':>8}{'table s':>9}{'allocate s':>12}{'plan s':>8}  best (k, FPS, bound){'':>4}every set of devices",
    ]
    if w := r.get("planning_warm_up"):
        lines.insert(
            1, f"(a first plan of {w['devices']} devices, loading the ONNX exporter, took {w['plan_s']:.2f} s: not in the rows)"
        )
    for row in r["planning"]:
        b, e = row["best"], row.get("exhaustive")
        every = f"{e['allocate_s']:.3f} s, k={e['k']}, {e['fps']:.1f} FPS" if e else "-"
        lines.append(
            f"{row['devices']:>8}{row['table_s']:>9.2f}{row['allocate_s']:>12.4f}{row['plan_s']:>8.2f}  "
            f"k={b['k']}, {b['fps']:.1f} FPS, {b['bound']:<8}{every}"
        )
    c = r["coordinator"]
    if c["rows"]:
        lines.append(f"one coordinator, parts that compute almost nothing, {c['in_flight']} requests in flight (medians):")
        for row in c["rows"]:
            lines.append(
                f"  {row['parts']} parts over {row['transport']:<5}: {row['rps']:7.0f} req/s, "
                f"{row['cpu_us_per_request']:5.0f} us of coordinator CPU per request = {row['rps_per_core']:6.0f} req/s per core"
            )
    if (s := r.get("served")) and s["rows"]:
        lines.append(
            f"`edgesplit serve`, 2 tiny parts per group, {s['connections']} client connections, {s['in_flight']} in flight (medians):"
        )
        for row in s["rows"]:
            lines.append(
                f"  {row['groups']} group(s), {row['coordinators']} coordinator(s): {row['rps']:7.0f} req/s; CPU per request: "
                f"serve {row['serve_cpu_us_per_request']:4.0f} us, the client {row['client_cpu_us_per_request']:4.0f} us"
            )
    return "\n".join(lines)
