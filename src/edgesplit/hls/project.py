"""A Vitis HLS project for a quantized network: graph and formats in, a folder of C++ and scripts out.

The network is a :class:`~edgesplit.quant.fixed.QGraph` with its calibrated
:class:`~edgesplit.quant.fixed.QScheme` (per-tensor fixed-point formats). Each op becomes a
call of a layer template of ``edgesplit_layers.h`` with its shapes, formats and the
engine's parallelism (``tm, tn, td, tr, tc``: the knobs ``edgesplit estimate`` costs) as
template arguments. conv -> ReLU -> 2x2 max-pool runs as one call (the pool in the conv's
output stage, Arora and Lanka's SqueezeNet-on-Zybo conv+pool fusion); ReLU after a conv or a linear
layer always runs in its output stage.

Files written (``write_project``): ``edgesplit_layers.h`` (the templates), ``net.h`` /
``net.cpp`` (the top function ``edgesplit_kernel``: AXI master ports for feature maps and
weights, an AXI-lite control port), ``weights.bin`` / ``bias.bin`` with ``weights.h``
(offsets and formats), ``tb.cpp`` (a testbench that reads real test images, quantizes
them as the board's cores would and writes every tensor back), ``run_hls.tcl`` and a README.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgesplit.errors import EdgesplitError
from edgesplit.hardware.config import AccelConfig
from edgesplit.quant.fixed import BIAS_BITS, Fixed, QGraph, QOp, QScheme, quantize

TEMPLATES = Path(__file__).with_name("edgesplit_layers.h")
SUPPORTED_OPS = ("conv", "linear", "relu", "maxpool", "gap", "add", "concat", "flatten")
MAX_ACC_BITS = 64


# The full part names Vitis HLS needs, for the catalog's chips on their boards (package and speed
# grade from each board's reference manual or user guide: PYNQ-Z1, Zybo Z7-20, Ultra96-V2, ZCU102).
BOARD_PARTS = {"xc7z020": "xc7z020clg400-1", "xczu3eg": "xczu3eg-sbva484-1-i", "xczu9eg": "xczu9eg-ffvb1156-2-e"}


@dataclass(frozen=True)
class HlsConfig:
    """The engine's parallelism and the board it is built for."""

    tm: int = AccelConfig.tm  # the same engine the accelerator model costs
    tn: int = AccelConfig.tn
    td: int = AccelConfig.td
    tr: int = AccelConfig.tr
    tc: int = AccelConfig.tc
    part: str = "xc7z020clg400-1"
    clock_mhz: float = 100.0
    fuse: bool = AccelConfig.fuse  # DW -> PW bundles and conv -> max-pool in one call; False: every layer through DRAM

    def __post_init__(self):
        for name in ("tm", "tn", "td", "tr", "tc"):
            if getattr(self, name) < 1:
                raise EdgesplitError(f"--{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Call:
    """One generated layer call: the ops it covers, the tensor it writes, and its C++ text."""

    index: int
    ops: tuple[str, ...]  # QGraph op names covered (conv, its ReLU, its pool)
    kind: str  # conv | dwconv | linear | maxpool | gap | add | copy
    output: str  # the tensor this call materializes
    code: str


def hls_config_for(device, **tiling) -> HlsConfig:
    """The engine's parallelism on ``device`` (an FpgaDevice): its full part name and clock."""
    return HlsConfig(part=BOARD_PARTS.get(device.part, device.part), clock_mhz=device.clock_mhz, **tiling)


def _shapes(graph: QGraph, tensors: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in t.shape[1:]) for name, t in tensors.items()}


def check_supported(graph: QGraph, scheme: QScheme, wbits: int, fbits: int) -> None:
    bad = sorted({f"{op.name} ({op.op})" for op in graph.ops if op.op not in SUPPORTED_OPS})
    if bad:
        raise EdgesplitError(
            f"the HLS generator cannot build {len(bad)} op(s): {', '.join(bad[:6])}; supported: {', '.join(SUPPORTED_OPS)}"
        )
    per_channel = [name for name, f in scheme.weights.items() if f is not None and f.per_channel]
    if per_channel:
        raise EdgesplitError(
            "per-channel weight formats need a variable shift per output lane, which the generated "
            "engine does not have; quantize per tensor (without --per-channel)"
        )
    if any(f is None for f in (*scheme.features.values(), *scheme.weights.values())):
        raise EdgesplitError("this network has ops left in float; the accelerator needs every op quantized")
    if not (2 <= wbits <= 16 and 2 <= fbits <= 16):
        raise EdgesplitError(f"the HLS generator supports 2- to 16-bit weights and feature maps, got W{wbits}/F{fbits}")


