"""Predicted latency, throughput and network bytes of each way to spread a model over a fleet
(``edgesplit plan --strategy auto``), and the strategy to use.

The prediction follows the plan the runtime would run (``make_plan``: which part on which
devices, requests spread over replicas in turn) and costs it part call by part call:

    call  = the messages' time on the device's link + CallCost.latency(part's time on the device)
    stage = the slowest of its parts' calls (a coded stage: the k-th fastest); local parts run in the coordinator
    latency (one request in flight) = the sum of the stages
    throughput (N in flight) = mean value analysis of the closed loop: each device (CallCost.busy per call),
        each link direction and the coordinator is a queue; a request alone takes the latency
    bytes per inference = what every call puts on the links, protocol bytes included

A message's bytes on the wire are its payload (the input as the plan sends it, any other tensor as
float32), TCP/IP headers per segment and the protocol's bytes per message. Links are one per device,
as on the testbed and a switched LAN (a coordinator on a shared Wi-Fi channel is not modelled). A
part's time on a device comes from a :data:`PartCost` function: :func:`catalog_cost` (the CPU
roofline or the FPGA accelerator model of the device catalog) for a real fleet, or times measured on
this machine for the testbed (``bench strategies``, which measures each emulated device's
:class:`CallCost` with calibration models and checks these predictions against the testbed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from edgesplit.errors import EdgesplitError
from edgesplit.manifest import Manifest, load_manifest

ETHERNET_MSS = 1448  # TCP payload per 1500-byte Ethernet frame with timestamps (RFC 7323)
HEADER_BYTES = 66  # Ethernet 14 + IPv4 20 + TCP 32 (with timestamps) per segment


@dataclass(frozen=True)
class CallCost:
    """What one part call costs on a device, as a line in the part's own time there (``part_ms``): its latency
    (the round trip through coordinator, network stacks and worker, the links' time aside) and the device's
    busy time, which bounds its throughput. Defaults: the fixed costs a worker with a full core of this
    project's VM measured (``bench strategies --fleet examples/testbed_one_core.yaml --calibrate-only``,
    docs/benchmarks.md), the part's time counted once (a real device's, from the catalog; the testbed's
    quota stretches it, and ``bench strategies`` measures how much)."""

    latency_ms: float = 0.54
    latency_per_part_ms: float = 1.0
    busy_ms: float = 0.52
    busy_per_part_ms: float = 1.0

    def latency(self, part_ms: float) -> float:
        return self.latency_ms + self.latency_per_part_ms * part_ms

    def busy(self, part_ms: float) -> float:
        return self.busy_ms + self.busy_per_part_ms * part_ms

    def slower(self, factor: float) -> "CallCost":
        """The worker's own work ``factor`` times slower (a slower core); the part's time is the device's already."""
        extra = (factor - 1) * self.busy_ms
        return replace(self, latency_ms=self.latency_ms + extra, busy_ms=self.busy_ms + extra)


@dataclass(frozen=True)
class Overheads:
    """The coordinator's side: its CPU per part call, the protocol's bytes per message, its cores."""

    coordinator_ms: float = 0.42  # the coordinator's CPU per part call (measured with CallCost's defaults)
    message_bytes: float = 0.0  # protocol bytes per message beyond the tensor and the segments' headers (measured: none)
    coordinator_cores: float = 1.0  # cores the coordinator's calls can use
    shared_cores: float | None = None  # the testbed: the cores every emulated device and the coordinator share

    def wire_bytes(self, payload: float) -> float:
        """Bytes one message of ``payload`` tensor bytes puts on a link."""
        return payload + math.ceil(payload / ETHERNET_MSS) * HEADER_BYTES + self.message_bytes


@dataclass(frozen=True)
class FleetNode:
    """One device of the fleet as the prediction sees it."""

    address: str
    device: str  # catalog name
    link_mbps: float
    call: CallCost = CallCost()
    cpu_share: float = 1.0  # the testbed: the share of a core that emulates it (its CPU per busy ms)
    link_burst_bytes: float = 0.0  # a shaped link's token bucket: bytes an idle link passes at once


