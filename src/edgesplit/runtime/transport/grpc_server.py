"""A KServe v2 gRPC server (grpc.aio) for a set of :class:`ServedModel`, with the standard health service.

Security: loopback by default. On any other address the server needs a way to authenticate
clients (a bearer token or required client certificates; TLS encrypts) or an explicit
``insecure=True``. The token is checked on every call, health checks included.

Limits (``limits.ServerLimits``): requests whose tensors total more than the message limit
are answered INVALID_ARGUMENT by the handler; gRPC itself rejects anything above twice that
(RESOURCE_EXHAUSTED) before reading it. A request that would take the bytes held for
requests in flight past their cap is answered RESOURCE_EXHAUSTED before it is parsed. At
most as many calls are started at once as the cap holds requests at the hard limit (at
least MIN_CONCURRENT_CALLS; more are refused RESOURCE_EXHAUSTED before their message is
read), STREAMS_PER_CONNECTION of them per connection. Connections with no call in flight,
and connections that never finish their HTTP/2 handshake, are closed after the idle
timeout; every connection is recycled (GOAWAY, then the idle timeout's grace for calls in
flight: a call stalled mid-message ends there) after ``max_connection_age_s``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edgesplit import __version__
from edgesplit.errors import EdgesplitError
from edgesplit.runtime.model import ServedModel
from edgesplit.runtime.transport import codec
from edgesplit.runtime.transport import kserve_v2_pb2 as pb
from edgesplit.runtime.transport import kserve_v2_pb2_grpc as pb_grpc
from edgesplit.runtime.transport.calls import CallFailed, answer_infer, unknown_model
from edgesplit.runtime.transport.limits import PEAK_BYTES_PER_WIRE_BYTE, InflightBudget, ServerLimits, over_budget_message

log = logging.getLogger(__name__)

MIN_CONCURRENT_CALLS = 64
STREAMS_PER_CONNECTION = 16  # calls at once on one connection: one client cannot take every call slot


@dataclass(frozen=True)
class ServerSecurity:
    token: str | None = None
    tls_cert: str | None = None  # PEM files
    tls_key: str | None = None
    tls_client_ca: str | None = None  # require client certificates signed by this CA
    insecure: bool = False

    def check_bind(self, host: str) -> None:
        """Off loopback, clients must authenticate: a token or client certificates (TLS alone encrypts, but serves
        anyone who trusts the server's certificate)."""
        if is_loopback(host) or self.insecure or self.token or (self.tls_cert and self.tls_client_ca):
            return
        if self.tls_cert:
            raise EdgesplitError(
                f"refusing to listen on {host} with TLS but no client authentication (anyone could call); "
                f"add --token-file or --tls-client-ca, or pass --insecure to accept any client"
            )
        raise EdgesplitError(
            f"refusing to listen on {host} without client authentication; pass --token-file (and "
            f"--tls-cert/--tls-key to encrypt) or --tls-client-ca, or --insecure to accept plain "
            f"unauthenticated traffic"
        )

    def credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls_cert:
            return None
        if not self.tls_key:
            raise EdgesplitError("--tls-cert needs --tls-key")
        ca = Path(self.tls_client_ca).read_bytes() if self.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    def ssl_context(self):
        """The same certificates for the HTTP/REST server (``http_server.py``): a ``ssl.SSLContext``, or None."""
        if not self.tls_cert:
            return None
        if not self.tls_key:
            raise EdgesplitError("--tls-cert needs --tls-key")
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.tls_client_ca)
        return ctx


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        async def deny(request, context):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token: the client needs the token in "
                "the server's --token-file (a plan's security: token_file)",
            )

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation, handler_call_details):
        got = [v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"]
        if len(got) == 1 and hmac.compare_digest(got[0].encode() if isinstance(got[0], str) else got[0], self._expected):
            return await continuation(handler_call_details)
        return self._deny  # none, a wrong one, or several (which one counts would depend on the server)


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, models: Sequence[ServedModel], max_message_bytes: int, server_name: str = "edgesplit", max_batch: int | None = None
    ):
        self.models = {m.meta.name: m for m in models}
        self.max_message_bytes, self.max_batch = max_message_bytes, max_batch
        self.server_name = server_name
        self.live = True

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.live)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.live and all(m.ready() for m in self.models.values()))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=self.server_name, version=__version__, extensions=[])

    def _model(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    async def ModelReady(self, request, context):
        m = self._model(request.name)
        return pb.ModelReadyResponse(ready=bool(m and m.ready()))

    async def ModelMetadata(self, request, context):
        m = self._model(request.name)
        if m is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, unknown_model(request.name, self.models))
        meta = m.meta

        def tensors(ts):
            return [
                pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=codec.NUMPY_TO_KSERVE[t.dtype], shape=t.shape)
                for t in ts
            ]

        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=list(meta.versions),
            platform=meta.platform,
            inputs=tensors(meta.inputs),
            outputs=tensors(meta.outputs),
        )

    async def ModelInfer(self, request, context):
        received_at = time.monotonic()
        try:
            return await answer_infer(
                self.models, self.max_message_bytes, request, received_at=received_at, max_batch=self.max_batch
            )
        except CallFailed as err:
            await context.abort(getattr(grpc.StatusCode, err.status), err.message)


