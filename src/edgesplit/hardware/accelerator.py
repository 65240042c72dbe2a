"""The analytical accelerator model: a CNN graph and a configuration in, per-layer and total costs out.

Two architectures (``AccelConfig.arch``):

``bundle``
    One engine reused for every layer, layer after layer (the co-design seed's
    bundle-reused accelerator; SkyNet; the SqueezeNet seed's design). A conv unit of
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
from dataclasses import asdict, dataclass, replace

from edgesplit.errors import EdgesplitError
from edgesplit.hardware.catalog import FpgaDevice
from edgesplit.hardware.costs import accumulator_bits, buffer_cost, dsp_per_mult, luts_per_mult
from edgesplit.hardware.graph import POOL_OPS, Graph, Layer, fuse

PIPELINE_DEPTH_CYCLES = 20  # fill/drain of the MAC pipeline per tile (assumed; typical HLS loop latency)
DRAM_EFFICIENCY = 0.7  # fraction of the board's peak DRAM bandwidth a burst DMA sustains (assumed; measure yours)
DW_KERNEL_MULTS = 9  # the depth-wise unit computes one 3x3 window per channel per cycle
ENGINE_BASE_LUTS = 6000  # DMA, AXI interconnect, control and address generation (assumed)
LUTS_PER_COMPARATOR_BIT = 1  # max-pool and ReLU comparators
# Dynamic power per resource at 1 MHz (assumed coefficients of the order of Xilinx Power Estimator's
# 7-series defaults at 12.5% toggle rate) and DRAM energy (Horowitz, ISSCC 2014: ~20 pJ/bit for DDR3).
DSP_W_PER_MHZ = 1.0e-5
BRAM18_W_PER_MHZ = 6.0e-6
LUT_W_PER_MHZ = 5.0e-8
DRAM_J_PER_BYTE = 160e-12
MAX_BITS = 32


@dataclass(frozen=True)
class AccelConfig:
    arch: str = "bundle"  # bundle | pipeline
    wbits: int = 16  # weight width (fixed point)
    fbits: int = 16  # feature-map width (fixed point)
    float32: bool = False  # float32 datapath instead of fixed point
    batch: int = 1
    fuse: bool = True
    tm: int = 16  # bundle: output-channel parallelism of the conv unit
    tn: int = 8  # bundle: input-channel parallelism of the conv unit
    td: int = 16  # bundle: channels of the depth-wise unit
    tr: int = 16  # bundle: output tile rows
    tc: int = 16  # bundle: output tile columns
    mults: int = 128  # pipeline: multipliers shared among the layers
    clock_mhz: float | None = None  # None: the device's clock
    dram_gbs: float | None = None  # None: the device's peak DRAM bandwidth (GB/s), before DRAM_EFFICIENCY

    def __post_init__(self):
        if self.arch not in ("bundle", "pipeline"):
            raise EdgesplitError(f"--arch must be bundle or pipeline, got {self.arch!r}")
        for name in ("wbits", "fbits"):
            v = getattr(self, name)
            if not 1 <= v <= MAX_BITS:
                raise EdgesplitError(f"--{name} must be between 1 and {MAX_BITS}, got {v}")
        for name in ("batch", "tm", "tn", "td", "tr", "tc", "mults"):
            if getattr(self, name) < 1:
                raise EdgesplitError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("clock_mhz", "dram_gbs"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise EdgesplitError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------- bundle engine: cycles per layer kind
def _conv_cycles(layer: Layer, cfg: AccelConfig) -> int:
    m, r, c = layer.out_shape
    kh, kw = layer.kernel
    tiles = _ceil(r, cfg.tr) * _ceil(c, cfg.tc)
    if layer.is_depthwise:
        return _ceil(m, cfg.td) * tiles * (cfg.tr * cfg.tc * _ceil(kh * kw, DW_KERNEL_MULTS) + PIPELINE_DEPTH_CYCLES)
    g = layer.groups
    n_per_group = layer.in_shape[0] // g
    steps = g * _ceil(m // g, cfg.tm) * _ceil(n_per_group, cfg.tn)
    return steps * tiles * (cfg.tr * cfg.tc * kh * kw + PIPELINE_DEPTH_CYCLES)


def _linear_cycles(layer: Layer, cfg: AccelConfig) -> int:
    return _ceil(layer.out_shape[0], cfg.tm) * _ceil(layer.in_shape[0], cfg.tn) + PIPELINE_DEPTH_CYCLES


def _vector_cycles(layer: Layer, cfg: AccelConfig) -> int:
    """Pools and adds on a tm-wide vector unit; hidden (0) when fused into the producing conv's output stage."""
    if layer.on_chip_in:
        return 0
    c, h, w = layer.out_shape
    window = layer.kernel[0] * layer.kernel[1] if layer.op in POOL_OPS else 1
    return _ceil(c, cfg.tm) * h * w * window + PIPELINE_DEPTH_CYCLES