def _consumers(graph: QGraph) -> dict[str, list[QOp]]:
    out: dict[str, list[QOp]] = {}
    for op in graph.ops:
        for t in op.inputs:
            out.setdefault(t, []).append(op)
    return out


def _acc_bits(wbits: int, fbits: int, fan_in: int) -> int:
    return min(MAX_ACC_BITS, max(BIAS_BITS, wbits + fbits + math.ceil(math.log2(max(fan_in, 2)))) + 2)


def plan_calls(
    graph: QGraph,
    scheme: QScheme,
    shapes: dict[str, tuple[int, ...]],
    cfg: HlsConfig,
    woff: dict[str, int],
    boff: dict[str, int],
    fmoff: dict[str, int],
) -> tuple[list[Call], dict[str, str]]:
    """The layer calls of ``edgesplit_kernel`` (fusing DW -> PW bundles and conv -> ReLU -> max-pool where the
    output stage can), and the tensors that are another's values under a new name (flatten) -> that tensor."""
    feats, wb, fb = scheme.features, scheme.wbits, scheme.fbits
    consumers = _consumers(graph)
    calls: list[Call] = []
    done: set[str] = set()
    alias: dict[str, str] = {}  # flatten: same values, same order

    def src(t: str) -> str:
        t = alias.get(t, t)
        return f"fm + {fmoff[t]}"

    def single(t: str) -> QOp | None:
        c = consumers.get(t, [])
        return c[0] if len(c) == 1 and t != graph.output_name else None

    for op in graph.ops:
        if op.name in done:
            continue
        covered = [op.name]
        if op.op == "flatten":
            alias[op.output] = alias.get(op.inputs[0], op.inputs[0])
            continue
        fa = feats[op.inputs[0]].frac
        pw = _bundle_partner(op, shapes, consumers, single) if cfg.fuse else None
        if pw is not None:  # DW (+ReLU) -> PW on chip, one channel group at a time
            dw_relu = single(op.output)
            code, out, covered = _bundle_call(op, dw_relu, pw, scheme, shapes, cfg, single, woff, boff, src, fmoff)
            done.update(covered)
            calls.append(Call(len(calls), tuple(covered), "bundle", out, code))
            continue
        if op.op in ("conv", "linear"):
            relu, pool, out, extra = _output_stage(op, shapes, cfg, single, pool_ok=op.op == "conv" and cfg.fuse)
            covered += extra
            acc_frac = scheme.bias_frac(op)
            shift = acc_frac - feats[out].frac
            ci = shapes[op.inputs[0]]
            co = shapes[op.output]
            fan_in = int(np.prod(op.weight.shape[1:]))
            acc = _acc_bits(wb, fb, fan_in)
            w, b = f"wgt + {woff[op.name]}", f"bias + {boff[op.name]}"
            if op.op == "linear":
                n = int(np.prod(ci))
                code = (
                    f"es::linear<fm_t, wt_t, ap_int<{acc}>, {n}, {co[0]}, {cfg.tm}, {cfg.tn}, {shift}, {fb}, "
                    f"{str(relu).lower()}>({src(op.inputs[0])}, {w}, {b}, fm + {fmoff[out]});"
                )
                kind = "linear"
            else:
                m, k = op.weight.shape[0], op.weight.shape[2]
                s, (pt, pl, _pb, _pr) = op.attrs["stride"], op.attrs["pads"]
                g = op.attrs["groups"]
                if g > 1 and g == ci[0] == m:
                    code = (
                        f"es::dwconv<fm_t, wt_t, ap_int<{acc}>, {ci[0]}, {ci[1]}, {ci[2]}, {co[1]}, {co[2]}, {k}, {s}, "
                        f"{pt}, {pl}, {cfg.td}, {cfg.tr}, {cfg.tc}, {shift}, {fb}, {str(relu).lower()}>"
                        f"({src(op.inputs[0])}, {w}, {b}, fm + {fmoff[out]});"
                    )
                    kind = "dwconv"
                    if pool > 1:
                        raise AssertionError("a depth-wise conv never fuses a pool here")
                else:
                    code = (
                        f"es::conv<fm_t, wt_t, ap_int<{acc}>, {ci[0]}, {ci[1]}, {ci[2]}, {m}, {co[1]}, {co[2]}, {k}, {s}, "
                        f"{pt}, {pl}, {g}, {cfg.tm}, {cfg.tn}, {cfg.tr}, {cfg.tc}, {shift}, {fb}, {str(relu).lower()}, {pool}>"
                        f"({src(op.inputs[0])}, {w}, {b}, fm + {fmoff[out]});"
                    )
                    kind = "conv"
        elif op.op == "maxpool":
            from edgesplit.quant.fixed import pool_pads

            c, h, w_ = shapes[op.inputs[0]]
            k, s = op.attrs["kernel"], op.attrs["stride"]
            pt, pl, _pb, _pr = pool_pads(h, w_, k, s, op.attrs["pads"], op.attrs["ceil_mode"])
            _, ho, wo = shapes[op.output]
            out, kind = op.output, "maxpool"
            code = (
                f"es::maxpool<fm_t, {c}, {h}, {w_}, {ho}, {wo}, {k}, {s}, {pt}, {pl}, {cfg.tm}, "
                f"{fa - feats[out].frac}, {fb}>({src(op.inputs[0])}, fm + {fmoff[out]});"
            )
        elif op.op == "gap":
            c, h, w_ = shapes[op.inputs[0]]
            out, kind = op.output, "gap"
            code = f"es::gap<fm_t, {c}, {h}, {w_}, {feats[out].frac - fa}, {fb}>({src(op.inputs[0])}, fm + {fmoff[out]});"
        elif op.op in ("add", "relu"):
            relu, out = op.op == "relu", op.output
            n = int(np.prod(shapes[op.output]))
            if op.op == "add":
                fb_ = feats[op.inputs[1]].frac
                f = max(fa, fb_)
                nxt = single(op.output)
                if nxt is not None and nxt.op == "relu":  # the residual block's ReLU in the add's output stage
                    relu, out = True, nxt.output
                    covered.append(nxt.name)
                code = (
                    f"es::add<fm_t, {n}, {f - fa}, {f - fb_}, {f - feats[out].frac}, {fb}, {str(relu).lower()}>"
                    f"({src(op.inputs[0])}, {src(op.inputs[1])}, fm + {fmoff[out]});"
                )
                kind = "add"
            else:
                code = f"es::copy<fm_t, {n}, {fa - feats[out].frac}, {fb}, true>({src(op.inputs[0])}, fm + {fmoff[out]});"
                kind = "copy"
        elif op.op == "concat":
            out, kind, parts, offset = op.output, "copy", [], 0
            for t in op.inputs:
                n = int(np.prod(shapes[t]))
                parts.append(
                    f"es::copy<fm_t, {n}, {feats[t].frac - feats[out].frac}, {fb}, false>({src(t)}, fm + {fmoff[out] + offset});"
                )
                offset += n
            code = "\n    ".join(parts)
        else:
            raise AssertionError(op.op)
        done.update(covered)
        calls.append(Call(len(calls), tuple(covered), kind, out, code))
    return calls, alias


