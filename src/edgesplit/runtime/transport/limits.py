"""What a server holds for its clients, bounded: message size, bytes in flight, connections, idle time.

Both servers (gRPC: ``grpc_server.py``; the Unix socket: ``ipc_server.py``) take one :class:`ServerLimits`.
The defaults are sized for a board with 1 GiB of memory: a worker's peak under any flood is its base
(Python, numpy, the engine and its model) plus ``max_inflight_bytes`` plus what the transport buffers
below the application (gRPC: partly received messages, at most ``max_connections`` x streams x the hard
message limit; bounded by the same limits). docs/runtime.md says how each is enforced.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Iterable

from edgesplit.options import MIB, option
from edgesplit.runtime.tuning import release_heap

# A request's peak memory in a server, as a multiple of its bytes on the wire: the bytes as received, the parsed
# message (upb copies them), and the inputs as arrays (one more copy on access). Typed ``contents`` are converted
# one value at a time (``codec``), so they stay within the same factor.
PEAK_BYTES_PER_WIRE_BYTE = 3
MESSAGE_OVERHEAD_BYTES = 64 << 10  # names, shapes, parameters around the tensors
MAX_NAME_ECHO = 64  # characters of a client-supplied name repeated in an error message


@dataclass(frozen=True)
class ServerLimits:
    max_message_bytes: int | None = option(
        None,
        "largest request accepted, MiB (default: --max-batch items of the served model's input as float32, plus 64 KiB)",
        "--max-message-mb",
        scale=MIB,
        type=float,
        metavar="MIB",
    )
    max_batch: int = option(256, "items per request; the default message limit admits this many", metavar="N")
    max_inflight_bytes: int = option(
        256 * MIB,
        "memory held for requests being handled (3x each request's bytes), MiB; more is refused "
        "RESOURCE_EXHAUSTED; the default suits a 1 GiB board",
        "--max-inflight-mb",
        scale=MIB,
        type=float,
        metavar="MIB",
    )
    idle_timeout_s: float = option(
        60.0, "close connections idle, stalled mid-message or not reading their answers for this long, seconds", metavar="SECONDS"
    )
    max_connections: int = option(64, "connections accepted at once (more are closed at once)", metavar="N")
    max_connection_age_s: float = option(
        120.0,
        "gRPC: recycle each connection after this long, seconds (clients "
        "reconnect; a stream stalled mid-message ends then, after the idle "
        "timeout's grace)",
        metavar="SECONDS",
    )

    def __post_init__(self):
        bad = [
            f"{k}={getattr(self, k)}"
            for k in ("max_batch", "max_inflight_bytes", "idle_timeout_s", "max_connections", "max_connection_age_s")
            if not getattr(self, k) > 0
        ]
        if self.max_message_bytes is not None and self.max_message_bytes <= 0:
            bad.append(f"max_message_bytes={self.max_message_bytes}")
        if bad:
            raise ValueError(f"server limits must be positive: {', '.join(bad)}")

    def message_bytes(self, models: Iterable) -> int:
        """The largest request accepted: explicit, or what ``max_batch`` items of the largest model input take
        (float32 at least: clients may send normalised floats where the model declares uint8 pixels). The batch
        bounds the engine's scratch memory too (activations grow with it), which the message size alone does not."""
        if self.max_message_bytes is not None:
            return self.max_message_bytes
        per_item = max((_item_bytes(m.meta.inputs) for m in models), default=0)
        return per_item * self.max_batch + MESSAGE_OVERHEAD_BYTES


def _item_bytes(inputs) -> int:
    """Bytes of one item (batch dimension excluded) of all of a model's inputs."""
    import numpy as np  # here, not at the top: `edgesplit worker` builds its options before its process settings

    return sum(math.prod(d for d in spec.shape[1:] if d > 0) * max(4, np.dtype(spec.dtype).itemsize) for spec in inputs)


class InflightBudget:
    """Bytes held for requests being handled. :meth:`reserve` before a request is parsed; the reservation is given
    back when the returned :class:`Reservation` is released or garbage-collected (whichever comes first), so a call
    that ends in any way, cancelled included, returns what it took. One event loop: no lock needed.

    When the bytes held fall back to 0 after a burst of at least ``burst_bytes`` and stay there for
    ``settle_s``, ``on_drained`` runs (default: give the freed heap back to the kernel, which glibc keeps
    otherwise); not during sustained traffic, whose next requests would fault the same memory in again."""

    def __init__(self, capacity_bytes: int, on_drained=release_heap, burst_bytes: int = 8 << 20, settle_s: float = 1.0):
        self.capacity_bytes = capacity_bytes
        self.held_bytes = 0
        self.refused = 0  # requests refused since start
        self._on_drained, self._burst_bytes, self._settle_s = on_drained, burst_bytes, settle_s
        self._peak_bytes = 0
        self._drain_timer = None
        self._last_reserved = 0.0

    def reserve(self, nbytes: int) -> "Reservation | None":
        if self.held_bytes + nbytes > self.capacity_bytes:
            self.refused += 1
            return None
        self.held_bytes += nbytes
        self._peak_bytes = max(self._peak_bytes, self.held_bytes)
        self._last_reserved = time.monotonic()
        return Reservation(self, nbytes)

    def _give_back(self, nbytes: int) -> None:
        self.held_bytes -= nbytes
        if self.held_bytes or self._peak_bytes < self._burst_bytes or self._on_drained is None or self._drain_timer:
            return
        try:
            self._drain_timer = asyncio.get_running_loop().call_later(self._settle_s, self._drained)
        except RuntimeError:  # released outside the event loop (garbage collected elsewhere): nothing to wait on
            self._drained()

    def _drained(self) -> None:
        """Runs ``on_drained`` once nothing has been reserved for ``settle_s`` (traffic goes on: wait more)."""
        self._drain_timer = None
        quiet_s = time.monotonic() - self._last_reserved
        if self.held_bytes == 0 and quiet_s >= self._settle_s:
            self._peak_bytes = 0
            self._on_drained()
            return
        try:
            self._drain_timer = asyncio.get_running_loop().call_later(max(self._settle_s - quiet_s, 0.05), self._drained)
        except RuntimeError:
            pass


class Reservation:
    __slots__ = ("_budget", "_nbytes")

    def __init__(self, budget: InflightBudget, nbytes: int):
        self._budget, self._nbytes = budget, nbytes

    def release(self) -> None:
        if self._budget is not None:
            budget, self._budget = self._budget, None
            budget._give_back(self._nbytes)

    __del__ = release


def over_budget_message(nbytes: int, budget: InflightBudget) -> str:
    return (
        f"server busy: a request of {nbytes} bytes would take its requests in flight past "
        f"{budget.capacity_bytes} bytes; retry later or send smaller batches"
    )


def echo(name: str) -> str:
    """A client-supplied name as an error message repeats it: quoted, at most MAX_NAME_ECHO characters."""
    return repr(name) if len(name) <= MAX_NAME_ECHO else repr(name[:MAX_NAME_ECHO]) + f"... ({len(name)} characters)"