def _concat_cycles(layer: Layer, cfg: AccelConfig) -> int:
    return 0  # producers write at channel offsets of one buffer: no copy


LAYER_CYCLES = {"conv": _conv_cycles, "linear": _linear_cycles, "maxpool": _vector_cycles, "avgpool": _vector_cycles,
                "gap": _vector_cycles, "add": _vector_cycles, "concat": _concat_cycles}


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
    if layer.op == "concat":
        fm_in = 0.0
    elif layer.op == "add":
        fm_in = (layer.in_values // 2 if layer.on_chip_in else layer.in_values) * fbytes
    elif layer.on_chip_in:
        fm_in = 0.0
    else:
        rereads = _ceil(layer.out_shape[0] // layer.groups, cfg.tm) if layer.op == "conv" and not layer.is_depthwise else 1
        fm_in = layer.in_values * fbytes * rereads * _halo(layer, cfg)
    fm_out = 0.0 if (layer.on_chip_out or layer.op == "concat") else layer.out_values * fbytes
    return {"weights": weights, "fm_in": fm_in, "fm_out": fm_out}


def _value_bytes(bits: int, cfg: AccelConfig) -> float:
    return 4.0 if cfg.float32 else bits / 8


# ---------------------------------------------------------------- resources
def _bundle_resources(graph: Graph, cfg: AccelConfig, dev: FpgaDevice) -> dict:
    convs = [ly for ly in graph.layers if ly.op == "conv"]
    k_max = max((max(ly.kernel) for ly in convs if not ly.is_depthwise), default=1)
    s_max = max((ly.stride for ly in convs), default=1)
    n_max = max((ly.in_shape[0] // ly.groups * ly.kernel[0] * ly.kernel[1] for ly in graph.layers if ly.op in ("conv", "linear")), default=1)
    fb, wb = (32, 32) if cfg.float32 else (cfg.fbits, cfg.wbits)
    acc = 32 if cfg.float32 else min(accumulator_bits(cfg.wbits, cfg.fbits, n_max), 48)
    has_dw = any(ly.is_depthwise for ly in convs)
    mults = cfg.tm * cfg.tn + (cfg.td * DW_KERNEL_MULTS if has_dw else 0)
    dsp = math.ceil(mults * dsp_per_mult(cfg.wbits, cfg.fbits, dev.dsp_type, cfg.float32))
    lut = ENGINE_BASE_LUTS + mults * luts_per_mult(cfg.wbits, cfg.fbits, dev.dsp_type, cfg.float32)
    in_depth = (cfg.tr * s_max + k_max - s_max) * (cfg.tc * s_max + k_max - s_max)
    buffers = {
        "input": buffer_cost(cfg.tn, in_depth, fb),
        "weights": buffer_cost(cfg.tm, k_max * k_max, cfg.tn * wb),
        "output": buffer_cost(cfg.tm, cfg.tr * cfg.tc * cfg.batch, acc),
    }
    if has_dw:
        buffers["dw_input"] = buffer_cost(cfg.td, (cfg.tr + 2) * (cfg.tc + 2), fb)
        buffers["dw_weights"] = buffer_cost(cfg.td, DW_KERNEL_MULTS, wb)
    if cfg.fuse:  # the on-chip tile of a fused producer's output, all its channels, with a 3x3 halo
        fused_ch = max((ly.out_shape[0] for ly in graph.layers if ly.on_chip_out and ly.op == "conv"), default=0)
        if fused_ch:
            buffers["fusion"] = buffer_cost(cfg.tn, _ceil(fused_ch, cfg.tn) * (cfg.tr + 2) * (cfg.tc + 2), fb)
    bram = sum(b for b, _ in buffers.values())
    lut += sum(u for _, u in buffers.values()) + cfg.tm * fb * LUTS_PER_COMPARATOR_BIT
    return {"dsp": dsp, "bram18": bram, "lut": int(lut), "multipliers": mults,
            "buffers_bram18": {k: b for k, (b, _) in buffers.items()}}


# ---------------------------------------------------------------- estimate
def _check_supported(graph: Graph) -> None:
    from edgesplit.hardware.graph import UnsupportedLayers

    bad = [f"{ly.name} ({ly.op})" for ly in graph.layers if ly.op not in LAYER_CYCLES]
    if bad:
        raise UnsupportedLayers(bad)


def estimate(graph: Graph, device: FpgaDevice, cfg: AccelConfig) -> dict:
    """Per-layer rows and totals (resources, cycles, ms, bound, GOP/s, FPS, W, images/J) and whether it fits."""
    if getattr(device, "kind", "") != "fpga":
        raise EdgesplitError(f"{device.name} is a {device.kind} device; the accelerator model needs an FPGA board")
    _check_supported(graph)
    return _estimate_prepared(fuse(graph) if cfg.fuse else graph, device, cfg)


def _estimate_prepared(graph: Graph, device: FpgaDevice, cfg: AccelConfig) -> dict:
    clock_mhz = cfg.clock_mhz or device.clock_mhz
    bw = (cfg.dram_gbs or device.dram_bandwidth_gbs) * 1e9 * DRAM_EFFICIENCY  # bytes/s sustained
    if cfg.arch == "bundle":
        res = _bundle_resources(graph, cfg, device)
        rows = _bundle_rows(graph, cfg, clock_mhz, bw)
    else:
        res, rows = _pipeline(graph, cfg, device, clock_mhz, bw)
    return _totals(graph, cfg, device, clock_mhz, res, rows)


def _fused_groups(graph: Graph) -> dict[str, str]:
    """Layer -> the first layer of its fused group (layers joined by on-chip edges run as one unit)."""
    group: dict[str, str] = {}
    kept = {ly.name for ly in graph.layers if ly.on_chip_out}
    for ly in graph.layers:
        fused_from = [s for s in ly.inputs if s in kept and s in group]
        group[ly.name] = group[fused_from[0]] if fused_from and ly.on_chip_in else ly.name
    return group


def _bundle_rows(graph: Graph, cfg: AccelConfig, clock_mhz: float, bw: float) -> list[dict]:
    """Cycles and DRAM bytes per layer; a fused group takes max(its compute, its DRAM time) as one unit."""
    cycles = {ly.name: LAYER_CYCLES[ly.op](ly, cfg) for ly in graph.layers}
    consumers: dict[str, list[str]] = {}
    for ly in graph.layers:
        for s in ly.inputs:
            consumers.setdefault(s, []).append(ly.name)
    rows = []
    for ly in graph.layers:
        exposed = cycles[ly.name]
        if ly.is_depthwise and ly.on_chip_out:  # the DW unit runs tile by tile alongside the PW layer it feeds
            exposed = max(0, exposed - sum(cycles[c] for c in consumers.get(ly.name, [])))
        rows.append(_row(ly, exposed, _bundle_dram_bytes(ly, cfg), clock_mhz, bw))
    return _group_rows(rows, _fused_groups(graph))


def _group_rows(rows: list[dict], group: dict[str, str]) -> list[dict]:
    sums: dict[str, list[float]] = {}
    for r in rows:
        g = sums.setdefault(group[r["name"]], [0.0, 0.0])
        g[0] += r["compute_ms"]
        g[1] += r["dram_ms"]
    for r in rows:
        compute, dram = sums[group[r["name"]]]
        r["group"] = group[r["name"]]
        if compute == dram == 0:
            share = 0.0
        else:
            share = r["compute_ms"] / compute if compute >= dram else r["dram_ms"] / dram
        r["ms"] = max(compute, dram) * share  # the group's time, apportioned to the layers that bound it
        r["bound"] = "-" if compute == dram == 0 else ("compute" if compute >= dram else "memory")
        r["gops"] = 2 * r["macs"] / (r["ms"] * 1e-3) / 1e9 if r["ms"] > 0 else 0.0
    return rows


def _row(ly: Layer, cycles: int, traffic: dict, clock_mhz: float, bw: float) -> dict:
    dram_bytes = sum(traffic.values())
    compute_ms = cycles / (clock_mhz * 1e3)
    dram_ms = dram_bytes / bw * 1e3
    ms = max(compute_ms, dram_ms)
    return {"name": ly.name, "op": "dwconv" if ly.is_depthwise else ly.op, "in_shape": list(ly.in_shape),
            "out_shape": list(ly.out_shape), "macs": ly.macs, "cycles": int(cycles), "compute_ms": compute_ms,
            "dram_bytes": int(dram_bytes), "dram_ms": dram_ms, "ms": ms,
            "bound": "-" if ms == 0 else ("compute" if compute_ms >= dram_ms else "memory"),
            "gops": (2 * ly.macs / (ms * 1e-3) / 1e9) if ms > 0 else 0.0,
            "fused_in": ly.on_chip_in, "fused_out": ly.on_chip_out}


def _totals(graph: Graph, cfg: AccelConfig, device: FpgaDevice, clock_mhz: float, res: dict, rows: list[dict]) -> dict:
    if cfg.arch == "bundle":
        image_ms = sum(r["ms"] for r in rows)
        latency_ms = image_ms * cfg.batch
    else:
        image_ms = max(r["ms"] for r in rows)  # the slowest stage sets the rate
        latency_ms = sum(r["ms"] for r in rows) + image_ms * (cfg.batch - 1)
    fps = 1e3 / image_ms if image_ms > 0 else float("inf")
    dram_bytes = sum(r["dram_bytes"] for r in rows)
    busy = sum(r["compute_ms"] for r in rows) / (image_ms * (len(rows) if cfg.arch == "pipeline" else 1))
    dynamic_w = clock_mhz * (res["dsp"] * DSP_W_PER_MHZ + res["bram18"] * BRAM18_W_PER_MHZ + res["lut"] * LUT_W_PER_MHZ) * min(1.0, busy)
    dram_w = dram_bytes * fps * DRAM_J_PER_BYTE
    watts = device.static_power_w + dynamic_w + dram_w
    available = {"dsp": device.dsp, "bram18": device.bram18, "lut": device.lut}
    overflow = [f"{k}: needs {res[k]}, has {available[k]}" for k in available if res[k] > available[k]]
    macs = graph.macs
    return {
        "model": graph.name, "device": device.name, "input_shape": list(graph.input_shape), "config": asdict(cfg),
        "clock_mhz": clock_mhz, "layers": rows,
        "resources": {**res, "available": available,
                      "utilisation": {k: res[k] / available[k] for k in available}},
        "fits": not overflow, "overflow": overflow,
        "totals": {"macs": macs, "weights": graph.weights, "cycles": sum(r["cycles"] for r in rows),
                   "dram_bytes_per_image": dram_bytes, "image_ms": image_ms, "latency_ms": latency_ms, "fps": fps,
                   "gops": 2 * macs * fps / 1e9, "memory_bound_layers": sum(r["bound"] == "memory" for r in rows),
                   "compute_bound_layers": sum(r["bound"] == "compute" for r in rows),
                   "watts": watts, "static_w": device.static_power_w, "dynamic_w": dynamic_w, "dram_w": dram_w,
                   "images_per_joule": fps / watts, "joules_per_image": watts / fps},
    }


# ---------------------------------------------------------------- pipeline architecture
def _pipeline(graph: Graph, cfg: AccelConfig, device: FpgaDevice, clock_mhz: float, bw: float) -> tuple[dict, list[dict]]:
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
        traffic = {"weights": 0.0 if ly.name in on_chip else ly.weights * wbytes / cfg.batch,
                   "fm_in": ly.in_values * fbytes if ly.name == first else 0.0,
                   "fm_out": ly.out_values * fbytes if ly is graph.layers[-1] else 0.0}
        rows.append(_row(ly, cycles, traffic, clock_mhz, bw))
    mults = sum(par.values())
    res = {"dsp": math.ceil(sum(math.ceil(p * dsp_per_mult(cfg.wbits, cfg.fbits, device.dsp_type, cfg.float32)) for p in par.values())),
           "bram18": line_bram + weight_bram,
           "lut": int(ENGINE_BASE_LUTS * 0.5 + mults * luts_per_mult(cfg.wbits, cfg.fbits, device.dsp_type, cfg.float32)
                      + len(graph.layers) * 300),  # per-stage control and FIFO logic (assumed)
           "multipliers": mults, "weights_streamed": sorted(set(par) - on_chip)}
    return res, rows


# ---------------------------------------------------------------- tuning
TILE_CHOICES = (4, 7, 8, 13, 14, 16, 20, 28, 32, 40, 56)
PAR_CHOICES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)


COARSE_PAR_CHOICES = (1, 2, 4, 8, 16, 32, 64)  # a 10x faster grid for searches that call tune many times
COARSE_TILE_CHOICES = (7, 14, 28)


def tune(graph: Graph, device: FpgaDevice, base: AccelConfig, par_choices=PAR_CHOICES, tile_choices=TILE_CHOICES) -> dict:
    """Search the parallelism and tiling factors of ``base.arch`` for the highest FPS that fits.

    Exhaustive over a grid (``par_choices`` x ``tile_choices``; ``mults`` in steps for the
    pipeline); ties go to the design with fewer DSPs. Returns the best estimate, and how
    many designs were tried and fitted.
    """
    if getattr(device, "kind", "") != "fpga":
        raise EdgesplitError(f"{device.name} is a {device.kind} device; the accelerator model needs an FPGA board")
    _check_supported(graph)
    graph = fuse(graph) if base.fuse else graph
    per_mult = dsp_per_mult(base.wbits, base.fbits, device.dsp_type, base.float32)
    candidates = []
    if base.arch == "bundle":
        has_dw = any(ly.is_depthwise for ly in graph.layers)
        for tm in par_choices:
            for tn in par_choices:
                for td in (par_choices if has_dw else (1,)):
                    if (tm * tn + (td * DW_KERNEL_MULTS if has_dw else 0)) * per_mult > device.dsp:
                        continue  # cannot fit: skip before costing it
                    for t in tile_choices:
                        candidates.append(replace(base, tm=tm, tn=tn, td=td, tr=t, tc=t))
    else:
        candidates = [replace(base, mults=m) for m in range(16, 8 * max(device.dsp, 256) + 1, 16)]
    best, tried, fitted = None, 0, 0
    for cfg in candidates:
        tried += 1
        est = _estimate_prepared(graph, device, cfg)
        if not est["fits"]:
            continue
        fitted += 1
        key = (est["totals"]["fps"], -est["resources"]["dsp"])
        if best is None or key > best[0]:
            best = (key, cfg, est)
    if best is None:
        raise EdgesplitError(f"no {base.arch} design of {graph.name} fits {device.name} at W{base.wbits}/F{base.fbits} "
                             f"batch {base.batch}; try fewer bits, a smaller batch or a bigger device")
    _, cfg, est = best
    est = dict(est, config=asdict(cfg))
    return {"best": est, "tried": tried, "fitted": fitted}
