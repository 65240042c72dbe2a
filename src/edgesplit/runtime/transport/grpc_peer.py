"""``GrpcPeer``: the coordinator's handle on one remote KServe v2 server (ours, Triton, OpenVINO Model Server...).

One channel per address, reused for every call. Errors come back as the runtime's
own exceptions: INVALID_ARGUMENT -> InferError, DEADLINE_EXCEEDED -> DeadlineExceeded,
anything else (UNAVAILABLE, a crashed peer...) -> PartUnavailable.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from edgesplit.runtime.errors import PartUnavailable
from edgesplit.manifest import TensorSpec
from edgesplit.runtime.model import InferResult, ModelMeta
from edgesplit.runtime.shm import plain
from edgesplit.runtime.transport import codec
from edgesplit.runtime.transport import kserve_v2_pb2 as pb
from edgesplit.runtime.transport import kserve_v2_pb2_grpc as pb_grpc
from edgesplit.runtime.transport.calls import status_error


@dataclass(frozen=True)
class ClientSecurity:
    token: str | None = None
    tls_ca: str | None = None  # PEM of the CA that signed the server certificate; enables TLS
    tls_cert: str | None = None  # client certificate and key, for servers that require them
    tls_key: str | None = None

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls_ca:
            return None
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        return grpc.ssl_channel_credentials(read(self.tls_ca), read(self.tls_key), read(self.tls_cert))


def make_channel(
    address: str, security: ClientSecurity = ClientSecurity(), max_message_bytes: int = 256 << 20
) -> grpc.aio.Channel:
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 0),  # the coordinator retries on other replicas itself
        # a device that comes back is tried again within a second (gRPC's default backoff grows to 2 min)
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
    ]
    creds = security.credentials()
    return grpc.aio.secure_channel(address, creds, options) if creds else grpc.aio.insecure_channel(address, options)


RECONNECT_BACKOFF_MAX_MS = 1000
# Calls at once to one peer, the rest wait here. A server limits the streams of one connection (ours to 16: a
# stream over the limit is reset, REFUSED_STREAM) and frees a slot a moment after its answer reaches us, so the
# coordinator keeps well under that: 32 requests in flight to a worker were reset without this.
CALLS_PER_PEER = 8


class GrpcPeer:
    """Peer handle: ``await infer(inputs)`` runs ``model_name`` on the server at ``address``."""

    def __init__(self, address: str, model_name: str, security: ClientSecurity = ClientSecurity()):
        self.address, self.model_name = address, model_name
        self._channel = make_channel(address, security)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        # ModelInfer with bytes both ways: the request serialised by the fast codec path, the response read by
        # codec.parse_response (the same messages on the wire; other servers' layouts are read by protobuf)
        self._model_infer = self._channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=None,
            _registered_method=True,
        )
        self._metadata = (("authorization", f"Bearer {security.token}"),) if security.token else None
        self._calls = asyncio.Semaphore(CALLS_PER_PEER)
        self.bytes_sent = self.bytes_received = 0  # ModelInfer messages (metrics)

    def __repr__(self) -> str:
        return f"GrpcPeer({self.model_name}@{self.address})"

    async def infer(
        self, inputs: dict, timeout_s: float | None = None, request_id: str = "", parameters: dict | None = None
    ) -> InferResult:
        """``parameters``: the request's KServe v2 parameters."""
        req = codec.serialize_request(self.model_name, plain(inputs), request_id, parameters)  # remote: no shared memory
        self.bytes_sent += len(req)
        try:
            async with self._calls:
                sent_at = time.monotonic()
                resp = await self._model_infer(req, timeout=timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            raise status_error(err.code().name, err.details(), self) from None
        self.bytes_received += len(resp)
        try:
            return InferResult(*codec.parse_response(resp, sent_at))
        except DecodeError:
            raise PartUnavailable(
                f"{self.model_name} at {self.address}: the answer is not a KServe v2 ModelInferResponse"
            ) from None

    def start(
        self, inputs: dict, timeout_s: float | None = None, request_id: str = "", parameters: dict | None = None
    ) -> asyncio.Future:
        """:meth:`infer` as a task (a gRPC call starts on the loop's next turn whatever its caller does)."""
        return asyncio.ensure_future(self.infer(inputs, timeout_s, request_id, parameters))

    async def ready(self, timeout_s: float = 1.0) -> bool:
        try:
            r = await self._stub.ModelReady(
                pb.ModelReadyRequest(name=self.model_name), timeout=timeout_s, metadata=self._metadata
            )
            return r.ready
        except grpc.aio.AioRpcError:
            return False

    async def not_ready_reason(self, timeout_s: float = 1.0) -> tuple[str, str]:
        """Why :meth:`ready` is False, as (kind, text): ``unreachable``; ``refused``, with the server's answer (a
        server without the model says so, and an edgesplit server names the ones it has; a wrong token); or
        ``loading`` (the model is there, not ready yet)."""
        try:
            r = await self._stub.ModelReady(
                pb.ModelReadyRequest(name=self.model_name), timeout=timeout_s, metadata=self._metadata
            )
            if r.ready:
                return "ready", "ready"
            await self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=self.model_name), timeout=timeout_s, metadata=self._metadata
            )
            return "loading", "the model is not ready yet"
        except grpc.aio.AioRpcError as err:
            refused = err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED)
            return ("refused" if refused else "unreachable"), f"{err.code().name}: {err.details()}"

    async def server_ready(self, timeout_s: float = 1.0) -> bool:
        try:
            return (await self._stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout_s, metadata=self._metadata)).ready
        except grpc.aio.AioRpcError:
            return False

    async def metadata(self, timeout_s: float = 5.0) -> ModelMeta:
        try:
            r = await self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=self.model_name), timeout=timeout_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as err:
            raise status_error(err.code().name, err.details(), self) from None

        def tensors(ts):
            return tuple(TensorSpec(t.name, tuple(t.shape), codec.KSERVE_TO_NUMPY.get(t.datatype, t.datatype)) for t in ts)

        return ModelMeta(r.name, r.platform, tensors(r.inputs), tensors(r.outputs), tuple(r.versions))

    async def close(self) -> None:
        await self._channel.close()
