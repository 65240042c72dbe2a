"""The coordinator's end of the Unix socket transport (``ipc.py``): a peer handle for a worker on this machine."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import struct
import time
from typing import Callable

from edgesplit.runtime.errors import DeadlineExceeded, PartUnavailable
from edgesplit.runtime.model import InferResult
from edgesplit.runtime.shm import SharedRegion, SharedTensor
from edgesplit.runtime.transport import codec
from edgesplit.runtime.transport.calls import status_error
from edgesplit.runtime.transport.ipc import (
    CANCEL,
    FAILED,
    INFER,
    READY,
    READY_ANSWER,
    REGISTER,
    REGISTERED,
    FrameReader,
    _frame,
    socket_path,
)

log = logging.getLogger(__name__)


def _peer_cpus(sock) -> frozenset[int] | None:
    """The CPUs the process at the other end of a Unix socket may run on (Linux: its pid from SO_PEERCRED)."""
    try:
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return frozenset(os.sched_getaffinity(pid))
    except (AttributeError, OSError):
        return None


def _raw(kind: int, body: bytes) -> tuple[int, bytes]:
    return kind, body


class _Connection(asyncio.Protocol):
    """One open stream to a server and the calls waiting on it. Each call has a future, a function that turns
    its answer frame into the future's result (applied as soon as the frame is complete) and a deadline. One
    timer serves every deadline: it is armed for the earliest, and when it fires the calls past theirs fail
    with ``late()`` and it is armed for the next (no timer to create and cancel per call)."""

    def __init__(self, label: str, late: Callable[[], Exception]):
        self.label = label  # "part at address", for error messages
        self.late = late
        self.pending: dict[int, tuple[asyncio.Future, Callable[[int, bytes], object], float | None]] = {}
        self.closed = False
        self.regions: dict[str, bool] = {}  # shared-memory region name -> registered (False: the worker refused it)
        self.frames = FrameReader()
        self.transport: asyncio.Transport | None = None
        self._expiry: asyncio.TimerHandle | None = None  # fires at the earliest deadline of the calls pending
        self._outbox: list[bytes] = []  # frames written this turn of the loop, sent together at its end

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for kind, call_id, _, body in self.frames.feed(data):
            fut, decode, _ = self.pending.pop(call_id, (None, None, None))
            if fut is None or fut.done():
                continue
            try:
                fut.set_result(decode(kind, body))
            except Exception as err:  # an error answer, or one that does not parse
                fut.set_exception(err)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        error = PartUnavailable(
            f"{self.label}: connection closed by the worker"
            if exc is None
            else f"{self.label}: connection lost ({type(exc).__name__})"
        )
        for fut, _, _ in self.pending.values():
            if not fut.done():
                fut.set_exception(error)
        self.pending.clear()

    def send(
        self, kind: int, call_id: int, body: bytes, decode: Callable[[int, bytes], object] = _raw, timeout_s: float | None = None
    ) -> asyncio.Future:
        """The call's future; it fails with ``late()`` when no answer came within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        self.pending[call_id] = (fut, decode, deadline)
        self._write(_frame(kind, call_id, body))
        if deadline is not None and (self._expiry is None or deadline < self._expiry.when()):
            self._arm(deadline)
        return fut

    def _write(self, frame: bytes) -> None:
        """Frames go out once per turn of the loop: with many requests in flight, the calls that several of them
        make to this worker in one turn leave in one write (one system call, one wake-up of the worker), not one
        each."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(frame)

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        if not self.closed:
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def _arm(self, when: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.get_running_loop().call_at(when, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        now, earliest = asyncio.get_running_loop().time(), None
        for fut, _, deadline in list(self.pending.values()):
            if deadline is None or fut.done():
                continue
            if deadline <= now:
                fut.set_exception(self.late())  # its done callback forgets the call (and cancels it on the worker)
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None and not self.closed:
            self._arm(earliest)

    def forget(self, call_id: int) -> None:
        if self.pending.pop(call_id, None) is not None and not self.closed:
            self._write(_frame(CANCEL, call_id, b""))

    async def close(self) -> None:
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        self.transport.close()


class UnixSocketPeer:
    """Peer handle: ``await infer(inputs)`` runs ``model_name`` on the worker listening at ``address``
    (``ipc:///path.sock``). Connects on first use and again after the worker restarts."""

    def __init__(self, address: str, model_name: str):
        self.address, self.model_name = address, model_name
        self.path = socket_path(address)
        self.cpus: frozenset[int] | None = None  # the CPUs the worker process may run on (None: not known)
        self._conn: _Connection | None = None
        self._ids = itertools.count(1)
        self._lock: asyncio.Lock | None = None
        self.bytes_sent = self.bytes_received = 0  # INFER frames' bodies (shared-memory tensors: their references)

    def __repr__(self) -> str:
        return f"UnixSocketPeer({self.model_name}@{self.address})"

    async def _connection(self) -> _Connection:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self._conn is None or self._conn.closed:
                label = f"{self.model_name} at {self.address}"
                try:
                    transport, self._conn = await asyncio.get_running_loop().create_unix_connection(
                        lambda: _Connection(label, self._late), self.path
                    )
                except OSError as err:
                    raise PartUnavailable(f"{label}: cannot connect ({err.strerror})") from None
                self.cpus = _peer_cpus(transport.get_extra_info("socket"))
        return self._conn

    async def _open(self, timeout_s: float | None) -> _Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            return await asyncio.wait_for(self._connection(), timeout_s)
        except asyncio.TimeoutError:
            raise self._late() from None

    def _begin(
        self, conn: _Connection, kind: int, body: bytes, timeout_s: float | None, decode: Callable[[int, bytes], object] = _raw
    ) -> asyncio.Future:
        """Send one call now; its future fails with DeadlineExceeded after ``timeout_s``. A call that is late or
        cancelled (the caller stopped waiting) is cancelled on the worker too."""
        call_id = next(self._ids)
        fut = conn.send(kind, call_id, body, decode, timeout_s)

        def done(f: asyncio.Future) -> None:
            if f.cancelled() or isinstance(f.exception(), DeadlineExceeded):
                conn.forget(call_id)

        fut.add_done_callback(done)
        return fut

    async def _call(self, kind: int, body: bytes, timeout_s: float | None) -> tuple[int, bytes]:
        return await self._begin(await self._open(timeout_s), kind, body, timeout_s)

    def _late(self) -> Exception:
        return status_error("DEADLINE_EXCEEDED", "", self)

    def _result(self, kind: int, body: bytes, sent_at: float) -> InferResult:
        self.bytes_received += len(body)
        if kind == FAILED:
            status, _, detail = body.decode(errors="replace").partition("\n")
            raise status_error(status, detail, self)
        return InferResult(*codec.parse_response(body, sent_at))

    def start(
        self, inputs: dict, timeout_s: float | None = None, request_id: str = "", parameters: dict | None = None
    ) -> asyncio.Future:
        """The call to ``infer``, begun now: with the connection open and every shared input's region already
        registered (every call after the first), the request is written before this returns and the answer
        frame resolves the future directly; otherwise a task connects and registers first."""
        conn = self._conn
        if (
            conn is None
            or conn.closed
            or any(isinstance(v, SharedTensor) and v.region.name not in conn.regions for v in inputs.values())
        ):
            return asyncio.ensure_future(self.infer(inputs, timeout_s, request_id, parameters))
        inputs = {k: v.array if isinstance(v, SharedTensor) and not conn.regions[v.region.name] else v for k, v in inputs.items()}
        body = codec.serialize_request(self.model_name, inputs, request_id, parameters)
        self.bytes_sent += len(body)
        sent_at = time.monotonic()
        return self._begin(conn, INFER, body, timeout_s, lambda kind, answer: self._result(kind, answer, sent_at))

    async def infer(
        self, inputs: dict, timeout_s: float | None = None, request_id: str = "", parameters: dict | None = None
    ) -> InferResult:
        """``inputs``: arrays, or :class:`SharedTensor` slots of the coordinator's input ring (sent as references
        once the worker has mapped the ring; inline if it cannot). ``parameters``: the request's KServe v2
        parameters (e.g. ``{TRACE: True}``)."""
        conn = await self._open(timeout_s)
        for value in inputs.values():
            if isinstance(value, SharedTensor) and value.region.name not in conn.regions:
                await self._register(conn, value.region, timeout_s)
        return await self.start(inputs, timeout_s, request_id, parameters)  # ready now: sent at once

    async def _register(self, conn: _Connection, region: SharedRegion, timeout_s: float | None) -> None:
        """Ask the worker to map ``region`` for this connection's requests; a refusal means inline inputs."""
        kind, answer = await self._begin(conn, REGISTER, f"{region.name}\n{region.path}\n{region.byte_size}".encode(), timeout_s)
        conn.regions[region.name] = kind == REGISTERED
        if kind != REGISTERED:
            log.warning(
                "%s refused shared memory (%s); sending inputs inline", self, answer.decode(errors="replace").replace("\n", ": ")
            )

    async def ready(self, timeout_s: float = 1.0) -> bool:
        try:
            kind, answer = await self._call(READY, self.model_name.encode(), timeout_s)
        except (PartUnavailable, DeadlineExceeded):
            return False
        return kind == READY_ANSWER and answer == b"\x01"

    async def not_ready_reason(self, timeout_s: float = 1.0) -> tuple[str, str]:
        """Why :meth:`ready` is False, as (kind, text): ``unreachable``; ``refused``, with the server's answer (a
        server without the model names the ones it has); or ``loading`` (the model is there, not ready yet)."""
        try:
            kind, answer = await self._call(READY, self.model_name.encode(), timeout_s)
        except (PartUnavailable, DeadlineExceeded) as err:
            return "unreachable", str(err)
        if kind == READY_ANSWER and answer[1:]:
            return "refused", answer[1:].decode(errors="replace")
        return ("ready", "ready") if answer == b"\x01" else ("loading", "the model is not ready yet")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