def _is_depthwise(op: QOp, shapes) -> bool:
    return op.op == "conv" and op.attrs["groups"] > 1 and op.attrs["groups"] == shapes[op.inputs[0]][0] == op.weight.shape[0]


def _bundle_partner(op: QOp, shapes, consumers, single) -> QOp | None:
    """The point-wise conv a depth-wise conv feeds through its ReLU alone, or None."""
    if not _is_depthwise(op, shapes):
        return None
    relu = single(op.output)
    pw = single(relu.output) if relu is not None and relu.op == "relu" else None
    if (
        pw is None
        or pw.op != "conv"
        or pw.weight.shape[2:] != (1, 1)
        or pw.attrs["groups"] != 1
        or pw.attrs["stride"] != 1
        or tuple(pw.attrs["pads"]) != (0, 0, 0, 0)
    ):
        return None
    return pw


def _bundle_call(dw: QOp, dw_relu: QOp, pw: QOp, scheme: QScheme, shapes, cfg: HlsConfig, single, woff, boff, src, fmoff):
    feats, wb, fb = scheme.features, scheme.wbits, scheme.fbits
    relu, pool, out, extra = _output_stage(pw, shapes, cfg, single, pool_ok=True)
    covered = [dw.name, dw_relu.name, pw.name, *extra]
    c, hi, wi = shapes[dw.inputs[0]]
    _, h, w = shapes[dw.output]
    k, s, (pt, pl, _pb, _pr) = dw.weight.shape[2], dw.attrs["stride"], dw.attrs["pads"]
    co = pw.weight.shape[0]
    dshift = scheme.bias_frac(dw) - feats[dw_relu.output].frac
    shift = scheme.bias_frac(pw) - feats[out].frac
    code = (
        f"es::bundle<fm_t, wt_t, ap_int<{_acc_bits(wb, fb, c)}>, ap_int<{_acc_bits(wb, fb, k * k)}>, {c}, {hi}, {wi}, "
        f"{h}, {w}, {k}, {s}, {pt}, {pl}, {co}, {cfg.td}, {cfg.tm}, {cfg.tn}, {cfg.tr}, {cfg.tc}, {dshift}, true, "
        f"{shift}, {fb}, {str(relu).lower()}, {pool}>({src(dw.inputs[0])}, wgt + {woff[dw.name]}, bias + {boff[dw.name]}, "
        f"wgt + {woff[pw.name]}, bias + {boff[pw.name]}, fm + {fmoff[out]});"
    )
    return code, out, covered


