#!/usr/bin/env python3
"""Measure what multipliers and accumulators cost in Xilinx fabric, with yosys's open synthesis.

For every operand width pair (w, f) this writes a registered signed w x f multiplier
in Verilog, synthesizes it with ``synth_xilinx -family xc7`` (7-series: DSP48E1,
Zynq-7000 boards) and ``-family xcup`` (UltraScale+: DSP48E2, Zynq UltraScale+
boards), once with DSPs allowed and once with ``-nodsp`` (the multiplier built from
LUTs and carry chains), and counts the DSP, LUT and flip-flop cells. Accumulators
(a registered adder feeding back on itself) are measured the same way.

The JSON it writes is committed as ``src/edgesplit/hardware/fabric_costs.json`` and
read by ``hardware/costs.py``; re-run it to check or extend that table:

    apt-get install yosys
    python scripts/yosys_costs.py --out src/edgesplit/hardware/fabric_costs.json

Needs only the standard library and the ``yosys`` binary. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

WIDTHS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 18, 20, 24, 27, 32)
LUT_WIDTH_MAX = 16  # -nodsp multipliers beyond 16 x 16 are not a design anyone builds
ACC_WIDTHS = (8, 12, 16, 20, 24, 32, 40, 48)
FAMILIES = {"xc7": "DSP48E1", "xcup": "DSP48E2"}


def mult_verilog(w: int, f: int) -> str:
    return (
        f"module top(input clk, input signed [{w - 1}:0] a, input signed [{f - 1}:0] b,\n"
        f"           output reg signed [{w + f - 1}:0] p);\n"
        f"  reg signed [{w - 1}:0] ra; reg signed [{f - 1}:0] rb;\n"
        "  always @(posedge clk) begin ra <= a; rb <= b; p <= ra * rb; end\nendmodule\n"
    )


def acc_verilog(n: int) -> str:
    return (
        f"module top(input clk, input clr, input signed [{n - 1}:0] x, output reg signed [{n - 1}:0] s);\n"
        "  always @(posedge clk) s <= clr ? x : s + x;\nendmodule\n"
    )


def synth(verilog: str, family: str, nodsp: bool) -> dict:
    """Cell counts of one synthesized module: dsp, lut, ff, carry."""
    with tempfile.TemporaryDirectory(prefix="edgesplit-yosys-") as tmp:
        src = os.path.join(tmp, "top.v")
        with open(src, "w") as fh:
            fh.write(verilog)
        cmd = f"read_verilog {src}; synth_xilinx -family {family} -top top -noiopad{' -nodsp' if nodsp else ''}; stat"
        out = subprocess.run(
            ["yosys", "-q", "-p", cmd.replace("stat", f"tee -o {tmp}/stat.txt stat")], capture_output=True, text=True, check=True
        )
        del out
        with open(os.path.join(tmp, "stat.txt")) as fh:
            text = fh.read()
    cells = {name: int(n) for name, n in re.findall(r"^\s+(\w+)\s+(\d+)\s*$", text, re.M)}
    return {
        "dsp": sum(n for c, n in cells.items() if c.startswith("DSP48")),
        "lut": sum(n for c, n in cells.items() if re.fullmatch(r"LUT[1-6]", c)),
        "ff": sum(n for c, n in cells.items() if c.startswith("FD")),
        "carry": sum(n for c, n in cells.items() if c.startswith("CARRY")),
    }


def jobs():
    for family in FAMILIES:
        for i, w in enumerate(WIDTHS):
            for f in WIDTHS[: i + 1]:
                yield ("mult", family, False, w, f)
                if family == "xc7" and w <= LUT_WIDTH_MAX:  # LUT multipliers: the same LUT6 fabric in both families
                    yield ("mult", family, True, w, f)
        for n in ACC_WIDTHS:
            yield ("acc", family, False, n, 0)


def run(job):
    kind, family, nodsp, w, f = job
    verilog = mult_verilog(w, f) if kind == "mult" else acc_verilog(w)
    return job, synth(verilog, family, nodsp)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if not shutil.which("yosys"):
        print("yosys is not installed: apt-get install yosys", file=sys.stderr)
        return 2
    version = subprocess.run(["yosys", "-V"], capture_output=True, text=True).stdout.strip()
    table = {
        "source": f"{version}; scripts/yosys_costs.py (synth_xilinx -noiopad, registered operands and result)",
        "families": FAMILIES,
        "mult": {},
        "mult_lut": {},
        "acc": {},
    }
    with cf.ThreadPoolExecutor(args.jobs) as pool:
        for (kind, family, nodsp, w, f), cost in pool.map(run, list(jobs())):
            if kind == "acc":
                table["acc"].setdefault(family, {})[str(w)] = cost
            elif nodsp:
                table["mult_lut"][f"{w}x{f}"] = cost
            else:
                table["mult"].setdefault(family, {})[f"{w}x{f}"] = cost
    with open(args.out, "w") as fh:
        json.dump(table, fh, indent=1, sort_keys=True)
    print(f"{'w x f':>7} | {'xc7 DSP':>7} {'LUT':>5} | {'xcup DSP':>8} {'LUT':>5} | {'LUT-only LUT':>12} {'FF':>4}")
    for key in table["mult"]["xc7"]:
        e1, e2, lut = table["mult"]["xc7"][key], table["mult"]["xcup"][key], table["mult_lut"].get(key)
        lut_s = f"{lut['lut']:>12} {lut['ff']:>4}" if lut else f"{'-':>12} {'-':>4}"
        print(f"{key:>7} | {e1['dsp']:>7} {e1['lut']:>5} | {e2['dsp']:>8} {e2['lut']:>5} | {lut_s}")
    for family, accs in table["acc"].items():
        print(
            family,
            "accumulators (bits: LUT/FF/CARRY):",
            ", ".join(f"{n}: {c['lut']}/{c['ff']}/{c['carry']}" for n, c in accs.items()),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
