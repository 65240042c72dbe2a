"""The analytical accelerator model: a CNN graph and a configuration in, per-layer and total costs out.

Two architectures (``AccelConfig.arch``):

``bundle``
    One engine reused for every layer, layer after layer (the bundle-reused
    accelerator of Zhang, Hao et al.'s bi-directional co-design paper, 2019; SkyNet; Arora and Lanka's SqueezeNet-on-Zybo design). A conv unit of
    ``tm x tn`` multipliers (output x input channels, as in Zhang et al., FPGA'15,
    "Optimizing FPGA-based accelerator design for deep CNNs") and a depth-wise unit
    of ``td`` channels x 9 multipliers. Feature maps are processed in ``tr x tc``
    output tiles; weights and feature maps live in DRAM and are loaded per tile into
    double-buffered BRAM, so loads overlap compute and each layer takes the longer of
    its compute and its DRAM time (a roofline per layer). ``batch`` images share each
    weight load.

``pipeline``
    One engine per conv/linear layer, all running at once on a stream (DNNBuilder,
    FINN). ``mults`` multipliers are shared among the layers in proportion to their
    MACs so the stages take equally long; feature maps stay on chip in line buffers;
    weights stay on chip while they fit, the largest layers' weights are streamed
    from DRAM (once per batch) otherwise. Throughput is set by the slowest stage.

Cost functions per layer kind are in ``LAYER_CYCLES`` (keyed like FINN's per-layer
estimates); ``estimate`` only sums them, and refuses a layer kind it has no
function for.
"""

from __future__ import annotations

import math
from dataclasses import replace

from edgesplit.errors import EdgesplitError
from edgesplit.hardware.catalog import FpgaDevice
from edgesplit.hardware.costs import Buffer, accumulator_bits, dsp_per_mult, luts_per_mult, mult_cost
from edgesplit.hardware.graph import CPU_OPS, POOL_OPS, Graph, Layer, fuse
from edgesplit.hardware.config import MAX_BITS, AccelConfig, HostConfig  # noqa: F401 (the model's API)
from edgesplit.hardware.host import host_frame
from edgesplit.hardware.records import EndToEnd, Estimate, LayerCost, Resources, Totals, TuneResult