# ms one request takes for a part (an export's ONNX file) on a node; None: the coordinator's own core
PartCost = Callable[[Path, "FleetNode | None"], float]


@dataclass(frozen=True)
class Prediction:
    strategy: str
    export: str
    devices_used: int
    latency_ms: float  # one request in flight
    throughput_rps: float  # ``in_flight`` requests in flight
    bytes_per_inference: float  # both directions, all links
    bound: str  # what limits the throughput
    device_lost: str  # worst case when any one device goes: exact | degraded | fails
    in_flight: int
    placement: dict[str, list[str]] = field(default_factory=dict)  # part -> addresses

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _payload_bytes(manifest: Manifest, tensor: str, input_dtype: str) -> float:
    """Bytes of one image's ``tensor``: the model input as the coordinator sends it, any other as float32."""
    if tensor == "input":
        c, h, w = manifest.input_shape
        return c * h * w * (1 if input_dtype == "uint8" else 4)
    for part in manifest.parts:
        for spec in part.outputs:
            if spec.name == tensor:
                return 4 * math.prod(d for d in spec.shape if d > 0)
    raise EdgesplitError(f"export {manifest.directory}: no part outputs {tensor!r}")


def _stage_ms(times: list[float], stage) -> float:
    """A stage ends when its slowest part answers; a coded stage when its k-th part does."""
    if not times:
        return 0.0
    k = stage.code_k if stage.merge == "decode" and stage.code_k else len(times)
    return sorted(times)[k - 1]


def predict_plan(
    plan,
    strategy: str,
    nodes: dict[str, FleetNode],
    part_cost: PartCost,
    overheads: Overheads = Overheads(),
    in_flight: int = 4,
) -> Prediction:
    """Latency, throughput and bytes of ``plan`` (a :class:`~edgesplit.runtime.plan.Plan`) on ``nodes`` (by address)."""
    manifest = load_manifest(plan.export, verify=False)
    where = {p.name: list(p.replicas) for p in plan.parts}
    parallel: list[list[dict[str, float]]] = []  # each stage: each part's ms per request at each of its resources
    busy_ms: dict[str, float] = {}  # each device's busy time per request
    latency_ms = coordinator_ms = total_bytes = 0.0
    for stage in manifest.stages:
        if stage.local:
            local_ms = sum(part_cost(manifest.path(manifest.part(p)), None) for p in stage.parts)
            latency_ms += local_ms
            coordinator_ms += local_ms
            continue
        size_in = overheads.wire_bytes(_payload_bytes(manifest, stage.input, plan.input_dtype))
        size_out = overheads.wire_bytes(_payload_bytes(manifest, stage.output, plan.input_dtype))
        times, parts = [], []
        for name in stage.parts:
            replicas = where[name]
            path = manifest.path(manifest.part(name))
            calls, resources = [], {}
            for address in replicas:
                node, share = nodes[address], 1.0 / len(replicas)
                part_ms = part_cost(path, node)
                unshaped = max(0.0, size_in - node.link_burst_bytes) + max(0.0, size_out - node.link_burst_bytes)
                calls.append(unshaped * 8 / (node.link_mbps * 1e3) + node.call.latency(part_ms))
                busy = share * node.call.busy(part_ms)
                busy_ms[address] = busy_ms.get(address, 0.0) + busy
                resources[_device_key(address)] = busy
                for direction, size in (("to_device", size_in), ("from_device", size_out)):
                    resources[_link_key(address, direction)] = share * size * 8 / (node.link_mbps * 1e3)
                total_bytes += share * (size_in + size_out)
            times.append(sum(calls) / len(calls))
            parts.append(resources)
            coordinator_ms += overheads.coordinator_ms
        latency_ms += _stage_ms(times, stage)
        parallel.append(parts)
    demands: dict[str, float] = {}  # ms each resource is busy per request, over every stage and part
    for stage_parts in parallel:
        for resources in stage_parts:
            for key, ms in resources.items():
                demands[key] = demands.get(key, 0.0) + ms
    if coordinator_ms > 0:
        demands["coordinator"] = coordinator_ms / overheads.coordinator_cores
    if overheads.shared_cores:
        cpu_ms = sum(ms * nodes[a].cpu_share for a, ms in busy_ms.items()) + coordinator_ms
        demands["this machine's cores"] = cpu_ms / overheads.shared_cores
    throughput = closed_loop_rate(latency_ms, demands, in_flight, parallel)
    bound = max(demands, key=demands.get) if in_flight * 1e3 / latency_ms > 1e3 / max(demands.values()) else "requests in flight"
    return Prediction(
        strategy=strategy,
        export=str(plan.export),
        devices_used=len(busy_ms),
        latency_ms=latency_ms,
        throughput_rps=throughput,
        bytes_per_inference=total_bytes,
        bound=bound,
        device_lost=device_lost(plan, manifest),
        in_flight=in_flight,
        placement={k: list(v) for k, v in where.items()},
    )


