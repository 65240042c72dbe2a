"""A roofline model of a CNN on a CPU-class device (Raspberry Pi, a Jetson's CPU): graph in, dict out.

Each layer takes the longer of its arithmetic time at a sustained fraction of the
device's peak GFLOP/s and its memory time (weights plus feature maps in and out, in
float32) at a sustained fraction of the memory bandwidth. Both fractions are
*assumed* (ONNX Runtime convolutions on Arm NEON typically sustain a quarter to a
third of peak); replace them with a measurement of yours (`edgesplit bench`).
Power is not modelled for CPUs.
"""

from __future__ import annotations

from edgesplit.errors import EdgesplitError
from edgesplit.hardware.catalog import CpuDevice
from edgesplit.hardware.graph import Graph

CPU_COMPUTE_EFFICIENCY = 0.25  # sustained / peak FLOP/s for conv layers (assumed)
CPU_MEMORY_EFFICIENCY = 0.5  # sustained / peak DRAM bandwidth (assumed)
BYTES_PER_VALUE = 4  # float32 inference


def estimate_cpu(graph: Graph, device: CpuDevice) -> dict:
    """Per-layer and total time of one image on ``device``; the same keys as the FPGA estimate where they apply."""
    if getattr(device, "kind", "") != "cpu":
        raise EdgesplitError(f"{device.name} is a {device.kind} device; estimate_cpu needs a CPU device")
    flops_per_s = device.peak_gflops * 1e9 * CPU_COMPUTE_EFFICIENCY
    bytes_per_s = device.mem_bandwidth_gbs * 1e9 * CPU_MEMORY_EFFICIENCY
    rows = []
    for ly in graph.layers:
        compute_ms = 2 * ly.macs / flops_per_s * 1e3
        dram_bytes = (ly.weights + ly.in_values + ly.out_values) * BYTES_PER_VALUE
        dram_ms = dram_bytes / bytes_per_s * 1e3
        rows.append(
            {
                "name": ly.name,
                "op": ly.op,
                "macs": ly.macs,
                "compute_ms": compute_ms,
                "dram_ms": dram_ms,
                "ms": max(compute_ms, dram_ms),
                "bound": "compute" if compute_ms >= dram_ms else "memory",
            }
        )
    image_ms = sum(r["ms"] for r in rows)
    return {
        "model": graph.name,
        "device": device.name,
        "input_shape": list(graph.input_shape),
        "layers": rows,
        "fits": True,
        "overflow": [],
        "totals": {
            "macs": graph.macs,
            "weights": graph.weights,
            "image_ms": image_ms,
            "latency_ms": image_ms,
            "fps": 1e3 / image_ms if image_ms > 0 else float("inf"),
            "watts": None,
        },
    }