def _output_stage(op: QOp, shapes, cfg: HlsConfig, single, pool_ok: bool) -> tuple[bool, int, str, list[str]]:
    """(relu, pool kernel, output tensor, ops covered) of the ReLU and, when ``pool_ok``, 2x2 max-pool fused after ``op``."""
    nxt = single(op.output)
    if nxt is None or nxt.op != "relu":
        return False, 1, op.output, []
    nxt2 = single(nxt.output) if pool_ok else None
    if nxt2 is not None and nxt2.op == "maxpool" and _fusable_pool(nxt2, shapes[op.output], cfg):
        return True, nxt2.attrs["kernel"], nxt2.output, [nxt.name, nxt2.name]
    return True, 1, nxt.output, [nxt.name]


def _fusable_pool(pool: QOp, conv_out: tuple[int, ...], cfg: HlsConfig) -> bool:
    """A max-pool the conv's output stage can do: K == stride, no padding, tiles made of whole windows."""
    k, s = pool.attrs["kernel"], pool.attrs["stride"]
    _, h, w = conv_out
    return (
        k == s and tuple(pool.attrs["pads"]) == (0, 0, 0, 0) and h % k == 0 and w % k == 0 and cfg.tr % k == 0 and cfg.tc % k == 0
    )


def write_project(
    graph: QGraph,
    scheme: QScheme,
    cfg: HlsConfig,
    out_dir: Path,
    images: np.ndarray,
    tensors: dict[str, np.ndarray],
    model_name: str,
) -> dict:
    """Write the project; ``tensors`` are the integer reference's (one image) for shapes; returns the layout."""
    check_supported(graph, scheme, scheme.wbits, scheme.fbits)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = _shapes(graph, tensors)
    weights, biases, woff, boff = [], [], {}, {}
    for op in graph.ops:
        if op.has_weights:
            wq = quantize(op.weight, scheme.weights[op.name]).reshape(-1)
            bq = (
                quantize(op.bias, Fixed(BIAS_BITS, scheme.bias_frac(op)))
                if op.bias is not None
                else np.zeros(op.weight.shape[0], np.int64)
            )
            woff[op.name], boff[op.name] = sum(len(a) for a in weights), sum(len(a) for a in biases)
            weights.append(wq)
            biases.append(bq)
    fmoff, offset = {}, 0
    for name in [graph.input_name, *(op.output for op in graph.ops)]:
        if name not in fmoff:
            fmoff[name] = offset
            offset += int(np.prod(shapes[name]))
    fm_size = offset
    calls, alias = plan_calls(graph, scheme, shapes, cfg, woff, boff, fmoff)
    for t, same in alias.items():  # a flattened tensor is its source's values: point it there
        fmoff[t] = fmoff[same]
    wq_all = np.concatenate(weights).astype("<i2") if weights else np.zeros(1, "<i2")
    bq_all = np.concatenate(biases).astype("<i4") if biases else np.zeros(1, "<i4")
    wq_all.tofile(out_dir / "weights.bin")
    bq_all.tofile(out_dir / "bias.bin")
    np.asarray(images, "<f4").tofile(out_dir / "images.bin")
    shutil.copy(TEMPLATES, out_dir / TEMPLATES.name)
    feats = scheme.features
    in_c, in_h, in_w = shapes[graph.input_name]
    layout = {
        "model": model_name,
        "config": asdict(cfg),
        "wbits": scheme.wbits,
        "fbits": scheme.fbits,
        "fm_size": fm_size,
        "weights_size": int(len(wq_all)),
        "bias_size": int(len(bq_all)),
        "input": {
            "name": graph.input_name,
            "offset": fmoff[graph.input_name],
            "shape": [in_c, in_h, in_w],
            "frac": feats[graph.input_name].frac,
        },
        "output": {
            "name": graph.output_name,
            "offset": fmoff[graph.output_name],
            "shape": list(shapes[graph.output_name]),
            "frac": feats[graph.output_name].frac,
        },
        "tensors": {t: {"offset": o, "shape": list(shapes[t]), "frac": feats[t].frac} for t, o in fmoff.items()},
        "calls": [{"index": c.index, "ops": list(c.ops), "kind": c.kind, "output": c.output} for c in calls],
        "images": int(len(images)),
    }
    (out_dir / "layout.json").write_text(json.dumps(layout, indent=1))
    (out_dir / "net.h").write_text(_net_h(layout))
    (out_dir / "weights.h").write_text(_weights_h(graph, scheme, woff, boff, model_name))
    (out_dir / "net.cpp").write_text(_net_cpp(layout, calls))
    (out_dir / "tb.cpp").write_text(_tb_cpp(layout))
    (out_dir / "engine_abi.cpp").write_text(ENGINE_ABI)
    (out_dir / "run_hls.tcl").write_text(_tcl(cfg))
    (out_dir / "README.md").write_text(_readme(layout))
    return layout