def _device_key(address: str) -> str:
    return f"device {address}"


def _link_key(address: str, direction: str) -> str:
    return f"link {address} {direction.replace('_', ' ')}"


def closed_loop_rate(
    latency_ms: float, demands: dict[str, float], in_flight: int, parallel: list[list[dict[str, float]]] = ()
) -> float:
    """Requests/s with ``in_flight`` requests always outstanding, by mean value analysis of a closed queueing
    network (Reiser and Lavenberg, JACM 1980): each resource is a queue with its ``demands`` ms per request; a
    request alone takes ``latency_ms``; each further request in flight adds the time spent waiting behind the
    others. ``parallel``: the stages whose parts a request visits at once (each part: its ms at each resource);
    a stage's wait is its longest part's, not their sum (the fork-join of a split model's branches)."""
    grouped = {k for stage in parallel for part in stage for k in part}
    queue = dict.fromkeys(demands, 0.0)
    rate = 0.0
    for n in range(1, in_flight + 1):
        wait_ms = sum(d * queue[k] for k, d in demands.items() if k not in grouped)
        wait_ms += sum(max(sum(ms * queue[k] for k, ms in part.items()) for part in stage) for stage in parallel if stage)
        rate = n / (latency_ms + wait_ms)  # per ms
        queue = {k: rate * d * (1 + queue[k]) for k, d in demands.items()}
    return rate * 1e3


def device_lost(plan, manifest: Manifest) -> str:
    """What the runtime answers, at worst, when any one device of ``plan`` goes: every part still has a replica
    (``exact``), a lost branch or coded block leaves a degraded answer (``degraded``), or requests fail."""
    where = {p.name: set(p.replicas) for p in plan.parts}
    worst = "exact"
    for address in {a for r in where.values() for a in r}:
        for stage in (s for s in manifest.stages if not s.local):
            lost = [p for p in stage.parts if where[p] <= {address}]
            if not lost:
                continue
            if stage.merge == "decode" and len(stage.parts) - len(lost) >= stage.code_k:
                continue  # the code rebuilds it exactly
            if stage.merge in ("concat", "decode") and plan.on_missing == "degrade" and len(lost) < len(stage.parts):
                worst = "degraded"
            else:
                return "fails"
    return worst


REFERENCE_CORE_GFLOPS = (
    226.0  # float32 GFLOP/s of one core of the VM where CallCost's defaults were measured (numpy, testbed.host_core_gflops)
)
REFERENCE_CORE_MHZ = 2596.0  # its clock (AMD EPYC, /proc/cpuinfo "cpu MHz")


