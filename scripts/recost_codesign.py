#!/usr/bin/env python3
"""Re-cost the co-design result's networks with the current hardware model, without re-running the search.

Reads the search's JSON (``docs/results/codesign_pynq.json``), rebuilds each finalist and
baseline at the search's input size, tunes it on the full grid for the search's device,
and prints the old and the new FPS (accelerator alone and end to end) with resources.
The architectures and their accuracies are the search's; only the hardware figures are new.

    .venv/bin/python scripts/recost_codesign.py docs/results/codesign_pynq.json --json docs/results/codesign_pynq_recost.json
"""

from __future__ import annotations

import argparse
import json
import sys

from edgesplit.codesign.space import Candidate
from edgesplit.hardware.accelerator import AccelConfig, tune
from edgesplit.hardware.catalog import get_device
from edgesplit.hardware.graph import graph_from_model
from edgesplit.hardware.host import HostConfig
from edgesplit.models import create_model

IN_CHANS, IMAGE_HW, NUM_CLASSES = 1, (28, 28), 10  # Fashion-MNIST, as the search ran


def recost(model, name: str, bits: tuple[int, int], device) -> dict:
    graph = graph_from_model(model, (IN_CHANS, *IMAGE_HW), name)
    best = tune(graph, device, AccelConfig(wbits=bits[0], fbits=bits[1]), host=HostConfig()).best
    t, r = best.totals, best.resources
    return {
        "accelerator_fps": t.fps,
        "fps": t.end_to_end.fps,
        "bound": t.end_to_end.bound,
        "dsp": r.dsp,
        "bram18": r.bram18,
        "lut": r.lut,
        "watts": t.watts,
        "config": {k: getattr(best.config, k) for k in ("tm", "tn", "td", "tr", "tc")},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("search_json")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    result = json.load(open(args.search_json))
    device = get_device(result["device"])
    rows = []
    for f in result["finalists"]:
        c = Candidate.from_dict(f["candidate"])
        model = create_model("bundlenet", num_classes=NUM_CLASSES, in_chans=IN_CHANS, input_size=IMAGE_HW, **c.model_kwargs())
        rows.append(
            {
                "network": f["key"],
                "bits": [c.wbits, c.fbits],
                "old_fps": f["hardware"]["fps"],
                "test_fixed": f["test"]["ptq_top1"],
                **recost(model, f["key"], (c.wbits, c.fbits), device),
            }
        )
    for b in result["baselines"]:
        model = create_model(b["model"], num_classes=NUM_CLASSES, in_chans=IN_CHANS, input_size=IMAGE_HW)
        rows.append(
            {
                "network": b["model"],
                "bits": [b["wbits"], b["fbits"]],
                "old_fps": b["hardware"]["fps"],
                "test_fixed": b["test"]["ptq_top1"],
                **recost(model, b["model"], (b["wbits"], b["fbits"]), device),
            }
        )
    target = result["targets"]["fps"]
    print(
        f"| network | bits | FPS before | accelerator FPS now | end-to-end FPS now | meets {target:g}? | DSP | BRAM18 | LUT | W |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['network']} | W{r['bits'][0]}/F{r['bits'][1]} | {r['old_fps']:,.1f} | {r['accelerator_fps']:,.1f} | "
            f"{r['fps']:,.1f} | {'yes' if r['fps'] >= target else 'no'} | {r['dsp']} | {r['bram18']} | {r['lut']:,} | {r['watts']:.2f} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": result["device"], "target_fps": target, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