def _net_h(layout: dict) -> str:
    return f"""// Generated by edgesplit hls for {layout["model"]} (W{layout["wbits"]}/F{layout["fbits"]}).
#ifndef EDGESPLIT_NET_H
#define EDGESPLIT_NET_H
#include <ap_int.h>

typedef ap_int<{layout["fbits"]}> fm_t;  // a feature-map value: an integer, its fraction bits fixed per tensor
typedef ap_int<{layout["wbits"]}> wt_t;  // a weight
typedef ap_int<32> bias_t;  // a bias, at its layer's accumulator fraction bits

#define ES_FM_SIZE {layout["fm_size"]}
#define ES_WEIGHTS_SIZE {layout["weights_size"]}
#define ES_BIAS_SIZE {layout["bias_size"]}
#define ES_INPUT_OFFSET {layout["input"]["offset"]}
#define ES_INPUT_SIZE {int(np.prod(layout["input"]["shape"]))}
#define ES_INPUT_FRAC {layout["input"]["frac"]}
#define ES_OUTPUT_OFFSET {layout["output"]["offset"]}
#define ES_OUTPUT_SIZE {int(np.prod(layout["output"]["shape"]))}
#define ES_OUTPUT_FRAC {layout["output"]["frac"]}
#define ES_CALLS {len(layout["calls"])}

void edgesplit_kernel(fm_t *fm, const wt_t *wgt, const bias_t *bias);
#endif
"""


