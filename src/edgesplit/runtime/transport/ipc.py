"""KServe v2 messages over a Unix socket: the fast path between a coordinator and workers on the same machine.

Why: on the project's 2-core VM a Python gRPC call over loopback costs about 1 ms more
transport per branch than this, and 1 ms more coordinator CPU per request
(docs/benchmarks.md), CPU taken from the workers. The local cluster (the embedded default)
therefore also serves each worker on a Unix socket and the coordinator uses it; remote
devices and stock KServe v2 clients keep using gRPC, which every worker still serves.

The messages are the protocol's own ``ModelInferRequest`` / ``ModelInferResponse``
(only the framing differs), so a request is validated and answered by exactly the code
that answers gRPC calls (:func:`decode_call`, :func:`answer_call`). A frame is a header
``<body bytes: u32><kind: u8><call id: u64>`` and a body:

    INFER    -> RESULT | FAILED    body: ModelInferRequest -> ModelInferResponse | b"STATUS\\nmessage"
    READY    -> READY_ANSWER       body: model name -> b"\\x01" or b"\\x00"
    CANCEL                         the call id's handler is cancelled (the caller stopped waiting)
    REGISTER -> REGISTERED | FAILED  body: b"name\\npath\\nbyte_size": map a shared-memory region for this
                                   connection's requests (``runtime/shm.py``: the input broadcast)

A frame over twice the message limit is answered RESOURCE_EXHAUSTED and skipped unread.

Calls are multiplexed on one connection (many in flight, answered in any order).
Addresses are written ``ipc:///absolute/path.sock``. The socket file is created
mode 0600: only the user who started the worker can connect.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Callable, Sequence

from google.protobuf.message import DecodeError

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.errors import DeadlineExceeded, PartUnavailable
from edgesplit.runtime.model import InferResult, ServedModel
from edgesplit.runtime.shm import RegionMap, SharedRegion, SharedTensor
from edgesplit.runtime.transport import codec
from edgesplit.runtime.transport import kserve_v2_pb2 as pb
from edgesplit.runtime.transport.client import status_error
from edgesplit.runtime.transport.server import Call, CallFailed, answer_call, answer_call_now, decode_call

log = logging.getLogger(__name__)

SCHEME = "ipc://"
_SMALL_REQUEST_BYTES = 4096  # a request this small carries no image: its decoding may be kept
HEADER = struct.Struct("<IBQ")  # body bytes, kind, call id
INFER, READY, CANCEL, RESULT, FAILED, READY_ANSWER, REGISTER, REGISTERED = 1, 2, 3, 4, 5, 6, 7, 8


def socket_path(address: str) -> str:
    if not address.startswith(SCHEME) or not address[len(SCHEME):].startswith("/"):
        raise EdgesplitError(f"bad Unix socket address {address!r}; write ipc:///absolute/path.sock")
    return address[len(SCHEME):]


def _frame(kind: int, call_id: int, body: bytes) -> bytes:
    return HEADER.pack(len(body), kind, call_id) + body


class FrameReader:
    """Cuts a byte stream into frames as it arrives. A frame whose body is over ``limit`` bytes is reported with
    body ``None`` and its bytes are dropped as they come, never held."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized frame still to drop

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes | None]]:
        """The frames completed by ``data``, as (kind, call id, body size in bytes, body or None)."""
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        buf = self._buf
        buf += data
        frames, offset, end = [], 0, len(buf)
        with memoryview(buf) as view:
            while end - offset >= HEADER.size:
                size, kind, call_id = HEADER.unpack_from(view, offset)
                if self.limit is not None and size > self.limit:
                    frames.append((kind, call_id, size, None))
                    dropped = min(size, end - offset - HEADER.size)
                    self._skip = size - dropped
                    offset += HEADER.size + dropped
                    continue
                if end - offset - HEADER.size < size:
                    break
                frames.append((kind, call_id, size, bytes(view[offset + HEADER.size:offset + HEADER.size + size])))
                offset += HEADER.size + size
        del buf[:offset]
        return frames


