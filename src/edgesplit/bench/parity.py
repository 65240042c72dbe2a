"""``edgesplit bench parity EXPORT``: a split model with learned parity branches (``add-parity``, then ``export``)
on local workers, one data branch's worker lost mid-run, on real test images.

Scenarios, each over the same ``images`` test images with ``in_flight`` requests at a time: fault-free; the last
data branch's worker killed (SIGKILL: a device unplugged) after ``fault_at`` of the images; the same worker
frozen (SIGSTOP: a device that hangs) at that point and thawed at the end. Per scenario: answers lost (a request
with no answer), answers by kind (exact, recovered from the parity, degraded), the accuracy of all answers and
of the recovered ones alone, and latency p50/p99 against the fault-free run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np

from edgesplit.bench.config import ParityBench
from edgesplit.bench.serve import machine_info
from edgesplit.runtime.stats import latency_summary


async def _run(plan, x: np.ndarray, labels: np.ndarray, cfg: ParityBench, fault) -> dict:
    from edgesplit.runtime.client import AsyncClient
    from edgesplit.runtime.errors import DeadlineExceeded, PartUnavailable

    client = await AsyncClient.connect(plan)
    slots, done = asyncio.Semaphore(cfg.in_flight), [0]
    fault_after = int(cfg.fault_at * len(x))
    out: list = [None] * len(x)

    async def one(i: int):
        async with slots:
            if fault is not None and i == fault_after:
                fault()
            t0 = time.perf_counter()
            try:
                r = await client.infer_result(x[i : i + 1])
            except (PartUnavailable, DeadlineExceeded) as err:
                out[i] = {"error": str(err)}
                return
            out[i] = {
                "ms": (time.perf_counter() - t0) * 1e3,
                "pred": int(r.outputs["logits"][0].argmax()),
                "recovered": bool(r.parameters.get("recovered")),
                "degraded": bool(r.parameters.get("degraded")),
            }
            done[0] += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(x)))), timeout=600)
    finally:
        await client.close()
    answered = [(o, y) for o, y in zip(out, labels) if o and "ms" in o]
    recovered = [(o, y) for o, y in answered if o["recovered"]]
    return {
        "lost": sum(1 for o in out if not o or "ms" not in o),
        "exact": sum(1 for o, _ in answered if not o["recovered"] and not o["degraded"]),
        "recovered": len(recovered),
        "degraded": sum(1 for o, _ in answered if o["degraded"]),
        "accuracy": float(np.mean([o["pred"] == y for o, y in answered])) if answered else None,
        "recovered_accuracy": float(np.mean([o["pred"] == y for o, y in recovered])) if recovered else None,
        "latency": latency_summary([o["ms"] for o, _ in answered]),
    }


def bench_parity(cfg: ParityBench) -> dict:
    from edgesplit.data.datasets import load_dataset
    from edgesplit.errors import EdgesplitError
    from edgesplit.manifest import load_manifest
    from edgesplit.runtime.cluster import LocalCluster

    manifest = load_manifest(cfg.export)
    stage = manifest.stages[0]
    if stage.merge != "decode" or stage.code_exact:
        raise EdgesplitError(f"{cfg.export} has no learned parity branches; `edgesplit add-parity`, then export, makes one")
    victim = [p.name for p in manifest.branches][-1]
    test = load_dataset("fashion-mnist", "test", cfg.data_dir)
    idx = np.arange(min(cfg.images, len(test)))
    x = np.ascontiguousarray(test.images(idx).transpose(0, 3, 1, 2))
    labels = test.labels(idx)
    from edgesplit.progress import Progress

    results = {}
    bar = Progress(3, "bench parity", "scenario")
    for scenario in ("fault_free", "kill", "freeze"):
        with LocalCluster(cfg.export, timeout_ms=cfg.timeout_ms) as cluster:
            pid = cluster.workers[victim].proc.pid
            fault = {
                "fault_free": None,
                "kill": lambda: cluster.kill(victim),
                "freeze": lambda: os.kill(pid, signal.SIGSTOP),
            }[scenario]
            try:
                results[scenario] = asyncio.run(_run(cluster.plan(parity_slack=cfg.parity_slack), x, labels, cfg, fault))
            finally:
                if scenario == "freeze":
                    os.kill(pid, signal.SIGCONT)  # thawed, so that it stops like the others
        bar.update(1, done=scenario)
    bar.close()
    base = results["fault_free"]["latency"]["p99_ms"]
    for r in results.values():
        r["p99_vs_fault_free"] = r["latency"]["p99_ms"] / base if r["latency"]["n"] else None
    return {
        "benchmark": "parity",
        "machine": machine_info(),
        "export": str(cfg.export),
        "model": manifest.model,
        "code": {"k": stage.code_k, "r": stage.code_r, "kind": stage.code_kind},
        "victim": victim,
        "images": len(x),
        "in_flight": cfg.in_flight,
        "fault_at": cfg.fault_at,
        "timeout_ms": cfg.timeout_ms,
        "parity_slack": cfg.parity_slack,
        "scenarios": results,
    }


def text_report(r: dict) -> str:
    lines = [
        f"{r['model']} with {r['code']['r']} parity branch(es) over {r['code']['k']}, {r['images']} test images per "
        f"scenario, {r['in_flight']} in flight; {r['victim']}'s worker lost after {r['fault_at']:.0%} of them",
        f"{'scenario':<11}{'lost':>5}{'exact':>7}{'recovered':>10}{'degraded':>9}{'accuracy':>9}{'recovered acc.':>15}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'p99 / fault-free':>17}",
    ]
    for name, s in r["scenarios"].items():
        lat = s["latency"]
        acc = f"{s['recovered_accuracy']:.4f}" if s["recovered_accuracy"] is not None else "-"
        lines.append(
            f"{name:<11}{s['lost']:>5}{s['exact']:>7}{s['recovered']:>10}{s['degraded']:>9}{s['accuracy']:>9.4f}{acc:>15}"
            f"{lat['p50_ms']:>8.2f}{lat['p99_ms']:>8.2f}{s['p99_vs_fault_free']:>17.2f}"
        )
    return "\n".join(lines)