def _weights_h(graph: QGraph, scheme: QScheme, woff: dict[str, int], boff: dict[str, int], model_name: str) -> str:
    """Where each layer's weights and biases start in weights.bin / bias.bin, and their formats."""
    lines = [
        f"// Generated by edgesplit hls for {model_name}: offsets (in values) into weights.bin (int16) and",
        "// bias.bin (int32), and each layer's formats: Qi.f = i integer bits (with sign), f fraction bits.",
        "#ifndef EDGESPLIT_WEIGHTS_H",
        "#define EDGESPLIT_WEIGHTS_H",
    ]
    for i, op in enumerate(op for op in graph.ops if op.has_weights):
        acc = scheme.bias_frac(op)
        lines.append(
            f"// {op.name}: weights {list(op.weight.shape)} {scheme.weights[op.name]}, bias at {acc} fraction bits, "
            f"input {scheme.features[op.inputs[0]]}"
        )
        lines.append(f"#define ES_W{i}_OFFSET {woff[op.name]}")
        lines.append(f"#define ES_B{i}_OFFSET {boff[op.name]}")
    lines.append("#endif")
    return "\n".join(lines) + "\n"


def _net_cpp(layout: dict, calls: list[Call]) -> str:
    lines = [
        f"// Generated by edgesplit hls: {layout['model']}, one call per layer group (see layout.json).",
        '#include "net.h"',
        '#include "edgesplit_layers.h"',
        "",
        "#ifdef EDGESPLIT_CSIM",
        "long long edgesplit_cycles = 0, edgesplit_invocations = 0, edgesplit_loads = 0;",
        "long long edgesplit_dw_cycles = 0, edgesplit_dw_invocations = 0;",
        "long long edgesplit_call_cycles[ES_CALLS][5];",
        "#define ES_CALL(i, ...) do { edgesplit_cycles = edgesplit_invocations = edgesplit_loads = 0; "
        "edgesplit_dw_cycles = edgesplit_dw_invocations = 0; __VA_ARGS__; "
        "edgesplit_call_cycles[i][0] = edgesplit_cycles; edgesplit_call_cycles[i][1] = edgesplit_invocations; "
        "edgesplit_call_cycles[i][2] = edgesplit_loads; edgesplit_call_cycles[i][3] = edgesplit_dw_cycles; "
        "edgesplit_call_cycles[i][4] = edgesplit_dw_invocations; } while (0)",
        "#else",
        "#define ES_CALL(i, ...) do { __VA_ARGS__; } while (0)",
        "#endif",
        "",
        "void edgesplit_kernel(fm_t *fm, const wt_t *wgt, const bias_t *bias) {",
        f"#pragma HLS INTERFACE m_axi port=fm offset=slave bundle=FM depth={layout['fm_size']}",
        f"#pragma HLS INTERFACE m_axi port=wgt offset=slave bundle=WT depth={layout['weights_size']}",
        f"#pragma HLS INTERFACE m_axi port=bias offset=slave bundle=WT depth={layout['bias_size']}",
        "#pragma HLS INTERFACE s_axilite port=return",
    ]
    for c in calls:
        t = layout["tensors"][c.output]
        fmt = Fixed(layout["fbits"], t["frac"])
        lines.append(f"    // {c.index}: {' + '.join(c.ops)} -> {c.output} {t['shape']} {fmt}")
        lines.append(f"    ES_CALL({c.index}, {c.code.rstrip(';').replace(chr(10), ' ')});")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _tb_cpp(layout: dict) -> str:
    c, h, w = layout["input"]["shape"]
    return f"""// Testbench: real test images (float32, preprocessed as the model expects) in images.bin,
// quantized to the input format as the board's cores would, run through edgesplit_kernel;
// every tensor of each image is written to csim_out/tensors_<i>.bin (int16) and the
// pipelined-loop iterations of each call to csim_out/cycles.txt. Usage: tb [images]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "net.h"

#ifdef EDGESPLIT_CSIM
extern long long edgesplit_call_cycles[ES_CALLS][5];
#endif

template <typename T> static std::vector<T> read_all(const char *path, size_t n) {{
    std::vector<T> v(n);
    FILE *f = fopen(path, "rb");
    if (!f || fread(v.data(), sizeof(T), n, f) != n) {{ fprintf(stderr, "cannot read %s\\n", path); exit(2); }}
    fclose(f);
    return v;
}}

int main(int argc, char **argv) {{
    const int images = argc > 1 ? atoi(argv[1]) : {layout["images"]};
    if (images > {layout["images"]}) {{ fprintf(stderr, "images.bin holds {layout["images"]} images\\n"); return 2; }}
    std::vector<short> wq = read_all<short>("weights.bin", ES_WEIGHTS_SIZE);
    std::vector<int> bq = read_all<int>("bias.bin", ES_BIAS_SIZE);
    std::vector<float> x = read_all<float>("images.bin", (size_t)images * ES_INPUT_SIZE);
    static wt_t wgt[ES_WEIGHTS_SIZE];
    static bias_t bias[ES_BIAS_SIZE];
    static fm_t fm[ES_FM_SIZE];
    for (int i = 0; i < ES_WEIGHTS_SIZE; i++) wgt[i] = wq[i];
    for (int i = 0; i < ES_BIAS_SIZE; i++) bias[i] = bq[i];
    FILE *cyc = fopen("csim_out/cycles.txt", "w");
    if (!cyc) {{ fprintf(stderr, "cannot write csim_out/\\n"); return 2; }}
    const double scale = std::ldexp(1.0, ES_INPUT_FRAC);
    const long long qmin = -(1LL << ({layout["fbits"]} - 1)), qmax = (1LL << ({layout["fbits"]} - 1)) - 1;
    std::vector<short> dump(ES_FM_SIZE);
    std::vector<short> expected = read_all<short>("expected.bin", (size_t)images * ES_OUTPUT_SIZE);
    int wrong = 0;
    for (int n = 0; n < images; n++) {{
        for (int i = 0; i < ES_FM_SIZE; i++) fm[i] = 0;
        for (int i = 0; i < ES_INPUT_SIZE; i++) {{  // round half up, saturate: quant.fixed.quantize
            long long q = (long long)std::floor((double)x[(size_t)n * ES_INPUT_SIZE + i] * scale + 0.5);
            fm[ES_INPUT_OFFSET + i] = q < qmin ? qmin : (q > qmax ? qmax : q);
        }}
        edgesplit_kernel(fm, wgt, bias);
        for (int i = 0; i < ES_FM_SIZE; i++) dump[i] = (short)fm[i].to_int();
        for (int i = 0; i < ES_OUTPUT_SIZE; i++)  // expected.bin: the integer reference's output (edgesplit)
            if (dump[ES_OUTPUT_OFFSET + i] != expected[(size_t)n * ES_OUTPUT_SIZE + i]) wrong++;
        char path[64];
        snprintf(path, sizeof path, "csim_out/tensors_%d.bin", n);
        FILE *f = fopen(path, "wb");
        fwrite(dump.data(), sizeof(short), ES_FM_SIZE, f);
        fclose(f);
#ifdef EDGESPLIT_CSIM
        if (n == 0)
            for (int c = 0; c < ES_CALLS; c++)
                fprintf(cyc, "%d %lld %lld %lld %lld %lld\\n", c, edgesplit_call_cycles[c][0], edgesplit_call_cycles[c][1],
                        edgesplit_call_cycles[c][2], edgesplit_call_cycles[c][3], edgesplit_call_cycles[c][4]);
#endif
    }}
    fclose(cyc);
    printf("ran %d image(s) of {c}x{h}x{w}: %s\\n", images, wrong ? "MISMATCH with expected.bin" : "output equals expected.bin");
    return wrong ? 1 : 0;
}}
"""


