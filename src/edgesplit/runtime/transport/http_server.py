"""The KServe v2 HTTP/REST half of the protocol (aiohttp), on a port of its own beside the gRPC server.

Endpoints (the Open Inference Protocol's REST API): ``GET /v2/health/live``, ``/v2/health/ready`` and
``/v2/models/{model}[/versions/{v}]/ready`` (200 true, 400 false, empty body); ``GET /v2`` and
``/v2/models/{model}[/versions/{v}]`` (metadata); ``POST /v2/models/{model}[/versions/{v}]/infer`` with JSON
tensors or the binary tensor data extension (``Inference-Header-Content-Length``: that many bytes of JSON, then
each tensor's raw bytes in order, ``binary_data_size`` each); ``GET /metrics`` (Prometheus text) when the process
keeps metrics. Errors are ``{"error": "..."}`` with the status the failure calls for.

The rules are gRPC's (``grpc_server.py``), from the same ``ServerSecurity`` and ``ServerLimits``: off loopback a
bearer token or client certificates (TLS from the same files), the token checked on every request; bodies over
the hard limit refused 413 before they are read; a request that would take the bytes held in flight past their
cap refused 429 before it is read; the message and batch limits of ``calls.decode_call``; keep-alive connections
closed after the idle timeout; connections past ``max_connections`` closed at once. Each request becomes the ``ModelInferRequest`` gRPC would have carried, and
``calls`` decodes and answers it: one code path for both halves.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from typing import Sequence

import numpy as np
from aiohttp import web

from edgesplit import __version__
from edgesplit.runtime.model import ServedModel
from edgesplit.runtime.transport import codec
from edgesplit.runtime.transport import kserve_v2_pb2 as pb
from edgesplit.runtime.transport.calls import CallFailed, answer_call, decode_call, unknown_model
from edgesplit.runtime.transport.limits import PEAK_BYTES_PER_WIRE_BYTE, InflightBudget, ServerLimits, echo, over_budget_message

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
STOP_GRACE_S = 5.0  # calls in flight when the server stops get this long (gRPC's grace)
HTTP_STATUS = {  # a failed call's gRPC status name -> the HTTP status that says the same
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "DEADLINE_EXCEEDED": 504,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class KServeHttpApp:
    """The REST endpoints for ``models``; ``metrics``: a ``runtime.metrics.Metrics`` served at /metrics."""

    def __init__(
        self,
        models: Sequence[ServedModel],
        limits: ServerLimits,
        budget: InflightBudget,
        token: str | None = None,
        server_name: str = "edgesplit",
        metrics=None,
        dashboard=None,
    ):
        self.models = {m.meta.name: m for m in models}
        self.max_message_bytes = limits.message_bytes(models)
        self.hard_limit = 2 * self.max_message_bytes + (1 << 20)  # gRPC's: what is refused unread
        self.limits, self.budget, self.server_name, self.metrics = limits, budget, server_name, metrics
        self.dashboard = dashboard  # runtime/dashboard.py: its routes on this app
        self._expected = f"Bearer {token}".encode() if token else None
        self.live = True

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.hard_limit, middlewares=[self._authenticate])
        model = "/v2/models/{model}"
        for prefix in (model, model + "/versions/{version}"):
            app.router.add_get(prefix, self.model_metadata)
            app.router.add_get(prefix + "/ready", self.model_ready)
            app.router.add_post(prefix + "/infer", self.infer)
        app.router.add_get("/v2/health/live", self.server_live)
        app.router.add_get("/v2/health/ready", self.server_ready)
        app.router.add_get("/v2", self.server_metadata)
        if self.metrics is not None:
            app.router.add_get("/metrics", self.scrape)
        if self.dashboard is not None:
            self.dashboard.add_routes(app)
        return app

    @web.middleware
    async def _authenticate(self, request: web.Request, handler):
        if self._expected is not None:
            got = request.headers.getall("Authorization", [])
            if len(got) != 1 or not hmac.compare_digest(got[0].encode(), self._expected):
                return _error(
                    401,
                    "missing or wrong bearer token: the client needs the token in the server's --token-file "
                    "(header Authorization: Bearer TOKEN)",
                )
        try:
            return await handler(request)
        except web.HTTPException as err:  # aiohttp's own refusals (413, 404, 405) as the protocol's error object
            if err.status < 400:
                raise
            return _error(err.status, _refusal(err, self.hard_limit))

    # ---------------------------------------------------------------- health and metadata
    async def server_live(self, request):
        return web.Response(status=200 if self.live else 400)

    async def server_ready(self, request):
        return web.Response(status=200 if self.live and all(m.ready() for m in self.models.values()) else 400)

    async def model_ready(self, request):
        m = self.models.get(request.match_info["model"])
        return web.Response(status=200 if m is not None and m.ready() else 400)

    async def server_metadata(self, request):
        return web.json_response({"name": self.server_name, "version": __version__, "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request):
        name = request.match_info["model"]
        m = self.models.get(name)
        if m is None:
            return _error(404, unknown_model(name, self.models))
        meta = m.meta

        def tensors(ts):
            return [{"name": t.name, "datatype": codec.NUMPY_TO_KSERVE[t.dtype], "shape": list(t.shape)} for t in ts]

        return web.json_response(
            {
                "name": meta.name,
                "versions": list(meta.versions),
                "platform": meta.platform,
                "inputs": tensors(meta.inputs),
                "outputs": tensors(meta.outputs),
            }
        )

    async def scrape(self, request):
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": self.metrics.content_type})

    # ---------------------------------------------------------------- inference
    async def infer(self, request: web.Request) -> web.Response:
        received_at, t0 = time.monotonic(), time.perf_counter()
        if request.content_length is None:
            return _error(411, "send the body with a Content-Length header (chunked bodies are not accepted)")
        if request.content_length > self.hard_limit:
            return _error(413, _too_large(request.content_length, self.hard_limit))
        reservation = self.budget.reserve(PEAK_BYTES_PER_WIRE_BYTE * request.content_length)
        if reservation is None:
            return _error(429, over_budget_message(request.content_length, self.budget))
        try:
            body = await request.read()
            try:
                doc, message, wanted = _parse_infer(request.match_info["model"], body, request.headers.get(HEADER_LENGTH))
                call = decode_call(self.models, self.max_message_bytes, message, max_batch=self.limits.max_batch)
                return await answer_call(call, received_at, encode=_encoder(wanted, doc), started_at=t0)
            except CallFailed as err:
                return _error(HTTP_STATUS.get(err.status, 500), err.message)
        finally:
            reservation.release()


def _refusal(err: web.HTTPException, hard_limit: int) -> str:
    if err.status == 413:
        return _too_large(None, hard_limit)
    if err.status == 404:
        return "no such endpoint; the KServe v2 REST API: /v2, /v2/health/{live,ready}, /v2/models/NAME[/ready|/infer]"
    if err.status == 405:
        return "wrong method for this endpoint: GET for health and metadata, POST for /infer"
    return err.reason


def _too_large(nbytes: int | None, hard_limit: int) -> str:
    size = f"{nbytes} bytes" if nbytes is not None else "the body"
    return f"{size} over this server's limit of {hard_limit} bytes; send smaller batches (or raise its --max-message-mb)"


def _parse_infer(model: str, body: bytes, header_length: str | None) -> tuple[dict, pb.ModelInferRequest, dict]:
    """The request's JSON, the ``ModelInferRequest`` gRPC would have carried, and the outputs asked for (name ->
    binary or not; empty: all, as the request's ``binary_data_output`` says). Bad input: :class:`CallFailed`."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise _bad(f"{HEADER_LENGTH} {echo(header_length)} is not a byte count within the body's {len(body)} bytes")
        text, binary = body[:n], memoryview(body)[n:]
    else:
        text, binary = body, memoryview(b"")
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _bad(f"the body is not JSON ({err}); send an inference request JSON object (KServe v2 REST)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise _bad('the request needs "inputs": a list of tensors, each {"name", "shape", "datatype", "data"}')
    message = pb.ModelInferRequest(model_name=model, id=str(doc.get("id", "")))
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad('"parameters" must be an object')
    for key, value in params.items():
        if isinstance(value, (bool, int, float, str)):
            codec._set_param(message.parameters[key], value)
    at = 0
    for t in doc["inputs"]:
        raw, at = _input_bytes(t, binary, at)
        message.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        message.raw_input_contents.append(raw)
    if at != len(binary):
        raise _bad(f"{len(binary) - at} bytes of binary data after the last input's binary_data_size; check the sizes")
    wanted = {}
    for o in doc.get("outputs") or []:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise _bad('"outputs" must be a list of {"name": ..., "parameters": {"binary_data": true|false}}')
        wanted[o["name"]] = bool((o.get("parameters") or {}).get("binary_data", False))
    return doc, message, wanted


def _input_bytes(t, binary: memoryview, at: int) -> tuple[bytes, int]:
    """One input tensor's raw bytes (from its JSON ``data`` or the binary section at ``at``), and the next offset."""
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise _bad('each input needs a "name", a "shape", a "datatype" and its "data" (or binary_data_size)')
    name, shape, datatype = t["name"], t.get("shape"), t.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad(f"input {echo(name)}: shape must be a list of whole numbers >= 0")
    if len(shape) > codec.MAX_DIMS:
        raise _bad(f"input {echo(name)}: {len(shape)} dimensions, over the limit of {codec.MAX_DIMS}")
    if datatype not in codec.KSERVE_TO_NUMPY:
        raise _bad(f"input {echo(name)}: datatype {echo(str(datatype))}; use one of {', '.join(codec.KSERVE_TO_NUMPY)}")
    dtype = np.dtype(codec.KSERVE_TO_NUMPY[datatype])
    count = math.prod(shape)
    size = ((t.get("parameters") or {}) if isinstance(t.get("parameters"), (dict, type(None))) else {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or at + size > len(binary):
            raise _bad(f"input {echo(name)}: binary_data_size {echo(str(size))} goes past the body's binary data")
        if size != count * dtype.itemsize:
            raise _bad(
                f"input {echo(name)}: {size} bytes of binary data for shape {shape} of {datatype} ({count * dtype.itemsize})"
            )
        return bytes(binary[at : at + size]), at + size
    if "data" not in t:
        raise _bad(f'input {echo(name)}: no "data" and no binary_data_size parameter')
    try:
        values = np.asarray(t["data"])
    except ValueError:
        values = None
    if values is None or values.dtype.kind not in "biuf" or values.size != count:
        raise _bad(f"input {echo(name)}: data must be {count} numbers for shape {shape} (flat or nested, row-major)")
    if dtype.kind in "iu" and values.dtype.kind == "f":
        raise _bad(f"input {echo(name)}: {datatype} data must be whole numbers")
    if dtype.kind in "iu" and values.size and (values.min() < np.iinfo(dtype).min or values.max() > np.iinfo(dtype).max):
        raise _bad(f"input {echo(name)}: values outside the range of {datatype}")
    return values.astype(dtype).tobytes(), at


def _bad(message: str) -> CallFailed:
    return CallFailed("INVALID_ARGUMENT", message)


def _encoder(wanted: dict[str, bool], doc: dict):
    """``answer_call``'s encode: the response JSON (and binary outputs after it, as asked)."""
    all_binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))

    def encode(model_name: str, request_id: str, outputs: dict, params: dict) -> web.Response:
        unknown = [n for n in wanted if n not in outputs]
        if unknown:
            raise _bad(f"unknown output {echo(unknown[0])}; this model has: {', '.join(outputs)}")
        entries, chunks = [], []
        for name, a in outputs.items():
            if wanted and name not in wanted:
                continue
            a = np.ascontiguousarray(a)
            entry = {"name": name, "datatype": codec.KSERVE_OF_DTYPE[a.dtype], "shape": list(a.shape)}
            if wanted.get(name, all_binary):
                chunks.append(a.tobytes())
                entry["parameters"] = {"binary_data_size": len(chunks[-1])}
            else:
                entry["data"] = a.ravel().tolist()
            entries.append(entry)
        head = json.dumps(
            {"model_name": model_name, "id": request_id, "parameters": _json_params(params), "outputs": entries}
        ).encode()
        if not chunks:
            return web.Response(body=head, content_type="application/json")
        return web.Response(
            body=b"".join([head, *chunks]),
            headers={HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"},
        )

    return encode


def _json_params(params: dict) -> dict:
    return {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in params.items()}


class KServeHttpServer:
    """The REST endpoints on ``host:port`` (0: any free port). Start with :meth:`start`, stop with :meth:`stop`.

    ``budget``: the in-flight cap, shared with the process's gRPC server; ``share_port``: one of several processes
    on this address (SO_REUSEPORT, ``runtime/coordinators.py``)."""

    def __init__(
        self,
        models: Sequence[ServedModel],
        host: str,
        port: int,
        security,
        limits: ServerLimits,
        budget: InflightBudget,
        server_name: str = "edgesplit",
        metrics=None,
        share_port: bool = False,
        dashboard=None,
    ):
        security.check_bind(host)
        self.host, self.requested_port, self.security, self.share_port = host, port, security, share_port
        self.endpoints = KServeHttpApp(models, limits, budget, security.token, server_name, metrics, dashboard)
        self.idle_timeout_s, self.max_connections = limits.idle_timeout_s, limits.max_connections
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        from edgesplit.errors import EdgesplitError

        self._runner = web.AppRunner(
            self.endpoints.app(), access_log=None, keepalive_timeout=self.idle_timeout_s, shutdown_timeout=STOP_GRACE_S
        )
        await self._runner.setup()
        site = _CappedSite(
            self._runner,
            self.host,
            self.requested_port,
            ssl_context=self.security.ssl_context(),
            reuse_port=self.share_port,
            max_connections=self.max_connections,
        )
        try:
            await site.start()
        except OSError as err:
            await self._runner.cleanup()
            raise EdgesplitError(
                f"cannot listen on {self.host}:{self.requested_port} for HTTP ({err.strerror}); pick another --http-port"
            ) from None
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("serving %s over HTTP on %s:%d", ", ".join(self.endpoints.models), self.host, self.port)
        return self.port

    async def stop(self) -> None:
        self.endpoints.live = False
        if self._runner is not None:
            await self._runner.shutdown()
            await self._runner.cleanup()


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed at once (as gRPC's ``grpc.max_allowed_incoming_connections`` does)."""

    def connection_made(self, transport) -> None:
        transport.close()


class _CappedSite(web.TCPSite):
    """A TCP site that accepts at most ``max_connections`` connections at once (aiohttp has no such setting)."""

    def __init__(self, *args, max_connections: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_connections = max_connections

    async def start(self) -> None:  # TCPSite.start with the cap in the protocol factory
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server

        def protocol():
            return _Refused() if len(server.connections) >= self._max_connections else server()

        self._server = await asyncio.get_running_loop().create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