def catalog_cost(devices_dir: str | None = None) -> PartCost:
    """Part times from the device catalog: the CPU roofline for CPU devices, the accelerator model (default
    design) for FPGA boards; the coordinator's own parts on a core like the reference one."""
    from functools import lru_cache

    from edgesplit.hardware.accelerator import estimate
    from edgesplit.hardware.catalog import CpuDevice, get_device
    from edgesplit.hardware.config import AccelConfig
    from edgesplit.hardware.cpu import CPU_COMPUTE_EFFICIENCY, estimate_cpu
    from edgesplit.hardware.graph import load_graph

    @lru_cache(maxsize=None)
    def graph(path: Path):
        return load_graph(str(path))

    @lru_cache(maxsize=None)
    def cost(path: Path, device: str | None) -> float:
        if device is None:  # the head: fully connected layers, one multiply-add per weight
            return 2 * _weights(path) / (REFERENCE_CORE_GFLOPS * CPU_COMPUTE_EFFICIENCY * 1e9) * 1e3
        dev = get_device(device, devices_dir)
        if isinstance(dev, CpuDevice):
            return estimate_cpu(graph(path), dev)["totals"]["image_ms"]
        est = estimate(graph(path), dev, AccelConfig())
        return 1e3 / est.frame_fps if est.fits else math.inf

    return lambda path, node: cost(path, node.device if node else None)


def _weights(path: Path) -> int:
    import onnx

    return sum(math.prod(t.dims) for t in onnx.load(str(path)).graph.initializer)


def catalog_call(dev) -> CallCost:
    """A worker's call costs on device ``dev`` (a catalog entry): the reference's, its own work slower by the ratio of the clocks (an
    assumption: Python and gRPC do as much per cycle on the device's core as on the reference one)."""
    from edgesplit.hardware.catalog import CpuDevice

    mhz = dev.clock_mhz if isinstance(dev, CpuDevice) else dev.ps_clock_mhz
    return CallCost().slower(max(1.0, REFERENCE_CORE_MHZ / mhz) if mhz else 1.0)


def fleet_nodes(fleet, link_mbps: float | None = None) -> list[FleetNode]:
    """The nodes of a :class:`~edgesplit.codesign.fleet.Fleet`, costed from the catalog."""
    return [FleetNode(d.address, d.device.name, link_mbps or fleet.link_mbps, catalog_call(d.device)) for d in fleet.devices]


def predict_all(
    exports: Sequence[str | Path],
    nodes: Sequence[FleetNode],
    part_cost: PartCost,
    overheads: Overheads = Overheads(),
    in_flight: int = 4,
    strategies: Sequence[str] | None = None,
    plan_options: dict | None = None,
) -> dict[str, Prediction]:
    """Each strategy an export of ``exports`` is made for (split; data-parallel and single; pipeline), placed by
    ``make_plan`` on ``nodes`` and predicted. Strategies with no export are absent."""
    from edgesplit.runtime.plan import STRATEGIES, export_strategy, make_plan

    by_address = {n.address: n for n in nodes}
    out: dict[str, Prediction] = {}
    for export in exports:
        made_for = export_strategy(load_manifest(export, verify=False))
        for strategy in ("data-parallel", "single") if made_for == "data-parallel" else (made_for,):
            if strategies and strategy not in strategies:
                continue
            if strategy in out:
                raise EdgesplitError(f"two exports are made for {strategy}: {out[strategy].export} and {export}; give one")
            speeds = [1e3 / max(1e-6, whole_ms(export, n, part_cost)) for n in nodes]
            plan = make_plan(str(export), [n.address for n in nodes], speeds, strategy=strategy)
            plan = replace(plan, **(plan_options or {}))
            out[strategy] = predict_plan(plan, strategy, by_address, part_cost, overheads, in_flight)
    return {s: out[s] for s in STRATEGIES if s in out}


def whole_ms(export, node: FleetNode, part_cost: PartCost) -> float:
    """How long ``node`` is busy with one request to each of an export's remote parts: its speed for ``make_plan``."""
    manifest = load_manifest(export, verify=False)
    return sum(node.call.busy(part_cost(manifest.path(manifest.part(p)), node)) for p in manifest.remote_parts)


