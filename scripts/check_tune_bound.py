"""Check that ``tune``'s early stop finds what costing every design finds, on the full grid.

``hardware.accelerator.tune`` visits its grid's designs in the order of a lower bound on their time per image and
stops at the first whose bound is slower than the best found (docs/benchmarks.md, planning over large fleets).
This compares it with ``tune_every_design`` on the published designs of ``hardware/published.py`` and on the
registry's networks at 28x28 on three boards and four bit widths, and prints the agreement and both times.

    .venv/bin/python scripts/check_tune_bound.py
"""

from __future__ import annotations

import time

from edgesplit.errors import EdgesplitError
from edgesplit.hardware import published
from edgesplit.hardware.accelerator import AccelConfig, tune, tune_every_design
from edgesplit.hardware.catalog import get_device
from edgesplit.hardware.graph import load_graph


def cases():
    for d in published.DESIGNS:
        if d.tuned:
            yield d.key, d.build(), published.device_for(d.device), d.config
    for model in ("bundlenet-a", "bundlenet-b", "bundlenet-c", "squeezenet", "resnet18-split2"):
        for device in ("pynq-z1", "ultra96-v2", "zcu102"):
            for w, f in ((16, 16), (8, 8), (4, 4), (11, 8)):
                yield (
                    f"{model} {device} W{w}/F{f}",
                    load_graph(model, (1, 28, 28)),
                    get_device(device),
                    AccelConfig(wbits=w, fbits=f),
                )


def main() -> int:
    agree = total = 0
    fast_s = slow_s = 0.0
    for name, graph, device, base in cases():
        t0 = time.perf_counter()
        try:
            got = tune(graph, device, base).best.config
        except EdgesplitError:
            got = None
        t1 = time.perf_counter()
        try:
            want = tune_every_design(graph, device, base).config
        except EdgesplitError:
            want = None
        t2 = time.perf_counter()
        fast_s, slow_s, total = fast_s + t1 - t0, slow_s + t2 - t1, total + 1
        agree += got == want
        print(f"{name:<40} {'same' if got == want else 'DIFFERENT'}  {t1 - t0:6.2f} s against {t2 - t1:6.2f} s")
    print(f"{agree} of {total} the same; tune {fast_s:.1f} s, costing every design {slow_s:.1f} s ({slow_s / fast_s:.1f}x)")
    return 0 if agree == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