class _Malformed:
    """A request whose bytes are not the message the method takes (stands in for it; the handler answers it)."""

    def __init__(self, reason: str):
        self.reason = reason


class _OverBudget:
    """A request refused before parsing: it would take the bytes held for requests in flight past their cap."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes


class _Admitted:
    """A parsed request and the bytes reserved for it (given back when the call ends, however it ends)."""

    __slots__ = ("message", "reservation")

    def __init__(self, message, reservation):
        self.message, self.reservation = message, reservation


def _tolerant(parse, budget: InflightBudget):
    """A request deserializer that never raises (gRPC would answer UNKNOWN and log a traceback per bad message) and
    reserves the request's peak memory before parsing it."""

    def deserialize(data: bytes):
        reservation = budget.reserve(PEAK_BYTES_PER_WIRE_BYTE * len(data))
        if reservation is None:
            return _OverBudget(len(data))
        try:
            return _Admitted(parse(data), reservation)
        except DecodeError as err:
            reservation.release()
            return _Malformed(str(err) or "cannot parse")

    return deserialize


def _refusing_malformed(method, message: str, budget: InflightBudget):
    async def handle(request, context):
        if isinstance(request, _Malformed):  # one line, INVALID_ARGUMENT, nothing logged: a flood fills no disk
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid KServe v2 {message} ({request.reason}); send a protobuf "
                f"{message} as the protocol defines it",
            )
        if isinstance(request, _OverBudget):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, over_budget_message(request.nbytes, budget))
        try:
            return await method(request.message, context)
        finally:
            request.reservation.release()

    return handle


_METHODS = {  # the GRPCInferenceService methods this server answers: (request type, response type)
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


def _add_inference_service(servicer, server, budget: InflightBudget) -> None:
    """The generated ``add_GRPCInferenceServiceServicer_to_server``, with requests that fail to parse answered
    INVALID_ARGUMENT by the handler instead of UNKNOWN with a logged traceback by gRPC, and requests over the
    in-flight budget answered RESOURCE_EXHAUSTED before they are parsed."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _refusing_malformed(getattr(servicer, name), req.__name__, budget),
            request_deserializer=_tolerant(req.FromString, budget),
            response_serializer=resp.SerializeToString,
        )
        for name, (req, resp) in _METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),))
    server.add_registered_method_handlers("inference.GRPCInferenceService", handlers)


class KServeServer:
    """Start with :meth:`start`, stop with :meth:`stop` (in-flight calls get ``grace_s`` to finish)."""

    def __init__(
        self,
        models: Sequence[ServedModel],
        host: str = "127.0.0.1",
        port: int = 0,
        security: ServerSecurity = ServerSecurity(),
        limits: ServerLimits = ServerLimits(),
        server_name: str = "edgesplit",
        share_port: bool = False,
    ):
        """``share_port``: bind with SO_REUSEPORT, so that several processes serve one address (the kernel spreads
        connections over them); otherwise a busy port is an error, never a silently shared one."""
        security.check_bind(host)
        self.host, self.requested_port, self.security, self.limits = host, port, security, limits
        max_message_bytes = limits.message_bytes(models)
        self.servicer = KServeServicer(models, max_message_bytes, server_name, limits.max_batch)
        self.budget = InflightBudget(limits.max_inflight_bytes)
        interceptors = [_TokenInterceptor(security.token)] if security.token else []
        hard_limit = 2 * max_message_bytes + (1 << 20)
        idle_ms = int(limits.idle_timeout_s * 1e3)
        self.server = grpc.aio.server(
            interceptors=interceptors,
            # calls started at once (more are refused RESOURCE_EXHAUSTED before their message is read): as many as
            # the in-flight cap holds at the hard limit, and at least 64, so that a few dozen stalled streams do not
            # lock everyone out until their connections are recycled
            maximum_concurrent_rpcs=max(
                MIN_CONCURRENT_CALLS, limits.max_inflight_bytes // (PEAK_BYTES_PER_WIRE_BYTE * hard_limit)
            ),
            options=[
                ("grpc.max_receive_message_length", hard_limit),
                ("grpc.max_send_message_length", hard_limit),
                ("grpc.so_reuseport", int(share_port)),
                ("grpc.max_connection_idle_ms", idle_ms),
                ("grpc.server_handshake_timeout_ms", idle_ms),
                ("grpc.max_connection_age_ms", int(limits.max_connection_age_s * 1e3)),
                ("grpc.max_connection_age_grace_ms", idle_ms),
                ("grpc.max_allowed_incoming_connections", limits.max_connections),
                ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
            ],
        )
        _add_inference_service(self.servicer, self.server, self.budget)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port: int | None = None

    async def start(self) -> int:
        address = f"{self.host}:{self.requested_port}"
        creds = self.security.credentials()
        try:
            port = self.server.add_secure_port(address, creds) if creds else self.server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if not port:
            raise EdgesplitError(f"cannot listen on {address} (port in use or address not on this machine); pick another --port")
        await self.server.start()
        self.port = port
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s:%d", ", ".join(self.servicer.models), self.host, port)
        return port

    async def _set_health(self, status) -> None:
        for name in ["", *self.servicer.models]:
            await self.health.set(name, status)

    async def stop(self, grace_s: float = 5.0) -> None:
        self.servicer.live = False
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)


def until_signalled() -> asyncio.Event:
    """An event set when this process gets SIGTERM or SIGINT (from now on)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