# A C entry point for the C simulation as a shared library (the worker's hls-csim engine): the
# board's input step (quantize the preprocessed image) and the kernel, one image per call.
ENGINE_ABI = """// C ABI of the C simulation, for edgesplit's hls-csim engine (a worker serving a branch on this code).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>
#include "net.h"

static wt_t g_wgt[ES_WEIGHTS_SIZE];
static bias_t g_bias[ES_BIAS_SIZE];
static fm_t g_fm[ES_FM_SIZE];

extern "C" int edgesplit_init(const short *weights, const int *biases) {
    for (int i = 0; i < ES_WEIGHTS_SIZE; i++) g_wgt[i] = weights[i];
    for (int i = 0; i < ES_BIAS_SIZE; i++) g_bias[i] = biases[i];
    return 0;
}

extern "C" int edgesplit_sizes(int *input_size, int *output_size, int *output_frac) {
    *input_size = ES_INPUT_SIZE;
    *output_size = ES_OUTPUT_SIZE;
    *output_frac = ES_OUTPUT_FRAC;
    return 0;
}

// x: ES_INPUT_SIZE preprocessed float32 values (C, H, W); out: ES_OUTPUT_SIZE integers (ES_OUTPUT_FRAC fraction bits)
extern "C" int edgesplit_run(const float *x, short *out) {
    const double scale = std::ldexp(1.0, ES_INPUT_FRAC);
    const long long qmax = (1LL << (fm_t::width - 1)) - 1, qmin = -qmax - 1;
    for (int i = 0; i < ES_FM_SIZE; i++) g_fm[i] = 0;
    for (int i = 0; i < ES_INPUT_SIZE; i++) {
        long long q = (long long)std::floor((double)x[i] * scale + 0.5);
        g_fm[ES_INPUT_OFFSET + i] = q < qmin ? qmin : (q > qmax ? qmax : q);
    }
    edgesplit_kernel(g_fm, g_wgt, g_bias);
    for (int i = 0; i < ES_OUTPUT_SIZE; i++) out[i] = (short)g_fm[ES_OUTPUT_OFFSET + i].to_int();
    return 0;
}
"""