def recommend(predictions: dict[str, Prediction], slo_ms: float | None = None) -> tuple[str, str]:
    """The strategy to use and why: with a latency objective, the highest throughput among those that meet it
    (ties: the one that survives a lost device best); without one, the lowest latency."""
    if not predictions:
        raise EdgesplitError("no strategy to compare; give an export for at least one (see `edgesplit plan --help`)")
    resilience = {"exact": 0, "degraded": 1, "fails": 2}
    if slo_ms is None:
        best = min(predictions.values(), key=lambda p: (p.latency_ms, resilience[p.device_lost]))
        return best.strategy, f"the lowest predicted latency ({best.latency_ms:.2f} ms); give --slo-ms to rank by throughput"
    meeting = [p for p in predictions.values() if p.latency_ms <= slo_ms]
    if not meeting:
        best = min(predictions.values(), key=lambda p: p.latency_ms)
        return best.strategy, (
            f"none meets {slo_ms:g} ms; {best.strategy} comes closest ({best.latency_ms:.2f} ms): a faster device, "
            f"a faster link or a smaller model is needed"
        )
    best = max(meeting, key=lambda p: (round(p.throughput_rps, 6), -resilience[p.device_lost]))
    return best.strategy, f"the highest predicted throughput ({best.throughput_rps:.1f} req/s) within {slo_ms:g} ms"


def text_report(predictions: dict[str, Prediction], choice: tuple[str, str] | None = None) -> str:
    """The comparison ``plan --strategy auto`` prints."""
    lines = [
        f"{'strategy':<14}{'devs':>5}{'latency ms':>11}{'req/s':>9}{'kB/inf':>8}  {'one device lost':<16}throughput bound by"
    ]
    for p in predictions.values():
        lines.append(
            f"{p.strategy:<14}{p.devices_used:>5}{p.latency_ms:>11.2f}{p.throughput_rps:>9.1f}"
            f"{p.bytes_per_inference / 1e3:>8.1f}  {p.device_lost:<16}{p.bound}"
        )
    if predictions:
        lines.append(f"(throughput with {next(iter(predictions.values())).in_flight} requests in flight)")
    if choice:
        lines.append(f"recommended: {choice[0]}: {choice[1]}")
    return "\n".join(lines)


def size_groups(
    export: str | Path,
    nodes: Sequence[FleetNode],
    part_cost: PartCost,
    streams: int,
    fps: float,
    overheads: Overheads = Overheads(),
    in_flight: int = 4,
) -> list[tuple[Prediction, int]]:
    """Groups of devices for ``streams`` streams at ``fps`` frames/s each: the fastest devices first, one part of
    the export per device, as many groups as the streams need; each group with its predicted plan and the streams
    it carries (whole streams: a stream stays on one group). Refused with what the fleet would need when it cannot."""
    from edgesplit.runtime.plan import export_strategy, make_plan

    if streams < 1 or fps <= 0:
        raise EdgesplitError(f"--streams must be at least 1 and --fps positive, got {streams} and {fps:g}")
    manifest = load_manifest(export, verify=False)
    strategy = export_strategy(manifest)
    k = len(manifest.remote_parts) if strategy in ("split", "pipeline") else 1
    order = sorted(nodes, key=lambda n: whole_ms(export, n, part_cost))
    by_address = {n.address: n for n in nodes}
    groups: list[tuple[Prediction, int]] = []
    carried = 0
    for g in range(len(order) // k):
        members = order[g * k : (g + 1) * k]
        speeds = [1e3 / max(1e-6, whole_ms(export, n, part_cost)) for n in members]
        plan = make_plan(str(export), [n.address for n in members], speeds, strategy=strategy)
        p = predict_plan(plan, strategy, by_address, part_cost, overheads, in_flight)
        capacity = int(p.throughput_rps // fps)
        if capacity == 0:
            continue  # slower devices come later: none of them carries a stream either
        take = min(capacity, streams - carried)
        groups.append((p, take))
        carried += take
        if carried >= streams:
            return groups
    if not groups:
        raise EdgesplitError(
            f"no group of {k} device(s) of this fleet reaches {fps:g} frames/s with {Path(export).name} "
            f"(predicted); faster devices, a lighter model or fewer frames per second are needed"
        )
    best = max(int(p.throughput_rps // fps) for p, _ in groups)
    more = -(-(streams - carried) // best)
    raise EdgesplitError(
        f"the fleet carries {carried} of {streams} streams at {fps:g} frames/s ({len(groups)} group(s) of {k} "
        f"device(s), predicted); it would need about {more * k} more device(s) like {order[0].device} "
        f"({more} more group(s) of {best} stream(s) each)"
    )
