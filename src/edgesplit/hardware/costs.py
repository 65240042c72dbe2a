"""Per-resource cost functions of an FPGA datapath: pure functions of bit widths and sizes.

Every constant names where it comes from. Those marked *assumed* are our
engineering estimates, not vendor data: calibrate them against a synthesis or
power report of your own design (``docs/hardware-model.md`` says how).
"""
from __future__ import annotations

import math

from edgesplit.hardware.catalog import DSP_TYPES

# BRAM18 aspect ratios, width (bits) -> depth (Xilinx UG473, 7 Series Memory Resources, Table 1-7;
# UltraScale's RAMB18E2 is the same, UG573).
BRAM18_CONFIGS = ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512))
BRAM18_BITS = 18 * 1024
# HLS maps small arrays to LUT RAM instead of BRAM (assumed threshold; Vivado HLS's default is similar).
LUTRAM_MAX_BITS = 1024
LUTRAM_BITS_PER_LUT = 64  # a LUT6 as 64x1 distributed RAM (UG474, CLB user guide)

LUT_MULT_MAX_BITS = 8  # multiplies with both operands of at most 8 bits are built from LUTs (assumed policy)
LUTS_PER_PRODUCT_BIT = 1.0  # an a x b LUT multiplier costs about a*b LUT6 (assumed; calibrate)
FP32_MAC_DSP = 5  # float32 multiply (3 DSP) + add (2 DSP), full-DSP configuration (Xilinx PG060, Floating-Point Operator)
FP32_MAC_LUTS = 400  # LUTs of that float32 multiply-add besides the DSPs (PG060 resource tables, rounded)
DSP_PORT_B = 18  # the B multiplier input of DSP48E1/E2 (UG479, UG579)
DSP_ACC_BITS = 48  # the DSP's accumulator width


def dsp_per_mult(wbits: int, fbits: int, dsp_type: str, float32: bool = False) -> float:
    """DSP slices per weight x feature multiply (fractional when two multiplies share one DSP).

    - float32: :data:`FP32_MAC_DSP`.
    - both operands <= :data:`LUT_MULT_MAX_BITS`: 0 (built from LUTs).
    - two multiplies that share one operand fit one DSP when the two other operands,
      packed in the wide port with guard bits, fit it: ``2*u + s <= A`` and ``s <= 18``
      (u: the unshared width, s: the shared one; Xilinx WP486 packs two int8 multiplies
      this way): 0.5. The shared operand can be the feature (one pixel times two
      weights) or the weight (one weight times two pixels); either works.
    - otherwise as many DSPs as A x 18 tiles cover the product: ``ceil(a/A) * ceil(b/18)``.
    """
    if float32:
        return float(FP32_MAC_DSP)
    port_a, port_b = DSP_TYPES[dsp_type]
    if max(wbits, fbits) <= LUT_MULT_MAX_BITS:
        return 0.0
    for u, s in ((wbits, fbits), (fbits, wbits)):
        if 2 * u + s <= port_a and s <= port_b and 2 * (u + s) <= DSP_ACC_BITS:
            return 0.5
    a, b = max(wbits, fbits), min(wbits, fbits)
    return float(min(math.ceil(a / port_a) * math.ceil(b / port_b), math.ceil(b / port_a) * math.ceil(a / port_b)))


def luts_per_mult(wbits: int, fbits: int, dsp_type: str, float32: bool = False) -> float:
    """LUTs of one multiply-accumulate lane: the multiplier when it is not in DSPs, plus its accumulator adder."""
    if float32:
        return float(FP32_MAC_LUTS)
    acc = accumulator_bits(wbits, fbits, 1)
    mult = LUTS_PER_PRODUCT_BIT * wbits * fbits if dsp_per_mult(wbits, fbits, dsp_type) == 0 else 0.0
    return mult + acc  # one LUT per accumulator bit (a carry-chain adder)


def accumulator_bits(wbits: int, fbits: int, terms: int) -> int:
    """Bits that hold a sum of ``terms`` products without overflow: w + f + ceil(log2(terms))."""
    return wbits + fbits + max(0, math.ceil(math.log2(max(terms, 1))))


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


def buffer_cost(banks: int, depth: int, width_bits: int, double: bool = True) -> tuple[int, int]:
    """(BRAM18, LUTs) of a buffer split in ``banks`` parallel banks, doubled for ping-pong when ``double``."""
    copies = banks * (2 if double else 1)
    return copies * bram18(depth, width_bits), copies * lutram_luts(depth, width_bits)
