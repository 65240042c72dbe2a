"""Published FPGA CNN designs, rebuilt as ONNX graphs, and how far the model's predictions are from them.

Each :class:`Design` names its source (a paper or a repository), the board, the
configuration as published (bits, clock, parallelism where the paper gives it) and the
measured figures. Its network is built here with ``onnx.helper`` (no downloads, no torch).

A design is either *calibration* (the model's fitted constants were fitted to it: its
error is small by construction and proves nothing) or *validation* (nothing was ever
fitted to it). ``table()`` re-runs every design through ``estimate`` and returns one row
per measured figure with the prediction and the error; ``docs/hardware-model.md`` shows
it and ``tests/hardware/test_hardware_published.py`` fails when an error grows past the recorded one.

    python -m edgesplit.hardware.published [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgesplit.hardware.accelerator import AccelConfig, estimate, tune
from edgesplit.hardware.records import Estimate
from edgesplit.hardware.catalog import get_device, parse_device
from edgesplit.hardware.graph import Graph, graph_from_onnx
from edgesplit.hardware.host import HostConfig

DEVICES_DIR = Path(__file__).with_name("devices")
VALIDATION_DEVICES = {  # boards that only the published designs use, with their sources
    "vc707": {
        "name": "vc707",
        "kind": "fpga",
        "description": "Xilinx VC707 (Virtex-7 XC7VX485T)",
        "part": "xc7vx485t",
        "dsp": 2800,
        "dsp_type": "DSP48E1",
        "bram36": 1030,
        "lut": 303600,
        "ff": 607200,
        "clock_mhz": 100,
        "dram_bandwidth_gbs": 12.8,
        "static_power_w": 0.0,  # one DDR3-1600 SODIMM, 64 bits (UG885)
        "source": "Xilinx DS180 (7 series overview); UG885 (VC707 user guide)",
    },
}


class OnnxNet:
    """A few lines per network: append layers to one chain (or keep a handle for a branch)."""

    def __init__(self, name: str, chw: tuple[int, int, int]):
        from onnx import TensorProto, helper

        self.helper, self.name, self.nodes, self.inits = helper, name, [], []
        self.channels = {"x": chw[0]}
        self.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *chw])
        self.last = "x"

    def _out(self, op: str) -> str:
        return f"{op.lower()}{len(self.nodes)}"

    def _weight(self, shape: tuple[int, ...]) -> str:
        from onnx import numpy_helper

        name = f"w{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.zeros(shape, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], channels: int, **attrs) -> str:
        out = self._out(op)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        self.channels[out] = channels
        self.last = out
        return out

    def conv(self, out_chs: int, k: int, stride: int = 1, groups: int = 1, x: str | None = None, relu: bool = True) -> str:
        x = x or self.last
        w = self._weight((out_chs, self.channels[x] // groups, k, k))
        y = self.node("Conv", [x, w], out_chs, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=groups)
        return self.node("Relu", [y], out_chs) if relu else y

    def bundle(self, out_chs: int, pool: bool) -> str:
        """The co-design paper's DW-Conv3 + PW-Conv1 (+ 2x2 max-pool)."""
        c = self.channels[self.last]
        self.conv(c, 3, groups=c)
        self.conv(out_chs, 1)
        return self.maxpool(2) if pool else self.last

    def maxpool(self, k: int, stride: int | None = None) -> str:
        return self.node("MaxPool", [self.last], self.channels[self.last], kernel_shape=[k, k], strides=[stride or k] * 2)

    def model(self):
        from onnx import TensorProto

        out = self.helper.make_tensor_value_info(self.last, TensorProto.FLOAT, None)
        graph = self.helper.make_graph(self.nodes, self.name, [self.input], [out], self.inits)
        return self.helper.make_model(graph, opset_imports=[self.helper.make_opsetid("", 13)])

    def graph(self) -> Graph:
        return graph_from_onnx(self.model(), self.name)


# ---------------------------------------------------------------- the networks
def bundlenet_detector(channels: tuple[int, ...], pools: tuple[bool, ...]) -> Callable[[], Graph]:
    """DNN-A/B/C of the bi-directional co-design paper (Zhang, Hao et al. 2019), Table 2: bundles, then its PW-Conv1(10) bounding-box layer, at 3x160x360."""

    def build() -> Graph:
        net = OnnxNet("dnn-" + "-".join(map(str, channels)), (3, 160, 360))
        for c, p in zip(channels, pools):
            net.bundle(c, p)
        net.conv(10, 1, relu=False)
        return net.graph()

    return build