PIPELINE_DEPTH_CYCLES = 20  # fill/drain of the MAC pipeline per tile (assumed; typical HLS loop latency)
DRAM_EFFICIENCY = 0.7  # fraction of the board's peak DRAM bandwidth a burst DMA sustains (assumed; measure yours)
DW_KERNEL_MULTS = 9  # the depth-wise unit computes one 3x3 window per channel per cycle
# Fixed cost of one engine besides its datapath and buffers: three AXI master ports with burst
# FIFOs (input feature maps, weights, output feature maps: an HLS m_axi adapter each), the AXI
# interconnect to the processing system's HP ports, the AXI-lite control port, and the tile loops'
# address generators. Assumed, of the order of the resource tables of Xilinx PG247 (SmartConnect)
# and PG021 (AXI DMA) for 64-bit ports; calibrate against your utilization report.
ENGINE_FIXED = {"lut": 9000, "ff": 12000, "bram18": 6}
LUTS_PER_COMPARATOR_BIT = 1  # max-pool and ReLU comparators
OUTPUT_STAGE_LUTS_PER_BIT = 2  # per output lane: shift, round and saturate the accumulator to the output format (assumed)
# tune keeps designs whose LUT utilisation stays within Xilinx's guideline for timing closure
# (UG949, UltraFast Design Methodology, "utilization guidelines": LUTs under 70%): larger engines
# of narrow LUT multipliers fit on paper but do not route at the board's clock.
TUNE_MAX_LUT_UTILISATION = 0.70
PIPELINE_STAGE_LUTS = 300  # per stage of the pipeline architecture: its control and FIFO logic (assumed)
# Dynamic power per resource at 1 MHz (assumed coefficients of the order of Xilinx Power Estimator's
# 7-series defaults at 12.5% toggle rate) and DRAM energy (Horowitz, ISSCC 2014: ~20 pJ/bit for DDR3).
DSP_W_PER_MHZ = 1.0e-5
BRAM18_W_PER_MHZ = 6.0e-6
LUT_W_PER_MHZ = 5.0e-8
DRAM_J_PER_BYTE = 160e-12


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------- bundle engine: cycles per layer kind
def _conv_cycles(layer: Layer, cfg: AccelConfig) -> int:
    """Channel steps x (the output pixels of every tile x kernel taps + a pipeline fill per tile).

    The tile loops run to ``min(row + tr, R)`` (Zhang et al., FPGA'15, Fig. 5): an edge tile
    costs the pixels it has, not a full ``tr x tc``; the unrolled channel loops do not shrink.
    """
    m, r, c = layer.out_shape
    kh, kw = layer.kernel
    tiles = _ceil(r, cfg.tr) * _ceil(c, cfg.tc)
    if layer.is_depthwise:
        return _ceil(m, cfg.td) * (r * c * _ceil(kh * kw, DW_KERNEL_MULTS) + tiles * PIPELINE_DEPTH_CYCLES)
    g = layer.groups
    n_per_group = layer.in_shape[0] // g
    steps = g * _ceil(m // g, cfg.tm) * _ceil(n_per_group, cfg.tn)
    return steps * (r * c * kh * kw + tiles * PIPELINE_DEPTH_CYCLES)


def _linear_cycles(layer: Layer, cfg: AccelConfig) -> int:
    return _ceil(layer.out_shape[0], cfg.tm) * (
        _ceil(layer.in_shape[0], cfg.tn) + PIPELINE_DEPTH_CYCLES
    )  # a fill per output block


def _vector_cycles(layer: Layer, cfg: AccelConfig) -> int:
    """Pools and adds on a tm-wide vector unit; hidden (0) when fused into the producing conv's output stage."""
    if layer.on_chip_in:
        return 0
    c, h, w = layer.out_shape
    window = layer.kernel[0] * layer.kernel[1] if layer.op in POOL_OPS else 1
    return _ceil(c, cfg.tm) * h * w * window + PIPELINE_DEPTH_CYCLES


def _concat_cycles(layer: Layer, cfg: AccelConfig) -> int:
    if layer.axis == 1:
        return 0  # producers write at channel offsets of one buffer: no copy
    return _vector_cycles(layer, cfg)  # another axis interleaves the inputs: a copy through the vector unit


def _cpu_cycles(layer: Layer, cfg: AccelConfig) -> int:
    return 0  # placed on the processing system (hardware/host.py costs it)


# Reorg (SpaceToDepth), resize and element-wise ops stream through the tm-wide vector unit of the
# output stage, one value per lane per cycle; their DRAM traffic is counted like any layer's.
LAYER_CYCLES = {
    "conv": _conv_cycles,
    "linear": _linear_cycles,
    "maxpool": _vector_cycles,
    "avgpool": _vector_cycles,
    "gap": _vector_cycles,
    "gmp": _vector_cycles,
    "add": _vector_cycles,
    "concat": _concat_cycles,
    "reorg": _vector_cycles,
    "resize": _vector_cycles,
    "eltwise": _vector_cycles,
    **{op: _cpu_cycles for op in CPU_OPS},
}


def _halo(layer: Layer, cfg: AccelConfig) -> float:
    """Input values read per output tile over those a tile without overlap would read (>= 1)."""
    if layer.op != "conv" or layer.kernel == (1, 1):
        return 1.0
    s, (kh, kw) = layer.stride, layer.kernel
    tr, tc = min(cfg.tr, layer.out_shape[1]), min(cfg.tc, layer.out_shape[2])
    return ((tr * s + kh - s) * (tc * s + kw - s)) / ((tr * s) * (tc * s))


def _bundle_dram_bytes(layer: Layer, cfg: AccelConfig) -> dict:
    """DRAM bytes per image: weights (re-fetched per spatial tile, shared by the batch), feature maps in and out."""
    fbytes, wbytes = _value_bytes(cfg.fbits, cfg), _value_bytes(cfg.wbits, cfg)
    tiles = _ceil(layer.out_shape[1], cfg.tr) * _ceil(layer.out_shape[2], cfg.tc) if layer.op == "conv" else 1
    weights = layer.weights * wbytes * tiles / cfg.batch
    if layer.op in CPU_OPS:
        return {"weights": 0.0, "fm_in": 0.0, "fm_out": 0.0}  # the processing system reads and writes it
    if layer.op == "concat" and layer.axis == 1:
        fm_in = 0.0
    elif layer.op == "add":
        fm_in = (layer.in_values // 2 if layer.on_chip_in else layer.in_values) * fbytes
    elif layer.on_chip_in:
        fm_in = 0.0
    else:
        rereads = _ceil(layer.out_shape[0] // layer.groups, cfg.tm) if layer.op == "conv" and not layer.is_depthwise else 1
        fm_in = layer.in_values * fbytes * rereads * _halo(layer, cfg)
    fm_out = 0.0 if (layer.on_chip_out or (layer.op == "concat" and layer.axis == 1)) else layer.out_values * fbytes
    return {"weights": weights, "fm_in": fm_in, "fm_out": fm_out}


def _value_bytes(bits: int, cfg: AccelConfig) -> float:
    return 4.0 if cfg.float32 else bits / 8


# ---------------------------------------------------------------- resources
def _bundle_buffers(graph: Graph, cfg: AccelConfig) -> list[Buffer]:
    """The engine's on-chip arrays as HLS builds them: banked for parallel access, double-buffered."""
    convs = [ly for ly in graph.layers if ly.op == "conv"]
    k_max = max((max(ly.kernel) for ly in convs if not ly.is_depthwise), default=1)
    s_max = max((ly.stride for ly in convs), default=1)
    n_max = max(
        (ly.in_shape[0] // ly.groups * ly.kernel[0] * ly.kernel[1] for ly in graph.layers if ly.op in ("conv", "linear")),
        default=1,
    )
    fb, wb = (32, 32) if cfg.float32 else (cfg.fbits, cfg.wbits)
    acc = 32 if cfg.float32 else min(accumulator_bits(cfg.wbits, cfg.fbits, n_max), 48)
    in_depth = (cfg.tr * s_max + k_max - s_max) * (cfg.tc * s_max + k_max - s_max)
    buffers = [
        Buffer("input", cfg.tn, in_depth, fb),
        Buffer("weights", cfg.tm, k_max * k_max, cfg.tn * wb),
        # one image's tile of partial sums: images of a batch take turns, sharing the loaded weights
        Buffer("output", cfg.tm, cfg.tr * cfg.tc, acc),
    ]
    if any(ly.is_depthwise for ly in convs):
        buffers += [
            Buffer("dw_input", cfg.td, (cfg.tr + 2) * (cfg.tc + 2), fb),
            Buffer("dw_weights", cfg.td, DW_KERNEL_MULTS, wb),
        ]
    if cfg.fuse and any(ly.on_chip_out and ly.op == "conv" for ly in graph.layers):
        # a fused producer's output tile, one channel group at a time (with a 3x3 halo for a Fire expand):
        # its consumer accumulates over the groups in its own output buffer, so no layer is held whole
        buffers.append(Buffer("fusion", cfg.tn, (cfg.tr + 2) * (cfg.tc + 2), fb))
    return buffers


def _bundle_resources(graph: Graph, cfg: AccelConfig, dev: FpgaDevice) -> Resources:
    has_dw = any(ly.is_depthwise for ly in graph.layers)
    mults = cfg.tm * cfg.tn + (cfg.td * DW_KERNEL_MULTS if has_dw else 0)
    m = mult_cost(cfg.wbits, cfg.fbits, dev.dsp_type, cfg.float32, cfg.pack)
    fb = 32 if cfg.float32 else cfg.fbits
    buffers = _bundle_buffers(graph, cfg)
    dsp = math.ceil(mults * m.dsp)
    lut = (
        ENGINE_FIXED["lut"]
        + mults * luts_per_mult(cfg.wbits, cfg.fbits, dev.dsp_type, cfg.float32, cfg.pack)
        + sum(b.luts for b in buffers)
        + cfg.tm * fb * (LUTS_PER_COMPARATOR_BIT + OUTPUT_STAGE_LUTS_PER_BIT)
    )
    ff = ENGINE_FIXED["ff"] + mults * m.ff + cfg.tm * 48  # operand/product registers; one accumulator register per lane
    bram = ENGINE_FIXED["bram18"] + sum(b.bram18 for b in buffers)
    return Resources(dsp, bram, int(lut), int(ff), mults, m.dsp, _available(dev), buffers=tuple(buffers))


# ---------------------------------------------------------------- estimate
def _check_supported(graph: Graph) -> None:
    from edgesplit.hardware.graph import UnsupportedLayers

    bad = [f"{ly.name} ({ly.op})" for ly in graph.layers if ly.op not in LAYER_CYCLES]
    if bad:
        raise UnsupportedLayers(bad)


def estimate(graph: Graph, device: FpgaDevice, cfg: AccelConfig, host: HostConfig | None = None) -> Estimate:
    """Per-layer costs and totals (resources, cycles, ms, bound, GOP/s, FPS, W, images/J) and whether it fits.

    With a board whose device file describes its processing system, ``totals.end_to_end``
    adds the host's work per frame (``hardware/host.py``) and the frame rate a user sees.
    """
    if getattr(device, "kind", "") != "fpga":
        raise EdgesplitError(f"{device.name} is a {device.kind} device; the accelerator model needs an FPGA board")
    _check_supported(graph)
    return _estimate_prepared(fuse(graph) if cfg.fuse else graph, device, cfg, host or HostConfig())


def _estimate_prepared(graph: Graph, device: FpgaDevice, cfg: AccelConfig, host: HostConfig | None = None) -> Estimate:
    clock_mhz = cfg.clock_mhz or device.clock_mhz
    bw = (cfg.dram_gbs or device.dram_bandwidth_gbs) * 1e9 * DRAM_EFFICIENCY  # bytes/s sustained
    if cfg.arch == "bundle":
        res = _bundle_resources(graph, cfg, device)
        rows = _bundle_rows(graph, cfg, clock_mhz, bw)
    else:
        res, rows = _pipeline(graph, cfg, device, clock_mhz, bw)
    return _totals(graph, cfg, device, clock_mhz, res, rows, host)


def _fused_groups(graph: Graph) -> dict[str, str]:
    """Layer -> the first layer of its fused group (layers joined by on-chip edges run as one unit)."""
    group: dict[str, str] = {}
    kept = {ly.name for ly in graph.layers if ly.on_chip_out}
    for ly in graph.layers:
        fused_from = [s for s in ly.inputs if s in kept and s in group]
        group[ly.name] = group[fused_from[0]] if fused_from and ly.on_chip_in else ly.name
    return group


def _bundle_pairs(graph: Graph) -> list[tuple[Layer, Layer]]:
    """The fused bundles of ``graph``: (DW, the PW it feeds) with the DW output kept on chip."""
    consumers: dict[str, list[str]] = {}
    for ly in graph.layers:
        for s in ly.inputs:
            consumers.setdefault(s, []).append(ly.name)
    by_name = {ly.name: ly for ly in graph.layers}
    return [(ly, by_name[consumers[ly.name][0]]) for ly in graph.layers if ly.is_depthwise and ly.on_chip_out]


def _bundle_cycles(graph: Graph, cfg: AccelConfig, pairs: list[tuple[Layer, Layer]] | None = None) -> dict[str, int]:
    """Compute cycles per layer on the bundle engine (fused DW->PW bundles as the generated engine runs them)."""
    cycles = {ly.name: LAYER_CYCLES[ly.op](ly, cfg) for ly in graph.layers}
    for dw, pw in _bundle_pairs(graph) if pairs is None else pairs:
        cycles[dw.name], cycles[pw.name] = bundle_cycles(dw, pw, cfg)
    return cycles


def _bundle_rows(graph: Graph, cfg: AccelConfig, clock_mhz: float, bw: float) -> list[LayerCost]:
    """Cycles and DRAM bytes per layer; a fused group takes max(its compute, its DRAM time) as one unit."""
    cycles = _bundle_cycles(graph, cfg)
    rows = [_row(ly, cycles[ly.name], _bundle_dram_bytes(ly, cfg), clock_mhz, bw, cfg.overlap) for ly in graph.layers]
    return _group_rows(rows, _fused_groups(graph), cfg.overlap)


def bundle_cycles(dw: Layer, pw: Layer, cfg: AccelConfig) -> tuple[int, int]:
    """(DW, PW) cycles of a fused bundle as the generated engine runs it (``hls/edgesplit_layers.h: bundle``).

    The DW output stays on chip one group of ``td`` channels at a time: for each tile and block
    of ``tm`` PW outputs, each group is computed on the DW unit, then consumed by the PW unit in
    ``ceil(td/tn)`` steps, one after the other. The DW work is so repeated per PW output block.
    """
    _, r, c = pw.out_shape
    kh, kw = dw.kernel
    tiles = _ceil(r, cfg.tr) * _ceil(c, cfg.tc)
    passes = _ceil(pw.out_shape[0], cfg.tm) * _ceil(dw.out_shape[0], cfg.td)
    dw_cycles = passes * (r * c * _ceil(kh * kw, DW_KERNEL_MULTS) + tiles * PIPELINE_DEPTH_CYCLES)
    pw_cycles = passes * _ceil(cfg.td, cfg.tn) * (r * c + tiles * PIPELINE_DEPTH_CYCLES)
    return dw_cycles, pw_cycles


def _group_rows(rows: list[LayerCost], group: dict[str, str], overlap: bool = True) -> list[LayerCost]:
    sums: dict[str, list[float]] = {}
    for r in rows:
        g = sums.setdefault(group[r.name], [0.0, 0.0])
        g[0] += r.compute_ms
        g[1] += r.dram_ms
    out = []
    for r in rows:
        compute, dram = sums[group[r.name]]
        if compute == dram == 0:
            share = 0.0
        elif not overlap:  # loads, compute and stores one after the other
            share = (r.compute_ms + r.dram_ms) / (compute + dram)
        else:
            share = r.compute_ms / compute if compute >= dram else r.dram_ms / dram
        # the group's time, apportioned to the layers that bound it
        ms = (max(compute, dram) if overlap else compute + dram) * share
        bound = "-" if compute == dram == 0 else ("compute" if compute >= dram else "memory")
        gops = 2 * r.macs / (ms * 1e-3) / 1e9 if ms > 0 else 0.0
        out.append(replace(r, group=group[r.name], ms=ms, bound=bound, gops=gops))
    return out


def _row(ly: Layer, cycles: int, traffic: dict, clock_mhz: float, bw: float, overlap: bool = True) -> LayerCost:
    dram_bytes = sum(traffic.values())
    compute_ms = cycles / (clock_mhz * 1e3)
    dram_ms = dram_bytes / bw * 1e3
    ms = max(compute_ms, dram_ms) if overlap else compute_ms + dram_ms
    return LayerCost(
        name=ly.name,
        op="dwconv" if ly.is_depthwise else ly.op,
        in_shape=tuple(ly.in_shape),
        out_shape=tuple(ly.out_shape),
        macs=ly.macs,
        cycles=int(cycles),
        compute_ms=compute_ms,
        dram_bytes=int(dram_bytes),
        dram_ms=dram_ms,
        ms=ms,
        bound="-" if ms == 0 else ("compute" if compute_ms >= dram_ms else "memory"),
        gops=(2 * ly.macs / (ms * 1e-3) / 1e9) if ms > 0 else 0.0,
        fused_in=ly.on_chip_in,
        fused_out=ly.on_chip_out,
        placement="cpu" if ly.op in CPU_OPS else "fpga",
    )


def _available(device: FpgaDevice) -> dict[str, int]:
    return {"dsp": device.dsp, "bram18": device.bram18, "lut": device.lut, "ff": device.ff}


def _totals(
    graph: Graph,
    cfg: AccelConfig,
    device: FpgaDevice,
    clock_mhz: float,
    res: Resources,
    rows: list[LayerCost],
    host: HostConfig | None,
) -> Estimate:
    if cfg.arch == "bundle":
        image_ms = sum(r.ms for r in rows)
        latency_ms = image_ms * cfg.batch
    else:
        image_ms = max(r.ms for r in rows)  # the slowest stage sets the rate
        latency_ms = sum(r.ms for r in rows) + image_ms * (cfg.batch - 1)
    fps = 1e3 / image_ms if image_ms > 0 else float("inf")
    dram_bytes = sum(r.dram_bytes for r in rows)
    busy = sum(r.compute_ms for r in rows) / (image_ms * (len(rows) if cfg.arch == "pipeline" else 1)) if image_ms > 0 else 0.0
    macs = graph.macs
    e2e = _end_to_end(graph, cfg, device, rows, image_ms, host) if device.has_host and host is not None else None
    input_ms = e2e.frame_ms * e2e.host.frames_per_input if e2e else image_ms  # one network input, end to end
    # power over one input: the fabric's dynamic power while it computes, DRAM energy per byte moved,
    # the processing system's extra power while its core works, on top of the board's idle power
    fabric_duty = min(1.0, busy * image_ms / input_ms) if input_ms > 0 else 0.0
    dynamic_w = clock_mhz * (res.dsp * DSP_W_PER_MHZ + res.bram18 * BRAM18_W_PER_MHZ + res.lut * LUT_W_PER_MHZ) * fabric_duty
    dram_w = dram_bytes * 1e3 / input_ms * DRAM_J_PER_BYTE if input_ms > 0 else 0.0
    host_w = device.ps_active_w * min(1.0, e2e.host.host_ms / input_ms) if e2e else 0.0
    watts = device.static_power_w + dynamic_w + dram_w + host_w
    frame_fps = e2e.fps if e2e else fps
    totals = Totals(
        macs=macs,
        weights=graph.weights,
        cycles=sum(r.cycles for r in rows),
        dram_bytes_per_image=dram_bytes,
        image_ms=image_ms,
        latency_ms=latency_ms,
        fps=fps,
        gops=2 * macs * fps / 1e9,
        memory_bound_layers=sum(r.bound == "memory" for r in rows),
        compute_bound_layers=sum(r.bound == "compute" for r in rows),
        watts=watts,
        static_w=device.static_power_w,
        dynamic_w=dynamic_w,
        dram_w=dram_w,
        host_w=host_w,
        images_per_joule=frame_fps / watts,
        joules_per_image=watts / frame_fps,
        end_to_end=e2e,
    )
    return Estimate(graph.name, device.name, tuple(graph.input_shape), cfg, clock_mhz, tuple(rows), res, totals)


def _end_to_end(
    graph: Graph, cfg: AccelConfig, device: FpgaDevice, rows: list[LayerCost], image_ms: float, host: HostConfig
) -> EndToEnd:
    """Host work per frame beside the accelerator's, and the frame rate of the two together."""
    cpu_layers = [ly for ly in graph.layers if ly.op in CPU_OPS]
    invocations = len({r.group for r in rows if r.group and r.placement == "fpga" and r.cycles + r.dram_bytes > 0})
    h = host_frame(graph.input_shape, cpu_layers, invocations / max(cfg.batch, 1) if cfg.arch == "bundle" else 1, device, host)
    input_ms = max(h.host_ms, image_ms) if host.overlap else h.host_ms + image_ms  # per network input
    bound = "host" if h.host_ms > image_ms else "accelerator"
    return EndToEnd(
        host=h,
        accelerator_ms=image_ms,
        frame_ms=input_ms / host.frames_per_input,
        latency_ms=h.host_ms + image_ms * cfg.batch,
        fps=1e3 * host.frames_per_input / input_ms,
        bound=bound if host.overlap else f"serial ({bound} larger)",
    )


# ---------------------------------------------------------------- pipeline architecture
def _pipeline(
    graph: Graph, cfg: AccelConfig, device: FpgaDevice, clock_mhz: float, bw: float
) -> tuple[Resources, list[LayerCost]]:
    """Stages get multipliers in proportion to MACs; weights on chip while BRAM allows, else streamed per batch."""
    from edgesplit.hardware.costs import bram18

    compute = [ly for ly in graph.layers if ly.op in ("conv", "linear")]
    total_macs = sum(ly.macs for ly in compute)
    par = {ly.name: max(1, round(cfg.mults * ly.macs / total_macs)) for ly in compute}
    fb, wb = (32, 32) if cfg.float32 else (cfg.fbits, cfg.wbits)
    line_bram = 0
    for ly in graph.layers:  # K-row line buffers for windowed layers
        if ly.op in ("conv", "maxpool", "avgpool") and ly.kernel != (1, 1):
            c, _h, w = ly.in_shape
            line_bram += bram18(ly.kernel[0] * w * c, fb)
    budget = device.bram18 - line_bram
    on_chip, weight_bram = set(), 0
    for ly in sorted(compute, key=lambda x: x.weights):  # small layers first: most layers kept on chip
        need = par[ly.name] * bram18(_ceil(ly.weights, par[ly.name]), wb)
        if weight_bram + need <= budget:
            on_chip.add(ly.name)
            weight_bram += need
    rows = []
    fbytes, wbytes = _value_bytes(cfg.fbits, cfg), _value_bytes(cfg.wbits, cfg)
    first = graph.layers[0].name
    for ly in graph.layers:
        cycles = _ceil(ly.macs, par[ly.name]) + PIPELINE_DEPTH_CYCLES if ly.name in par else 0
        traffic = {
            "weights": 0.0 if ly.name in on_chip else ly.weights * wbytes / cfg.batch,
            "fm_in": ly.in_values * fbytes if ly.name == first else 0.0,
            "fm_out": ly.out_values * fbytes if ly is graph.layers[-1] else 0.0,
        }
        rows.append(_row(ly, cycles, traffic, clock_mhz, bw, cfg.overlap))
    mults = sum(par.values())
    m = mult_cost(cfg.wbits, cfg.fbits, device.dsp_type, cfg.float32, cfg.pack)
    res = Resources(
        dsp=math.ceil(sum(math.ceil(p * m.dsp) for p in par.values())),
        bram18=ENGINE_FIXED["bram18"] + line_bram + weight_bram,
        lut=int(
            ENGINE_FIXED["lut"]
            + mults * luts_per_mult(cfg.wbits, cfg.fbits, device.dsp_type, cfg.float32, cfg.pack)
            + len(graph.layers) * PIPELINE_STAGE_LUTS
        ),
        ff=int(ENGINE_FIXED["ff"] + mults * m.ff + len(graph.layers) * PIPELINE_STAGE_LUTS),
        multipliers=mults,
        dsp_per_multiply=m.dsp,
        available=_available(device),
        weights_streamed=tuple(sorted(set(par) - on_chip)),
    )
    return res, rows


# ---------------------------------------------------------------- tuning
TILE_CHOICES = (4, 7, 8, 13, 14, 16, 20, 28, 32, 40, 56)
PAR_CHOICES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)


COARSE_PAR_CHOICES = (1, 2, 4, 8, 16, 32, 64)  # a 10x faster grid for searches that call tune many times
COARSE_TILE_CHOICES = (7, 14, 28)


def _grid(graph: Graph, device: FpgaDevice, base: AccelConfig, par_choices, tile_choices) -> list[AccelConfig]:
    """The designs ``tune`` searches: ``par_choices`` x ``tile_choices`` within the board's DSPs (bundle), or
    ``mults`` in steps of 16 (pipeline). ``graph`` is already fused as ``base`` says."""
    if base.arch != "bundle":
        return [replace(base, mults=m) for m in range(16, 8 * max(device.dsp, 256) + 1, 16)]
    per_mult = dsp_per_mult(base.wbits, base.fbits, device.dsp_type, base.float32, base.pack)
    has_dw = any(ly.is_depthwise for ly in graph.layers)
    return [
        replace(base, tm=tm, tn=tn, td=td, tr=t, tc=t)
        for tm in par_choices
        for tn in par_choices
        for td in (par_choices if has_dw else (1,))
        if (tm * tn + (td * DW_KERNEL_MULTS if has_dw else 0)) * per_mult <= device.dsp  # others cannot fit
        for t in tile_choices
    ]


def tune_every_design(
    graph: Graph, device: FpgaDevice, base: AccelConfig, par_choices=PAR_CHOICES, tile_choices=TILE_CHOICES
) -> Estimate:
    """The reference ``tune`` is checked against (tests, ``scripts/check_tune_bound.py``): every design of the grid
    costed in full, the first of the fastest (fewest DSPs) kept."""
    graph = fuse(graph) if base.fuse else graph
    best = None
    for cfg in _grid(graph, device, base, par_choices, tile_choices):
        est = _estimate_prepared(graph, device, cfg)
        if not est.fits or est.resources.utilisation["lut"] > TUNE_MAX_LUT_UTILISATION:
            continue
        key = (est.totals.fps, -est.resources.dsp)
        if best is None or key > best[0]:
            best = (key, est)
    if best is None:
        raise EdgesplitError(f"no {base.arch} design of {graph.name} fits {device.name}")
    return best[1]


def tune(
    graph: Graph,
    device: FpgaDevice,
    base: AccelConfig,
    par_choices=PAR_CHOICES,
    tile_choices=TILE_CHOICES,
    host: HostConfig | None = None,
) -> TuneResult:
    """Search the parallelism and tiling factors of ``base.arch`` for the highest FPS that fits.

    Exhaustive over a grid (``par_choices`` x ``tile_choices``; ``mults`` in steps for the
    pipeline); ties go to the design with fewer DSPs. Returns the best estimate, and how
    many designs were tried and fitted.
    """
    if getattr(device, "kind", "") != "fpga":
        raise EdgesplitError(f"{device.name} is a {device.kind} device; the accelerator model needs an FPGA board")
    _check_supported(graph)
    graph = fuse(graph) if base.fuse else graph
    candidates = _grid(graph, device, base, par_choices, tile_choices)
    if base.arch == "bundle":
        # A design's time per image is at least its compute cycles (each fused group takes the longer of its
        # compute and its DRAM time, or their sum): visiting designs by that bound, the search stops at the first
        # whose compute alone is slower than the best found, which no later one can beat.
        clock_mhz = base.clock_mhz or device.clock_mhz
        pairs = _bundle_pairs(graph)
        bounds = [sum(_bundle_cycles(graph, cfg, pairs).values()) / (clock_mhz * 1e3) for cfg in candidates]
        order = sorted(range(len(candidates)), key=bounds.__getitem__)
    else:
        bounds, order = [0.0] * len(candidates), list(range(len(candidates)))
    best, fitted, costed = None, 0, 0
    for i in order:
        if best is not None and bounds[i] > best[2].totals.image_ms * (1 + 1e-9):
            break
        costed += 1
        cfg = candidates[i]
        est = _estimate_prepared(graph, device, cfg, host)
        if not est.fits or est.resources.utilisation["lut"] > TUNE_MAX_LUT_UTILISATION:
            continue
        fitted += 1
        key = (est.totals.fps, -est.resources.dsp, -i)  # ties: the first of the grid
        if best is None or key > best[0]:
            best = (key, cfg, est)
    if best is None:
        raise EdgesplitError(
            f"no {base.arch} design of {graph.name} fits {device.name} at W{base.wbits}/F{base.fbits} "
            f"batch {base.batch}; try fewer bits, a smaller batch or a bigger device"
        )
    return TuneResult(best[2], len(candidates), fitted, costed)
