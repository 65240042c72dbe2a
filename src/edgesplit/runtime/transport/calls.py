"""A KServe v2 call, whichever transport carried it: decoded, run, answered, or failed with the right status.

Both servers use it (gRPC: ``grpc_server.py``; the Unix socket: ``ipc_server.py``), and both peers map a
failed call's status back to the runtime's exceptions with :func:`status_error`. No gRPC import here: a
process that only speaks the Unix socket transport never loads grpc.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from edgesplit.runtime.errors import DeadlineExceeded, InferError, OverLimit, PartUnavailable
from edgesplit.runtime.model import STREAM, TRACE, TRACE_ANSWERED, TRACE_RECEIVED, ServedModel
from edgesplit.runtime.transport import codec
from edgesplit.runtime.transport import kserve_v2_pb2 as pb
from edgesplit.runtime.transport.limits import echo

log = logging.getLogger(__name__)


class CallFailed(Exception):
    """A call answered with an error status (a gRPC status code name: INVALID_ARGUMENT, ...)."""

    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


@dataclass(frozen=True)
class Call:
    """A decoded ModelInfer request: what :func:`answer_call` needs of it."""

    model: ServedModel
    request_id: str
    inputs: dict  # name -> np.ndarray
    traced: bool  # the request asked for a trace (``model.TRACE``)
    stream: str | None = None  # the request's ``stream`` parameter: frames of one stream (``model.STREAM``)


def decode_call(
    models: dict[str, ServedModel],
    max_message_bytes: int,
    request: pb.ModelInferRequest,
    regions=None,
    max_batch: int | None = None,
) -> Call:
    """The request's model and inputs, or :class:`CallFailed` (INVALID_ARGUMENT) saying what is wrong. ``regions``:
    the shared-memory regions the caller registered (Unix socket transport only). ``max_batch``: the most items
    (first dimension) an input may have: the engine's scratch memory grows with it."""
    m = models.get(request.model_name)
    if m is None:
        raise CallFailed("INVALID_ARGUMENT", unknown_model(request.model_name, models))
    try:  # each raw tensor copied out of the message once (upb copies on access); sizes checked before that
        inputs = codec.decode_request(request, regions, max_message_bytes)
    except OverLimit as err:
        raise CallFailed("RESOURCE_EXHAUSTED", str(err)) from None
    except InferError as err:
        raise CallFailed("INVALID_ARGUMENT", str(err)) from None
    if max_batch is not None:
        for name, a in inputs.items():
            if a.ndim and a.shape[0] > max_batch:
                raise CallFailed(
                    "RESOURCE_EXHAUSTED",
                    f"input {echo(name)}: a batch of {a.shape[0]} items, over the limit "
                    f"of {max_batch}; send smaller batches (or raise the server's --max-batch)",
                )
    stream = request.parameters[STREAM].string_param if STREAM in request.parameters else None
    return Call(m, request.id, inputs, TRACE in request.parameters and request.parameters[TRACE].bool_param, stream or None)


async def answer_call(
    call: Call, received_at: float | None = None, encode=codec.encode_response, started_at: float | None = None
):
    """Run one decoded call: the response, or :class:`CallFailed` with the status a KServe v2 client expects.
    ``received_at``: when the transport had the request (``time.monotonic()``), reported back when it asked for a
    trace. ``encode``: ``(model name, request id, outputs, parameters)`` -> the response: a ``ModelInferResponse``
    for gRPC, its bytes for the Unix socket (``codec.serialize_response``). The handler time reported
    (``server_ms``) runs from ``started_at`` (``time.perf_counter()``; default: now) to where encoding starts."""
    t0 = time.perf_counter() if started_at is None else started_at
    try:
        if call.stream is not None and hasattr(call.model, "infer_stream"):
            result = await call.model.infer_stream(call.inputs, call.stream)
        else:
            result = await call.model.infer(call.inputs)
    except Exception as err:
        raise _call_failed(call, err) from None
    return _answer(call, result, t0, received_at, encode)


def answer_call_now(call: Call, received_at: float | None = None, encode=codec.encode_response, started_at: float | None = None):
    """:func:`answer_call` for a model that runs synchronously (``infer_now``), without a task or an event-loop turn."""
    t0 = time.perf_counter() if started_at is None else started_at
    try:
        result = call.model.infer_now(call.inputs)
    except Exception as err:
        raise _call_failed(call, err) from None
    return _answer(call, result, t0, received_at, encode)


def _answer(call: Call, result, t0: float, received_at: float | None, encode):
    params = {**result.parameters, "server_ms": (time.perf_counter() - t0) * 1e3}  # handler time, transport excluded
    if received_at is not None and call.traced:
        params[TRACE_RECEIVED], params[TRACE_ANSWERED] = received_at, time.monotonic()
    return encode(call.model.meta.name, call.request_id, result.outputs, params)


def _call_failed(call: Call, err: Exception) -> CallFailed:
    """The status a failed call is answered with."""
    if isinstance(err, InferError):
        return CallFailed("INVALID_ARGUMENT", str(err))
    if isinstance(err, DeadlineExceeded):
        return CallFailed("DEADLINE_EXCEEDED", str(err))
    if isinstance(err, PartUnavailable):
        return CallFailed("UNAVAILABLE", str(err))
    log.warning("%s failed: %s", call.model.meta.name, err)  # an engine or injected failure: report it, keep serving
    return CallFailed("INTERNAL", f"{call.model.meta.name} failed: {err}")


async def answer_infer(
    models: dict[str, ServedModel],
    max_message_bytes: int,
    request: pb.ModelInferRequest,
    regions=None,
    received_at: float | None = None,
    max_batch: int | None = None,
) -> pb.ModelInferResponse:
    """One ModelInfer call as gRPC carries it: :func:`decode_call`, then :func:`answer_call`."""
    t0 = time.perf_counter()
    return await answer_call(decode_call(models, max_message_bytes, request, regions, max_batch), received_at, started_at=t0)


def unknown_model(name: str, models: dict) -> str:
    return f"unknown model {echo(name)}; this server has: {', '.join(models)}"


def status_error(status: str, detail: str, peer) -> Exception:
    """The runtime's exception for a call that ended with ``status`` (a gRPC status code name)."""
    if status == "INVALID_ARGUMENT":
        return InferError(detail)
    if status == "RESOURCE_EXHAUSTED" and "over the limit" in detail:  # the request is too large: the caller's to fix
        return OverLimit(detail)
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(f"{peer.model_name} at {peer.address} did not answer in time")
    return PartUnavailable(f"{peer.model_name} at {peer.address}: {status} ({detail})")
