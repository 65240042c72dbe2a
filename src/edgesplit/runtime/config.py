"""What a worker process serves and how (no numpy: `edgesplit worker` reads its options from these fields before
numpy is loaded, and the worker's process settings must come first)."""

from __future__ import annotations

from dataclasses import dataclass

from edgesplit.errors import EdgesplitError
from edgesplit.options import comma_list, option
from edgesplit.runtime.transport.limits import ServerLimits

ENGINES = ("onnxruntime", "numpy", "auto", "hls-csim")
WAIT_READY_S = 30.0  # how long a coordinator waits for every worker of its plan before it starts (or gives up)


def parse_cpus(text: str) -> tuple[int, ...]:
    """'0' or '2,3' -> the CPUs to pin to."""
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise EdgesplitError(f"bad --cpus {text!r}; write a comma-separated list like 0,1") from None


@dataclass(frozen=True)
class FaultConfig:
    """Faults a worker injects into its own answers (tests and benchmarks)."""

    delay_ms: float = option(0.0, "extra delay per affected call", "--inject-delay-ms")
    delay_dist: str = option(
        "fixed", "distribution of the injected delay", "--inject-delay-dist", choices=("fixed", "exp", "lognormal")
    )
    slowdown: float = option(1.0, "affected calls take this many times their compute time", "--inject-slowdown")
    prob: float = option(1.0, "fraction of calls affected by delay/slowdown", "--inject-prob")
    error_prob: float = option(0.0, "fraction of calls that fail", "--inject-error-prob")
    crash_after: int | None = option(None, "exit abruptly after this many requests", type=int)
    seed: int = option(0, "seed of the injected faults", "--inject-seed")

    @property
    def active(self) -> bool:
        return self.delay_ms > 0 or self.slowdown > 1 or self.error_prob > 0 or self.crash_after is not None


@dataclass(frozen=True)
class WorkerConfig:
    source: str  # export directory or a bare .onnx file
    part: str | None = None  # required with an export directory
    host: str = option("127.0.0.1", "address to bind (loopback only unless you say otherwise)")
    port: int = option(0, "port (0: any free one, printed when ready)")
    threads: int = option(1, "ONNX Runtime intra-op threads")
    cpus: tuple[int, ...] | None = option(None, "pin to these CPUs, e.g. 0 or 2,3", parse=parse_cpus)
    engine: str = option(
        "onnxruntime",
        "what runs the part: ONNX Runtime, numpy (FC graphs), auto, or hls-csim: the part's generated accelerator "
        "in C simulation (needs --hls)",
        choices=ENGINES,
    )
    providers: tuple[str, ...] | None = option(
        None, "ONNX Runtime execution providers in order, e.g. CUDAExecutionProvider", parse=comma_list
    )
    limits: ServerLimits = ServerLimits()  # message size, bytes in flight, connections, idle timeout
    faults: FaultConfig = FaultConfig()
    unix_socket: str | None = option(
        None,
        "also serve on this Unix socket (plan address ipc://PATH): a coordinator on the same machine skips gRPC's per-call cost",
        metavar="PATH",
        type=str,
    )
    poll_ms: float = option(
        0.0,
        "with --unix-socket: after each answer, poll for the next request this long (ms) instead of sleeping, "
        "yielding the core to other processes; saves the wake-up of an idle core",
    )
    http_port: int | None = option(
        None,
        "also serve the KServe v2 HTTP/REST API, and Prometheus /metrics, on this port (0: any free one)",
        metavar="PORT",
        type=int,
    )
    hls_dir: str | None = option(
        None, "with --engine hls-csim: the project `edgesplit hls ... --branch K` wrote", "--hls", metavar="DIR", type=str
    )