class UnixSocketServer:
    """Serves ``models`` on a Unix socket next to a worker's gRPC server. Start with :meth:`start`;
    :meth:`stop` stops accepting and gives calls in flight ``grace_s`` to finish."""

    def __init__(self, models: Sequence[ServedModel], path: str | Path, max_message_bytes: int, poll_ms: float = 0.0):
        """``poll_ms``: after each answer, poll the connections for this long instead of sleeping (yielding the
        core to any other runnable process), so that the next request is not delayed by waking an idle core."""
        self.poll_ms = poll_ms
        self._poll_until = 0.0
        self._poller: asyncio.Task | None = None
        self.models = {m.meta.name: m for m in models}
        self.path = Path(path)
        self.max_message_bytes = max_message_bytes
        self.frame_limit = 2 * max_message_bytes + (1 << 20)  # as gRPC's hard limit: refused without being held
        self._server: asyncio.AbstractServer | None = None
        self._calls: set[asyncio.Task] = set()
        self._connections: set[_ServerConnection] = set()

    @property
    def address(self) -> str:
        return SCHEME + str(self.path.resolve())

    async def start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise EdgesplitError(f"{self.path} exists and is not a socket; pick another --unix-socket path")
            if _accepting(self.path):
                raise EdgesplitError(f"another process is serving on {self.path}; stop it or pick another --unix-socket path")
            self.path.unlink()  # left behind by a worker that was killed: ours to replace
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            self._server = await asyncio.get_running_loop().create_unix_server(lambda: _ServerConnection(self),
                                                                               path=str(self.path))
        except OSError as err:
            raise EdgesplitError(f"cannot listen on Unix socket {self.path}: {err.strerror}; pick another --unix-socket path") from None
        finally:
            os.umask(old_umask)
        log.info("serving %s on %s", ", ".join(self.models), self.address)

    def _infer_now(self, call_id: int, call: Call, conn: "_ServerConnection", received_at: float, t0: float) -> None:
        """Answer a call of a synchronous model at once (nothing else runs here: no task, no event-loop turn)."""
        try:
            answer = _frame(RESULT, call_id, answer_call_now(call, received_at, codec.serialize_response, t0))
        except Exception as err:
            answer = _failure(call_id, err)
        self._answered(conn, answer)

    async def _infer(self, call_id: int, call: Call, conn: "_ServerConnection", received_at: float, t0: float) -> None:
        try:
            answer = _frame(RESULT, call_id, await answer_call(call, received_at, codec.serialize_response, t0))
        except Exception as err:
            answer = _failure(call_id, err)
        self._answered(conn, answer)

    def _answered(self, conn: "_ServerConnection", answer: bytes) -> None:
        conn.write(answer)
        if self.poll_ms > 0:
            self._poll_until = time.perf_counter() + self.poll_ms / 1e3
            if self._poller is None:
                self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        try:
            while time.perf_counter() < self._poll_until:
                os.sched_yield()  # whoever else is runnable on this core goes first
                await asyncio.sleep(0)  # one loop iteration: the selector is polled with no timeout
        finally:
            self._poller = None

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is None:
            return
        self._server.close()
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=grace_s)
        for conn in list(self._connections):
            conn.transport.close()
        self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class _ServerConnection(asyncio.Protocol):
    """One client's connection to a :class:`UnixSocketServer`: frames are handled as they arrive, with no reader
    task between the socket and the handler. An INFER for a synchronous model (``infer_now``) while nothing else
    runs is answered inside the read (several read at once in turn); otherwise it becomes a task, answered
    whenever it finishes."""

    def __init__(self, server: UnixSocketServer):
        self.server = server
        self.frames = FrameReader(server.frame_limit)
        self.calls: dict[int, asyncio.Task] = {}
        self.regions = RegionMap()  # shared memory this client registered
        self.decoded: dict[bytes, Call] = {}  # requests with inputs in shared memory, less their id -> decoded
        self.transport: asyncio.Transport | None = None

    def decode(self, body: bytes, server: UnixSocketServer) -> Call:
        """The call a request body asks for. A coordinator sends the same request again and again but for its id
        (the image is in a shared-memory slot): what was decoded of it is kept, so that a request is answered
        without parsing it (with the caches cold after the engine ran, protobuf's accessors were most of the
        worker's handler time: docs/benchmarks.md)."""
        split = codec.split_request_id(body) if len(body) <= _SMALL_REQUEST_BYTES else None
        if split is not None:
            known = self.decoded.get(split[0])
            if known is not None:
                return Call(known.model, split[1], known.inputs, known.traced)
        request = pb.ModelInferRequest.FromString(body)
        call = decode_call(server.models, server.max_message_bytes, request, self.regions)
        if (split is not None and not request.raw_input_contents and request.id == split[1]
                and not pb.ModelInferRequest.FromString(split[0]).id):  # no second id field: the key decides the call
            if len(self.decoded) >= 64:
                self.decoded.clear()
            self.decoded[split[0]] = call
        return call

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server._connections.add(self)

    def write(self, frame: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        server = self.server
        received_at = time.monotonic()
        frames = self.frames.feed(data)
        # calls cancelled in the same read as they were asked (the caller stopped waiting) are not run at all
        cancelled = {call_id for kind, call_id, _, _ in frames if kind == CANCEL} if len(frames) > 1 else ()
        for kind, call_id, size, body in frames:
            if body is None:  # never held in memory; the stream stays in step
                self.write(_frame(FAILED, call_id, f"RESOURCE_EXHAUSTED\nmessage of {size} bytes is over the "
                                                   f"limit of {server.frame_limit}; send smaller batches".encode()))
            elif kind == INFER:
                if call_id in cancelled:
                    continue
                t0 = time.perf_counter()
                try:
                    call = self.decode(body, server)
                except Exception as err:  # not a request, an unknown model, a bad tensor: answered at once
                    self.write(_failure(call_id, err))
                    continue
                if not server._calls and hasattr(call.model, "infer_now"):
                    # nothing else running: answered now, without a task's event-loop turn (several requests read
                    # at once are answered in turn, as tasks would run them on this one-core worker)
                    server._infer_now(call_id, call, self, received_at, t0)
                    continue
                task = asyncio.get_running_loop().create_task(server._infer(call_id, call, self, received_at, t0))
                self.calls[call_id] = task
                server._calls.add(task)
                task.add_done_callback(lambda t, cid=call_id: (self.calls.pop(cid, None), server._calls.discard(t)))
            elif kind == READY:
                m = server.models.get(body.decode(errors="replace"))
                self.write(_frame(READY_ANSWER, call_id, b"\x01" if m is not None and m.ready() else b"\x00"))
            elif kind == CANCEL:
                if call_id in self.calls:
                    self.calls[call_id].cancel()
            elif kind == REGISTER:
                self.decoded.clear()  # decoded inputs are views of the regions mapped so far
                self.write(_register(self.regions, call_id, body))
            else:
                self.write(_frame(FAILED, call_id, f"INVALID_ARGUMENT\nunknown frame kind {kind}".encode()))

    def connection_lost(self, exc) -> None:  # the client went away, or the server stopped
        for task in list(self.calls.values()):
            task.cancel()
        self.regions.close()
        self.server._connections.discard(self)


def _failure(call_id: int, err: Exception) -> bytes:
    """The FAILED frame for a call that raised ``err``."""
    if isinstance(err, DecodeError):
        return _frame(FAILED, call_id, b"INVALID_ARGUMENT\nbody is not a KServe v2 ModelInferRequest")
    if isinstance(err, CallFailed):
        return _frame(FAILED, call_id, f"{err.status}\n{err.message}".encode())
    # never leave a caller waiting: as gRPC answers UNKNOWN for a handler that raised
    log.error("call %d failed", call_id, exc_info=err)
    return _frame(FAILED, call_id, f"UNKNOWN\n{type(err).__name__}: {err}".encode())


def _register(regions: RegionMap, call_id: int, body: bytes) -> bytes:
    try:
        name, path, size = body.decode().split("\n")
        regions.register(name, path, int(size))
    except (ValueError, UnicodeDecodeError) as err:
        return _frame(FAILED, call_id, f"INVALID_ARGUMENT\n{err}".encode())
    except OSError as err:
        return _frame(FAILED, call_id, f"INVALID_ARGUMENT\ncannot map {body[:200]!r}: {err.strerror}".encode())
    return _frame(REGISTERED, call_id, b"")


def _peer_cpus(sock) -> frozenset[int] | None:
    """The CPUs the process at the other end of a Unix socket may run on (Linux: its pid from SO_PEERCRED)."""
    try:
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return frozenset(os.sched_getaffinity(pid))
    except (AttributeError, OSError):
        return None


def _accepting(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


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
        error = PartUnavailable(f"{self.label}: connection closed by the worker" if exc is None else
                                f"{self.label}: connection lost ({type(exc).__name__})")
        for fut, _, _ in self.pending.values():
            if not fut.done():
                fut.set_exception(error)
        self.pending.clear()

    def send(self, kind: int, call_id: int, body: bytes, decode: Callable[[int, bytes], object] = _raw,
             timeout_s: float | None = None) -> asyncio.Future:
        """The call's future; it fails with ``late()`` when no answer came within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        self.pending[call_id] = (fut, decode, deadline)
        self.transport.write(_frame(kind, call_id, body))
        if deadline is not None and (self._expiry is None or deadline < self._expiry.when()):
            self._arm(deadline)
        return fut

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
            self.transport.write(_frame(CANCEL, call_id, b""))

    async def close(self) -> None:
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        self.transport.close()


class UnixSocketWorker:
    """Peer handle: ``await infer(inputs)`` runs ``model_name`` on the worker listening at ``address``
    (``ipc:///path.sock``). Connects on first use and again after the worker restarts."""

    def __init__(self, address: str, model_name: str):
        self.address, self.model_name = address, model_name
        self.path = socket_path(address)
        self.cpus: frozenset[int] | None = None  # the CPUs the worker process may run on (None: not known)
        self._conn: _Connection | None = None
        self._ids = itertools.count(1)
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"UnixSocketWorker({self.model_name}@{self.address})"

    async def _connection(self) -> _Connection:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self._conn is None or self._conn.closed:
                label = f"{self.model_name} at {self.address}"
                try:
                    transport, self._conn = await asyncio.get_running_loop().create_unix_connection(
                        lambda: _Connection(label, self._late), self.path)
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

    def _begin(self, conn: _Connection, kind: int, body: bytes, timeout_s: float | None,
               decode: Callable[[int, bytes], object] = _raw) -> asyncio.Future:
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
        if kind == FAILED:
            status, _, detail = body.decode(errors="replace").partition("\n")
            raise status_error(status, detail, self)
        return InferResult(*codec.parse_response(body, sent_at))

    def start(self, inputs: dict, timeout_s: float | None = None, request_id: str = "",
              parameters: dict | None = None) -> asyncio.Future:
        """The call to ``infer``, begun now: with the connection open and every shared input's region already
        registered (every call after the first), the request is written before this returns and the answer
        frame resolves the future directly; otherwise a task connects and registers first."""
        conn = self._conn
        if conn is None or conn.closed or any(isinstance(v, SharedTensor) and v.region.name not in conn.regions
                                              for v in inputs.values()):
            return asyncio.ensure_future(self.infer(inputs, timeout_s, request_id, parameters))
        inputs = {k: v.array if isinstance(v, SharedTensor) and not conn.regions[v.region.name] else v
                  for k, v in inputs.items()}
        body = codec.serialize_request(self.model_name, inputs, request_id, parameters)
        sent_at = time.monotonic()
        return self._begin(conn, INFER, body, timeout_s, lambda kind, answer: self._result(kind, answer, sent_at))

    async def infer(self, inputs: dict, timeout_s: float | None = None, request_id: str = "",
                    parameters: dict | None = None) -> InferResult:
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
            log.warning("%s refused shared memory (%s); sending inputs inline",
                        self, answer.decode(errors="replace").replace("\n", ": "))

    async def ready(self, timeout_s: float = 1.0) -> bool:
        try:
            kind, answer = await self._call(READY, self.model_name.encode(), timeout_s)
        except (PartUnavailable, DeadlineExceeded):
            return False
        return kind == READY_ANSWER and answer == b"\x01"

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