def _tcl(cfg: HlsConfig) -> str:
    return f"""# Vitis HLS: C simulation, synthesis, co-simulation and IP export for {cfg.part} at {cfg.clock_mhz:g} MHz.
#   vitis_hls -f run_hls.tcl
open_project -reset edgesplit_hls
set_top edgesplit_kernel
add_files net.cpp -cflags "-I. -std=c++14"
add_files -tb tb.cpp -cflags "-I. -std=c++14 -DEDGESPLIT_CSIM"
add_files -tb weights.bin
add_files -tb bias.bin
add_files -tb images.bin
add_files -tb expected.bin
open_solution -reset solution1 -flow_target vivado
set_part {{{cfg.part}}}
create_clock -period {1000.0 / cfg.clock_mhz:.3f} -name default
file mkdir csim_out
csim_design -argv "1"
csynth_design
cosim_design -argv "1"
export_design -format ip_catalog
exit
"""


def _readme(layout: dict) -> str:
    cfg = layout["config"]
    return f"""# {layout["model"]}: a generated bundle engine (W{layout["wbits"]}/F{layout["fbits"]})

Generated by `edgesplit hls`. Parallelism: tm={cfg["tm"]} x tn={cfg["tn"]} multipliers for convs and
linear layers, td={cfg["td"]} x 9 for depth-wise convs, {cfg["tr"]}x{cfg["tc"]} output tiles; target
{cfg["part"]} at {cfg["clock_mhz"]:g} MHz. `layout.json` lists every call, tensor, offset and format.

## What was verified where it was generated
- C simulation with g++ against the arbitrary-precision headers of the `hls4ml` package:
  bit-exact with edgesplit's integer reference on real test images (`edgesplit hls ... --csim N`);
- per call, the iterations of its pipelined loops (cycles at II=1), compared with the cost model.

Not verified: synthesis, timing at the target clock, co-simulation, the board.

## Build it
1. `vitis_hls -f run_hls.tcl` (csim, csynth, cosim, IP export; edit the part/clock at the top if needed).
2. In Vivado: a block design with the Zynq processing system, this IP (`edgesplit_kernel`), its two AXI
   master bundles (`FM`, `WT`) on the PS's high-performance ports and its AXI-lite control port on a
   general-purpose port; generate the bitstream and the `.hwh`.
3. On a PYNQ board: `Overlay("design.bit")`; allocate `fm` ({layout["fm_size"]} x int16),
   `weights.bin` (int16) and `bias.bin` (int32) with `pynq.allocate`; write the quantized input at
   offset {layout["input"]["offset"]} (frac {layout["input"]["frac"]}: round(x * 2^{layout["input"]["frac"]})),
   set the three buffer addresses in the IP's registers, start it, and read
   {int(np.prod(layout["output"]["shape"]))} values at offset {layout["output"]["offset"]} (frac {layout["output"]["frac"]}).
"""
