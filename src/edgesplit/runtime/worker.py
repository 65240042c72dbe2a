"""A worker: one device serving one model part over KServe v2.

``PartModel`` checks every request (names, shapes, datatypes, byte counts, NaN/Inf)
before it reaches the engine, and accepts the image either as float32 (already
normalised) or as uint8 pixels, normalised here (4x fewer bytes on the network).
The engine runs on the event loop's thread: one call at a time, as the one core allows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from edgesplit.data.preprocess import Preprocess
from edgesplit.errors import EdgesplitError
from edgesplit.manifest import load_manifest
from edgesplit.runtime.engines import InferenceEngine, create_engine
from edgesplit.runtime.config import FaultConfig, WorkerConfig  # noqa: F401 (the worker's API)
from edgesplit.runtime.faults import FaultyModel
from edgesplit.runtime.model import InferResult, ModelMeta, check_inputs, input_specs, runs_inline

log = logging.getLogger(__name__)


class PartModel:
    """One ONNX part behind the :class:`ServedModel` interface."""

    def __init__(
        self, name: str, engine: InferenceEngine, preprocess: Preprocess | None = None, platform: str = "onnxruntime_onnx"
    ):
        self.engine = engine
        self.preprocess = preprocess  # set for parts that take the image: enables uint8 input
        self.meta = ModelMeta(name, platform, tuple(engine.inputs), tuple(engine.outputs))
        self._specs = input_specs(self.meta.inputs)
        self._pixels = preprocess.normalize if preprocess is not None else None

    def ready(self) -> bool:
        return True

    def check(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validated feeds for the engine, or :class:`InferError` saying what is wrong (uint8 pixels normalised)."""
        return check_inputs(self.meta.name, self._specs, inputs, self._pixels)

    def run(self, feeds: dict[str, np.ndarray]) -> InferResult:
        t0 = time.perf_counter()
        outputs = self.engine.run(feeds)
        compute_ms = (time.perf_counter() - t0) * 1e3
        return InferResult(outputs, {"compute_ms": compute_ms})

    def infer_now(self, inputs: dict[str, np.ndarray]) -> InferResult:
        """The call, synchronously (a transport with nothing else to do calls this without a task)."""
        return self.run(self.check(inputs))

    async def infer(self, inputs: dict[str, np.ndarray]) -> InferResult:
        # On the event loop itself: a one-core worker gains nothing from a thread hop per call. A large batch goes to
        # the engine thread instead (ONNX Runtime releases the GIL), so the loop keeps answering health checks.
        if runs_inline(inputs):
            return self.infer_now(inputs)
        return await asyncio.get_running_loop().run_in_executor(_engine_thread(), self.infer_now, inputs)


@functools.lru_cache(maxsize=None)
def _engine_thread() -> ThreadPoolExecutor:
    """The one thread a worker's large calls run on, one after the other (created on first use)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgesplit-engine")


def load_parts(cfg: WorkerConfig) -> list:
    """The served models for ``cfg.part`` (comma-separated names) of an export directory, or a bare ONNX file."""
    src = Path(cfg.source)
    if src.is_dir():
        if not cfg.part:
            manifest = load_manifest(src, verify=False)
            raise EdgesplitError(f"pass --part: one of {', '.join(p.name for p in manifest.parts)}")
        names = cfg.part.split(",")
        manifest = load_manifest(src, verify=names)
        models = []
        for name in names:
            part = manifest.part(name)
            engine = create_engine(cfg.engine, manifest.path(part), cfg.hls_dir, threads=cfg.threads, providers=cfg.providers)
            takes_image = part.role in ("branch", "parity", "model") or part.name == "stage0"  # uint8 pixels normalised here
            pre = Preprocess.from_dict(manifest.preprocess) if takes_image else None
            models.append(PartModel(part.name, engine, pre))
    elif src.suffix == ".onnx" and src.is_file():
        engine = create_engine(cfg.engine, src, cfg.hls_dir, threads=cfg.threads, providers=cfg.providers)
        models = [PartModel(cfg.part or src.stem, engine)]
    else:
        raise EdgesplitError(f"{src} is neither an export directory nor an .onnx file")
    if cfg.faults.active:
        log.warning("fault injection on: %s", cfg.faults)
        models = [FaultyModel(m, cfg.faults) for m in models]
    return models


def pin_cpus(cpus: Sequence[int] | None) -> None:
    if cpus:
        try:
            os.sched_setaffinity(0, set(cpus))
        except (AttributeError, OSError) as err:
            raise EdgesplitError(f"cannot pin to CPUs {list(cpus)}: {err}; check --cpus against `nproc`") from None


READY_LINE = "EDGESPLIT-WORKER-READY"


async def serve_worker(cfg: WorkerConfig, security=None, grace_s: float = 5.0) -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting and let calls in flight finish."""
    from edgesplit.runtime.transport.ipc_server import UnixSocketServer
    from edgesplit.runtime.transport.grpc_server import KServeServer, ServerSecurity, until_signalled

    pin_cpus(cfg.cpus)
    security = security or ServerSecurity()
    models = load_parts(cfg)
    http_server = None
    if cfg.http_port is not None:  # the REST half, and the metrics it serves, counted over every transport
        from edgesplit.runtime.metrics import Metrics
        from edgesplit.runtime.transport.http_server import KServeHttpServer

        metrics = Metrics()
        models = [metrics.wrap(m) for m in models]
    grpc_server = KServeServer(models, cfg.host, cfg.port, security, cfg.limits, server_name="edgesplit-worker")
    if cfg.http_port is not None:
        http_server = KServeHttpServer(
            models, cfg.host, cfg.http_port, security, cfg.limits, grpc_server.budget, "edgesplit-worker", metrics
        )
    ipc_server = UnixSocketServer(models, cfg.unix_socket, cfg.limits, cfg.poll_ms) if cfg.unix_socket else None
    signalled = until_signalled()
    port = await grpc_server.start()
    try:
        if ipc_server:
            await ipc_server.start()
        http = f" http={await http_server.start()}" if http_server else ""
        # the ready line is what the local cluster waits for; it also tells a user which port was chosen
        names = ",".join(m.meta.name for m in models)
        print(f"{READY_LINE} part={names}{http} port={port} pid={os.getpid()}", flush=True)
        await signalled.wait()
        log.info("stopping: finishing calls in flight")
    finally:
        await asyncio.gather(
            grpc_server.stop(grace_s),
            *([ipc_server.stop(grace_s)] if ipc_server else []),
            *([http_server.stop()] if http_server else []),
        )


PARENT_PID_ENV = "EDGESPLIT_PARENT_PID"


def die_with_parent() -> None:
    """When started by a :class:`LocalCluster` (``EDGESPLIT_PARENT_PID`` set): ask Linux to SIGTERM this
    process when its parent dies, then exit if the parent is already gone (the race between spawn and
    prctl). Done here rather than in a ``preexec_fn``, which would force a fork() while the parent runs
    gRPC threads (seen here: workers aborting at start with an epoll error)."""
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return
    if os.getppid() != int(expected):
        sys.exit(0)
