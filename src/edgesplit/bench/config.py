"""What each benchmark measures (no numpy: the CLI builds the options of ``edgesplit bench ...`` from these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from edgesplit.errors import EdgesplitError
from edgesplit.options import comma_list, option, parse_sizes
from edgesplit.runtime.transport import TRANSPORTS


def parse_chw(text: str) -> tuple[int, int, int]:
    return parse_sizes(text, 3, "input shape", "CxHxW, e.g. 3x224x224")


@dataclass(frozen=True)
class ServeBench:
    model: str = option("resnet18-split2", "registered split model to serve (random weights)")
    input_shape: tuple[int, int, int] = option((3, 224, 224), "input CxHxW", "--input", parse=parse_chw, text="3x224x224")
    requests: int = option(200, "requests per latency measurement")
    in_flight: int = option(4, "requests in flight for the throughput")
    input_dtype: str = option("uint8", "what the coordinator sends the workers", choices=("uint8", "float32"))
    rounds: int = option(3, "repeat the measurement; medians are reported")
    block: int = option(50, "throughput is measured in blocks of this many images, split and unsplit alternating")
    transports: tuple[str, ...] = option(
        TRANSPORTS,
        "how the coordinator reaches the local workers, comma-separated; the first gives the headline figures",
        parse=comma_list,
        text=",".join(TRANSPORTS),
    )
    poll_ms: float = option(0.0, "workers poll their Unix socket this long after each answer (worker --poll-ms)")
    num_classes: int = 1000
    warmup: int = 20

    def __post_init__(self):
        if not self.transports or any(t not in TRANSPORTS for t in self.transports):
            raise EdgesplitError(f"--transports takes ipc and/or grpc, comma-separated; got {','.join(self.transports)!r}")
        if self.poll_ms < 0:
            raise EdgesplitError(f"--poll-ms must be 0 or more, got {self.poll_ms}")
        if self.block < 1:
            raise EdgesplitError(f"--block must be 1 or more images, got {self.block}")
        if self.requests < 1 or self.in_flight < 1 or self.rounds < 1:
            raise EdgesplitError("--requests, --in-flight and --rounds must be at least 1")


@dataclass(frozen=True)
class FaultsBench:
    requests: int = option(300, "requests per scenario")
    timeout_ms: float = option(2000.0, "per-request deadline, ms")
    histogram: str | None = option("runs/bench_faults_arrivals.png", "arrival-time histogram PNG")
    parity: int = option(1, "parity workers of the coded run, 1-3")
    parity_policy: str = option(
        "eager",
        "eager: every block asked at once; lazy: parity blocks only when a data block fails or is late",
        choices=("eager", "lazy"),
    )
    seed: int = 0
    scenarios: tuple[str, ...] = ("fault_free", "straggler_one", "straggler_all", "kill")

    def __post_init__(self):
        if not 1 <= self.parity <= 3:
            raise EdgesplitError(f"--parity must be 1, 2 or 3, got {self.parity}")
        if self.requests < 1 or self.timeout_ms <= 0:
            raise EdgesplitError("--requests must be at least 1 and --timeout-ms positive")


@dataclass(frozen=True)
class AbuseBench:
    flood_s: float = option(20.0, "length of the flood, seconds")
    idle_timeout_s: float = option(5.0, "the worker's --idle-timeout-s")
    max_inflight_mb: float = option(256.0, "the worker's --max-inflight-mb")
    held_connections: int = option(20, "connections of each slow kind held open", "--held")
    seed: int = 0

    def __post_init__(self):
        if self.flood_s <= 0 or self.idle_timeout_s <= 0 or self.max_inflight_mb <= 0 or self.held_connections < 1:
            raise EdgesplitError("--flood-s, --idle-timeout-s and --max-inflight-mb must be positive, --held at least 1")


@dataclass(frozen=True)
class Int8Bench:
    checkpoint: str
    input_shape: tuple[int, int, int] | None = option(None, "input CxHxW for a model name", "--input", parse=parse_chw)
    calls: int = option(50, "calls per timing block")
    rounds: int = option(3, "repeat the timing; medians are reported")
    test_images: int = option(10000, "test images for the accuracy of both precisions")
    calib_images: int = option(1000, "training images to calibrate the int8 quantization")
    data_dir: str | None = option(None, "dataset folder", type=str)


def parse_rates(text: str) -> tuple[float, ...]:
    """'1000,100,20' -> link rates in Mbit/s."""
    try:
        rates = tuple(float(v) for v in text.split(","))
    except ValueError:
        rates = ()
    if not rates or min(rates) <= 0:
        raise EdgesplitError(f"bad --links {text!r}; give positive rates in Mbit/s, comma-separated, e.g. 1000,100,20")
    return rates


@dataclass(frozen=True)
class StrategiesBench:
    fleet: str = option("examples/testbed_fleet.yaml", "fleet YAML: the devices emulated on the testbed (needs root)")
    links: tuple[float, ...] = option(
        (1000.0, 100.0, 20.0), "link rates to compare, Mbit/s, comma-separated", parse=parse_rates, text="1000,100,20"
    )
    input_shape: tuple[int, int, int] = option((3, 64, 64), "input CxHxW", "--input", parse=parse_chw, text="3x64x64")
    requests: int = option(100, "requests per latency and throughput measurement")
    in_flight: int = option(4, "requests in flight for the throughput")
    kill_requests: int = option(60, "requests run while one device is killed (a third of the way through)")
    calibration_requests: int = option(300, "requests of each calibration model (the runtime's costs per call)")
    calibrate_only: bool = option(False, "measure the call costs of each device's CPU share, not the strategies")
    plot: str | None = option(None, "PNG of latency and throughput against link rate, measured and predicted", type=str)
    split_model: str = "resnet18-split2"
    unsplit_model: str = "resnet18"
    num_classes: int = 10
    warmup: int = 5

    def __post_init__(self):
        if self.requests < 1 or self.in_flight < 1 or self.kill_requests < 3:
            raise EdgesplitError("--requests and --in-flight must be at least 1, --kill-requests at least 3")


def parse_counts(text: str) -> tuple[int, ...]:
    """'8,64,1000' -> counts (fleet sizes, parts)."""
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise EdgesplitError(f"bad list of counts {text!r}; give whole numbers of at least 1, comma-separated, e.g. 8,64,1000")
    return sizes


@dataclass(frozen=True)
class ScaleBench:
    sizes: tuple[int, ...] = option(
        (8, 12, 64, 256, 1000), "fleet sizes to plan, comma-separated", parse=parse_counts, text="8,12,64,256,1000"
    )
    kinds: tuple[str, ...] = option(
        ("pynq-z1", "raspberry-pi-4", "ultra96-v2", "jetson-nano-cpu"),
        "catalog devices the fleets are made of, in turn, comma-separated",
        parse=comma_list,
        text="pynq-z1,raspberry-pi-4,ultra96-v2,jetson-nano-cpu",
    )
    exhaustive_up_to: int = option(12, "also plan by trying every set of devices, on fleets up to this size")
    link_mbps: float = option(1000.0, "the coordinator's link, Mbit/s")
    parts: tuple[int, ...] = option((2, 8), "parts per request for the coordinator's rate", parse=parse_counts, text="2,8")
    requests: int = option(3000, "requests per coordinator measurement")
    in_flight: int = option(32, "requests in flight for the coordinator's rate")
    rounds: int = option(3, "coordinator measurements per setting; medians are reported")
    coordinators: tuple[int, ...] = option(
        (1, 2), "coordinator processes on one address (`serve --coordinators`), comma-separated", parse=parse_counts, text="1,2"
    )
    groups: tuple[int, ...] = option(
        (1, 2), "groups of workers served as one model (a group file), comma-separated", parse=parse_counts, text="1,2"
    )
    connections: int = option(8, "client connections for the served rate (each lands on one coordinator)")
    plot: str | None = option(None, "PNG of planning time against fleet size and the coordinator's rate", type=str)
    bundle: str = "dw3-pw1"  # the network planned: a co-design candidate of this bundle, 8-bit


@dataclass(frozen=True)
class ParityBench:
    """``bench parity``: a split model with learned parity branches, a data branch's worker lost mid-run."""

    export: str
    images: int = option(1000, "test images per scenario, one request each")
    in_flight: int = option(4, "requests in flight")
    fault_at: float = option(0.3, "the fault comes after this share of the scenario's images")
    parity_slack: float = option(
        0.5, "a data branch this much later than the first (x its time) is late: rebuilt from the parity (the plan's)"
    )
    timeout_ms: float = option(2000.0, "per-request deadline, ms")
    data_dir: str | None = option(None, "dataset folder", type=str)

    def __post_init__(self):
        if self.images < 10 or self.in_flight < 1 or not 0 < self.fault_at < 1 or self.timeout_ms <= 0:
            raise EdgesplitError(
                "--images must be at least 10, --in-flight at least 1, --fault-at between 0 and 1, --timeout-ms positive"
            )
