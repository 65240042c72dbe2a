"""The coordinator: fans an input out to every branch, gathers the features, runs the head, answers.

It is itself a :class:`ServedModel`, so ``edgesplit serve`` exposes the whole split
model as one KServe v2 model (like an ensemble). Each request has a deadline; a
failed call is retried on the part's next replica while time is left; a request that
cannot be completed raises a clear error (PartUnavailable / DeadlineExceeded), never hangs.

Threads: the head runs in ONNX Runtime with one thread and no spinning, so the
coordinator never takes cores from workers on the same machine.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Protocol

import numpy as np

from edgesplit.data.preprocess import Preprocess
from edgesplit.export.manifest import load_manifest
from edgesplit.runtime.engine import OnnxRuntimeEngine
from edgesplit.runtime.errors import DeadlineExceeded, InferError, PartUnavailable
from edgesplit.runtime.model import InferResult, ModelMeta, TensorMeta
from edgesplit.runtime.plan import Plan, validate_plan

log = logging.getLogger(__name__)


class Peer(Protocol):
    async def infer(self, inputs: dict[str, np.ndarray], timeout_s: float | None = None, request_id: str = "") -> InferResult: ...
    async def ready(self, timeout_s: float = 1.0) -> bool: ...
    async def close(self) -> None: ...


class Coordinator:
    def __init__(self, plan: Plan, peers: dict[str, list[Peer]], head: OnnxRuntimeEngine | Peer | None = None):
        self.plan = plan
        self.manifest = load_manifest(plan.export, verify=["head"] if plan.head == "coordinator" and _is_split(plan) else False)
        validate_plan(plan, self.manifest)
        self.peers = peers
        self.preprocess = Preprocess.from_dict(self.manifest.preprocess)
        self.stage_parts = [p.name for p in plan.parts]
        if self.manifest.is_split and head is None:
            head = OnnxRuntimeEngine(self.manifest.path(self.manifest.part("head")), threads=1)
        self.head = head
        c, h, w = self.manifest.input_shape
        out_dim = len(self.manifest.classes)
        self.meta = ModelMeta(self.manifest.model, "edgesplit_split" if self.manifest.is_split else "edgesplit",
                              (TensorMeta("input", "float32", (-1, c, h, w)),), (TensorMeta("logits", "float32", (-1, out_dim)),))
        self._rr = {name: itertools.count() for name in peers}
        self._ids = itertools.count()

    def ready(self) -> bool:
        return True

    def _check_input(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if set(inputs) != {"input"}:
            raise InferError(f"model {self.meta.name!r} takes one input 'input', got {sorted(inputs)}")
        x = inputs["input"]
        c, h, w = self.manifest.input_shape
        if x.ndim != 4 or x.shape[1:] != (c, h, w) or x.shape[0] == 0:
            raise InferError(f"input shape {'x'.join(map(str, x.shape))}, expected Bx{c}x{h}x{w}")
        if x.dtype == np.float32:
            if not np.isfinite(x).all():
                raise InferError("input contains NaN or Inf")
        elif x.dtype != np.uint8:
            raise InferError(f"input datatype {x.dtype.name}, expected float32 or uint8 pixels")
        if self.plan.input_dtype == "float32" and x.dtype == np.uint8:
            x = self.preprocess.normalize(x)  # the workers were told to expect floats
        return x

    async def _call_part(self, name: str, x: np.ndarray, deadline: float, request_id: str) -> InferResult:
        replicas = self.peers[name]
        start = next(self._rr[name]) % len(replicas)
        errors = []
        for peer in replicas[start:] + replicas[:start]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return await peer.infer({"input": x}, timeout_s=remaining, request_id=request_id)
            except PartUnavailable as err:  # try the next replica
                errors.append(str(err))
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"{name} did not answer within {self.plan.timeout_ms:.0f} ms" + (f" ({'; '.join(errors)})" if errors else ""))
        raise PartUnavailable(f"no replica of {name} answered: {'; '.join(errors)}")

    async def infer(self, inputs: dict[str, np.ndarray]) -> InferResult:
        x = self._check_input(inputs)
        deadline = time.monotonic() + self.plan.timeout_ms / 1e3
        request_id = str(next(self._ids))
        tasks = [asyncio.ensure_future(self._call_part(name, x, deadline, request_id)) for name in self.stage_parts]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:  # no call is left running for an answer nobody will read
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        compute = {f"{name}_compute_ms": r.parameters.get("compute_ms") for name, r in zip(self.stage_parts, results)}
        if not self.manifest.is_split:
            return InferResult({"logits": results[0].outputs["logits"]}, {k: v for k, v in compute.items() if v is not None})
        features = np.concatenate([r.outputs["features"] for r in results], axis=1)
        if isinstance(self.head, OnnxRuntimeEngine):
            logits = self.head.run({"features": features})["logits"]  # ~10 us: cheaper inline than a thread hop
        else:
            remaining = deadline - time.monotonic()
            logits = (await self.head.infer({"features": features}, timeout_s=max(remaining, 1e-3))).outputs["logits"]
        return InferResult({"logits": logits}, {k: v for k, v in compute.items() if v is not None})

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until every replica reports its model ready."""
        deadline = time.monotonic() + timeout_s
        pending = [(n, p) for n, ps in self.peers.items() for p in ps]
        while pending:
            ok = await asyncio.gather(*(p.ready() for _, p in pending))
            pending = [np_ for np_, good in zip(pending, ok) if not good]
            if pending and time.monotonic() > deadline:
                names = ", ".join(f"{n} at {getattr(p, 'address', p)}" for n, p in pending)
                raise PartUnavailable(f"not ready after {timeout_s:.0f} s: {names}")
            if pending:
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        for ps in self.peers.values():
            for p in ps:
                await p.close()
        if self.head is not None and not isinstance(self.head, OnnxRuntimeEngine):
            await self.head.close()


def _is_split(plan: Plan) -> bool:
    return any(p.name.startswith("branch") for p in plan.parts)


def grpc_coordinator(plan: Plan) -> Coordinator:
    """A coordinator whose peers are :class:`GrpcWorker` handles to the plan's addresses."""
    from pathlib import Path

    from edgesplit.runtime.transport.client import ClientSecurity, GrpcWorker

    s = plan.security
    token = Path(s.token_file).read_text().strip() if s.token_file else None
    security = ClientSecurity(token, s.tls_ca, s.tls_cert, s.tls_key)
    peers = {p.name: [GrpcWorker(addr, p.remote_name, security) for addr in p.replicas] for p in plan.parts}
    head = None if plan.head == "coordinator" else GrpcWorker(plan.head, "head", security)
    return Coordinator(plan, peers, head)
