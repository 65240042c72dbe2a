"""``edgesplit bench scale``: how planning grows with the fleet (issue 20).

Planning a split network over a fleet (``codesign/fleet.py``) costs the network on each kind of device at each
share of the width and bit width (the hardware model: ``rate_table``), then allocates branches to devices
(``allocate``). Both are timed for fleets of ``sizes`` devices made of ``kinds`` in turn, with a cold hardware
model cache for each size; on fleets up to ``exhaustive_up_to`` devices, the allocation that tries every set of
devices (``allocate_exhaustive``) is timed on the same table and its best throughput compared.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from edgesplit.bench.config import ScaleBench
from edgesplit.bench.serve import machine_info


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
    out.mkdir()
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


def bench_scale(cfg: ScaleBench) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgesplit-scale-") as tmp:
        planning = [_plan_once(cfg, n, Path(tmp)) for n in cfg.sizes]
    return {
        "benchmark": "scale",
        "machine": machine_info(),
        "network": f"{cfg.bundle} co-design candidate (8-bit), Fashion-MNIST input",
        "link_mbps": cfg.link_mbps,
        "planning": planning,
    }


def text_report(r: dict) -> str:
    """What ``edgesplit bench scale`` prints of a result."""
    lines = [
        f"planning {r['network']} over fleets of {', '.join(r['planning'][0]['kinds'])} in turn, link {r['link_mbps']:g} Mbit/s",
        f"{'devices':>8}{'table s':>9}{'allocate s':>12}{'plan s':>8}  best (k, FPS, bound){'':>4}every set of devices",
    ]
    for row in r["planning"]:
        b, e = row["best"], row.get("exhaustive")
        every = f"{e['allocate_s']:.3f} s, k={e['k']}, {e['fps']:.1f} FPS" if e else "-"
        lines.append(
            f"{row['devices']:>8}{row['table_s']:>9.2f}{row['allocate_s']:>12.4f}{row['plan_s']:>8.2f}  "
            f"k={b['k']}, {b['fps']:.1f} FPS, {b['bound']:<8}{every}"
        )
    return "\n".join(lines)