def skynet_mosaic() -> Graph:
    """SkyNet (iSmart3, DAC-SDC 2019) as its FPGA runs it: four 3x160x320 frames stitched into one 3x320x640
    input; bundles 48 (padded to 64 in hardware), 96, 192, 384, 512; the 192-channel map reorganised
    (SpaceToDepth 2) and concatenated with the 512-channel one (1280 channels); a 96 bundle; PW-Conv1(10)."""
    net = OnnxNet("skynet-mosaic", (3, 320, 640))
    net.bundle(64, True)
    net.bundle(96, True)
    bypass = net.bundle(192, False)
    net.maxpool(2)
    net.bundle(384, False)
    deep = net.bundle(512, False)
    reorg = net.node("SpaceToDepth", [bypass], 4 * 192, blocksize=2)
    net.node("Concat", [reorg, deep], 4 * 192 + 512, axis=1)
    net.bundle(96, False)
    net.conv(10, 1, relu=False)
    return net.graph()


def alexnet_convs() -> Graph:
    """AlexNet's five conv layers (Caffe's, with its two groups), 3x227x227: what Zhang et al. (FPGA'15) accelerate."""
    net = OnnxNet("alexnet-convs", (3, 227, 227))
    net.node("Conv", [net.last, net._weight((96, 3, 11, 11))], 96, kernel_shape=[11, 11], strides=[4, 4])
    net.node("Relu", [net.last], 96)
    net.maxpool(3, 2)
    net.conv(256, 5, groups=2)
    net.maxpool(3, 2)
    net.conv(384, 3)
    net.conv(384, 3, groups=2)
    net.conv(256, 3, groups=2)
    return net.graph()


# ---------------------------------------------------------------- the designs
DAC_SDC_FRAME = HostConfig(frame_hw=(360, 640), jpeg=True)  # DAC-SDC images: 640x360 JPEG files read by the board's cores
CODESIGN_PAPER = (
    "Zhang, Hao et al., A Bi-Directional Co-Design Approach to Enable Deep Learning on IoT Devices (2019), Tables 2 and 3"
)


@dataclass(frozen=True)
class Design:
    key: str
    source: str
    device: str
    build: Callable[[], Graph]
    config: AccelConfig
    measured: dict  # fps (end to end unless accelerator_only), watts, dsp, bram18, lut, ff: what the source reports
    role: str  # calibration | validation
    host: HostConfig | None = None
    tuned: bool = False  # the source gives no parallelism: the fastest design that fits (tune) stands for it
    accelerator_only: bool = False  # the source times the accelerator alone
    notes: str = ""
    fitted: tuple[str, ...] = field(default=())  # the constants calibrated to this design


DESIGNS = (
    Design(
        "dnn-a",
        CODESIGN_PAPER,
        "pynq-z1",
        bundlenet_detector((48, 96, 192, 384), (True, True, True, False)),
        AccelConfig(wbits=16, fbits=8),
        {"fps": 29.7, "watts": 29.7 / 12.38},
        "calibration",
        DAC_SDC_FRAME,
        tuned=True,
        notes="watts from 12.38 images/W",
        fitted=("host.FRAME_DECODE_CYCLES_PER_PIXEL", "pynq-z1 static_power_w"),
    ),
    Design(
        "dnn-b",
        CODESIGN_PAPER,
        "pynq-z1",
        bundlenet_detector((48, 96, 192, 384), (True, True, True, False)),
        AccelConfig(wbits=16, fbits=16),
        {"fps": 22.7, "watts": 22.7 / 9.46},
        "validation",
        DAC_SDC_FRAME,
        tuned=True,
        notes="watts from 9.46 images/W",
    ),
    Design(
        "dnn-c",
        CODESIGN_PAPER,
        "pynq-z1",
        bundlenet_detector((48, 96, 192, 384, 512), (True, True, True, False, False)),
        AccelConfig(wbits=11, fbits=8),
        {"fps": 17.4, "watts": 17.4 / 6.96},
        "validation",
        DAC_SDC_FRAME,
        tuned=True,
        notes="watts from 6.96 images/W",
    ),
    Design(
        "skynet-ultra96",
        "SkyNet (Zhang, Hao et al., MLSys 2020, abstract: 25.05 FPS on Ultra96); configuration from "
        "its repository TomG008/SkyNet (FPGA/HLS, FPGA/Deploy, README)",
        "ultra96-v2",
        skynet_mosaic,
        AccelConfig(wbits=11, fbits=9, tm=32, tn=8, td=32, tr=40, tc=80, clock_mhz=214),
        {"fps": 25.05},
        "validation",
        HostConfig(frame_hw=(360, 640), jpeg=True, overlap=True, frames_per_input=4),
        notes="W11/F9 (ap_fixed<11,4>, <9,3>), 214 MHz; 32 output x 16 input channels at II=2 (= tn 8); DW 32 "
        "channels; 40x80 tiles of a 2x2 mosaic of frames; ping-pong loads; host stitches in a second process",
    ),
    Design(
        "zhang-fpga15-alexnet",
        "Zhang et al., Optimizing FPGA-based accelerator design for deep CNNs, FPGA'15, "
        "Tables 4-5 (61.62 GFLOPS on AlexNet's 1.33 GFLOP of convolutions)",
        "vc707",
        alexnet_convs,
        AccelConfig(float32=True, wbits=32, fbits=32, tm=64, tn=7, tr=13, tc=13),
        {"fps": 61.62 / 1.33, "dsp": 2240, "bram18": 1024, "lut": 186251, "ff": 205704},
        "validation",
        accelerator_only=True,
        notes="conv layers only, 100 MHz, float32, Tm=64 Tn=7, 13x13 tiles, as published",
    ),
)


