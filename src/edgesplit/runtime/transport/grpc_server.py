"""A KServe v2 gRPC server (grpc.aio) for a set of :class:`ServedModel`, with the standard health service.

Security: loopback by default. On any other address the server needs TLS (a server
certificate, optionally required client certificates) or a bearer token, or an
explicit ``insecure=True``. The token is checked on every call, health checks included.

Message size: requests whose tensors total more than ``max_message_bytes`` are
answered INVALID_ARGUMENT by the handler; gRPC itself rejects anything above twice
that (RESOURCE_EXHAUSTED) before reading it.
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

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


@dataclass(frozen=True)
class ServerSecurity:
    token: str | None = None
    tls_cert: str | None = None  # PEM files
    tls_key: str | None = None
    tls_client_ca: str | None = None  # require client certificates signed by this CA
    insecure: bool = False

    def check_bind(self, host: str) -> None:
        if is_loopback(host) or self.insecure or self.tls_cert or self.token:
            return
        raise EdgesplitError(f"refusing to listen on {host} without TLS or a token; pass --tls-cert/--tls-key, "
                             f"--token-file, or --insecure to accept plain unauthenticated traffic")

    def credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls_cert:
            return None
        if not self.tls_key:
            raise EdgesplitError("--tls-cert needs --tls-key")
        ca = Path(self.tls_client_ca).read_bytes() if self.tls_client_ca else None
        return grpc.ssl_server_credentials([(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())],
                                           root_certificates=ca, require_client_auth=ca is not None)


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
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token: the client needs the token in "
                                  "the server's --token-file (a plan's security: token_file)")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation, handler_call_details):
        got = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(got.encode() if isinstance(got, str) else got, self._expected):
            return await continuation(handler_call_details)
        return self._deny


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, models: Sequence[ServedModel], max_message_bytes: int, server_name: str = "edgesplit"):
        self.models = {m.meta.name: m for m in models}
        self.max_message_bytes = max_message_bytes
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
            return [pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=codec.NUMPY_TO_KSERVE[t.dtype], shape=t.shape) for t in ts]

        return pb.ModelMetadataResponse(name=meta.name, versions=list(meta.versions), platform=meta.platform,
                                        inputs=tensors(meta.inputs), outputs=tensors(meta.outputs))

    async def ModelInfer(self, request, context):
        received_at = time.monotonic()
        try:
            return await answer_infer(self.models, self.max_message_bytes, request, received_at=received_at)
        except CallFailed as err:
            await context.abort(getattr(grpc.StatusCode, err.status), err.message)


class _Malformed:
    """A request whose bytes are not the message the method takes (stands in for it; the handler answers it)."""

    def __init__(self, reason: str):
        self.reason = reason


def _tolerant(parse):
    """A request deserializer that never raises: gRPC would answer UNKNOWN and log a traceback per bad message."""
    def deserialize(data: bytes):
        try:
            return parse(data)
        except DecodeError as err:
            return _Malformed(str(err) or "cannot parse")
    return deserialize


def _refusing_malformed(method, message: str):
    async def handle(request, context):
        if isinstance(request, _Malformed):  # one line, INVALID_ARGUMENT, nothing logged: a flood fills no disk
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request is not a valid KServe v2 {message} ({request.reason}); send a protobuf "
                                f"{message} as the protocol defines it")
        return await method(request, context)
    return handle


_METHODS = {  # the GRPCInferenceService methods this server answers: (request type, response type)
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse), "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse), "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


def _add_inference_service(servicer, server) -> None:
    """The generated ``add_GRPCInferenceServiceServicer_to_server``, with requests that fail to parse answered
    INVALID_ARGUMENT by the handler instead of UNKNOWN with a logged traceback by gRPC."""
    handlers = {name: grpc.unary_unary_rpc_method_handler(
                    _refusing_malformed(getattr(servicer, name), req.__name__),
                    request_deserializer=_tolerant(req.FromString), response_serializer=resp.SerializeToString)
                for name, (req, resp) in _METHODS.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),))
    server.add_registered_method_handlers("inference.GRPCInferenceService", handlers)


class KServeServer:
    """Start with :meth:`start`, stop with :meth:`stop` (in-flight calls get ``grace_s`` to finish)."""

    def __init__(self, models: Sequence[ServedModel], host: str = "127.0.0.1", port: int = 0,
                 security: ServerSecurity = ServerSecurity(), max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 server_name: str = "edgesplit"):
        security.check_bind(host)
        self.host, self.requested_port, self.security = host, port, security
        self.servicer = KServeServicer(models, max_message_bytes, server_name)
        interceptors = [_TokenInterceptor(security.token)] if security.token else []
        hard_limit = 2 * max_message_bytes + (1 << 20)
        self.server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", hard_limit), ("grpc.max_send_message_length", hard_limit),
            ("grpc.so_reuseport", 0),  # a busy port is an error, not a silently shared one
        ])
        _add_inference_service(self.servicer, self.server)
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

    async def serve_until_signalled(self, ready_line: str, grace_s: float = 5.0) -> None:
        """Start, print ``ready_line`` (``{port}`` is filled in), serve until SIGTERM/SIGINT, then stop
        accepting and give calls in flight ``grace_s`` to finish."""
        port = await self.start()
        print(ready_line.format(port=port), flush=True)
        await until_signalled()
        log.info("stopping: finishing calls in flight")
        await self.stop(grace_s)


async def until_signalled() -> None:
    """Return when this process gets SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
