"""``edgesplit bench faults``: AlexNet's FC layers over 4 data workers, with and without 1 parity worker.

Scenarios, each run with coding (4 + r workers, r = 1 by default) and without (4 workers),
one request at a time through a local cluster (Unix sockets). ``parity_policy``: ``eager`` asks
every block at once; ``lazy`` asks the parity blocks only when a data block fails or is late
(the plan's ``parity``), so parity workers sharing the cores cost nothing while all goes well:
* ``fault_free``;
* ``straggler_one``: one device straggles: 10% of its calls take 10x their compute time;
* ``straggler_all``: every device straggles independently the same way;
* ``kill``: one data worker is killed after a third of the requests and restarted
  after two thirds.
For each: p50/p99/max latency; requests sent, answered exactly, recovered (decoded
from parity), degraded (flagged, missing blocks zeroed), errors, lost (no outcome
at all: must be 0); the largest relative error of recovered answers against the
fault-free float64 reference; decoding time as a share of latency; the arrival times
of every block's answer (histogram PNG, as on the edge-collaboration slides).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from edgesplit.bench.config import FaultsBench
from edgesplit.bench.figures import figure, save
from edgesplit.bench.serve import machine_info
from edgesplit.runtime.stats import latency_summary

K_DATA = 4
STRAGGLE_PROB, STRAGGLE_SLOWDOWN = 0.1, 10.0
LAYER_NAMES = ("fc6", "fc7")


def _run_scenario(
    export_dir: Path,
    n_workers: int,
    scenario: str,
    xs: np.ndarray,
    refs: np.ndarray,
    timeout_ms: float,
    parity_policy: str = "eager",
) -> dict:
    import edgesplit
    from edgesplit.runtime.cluster import LocalCluster

    groups = [[f"{layer}.{j}" for layer in LAYER_NAMES] for j in range(n_workers)]
    names = [",".join(g) for g in groups]
    straggle = ["--inject-slowdown", str(STRAGGLE_SLOWDOWN), "--inject-prob", str(STRAGGLE_PROB)]
    extra = {}
    if scenario == "straggler_one":
        extra = {names[1]: straggle + ["--inject-seed", "1"]}
    elif scenario == "straggler_all":
        extra = {name: straggle + ["--inject-seed", str(i)] for i, name in enumerate(names)}
    n = len(xs)
    counts = {"sent": n, "exact": 0, "recovered": 0, "degraded": 0, "errors": 0, "lost": 0, "parity_asked": 0}
    lat, decode_share, arrivals, worst_err = [], [], [], 0.0
    with (
        LocalCluster(export_dir, groups=groups, pin=False, extra_args=extra, timeout_ms=timeout_ms) as cluster,
        edgesplit.connect(cluster.plan(probe_interval_ms=200, parity=parity_policy)) as client,
    ):
        for x in xs[:5]:
            client.infer(x[None])
        for i, x in enumerate(xs):
            if scenario == "kill" and i == n // 3:
                cluster.kill(names[1])
            if scenario == "kill" and i == 2 * n // 3:
                cluster.restart(names[1])
            t0 = time.perf_counter()
            future = client.submit(x[None])
            try:
                r = future.result(timeout=2 * timeout_ms / 1e3)
            except TimeoutError:
                counts["lost"] += 1  # no outcome at all within twice the deadline
                continue
            except Exception:  # a clear error is an outcome, not a loss
                counts["errors"] += 1
                lat.append((time.perf_counter() - t0) * 1e3)
                continue
            ms = (time.perf_counter() - t0) * 1e3
            lat.append(ms)
            p = r.parameters
            arrivals += [v for k, v in p.items() if k.endswith("_arrival_ms")]
            if "decode_ms" in p:
                decode_share.append(p["decode_ms"] / ms)
            counts["parity_asked"] += bool(p.get("parity_asked"))  # requests where lazy parity was needed
            if p.get("degraded"):
                counts["degraded"] += 1
                continue
            err = float(np.linalg.norm(r.outputs["logits"][0] - refs[i]) / np.linalg.norm(refs[i]))
            worst_err = max(worst_err, err)
            counts["recovered" if p.get("recovered") else "exact"] += 1
    return {
        "scenario": scenario,
        "workers": n_workers,
        "latency": latency_summary(lat),
        "counts": counts,
        "max_rel_error": worst_err,
        "decode_share_p50": float(np.median(decode_share)) if decode_share else 0.0,
        "arrival_ms": arrivals,
    }


def p_more_stragglers_than_parity(workers: int, parity: int, prob: float) -> float:
    """P(more than ``parity`` of ``workers`` independent calls straggle): the requests coding cannot shield.

    With 4 + 1 workers and 10% stragglers this is 8.1% per coded stage, so the p99 of
    ``straggler_all`` is a straggler's latency whatever the decoder does; 4 + 2 gives
    1.6% per stage (3.1% per request of two stages), 4 + 3 gives 0.27% (0.54%).
    """
    from math import comb

    return sum(comb(workers, j) * prob**j * (1 - prob) ** (workers - j) for j in range(parity + 1, workers + 1))


def bench_faults(cfg: FaultsBench) -> dict:
    requests, timeout_ms, seed, histogram = cfg.requests, cfg.timeout_ms, cfg.seed, cfg.histogram
    scenarios, parity, parity_policy = cfg.scenarios, cfg.parity, cfg.parity_policy
    from edgesplit.export.coded import export_coded_mlp, random_alexnet_fc, reference_forward

    layers = random_alexnet_fc(seed=seed)
    xs = np.maximum(np.random.default_rng(seed + 1).standard_normal((requests, layers[0][0].shape[1])), 0).astype(np.float32)
    refs = reference_forward(layers, xs)
    results = {}
    from edgesplit.progress import Progress

    with (
        tempfile.TemporaryDirectory(prefix="edgesplit-faults-") as tmp,
        Progress(2 * len(scenarios), "bench faults", "scenario") as bar,
    ):
        for label, r in (("coded", parity), ("uncoded", 0)):
            export_dir = Path(tmp) / label
            export_coded_mlp(layers, export_dir, K_DATA, r, "alexnet-fc", layer_names=LAYER_NAMES)
            for scenario in scenarios:
                results[f"{label}/{scenario}"] = _run_scenario(
                    export_dir, K_DATA + r, scenario, xs, refs, timeout_ms, parity_policy
                )
                bar.update(1, done=f"{label}/{scenario}")
    out = {
        "benchmark": "faults",
        "model": "alexnet FC (9216-4096-4096-1000, random weights)",
        "requests": requests,
        "data_workers": K_DATA,
        "parity_workers": parity,
        "parity_policy": parity_policy,
        "straggler": {"prob": STRAGGLE_PROB, "slowdown": STRAGGLE_SLOWDOWN},
        "machine": machine_info(),
        "scenarios": {k: {kk: vv for kk, vv in v.items() if kk != "arrival_ms"} for k, v in results.items()},
    }
    ff = results.get("coded/fault_free")
    targets = {}
    for pattern in ("straggler_one", "straggler_all"):
        c, u = results.get(f"coded/{pattern}"), results.get(f"uncoded/{pattern}")
        if c and u and ff:
            targets[pattern] = {
                "p99_vs_fault_free": c["latency"]["p99_ms"] / ff["latency"]["p99_ms"],
                "p99_vs_uncoded": c["latency"]["p99_ms"] / u["latency"]["p99_ms"],
            }
    if "straggler_all" in targets:
        per_stage = p_more_stragglers_than_parity(K_DATA + parity, parity, STRAGGLE_PROB)
        targets["straggler_all"]["p_unshielded_stage"] = per_stage
        targets["straggler_all"]["p_unshielded_request"] = 1 - (1 - per_stage) ** len(LAYER_NAMES)  # fc6 and fc7
    out["targets"] = targets
    out["lost_total"] = sum(v["counts"]["lost"] for v in results.values())
    if histogram:
        _histogram(results, histogram)
        out["histogram"] = histogram
    return out


def _histogram(results: dict, path: str) -> None:
    fig, ax = figure()
    keys = [k for k in ("uncoded/straggler_all", "uncoded/fault_free") if k in results]
    hi = max(np.percentile(results[k]["arrival_ms"], 99.9) for k in keys)
    for k in keys:
        ax.hist(
            results[k]["arrival_ms"],
            bins=100,
            range=(0, hi),
            histtype="step",
            linewidth=1.5,
            label=k.split("/")[1].replace("_", " "),
        )
    ax.set_yscale("log")
    ax.set_xlabel("arrival time of a block's answer after the stage started (ms)")
    ax.set_ylabel("answers")
    ax.set_title("AlexNet FC blocks over 4 workers: the straggler tail")
    ax.legend()
    save(fig, path)


def text_report(r: dict) -> str:
    """What ``edgesplit bench faults`` prints of a result."""
    lines = [
        f"{r['model']}: {r['data_workers']} data workers (+{r['parity_workers']} parity, {r['parity_policy']}), "
        f"{r['requests']} requests each",
        f"{'scenario':<26}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'exact':>7}{'recov':>7}{'degr':>6}{'err':>5}{'lost':>5}{'max rel err':>12}",
    ]
    for name, s in r["scenarios"].items():
        l, c = s["latency"], s["counts"]
        lines.append(
            f"{name:<26}{l['p50_ms']:>8.2f}{l['p99_ms']:>8.2f}{l['max_ms']:>8.2f}{c['exact']:>7}{c['recovered']:>7}"
            f"{c['degraded']:>6}{c['errors']:>5}{c['lost']:>5}{s['max_rel_error']:>12.1e}"
        )
    for pattern, t in r["targets"].items():
        lines.append(
            f"{pattern}: coded p99 = {t['p99_vs_fault_free']:.2f}x fault-free, {t['p99_vs_uncoded']:.2f}x uncoded"
            + (
                f" (requests with more stragglers than parity blocks: {t['p_unshielded_request']:.2%})"
                if "p_unshielded_request" in t
                else ""
            )
        )
    lines.append(
        "columns: answers exact (every block in time), recovered (decoded with a parity block), degraded (a block "
        "replaced by zeros), errors, lost (no answer); max rel err: the largest error against the uncoded layers"
    )
    if r.get("histogram"):
        lines.append(f"wrote {r['histogram']} (arrival times of every block's answer)")
    return "\n".join(lines)