def device_for(name: str):
    if name in VALIDATION_DEVICES:
        return parse_device(VALIDATION_DEVICES[name], f"published.VALIDATION_DEVICES[{name!r}]")
    return get_device(name)


def predict(d: Design) -> Estimate:
    """The model's estimate of one design (the tuned design when the source gives no parallelism)."""
    graph, device = d.build(), device_for(d.device)
    if d.tuned:
        return tune(graph, device, d.config, host=d.host).best
    return estimate(graph, device, d.config, d.host)


def _predicted(est: Estimate, what: str, d: Design) -> float | None:
    if what == "fps":
        return est.totals.fps if d.accelerator_only else est.frame_fps
    if what == "watts":
        return est.totals.watts
    return getattr(est.resources, what)


def table(designs=DESIGNS) -> list[dict]:
    """One row per measured figure of every design: measured, predicted, relative error."""
    rows = []
    for d in designs:
        est = predict(d)
        for what, measured in d.measured.items():
            pred = _predicted(est, what, d)
            rows.append(
                {
                    "design": d.key,
                    "role": d.role,
                    "device": d.device,
                    "figure": what,
                    "measured": measured,
                    "predicted": pred,
                    "error": (pred - measured) / measured if pred is not None else None,
                    "source": d.source,
                    "notes": d.notes,
                    "config": {
                        k: getattr(est.config, k) for k in ("wbits", "fbits", "float32", "tm", "tn", "td", "tr", "tc", "batch")
                    },
                    "bound": est.totals.end_to_end.bound if est.totals.end_to_end else "accelerator",
                }
            )
    return rows


def summary(rows: list[dict]) -> dict:
    def med(role: str, figures: tuple[str, ...]) -> float | None:
        errs = [abs(r["error"]) for r in rows if r["role"] == role and r["figure"] in figures and r["error"] is not None]
        return statistics.median(errs) if errs else None

    return {
        "validation_fps_median_abs_error": med("validation", ("fps",)),
        "validation_resources_median_abs_error": med("validation", ("dsp", "bram18", "lut", "ff")),
        "validation_power_median_abs_error": med("validation", ("watts",)),
        "calibration_fps_median_abs_error": med("calibration", ("fps",)),
    }


def calibrate() -> dict:
    """The values of the fitted constants that make the model meet the calibration design's measurements.

    DNN-A runs its host and accelerator one after the other, so the frame time the model
    misses is decode time: the decode constant is scaled to close it; the board's idle
    power is then what remains of the measured watts after the model's dynamic parts.
    Prints; does not change anything (the constants live in host.py and the device file).
    """
    from edgesplit.hardware import host as host_module

    d = next(x for x in DESIGNS if x.role == "calibration")
    est = predict(d)
    e = est.totals.end_to_end
    frame_h, frame_w = e.host.frame_hw
    dev = device_for(d.device)
    needed_decode_ms = e.host.decode_ms + 1e3 / d.measured["fps"] - e.frame_ms
    cycles = needed_decode_ms * 1e-3 * dev.ps_clock_mhz * 1e6 / (frame_h * frame_w)
    old = host_module.FRAME_DECODE_CYCLES_PER_PIXEL
    host_module.FRAME_DECODE_CYCLES_PER_PIXEL = cycles
    try:
        t = predict(d).totals
    finally:
        host_module.FRAME_DECODE_CYCLES_PER_PIXEL = old
    static_w = d.measured["watts"] - (t.watts - t.static_w)
    return {"design": d.key, "FRAME_DECODE_CYCLES_PER_PIXEL": cycles, f"{d.device} static_power_w": static_w}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="the hardware model against published FPGA designs")
    ap.add_argument("--json", help="also write the rows and the summary here")
    ap.add_argument("--calibrate", action="store_true", help="print the fitted constants' values for the calibration design")
    args = ap.parse_args(argv)
    if args.calibrate:
        print(json.dumps(calibrate(), indent=1))
        return 0
    rows = table()
    print("| design | role | figure | measured | predicted | error |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['design']} | {r['role']} | {r['figure']} | {r['measured']:.4g} | {r['predicted']:.4g} | {r['error']:+.1%} |")
    s = summary(rows)
    print(json.dumps(s, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": s}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
