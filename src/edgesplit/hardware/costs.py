"""Per-resource cost functions of an FPGA datapath: pure functions of bit widths and sizes.

Every constant names where it comes from. Multiplier and accumulator costs are
*measured*: ``fabric_costs.json`` is the table that ``scripts/yosys_costs.py`` prints
after synthesizing each width pair with yosys's ``synth_xilinx`` for 7-series
(DSP48E1) and UltraScale+ (DSP48E2). Those marked *assumed* are our engineering
estimates, not vendor data: calibrate them against a synthesis or power report of
your own design (``docs/hardware-model.md`` says how).
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from edgesplit.errors import EdgesplitError
from edgesplit.hardware.catalog import DSP_TYPES

FABRIC_TABLE = Path(__file__).with_name("fabric_costs.json")
FAMILY_OF_DSP = {"DSP48E1": "xc7", "DSP48E2": "xcup"}  # yosys synth_xilinx -family

# BRAM18 aspect ratios, width (bits) -> depth (Xilinx UG473, 7 Series Memory Resources, Table 1-7;
# UltraScale's RAMB18E2 is the same, UG573).
BRAM18_CONFIGS = ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512))
BRAM18_BITS = 18 * 1024
# HLS maps small arrays to LUT RAM instead of BRAM (assumed threshold; Vivado HLS's default is similar).
LUTRAM_MAX_BITS = 1024
LUTRAM_BITS_PER_LUT = 64  # a LUT6 as 64x1 distributed RAM (UG474, CLB user guide)

FP32_MAC_DSP = 5  # float32 multiply (3 DSP) + add (2 DSP), full-DSP configuration (Xilinx PG060, Floating-Point Operator)
FP32_MAC_LUTS = 400  # LUTs of that float32 multiply-add besides the DSPs (PG060 resource tables, rounded)
FP32_MAC_FFS = 500  # its pipeline registers at full latency (PG060 resource tables, rounded)
DSP_ACC_BITS = 48  # the DSP's accumulator width (UG479, UG579)


@lru_cache(maxsize=1)
def fabric_table() -> dict:
    """The measured multiplier/accumulator table (see ``scripts/yosys_costs.py``)."""
    return json.loads(FABRIC_TABLE.read_text())


def _measured_width(bits: int, widths: list[int]) -> int:
    """The smallest measured width that holds ``bits`` (a narrower multiplier never costs more)."""
    i = bisect.bisect_left(widths, bits)
    if bits < 1 or i == len(widths):
        raise EdgesplitError(
            f"{bits}-bit operands are outside the multiplier table (1 to {widths[-1]} bits); "
            f"choose a width in that range or extend scripts/yosys_costs.py"
        )
    return widths[i]


def _lookup(section: dict, wbits: int, fbits: int) -> dict:
    widths = sorted({int(w) for key in section for w in key.split("x")})
    a, b = _measured_width(max(wbits, fbits), widths), _measured_width(min(wbits, fbits), widths)
    return section[f"{a}x{b}"]


def _signed_range(bits: int, symmetric: bool) -> tuple[int, int]:
    return -(1 << (bits - 1)) + (1 if symmetric else 0), (1 << (bits - 1)) - 1


def packs_two(unshared_bits: int, shared_bits: int, port_a: int, port_b: int, symmetric: bool = False) -> bool:
    """Whether two products ``a1*b`` and ``a2*b`` (one shared operand ``b``) come exact out of one DSP multiply.

    The two unshared operands go into the wide port as ``a1 + a2 * 2**k`` and the shared
    one into the 18-bit port; the low ``k`` bits of the product, sign-extended, are
    ``a1*b`` and the rest is ``a2*b`` (Xilinx WP486). Exact when every ``a1*b`` fits ``k``
    signed bits and the packed operand fits the port, over the operands' whole ranges:
    two's complement, or symmetric (no most-negative code, as many quantizers use), which
    saves a bit. ``tests/hardware/test_hardware.py`` checks this against the arithmetic itself.
    """
    if shared_bits > port_b:
        return False
    u_lo, u_hi = _signed_range(unshared_bits, symmetric)
    s_lo, s_hi = _signed_range(shared_bits, symmetric)
    p_lo, p_hi = min(u_lo * s_hi, u_hi * s_lo), max(u_lo * s_lo, u_hi * s_hi)
    k = 1
    while not (-(1 << (k - 1)) <= p_lo and p_hi < (1 << (k - 1))):
        k += 1
    a_lo, a_hi = _signed_range(port_a, False)
    return a_lo <= u_lo * (1 << k) + u_lo and u_hi * (1 << k) + u_hi <= a_hi and 2 * k <= DSP_ACC_BITS


@dataclass(frozen=True)
class MultCost:
    dsp: float  # DSP slices per multiply (0.5 when two share a slice)
    lut: float  # LUTs per multiply besides its accumulator
    ff: float


@lru_cache(maxsize=4096)  # pure, and asked for the same few width pairs by every design ``tune`` tries
def mult_cost(
    wbits: int, fbits: int, dsp_type: str, float32: bool = False, pack: bool = True, symmetric: bool = False
) -> MultCost:
    """What one weight x feature multiply costs: measured (yosys) for the width pair, halved DSPs when it packs."""
    if float32:
        return MultCost(float(FP32_MAC_DSP), float(FP32_MAC_LUTS), float(FP32_MAC_FFS))
    # synth_xilinx decides DSP or LUTs by the operand widths (4x4 and below, or one operand of 1-3
    # bits: LUTs; the rest: DSPs, several for operands wider than the ports), as HLS does by default.
    port_a, port_b = DSP_TYPES[dsp_type]
    c = _lookup(fabric_table()["mult"][FAMILY_OF_DSP[dsp_type]], wbits, fbits)
    if pack and c["dsp"] == 1:
        for u, s in ((wbits, fbits), (fbits, wbits)):  # either operand may be the shared one
            if packs_two(u, s, port_a, port_b, symmetric):
                return MultCost(0.5, c["lut"] / 2 + u, c["ff"] / 2)  # + the unpacking correction adder (u bits)
    return MultCost(float(c["dsp"]), float(c["lut"]), float(c["ff"]))


def dsp_per_mult(
    wbits: int, fbits: int, dsp_type: str, float32: bool = False, pack: bool = True, symmetric: bool = False
) -> float:
    return mult_cost(wbits, fbits, dsp_type, float32, pack, symmetric).dsp


def accumulator_luts(bits: int, dsp_type: str) -> int:
    """LUTs of a registered accumulator of ``bits`` (measured; the next measured width up)."""
    accs = fabric_table()["acc"][FAMILY_OF_DSP[dsp_type]]
    widths = sorted(int(n) for n in accs)
    return accs[str(widths[min(bisect.bisect_left(widths, min(bits, widths[-1])), len(widths) - 1)])]["lut"]


def luts_per_mult(wbits: int, fbits: int, dsp_type: str, float32: bool = False, pack: bool = True) -> float:
    """LUTs of one multiply-accumulate lane: the multiplier's own LUTs plus its accumulator adder.

    A multiply in a DSP accumulates in the DSP's own adder (the P cascade), so only
    LUT multipliers pay for an accumulator in fabric.
    """
    if float32:
        return float(FP32_MAC_LUTS)
    m = mult_cost(wbits, fbits, dsp_type, pack=pack)
    acc = accumulator_luts(accumulator_bits(wbits, fbits, 1), dsp_type) if m.dsp == 0 else 0
    return m.lut + acc


def accumulator_bits(wbits: int, fbits: int, terms: int) -> int:
    """Bits that hold a sum of ``terms`` products without overflow: w + f + ceil(log2(terms))."""
    return wbits + fbits + max(0, math.ceil(math.log2(max(terms, 1))))


def bram18_config(depth: int, width_bits: int) -> str:
    """The BRAM18 shape an array takes (UG473 aspect ratios), e.g. ``'18x1024'``, ``'36x512 x2 + 9x2048'``, ``'LUTRAM'``."""
    if depth * width_bits <= LUTRAM_MAX_BITS:
        return "LUTRAM"
    full_columns = math.ceil(width_bits / 36) - 1
    last = width_bits - 36 * full_columns
    width, cfg_depth = next(c for c in BRAM18_CONFIGS if last <= c[0])
    return (f"36x512 x{full_columns} + " if full_columns else "") + f"{width}x{cfg_depth}"


def bram18(depth: int, width_bits: int) -> int:
    """BRAM18 blocks for one array of ``depth`` words of ``width_bits`` (0 when it fits LUT RAM)."""
    if depth <= 0 or width_bits <= 0 or depth * width_bits <= LUTRAM_MAX_BITS:
        return 0
    blocks_wide = math.ceil(width_bits / 36)
    last = width_bits - 36 * (blocks_wide - 1)
    count = (blocks_wide - 1) * math.ceil(depth / 512)
    for width, cfg_depth in BRAM18_CONFIGS:
        if last <= width:
            return count + math.ceil(depth / cfg_depth)
    raise AssertionError("unreachable: last <= 36")


def lutram_luts(depth: int, width_bits: int) -> int:
    """LUTs of an array small enough for LUT RAM (see :func:`bram18`)."""
    if depth <= 0 or width_bits <= 0 or depth * width_bits > LUTRAM_MAX_BITS:
        return 0
    return math.ceil(depth / LUTRAM_BITS_PER_LUT) * width_bits


@dataclass(frozen=True)
class Buffer:
    """An on-chip array split in ``banks`` for parallel access, doubled when ``double`` (ping-pong)."""

    name: str
    banks: int
    depth: int
    width_bits: int
    double: bool = True

    @property
    def copies(self) -> int:
        return self.banks * (2 if self.double else 1)

    @property
    def bram18(self) -> int:
        return self.copies * bram18(self.depth, self.width_bits)

    @property
    def luts(self) -> int:
        return self.copies * lutram_luts(self.depth, self.width_bits)

    def row(self) -> dict:
        return {
            "name": self.name,
            "banks": self.banks,
            "depth": self.depth,
            "width_bits": self.width_bits,
            "double_buffered": self.double,
            "bram18_shape": bram18_config(self.depth, self.width_bits),
            "bram18": self.bram18,
            "lutram_luts": self.luts,
        }
