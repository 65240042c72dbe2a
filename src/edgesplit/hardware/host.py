"""The host side of an FPGA board: what its processing system (Zynq's Arm cores) does for every frame.

A board's published FPS is end to end. Besides the accelerator's own time, the cores
read each camera frame (a JPEG file in the DAC-SDC contests of Zhang, Hao et al.'s co-design paper),
decode it, resize it to the network's input, convert it to the accelerator's input
format, start the accelerator once per layer group (DMA descriptors, register writes,
waiting for the interrupt), and run the layers the fabric does not (``CPU_OPS``).

Each step is costed on one core of the processing system (``FpgaDevice.ps_*``): pixel
work in cycles per pixel at the core's clock, memory traffic at a sustained fraction of
its DRAM bandwidth, layers on the CPU with the roofline of ``hardware/cpu.py``. Whether
the host and the accelerator overlap (frame n+1 prepared while the fabric runs frame n,
a multi-threaded host) is the design's choice: ``HostConfig.overlap``.
"""

from __future__ import annotations

from edgesplit.errors import EdgesplitError
from edgesplit.hardware.cpu import CPU_COMPUTE_EFFICIENCY, CPU_MEMORY_EFFICIENCY
from edgesplit.hardware.config import HostConfig
from edgesplit.hardware.graph import CPU_OPS, Layer
from edgesplit.hardware.records import HostWork

# Reading a JPEG frame from storage and decoding it to RGB, per frame pixel, on one core.
# Calibrated (docs/hardware-model.md, "Calibration"): the one constant fitted to a published
# board, on DNN-A only, and never to a design in the validation table.
FRAME_DECODE_CYCLES_PER_PIXEL = 15.4
RESIZE_CYCLES_PER_VALUE = 4.0  # bilinear: 4 taps in fixed point per output value (assumed)
NORMALISE_CYCLES_PER_VALUE = 2.0  # scale, round, saturate to the input format, store (assumed)
GROUP_START_US = 25.0  # per accelerator invocation: DMA descriptors, AXI-lite writes, interrupt (assumed)
CPU_FLOPS_PER_VALUE = {"softmax": 10.0, "transpose": 0.0}  # exp, sum and divide per value; a transpose only moves data
assert set(CPU_FLOPS_PER_VALUE) == set(CPU_OPS)
FM_BYTES_ON_CPU = 4  # the cores compute in float32


def cpu_layer_ms(layer: Layer, device) -> float:
    """One layer placed on the processing system: the longer of its arithmetic and its memory traffic."""
    flops_per_s = device.ps_clock_mhz * 1e6 * device.ps_flops_per_cycle * CPU_COMPUTE_EFFICIENCY
    bytes_per_s = device.ps_mem_bandwidth_gbs * 1e9 * CPU_MEMORY_EFFICIENCY
    flops = CPU_FLOPS_PER_VALUE[layer.op] * layer.out_values
    traffic = (layer.in_values + layer.out_values) * FM_BYTES_ON_CPU
    return max(flops / flops_per_s, traffic / bytes_per_s) * 1e3


def host_frame(
    input_shape: tuple[int, int, int], cpu_layers: list[Layer], invocations: float, device, host: HostConfig
) -> HostWork:
    """Milliseconds of processing-system work per frame, step by step."""
    if not device.has_host:
        raise EdgesplitError(
            f"{device.name} has no processing system in its device file (ps_cores ...); end-to-end figures need one"
        )
    c, h, w = input_shape
    n = host.frames_per_input
    frame_h, frame_w = host.frame_hw or (h, w)
    hz = device.ps_clock_mhz * 1e6
    bytes_per_s = device.ps_mem_bandwidth_gbs * 1e9 * CPU_MEMORY_EFFICIENCY
    return HostWork(  # per network input (n frames)
        decode_ms=n * frame_h * frame_w * FRAME_DECODE_CYCLES_PER_PIXEL / hz * 1e3 if host.jpeg else 0.0,
        resize_ms=c * h * w * RESIZE_CYCLES_PER_VALUE / hz * 1e3 if (n, frame_h, frame_w) != (1, h, w) else 0.0,
        # the RGB frames read once and the network's input written once, at the cores' memory bandwidth,
        # or the per-value work, whichever is longer
        normalise_ms=max(c * h * w * NORMALISE_CYCLES_PER_VALUE / hz, (n * frame_h * frame_w * c + c * h * w) / bytes_per_s)
        * 1e3,
        accelerator_starts_ms=invocations * GROUP_START_US / 1e3,
        cpu_layers_ms=sum(cpu_layer_ms(ly, device) for ly in cpu_layers),
        cpu_layers=tuple(ly.name for ly in cpu_layers),
        frame_hw=(frame_h, frame_w),
        jpeg=host.jpeg,
        overlap=host.overlap,
        frames_per_input=n,
    )
