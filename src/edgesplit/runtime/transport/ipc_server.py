"""The worker's end of the Unix socket transport (``ipc.py``): answers KServe v2 calls with the same code as gRPC.

Limits (``limits.ServerLimits``), as gRPC's: the message limit (a frame over twice it is skipped unread), the
in-flight budget (a complete frame that would take it past its cap is answered RESOURCE_EXHAUSTED before it is
parsed; a connection holds at most one incomplete frame), at most ``max_connections`` connections (more are
closed at once), and the idle timeout: a connection with no call in flight and nothing received for that long
(idle, stalled mid-frame, or not reading its answers) is closed. Back-pressure: while a connection's answers
are not being read (its transport's write buffer is over its high-water mark), its requests are not read either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from pathlib import Path
from typing import Sequence

from google.protobuf.message import DecodeError

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.model import ServedModel, runs_inline
from edgesplit.runtime.shm import RegionMap
from edgesplit.runtime.transport import codec
from edgesplit.runtime.transport import kserve_v2_pb2 as pb
from edgesplit.runtime.transport.calls import Call, CallFailed, answer_call, answer_call_now, decode_call, unknown_model
from edgesplit.runtime.transport.ipc import (
    CANCEL,
    FAILED,
    INFER,
    READY,
    READY_ANSWER,
    REGISTER,
    REGISTERED,
    RESULT,
    SCHEME,
    FrameReader,
    _accepting,
    _frame,
)
from edgesplit.runtime.transport.limits import PEAK_BYTES_PER_WIRE_BYTE, InflightBudget, ServerLimits, over_budget_message

log = logging.getLogger(__name__)

_SMALL_REQUEST_BYTES = 4096  # a request this small carries no image: its decoding may be kept


class UnixSocketServer:
    """Serves ``models`` on a Unix socket next to a worker's gRPC server. Start with :meth:`start`;
    :meth:`stop` stops accepting and gives calls in flight ``grace_s`` to finish."""

    def __init__(
        self, models: Sequence[ServedModel], path: str | Path, limits: ServerLimits = ServerLimits(), poll_ms: float = 0.0
    ):
        """``poll_ms``: after each answer, poll the connections for this long instead of sleeping (yielding the
        core to any other runnable process), so that the next request is not delayed by waking an idle core."""
        self.poll_ms = poll_ms
        self._poll_until = 0.0
        self._poller: asyncio.Task | None = None
        self.models = {m.meta.name: m for m in models}
        self.path = Path(path)
        self.limits = limits
        self.budget = InflightBudget(limits.max_inflight_bytes)
        self.max_message_bytes = max_message_bytes = limits.message_bytes(models)
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
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: _ServerConnection(self), path=str(self.path)
            )
        except OSError as err:
            raise EdgesplitError(
                f"cannot listen on Unix socket {self.path}: {err.strerror}; pick another --unix-socket path"
            ) from None
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

    async def _infer(
        self, call_id: int, call: Call, conn: "_ServerConnection", received_at: float, t0: float, reservation
    ) -> None:
        try:
            answer = _frame(RESULT, call_id, await answer_call(call, received_at, codec.serialize_response, t0))
        except Exception as err:
            answer = _failure(call_id, err)
        finally:
            reservation.release()
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


BATCH_HOLD_S = 0.0005  # the longest an answer waits for the other answers of its read


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
        self.last_received = time.monotonic()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._batch: list[bytes] | None = None  # answers held while the calls of one read are answered
        self._batch_t0 = 0.0

    def decode(self, body: bytes, server: UnixSocketServer) -> Call:
        """The call a request body asks for. A coordinator sends the same request again and again but for its id
        (the image is in a shared-memory slot): what was decoded of it is kept, so that a request is answered
        without parsing it (with the caches cold after the engine ran, protobuf's accessors were most of the
        worker's handler time: docs/benchmarks.md)."""
        split = codec.split_request_id(body) if len(body) <= _SMALL_REQUEST_BYTES else None
        if split is not None:
            known = self.decoded.get(split[0])
            if known is not None:
                try:
                    self.regions.check()  # its inputs are views of the regions: their files must still be whole
                except ValueError as err:
                    raise CallFailed("INVALID_ARGUMENT", str(err)) from None
                return Call(known.model, split[1], known.inputs, known.traced)
        request = pb.ModelInferRequest.FromString(body)
        call = decode_call(server.models, server.max_message_bytes, request, self.regions, server.limits.max_batch)
        if (
            split is not None
            and not request.raw_input_contents
            and request.id == split[1]
            and not pb.ModelInferRequest.FromString(split[0]).id
        ):  # no second id field: the key decides the call
            if len(self.decoded) >= 64:
                self.decoded.clear()
            self.decoded[split[0]] = call
        return call

    def connection_made(self, transport) -> None:
        self.transport = transport
        if len(self.server._connections) >= self.server.limits.max_connections:
            transport.abort()  # over the limit: the client sees the connection closed at once
            return
        self.server._connections.add(self)
        self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        self._idle_timer = asyncio.get_running_loop().call_later(self.server.limits.idle_timeout_s, self._idle_check)

    def _idle_check(self) -> None:
        """Close the connection if nothing came for the idle timeout and no call is in flight (an idle client, one
        stalled mid-frame, or one that stopped reading its answers, whose requests are no longer read)."""
        quiet_s = time.monotonic() - self.last_received
        if not self.calls and quiet_s >= self.server.limits.idle_timeout_s:
            log.debug("closing a Unix socket connection quiet for %.0f s", quiet_s)  # no line per attacker connection at INFO
            self.transport.abort()  # buffered answers a client does not read are dropped with it
            return
        self._arm_idle_timer()

    def pause_writing(self) -> None:  # the client is not reading its answers: stop reading its requests
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def write(self, frame: bytes) -> None:
        if self._batch is None:
            if not self.transport.is_closing():
                self.transport.write(frame)
            return
        self._batch.append(frame)
        if time.perf_counter() - self._batch_t0 > BATCH_HOLD_S:  # answers that took long to compute go now
            self._flush()

    def _flush(self) -> None:
        batch, self._batch, self._batch_t0 = self._batch, [], time.perf_counter()
        if batch and not self.transport.is_closing():
            self.transport.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def data_received(self, data: bytes) -> None:
        # the answers to the calls of one read (a coordinator with many requests in flight sends several at once)
        # leave together: one system call and one wake-up of the coordinator, not one each
        self._batch, self._batch_t0 = [], time.perf_counter()
        try:
            self._read(data)
        finally:
            self._flush()
            self._batch = None

    def _read(self, data: bytes) -> None:
        server = self.server
        self.last_received = received_at = time.monotonic()
        frames = self.frames.feed(data)
        # calls cancelled in the same read as they were asked (the caller stopped waiting) are not run at all
        cancelled = {call_id for kind, call_id, _, _ in frames if kind == CANCEL} if len(frames) > 1 else ()
        for kind, call_id, size, body in frames:
            if body is None:  # never held in memory; the stream stays in step
                self.write(
                    _frame(
                        FAILED,
                        call_id,
                        f"RESOURCE_EXHAUSTED\nmessage of {size} bytes is over the "
                        f"limit of {server.frame_limit}; send smaller batches".encode(),
                    )
                )
            elif kind == INFER:
                if call_id in cancelled:
                    continue
                t0 = time.perf_counter()
                reservation = server.budget.reserve(PEAK_BYTES_PER_WIRE_BYTE * size)
                if reservation is None:
                    self.write(
                        _frame(FAILED, call_id, f"RESOURCE_EXHAUSTED\n{over_budget_message(size, server.budget)}".encode())
                    )
                    continue
                try:
                    call = self.decode(body, server)
                except Exception as err:  # not a request, an unknown model, a bad tensor: answered at once
                    reservation.release()
                    self.write(_failure(call_id, err))
                    continue
                if not server._calls and hasattr(call.model, "infer_now") and runs_inline(call.inputs):
                    # nothing else running: answered now, without a task's event-loop turn (several requests read
                    # at once are answered in turn, as tasks would run them on this one-core worker)
                    server._infer_now(call_id, call, self, received_at, t0)
                    reservation.release()
                    continue
                task = asyncio.get_running_loop().create_task(server._infer(call_id, call, self, received_at, t0, reservation))
                self.calls[call_id] = task
                server._calls.add(task)
                task.add_done_callback(lambda t, cid=call_id: (self.calls.pop(cid, None), server._calls.discard(t)))
            elif kind == READY:
                name = body.decode(errors="replace")
                m = server.models.get(name)
                answer = (
                    (b"\x01" if m.ready() else b"\x00")
                    if m is not None
                    else b"\x00" + unknown_model(name, server.models).encode()
                )
                self.write(_frame(READY_ANSWER, call_id, answer))
            elif kind == CANCEL:
                if call_id in self.calls:
                    self.calls[call_id].cancel()
            elif kind == REGISTER:
                self.decoded.clear()  # decoded inputs are views of the regions mapped so far
                self.write(_register(self.regions, call_id, body))
            else:
                self.write(_frame(FAILED, call_id, f"INVALID_ARGUMENT\nunknown frame kind {kind}".encode()))

    def connection_lost(self, exc) -> None:  # the client went away, or the server stopped
        if self._idle_timer is not None:
            self._idle_timer.cancel()
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
        return _frame(FAILED, call_id, f"INVALID_ARGUMENT\n{str(err)[:300]}".encode())
    except OSError as err:
        return _frame(FAILED, call_id, f"INVALID_ARGUMENT\ncannot map {body[:200]!r}: {err.strerror}".encode())
    return _frame(REGISTERED, call_id, b"")
