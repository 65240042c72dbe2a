"""The coordinator: runs the export's stages over workers and answers.

Each stage sends its input to all its parts at once and merges the answers:
* ``concat`` (split-network branches): waits for every branch until the deadline;
  a branch that fails or is too late is replaced by zeros and the answer is flagged
  ``degraded`` (a head trained with branch dropout still answers well).
* ``decode`` (coded FC row blocks): returns as soon as any k of the k + r parts
  answered, cancels the rest, and decodes (``recovered`` when a parity block was
  used). Fewer than k by the deadline: missing data blocks are zeros, ``degraded``.
  With the plan's ``parity: lazy`` the parity blocks are asked only when a data block
  fails or is late (``parity_asked`` counts the stages where they were).
* ``single``: one part; it must answer.
The head (a ``local`` stage) runs here, in numpy when it is fully connected layers
(``runtime/engines/numpy_engine.py``; why: docs/benchmarks.md), else in ONNX Runtime with one thread and no
spinning, so the coordinator never takes cores from workers on the same machine.

Every request ends as an exact answer, a recovered one, a flagged degraded one, or
an error (PartUnavailable / DeadlineExceeded); none waits past its deadline.

Health: a peer that fails ``unhealthy_after`` calls in a row is skipped (its part
counts as missing at once, or another replica is used) until a background readiness
probe sees it ready again. Parts with several replicas can be hedged: if the first
replica has not answered after ``hedge_ms``, the next one is asked too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from edgesplit.runtime.config import WAIT_READY_S
from edgesplit.data.preprocess import Preprocess
from edgesplit.manifest import StageSpec, TensorSpec, load_manifest, verify_parts
from edgesplit.coding import make_code, merge_blocks
from edgesplit.runtime.engines import InferenceEngine, create_engine
from edgesplit.runtime.errors import DeadlineExceeded, PartUnavailable
from edgesplit.runtime.model import (
    TRACE,
    TRACE_ANSWERED,
    TRACE_DECODED,
    TRACE_RECEIVED,
    TRACE_SENT,
    InferResult,
    ModelMeta,
    check_inputs,
    input_specs,
)
from edgesplit.runtime.plan import Plan, validate_plan
from edgesplit.runtime.shm import InputRing

log = logging.getLogger(__name__)


class Peer(Protocol):
    address: str

    def start(
        self, inputs: dict[str, np.ndarray], timeout_s: float | None = None, request_id: str = "", parameters: dict | None = None
    ) -> asyncio.Future:
        """``infer`` begun now (the request written before this returns where the transport can): a future of
        the :class:`InferResult`; cancelling it cancels the call. ``parameters``: the request's KServe v2 ones."""
        ...

    async def infer(
        self, inputs: dict[str, np.ndarray], timeout_s: float | None = None, request_id: str = "", parameters: dict | None = None
    ) -> InferResult: ...
    async def ready(self, timeout_s: float = 1.0) -> bool: ...
    async def close(self) -> None: ...


@dataclass
class PeerHealth:
    peer: Peer
    failures: int = 0  # consecutive
    healthy: bool = True
    probing: asyncio.Task | None = field(default=None, repr=False)


# what an edgesplit worker reports with each answer: engine time, and time in its request handler
PART_TIMINGS = ("compute_ms", "server_ms")
# with Coordinator.trace, per part, ms after the request reached the coordinator: the request was sent, the
# worker received it, its answer was ready, the answer was decoded here
TRACE_HOPS = {"sent_ms": TRACE_SENT, "received_ms": TRACE_RECEIVED, "answered_ms": TRACE_ANSWERED, "decoded_ms": TRACE_DECODED}


class _Missing(Exception):
    """A part gave no answer in time (internal: the stage decides what that means)."""


@dataclass
class RequestReport:
    """What one request's stages found out; its answer's KServe v2 parameters (:meth:`parameters`)."""

    trace_t0: float | None = None  # monotonic() at the request's start when traced (Coordinator.trace)
    degraded: bool = False  # a part's answer was replaced by zeros
    recovered: bool = False  # a coded stage decoded with a parity block
    missing: list[str] = field(default_factory=list)  # the parts replaced by zeros
    part_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # "arrival_ms", PART_TIMINGS, TRACE_HOPS -> part -> ms
    decode_ms: float | None = None  # time spent decoding coded stages
    parity_asked: int = 0  # coded stages whose lazy parity blocks were asked

    def record(self, key: str, part: str, ms: float) -> None:
        self.part_ms.setdefault(key, {})[part] = ms

    def parameters(self) -> dict:
        params = {"degraded": self.degraded, "recovered": self.recovered}
        if self.missing:
            params["missing"] = ",".join(self.missing)
        for key in ("arrival_ms", *PART_TIMINGS, *TRACE_HOPS):
            params.update({f"{name}_{key}": ms for name, ms in self.part_ms.get(key, {}).items()})
        if self.decode_ms is not None:
            params["decode_ms"] = self.decode_ms
        if self.parity_asked:
            params["parity_asked"] = self.parity_asked
        return params


@dataclass
class PartStats:
    """What the coordinator learns across requests: each part's typical time from its send to its answer (the
    slowest is asked first), and per coded stage when its first data block typically answers (lazy parity's
    yardstick before this request's first one is in). Exponential moving averages."""

    typical_ms: dict[str, float] = field(default_factory=dict)  # per part
    typical_first_ms: dict[str, float] = field(default_factory=dict)  # per coded stage

    def took(self, part: str, ms: float) -> None:
        self.typical_ms[part] = _moving_average(self.typical_ms.get(part), ms)

    def first_data(self, stage: str, ms: float) -> None:
        self.typical_first_ms[stage] = _moving_average(self.typical_first_ms.get(stage), ms)


class Coordinator:
    def __init__(
        self, plan: Plan, peers: dict[str, list[Peer]], head: InferenceEngine | None = None, ring: InputRing | None = None
    ):
        """``ring``: shared memory for inputs sent to several workers on this machine (closed with the coordinator)."""
        self.plan = plan
        self.ring = ring
        self.manifest = load_manifest(plan.export, verify=False)
        verify_parts(self.manifest, [p for s in self.manifest.stages if s.local for p in s.parts])  # what runs here
        validate_plan(plan, self.manifest)
        self.peers = {name: [PeerHealth(p) for p in ps] for name, ps in peers.items()}
        self.preprocess = Preprocess.from_dict(self.manifest.preprocess)
        self.stages = self.manifest.stages
        self.local = {
            p: (
                head
                if head is not None and p == "head"
                else create_engine("auto", self.manifest.path(self.manifest.part(p)), threads=1)
            )
            for s in self.stages
            if s.local
            for p in s.parts
        }
        self.codes = {s.name: make_code(s.code_k, s.code_r, s.code_kind) for s in self.stages if s.merge == "decode"}
        self._blockwise = self._find_blockwise()
        first = self.stages[0]
        in_spec = self.manifest.part(first.parts[0]).inputs[0]
        out_dim = len(self.manifest.classes)
        self.input_shape = tuple(in_spec.shape[1:])
        self.meta = ModelMeta(
            self.manifest.model,
            "edgesplit_pipeline",
            (TensorSpec("input", (-1, *self.input_shape), "float32"),),
            (TensorSpec("logits", (-1, out_dim), "float32"),),
        )
        self._specs = input_specs(self.meta.inputs)
        self._pixels = self.preprocess.normalize if plan.input_dtype == "float32" else _as_is
        self._rr = {name: itertools.count() for name in peers}
        self._ids = itertools.count()
        self.stats = PartStats()
        self._closed = False
        self.trace = False  # True: every answer's parameters carry TRACE_HOPS per part (workers on this machine)

    def ready(self) -> bool:
        return True

    def _find_blockwise(self) -> dict:
        """Concat stages whose next stage is a local head that starts with a fully connected layer: there, each
        branch's block of that layer is multiplied as the branch answers (while the others compute), and the
        head is finished from their sum when the last one is in: {concat stage name: (BlockwiseGemm, head stage)}."""
        out = {}
        dims = self.manifest.feature_dims
        for stage, nxt in zip(self.stages, self.stages[1:]):
            if stage.merge != "concat" or stage.local or not nxt.local or len(nxt.parts) != 1 or len(dims) != len(stage.parts):
                continue
            split = getattr(self.local[nxt.parts[0]], "blockwise", None)  # NumpyEngine's; None for other engines
            blockwise = split(dims) if split is not None else None
            if blockwise is not None:
                out[stage.name] = (blockwise, nxt)
        return out

    # ------------------------------------------------------------------ input
    def _check_input(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The request's image (the worker's checks and messages); uint8 pixels are forwarded as they are, or
        normalised here when the plan tells the workers to expect floats."""
        return check_inputs(self.meta.name, self._specs, inputs, self._pixels)["input"]

    # ------------------------------------------------------------------ one part
    def _candidates(self, name: str) -> list[PeerHealth]:
        replicas = self.peers[name]
        start = next(self._rr[name]) % len(replicas)
        ordered = replicas[start:] + replicas[:start]
        healthy = [h for h in ordered if h.healthy]
        return healthy  # an unhealthy peer is not asked until its probe re-admits it

    def _start_on(self, h: PeerHealth, stage: StageSpec, name: str, x: np.ndarray, timeout_s: float, rid: str) -> asyncio.Future:
        """The call to one replica, begun now; its outcome updates the replica's health."""

        def settle(f: asyncio.Future) -> None:
            if f.cancelled():
                return
            if f.exception() is None:
                h.failures = 0
            else:
                self._failed(h, name)

        fut = h.peer.start(
            {stage.input: x}, timeout_s=timeout_s, request_id=rid, parameters={TRACE: True} if self.trace else None
        )
        fut.add_done_callback(settle)
        return fut

    def _start_part(self, stage: StageSpec, name: str, x: np.ndarray, deadline: float, rid: str) -> asyncio.Future:
        """The part's answer as a future. With one healthy replica (the usual case) the request leaves before this
        returns, with no task in between; otherwise a task retries or hedges over the replicas."""
        queue = self._candidates(name)
        remaining = deadline - time.monotonic()
        if len(queue) == 1 and remaining > 0:
            return self._start_on(queue[0], stage, name, x, remaining, rid)
        return asyncio.ensure_future(self._call_part(stage, name, x, deadline, rid, queue))

    async def _ask(self, h: PeerHealth, stage: StageSpec, name: str, x: np.ndarray, deadline: float, rid: str) -> InferResult:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Missing(f"{name}: deadline passed")
        try:
            return await self._start_on(h, stage, name, x, remaining, rid)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # DeadlineExceeded and transport surprises: a missing answer, never a hang
            raise _Missing(_missing(name, h.peer, err)) from None

    async def _call_part(
        self, stage: StageSpec, name: str, x: np.ndarray, deadline: float, rid: str, queue: list[PeerHealth]
    ) -> InferResult:
        """The part's answer from one of its healthy replicas (``queue``, in the order to ask them): the next
        replica is asked when the one in flight fails (retry) or, with ``hedge_ms``, when it has not answered
        after that long (hedge)."""
        if not queue:
            raise _Missing(f"{name}: every replica is marked unhealthy")
        errors: list[str] = []
        pending: set[asyncio.Task] = set()

        def ask_next() -> None:
            pending.add(asyncio.ensure_future(self._ask(queue.pop(0), stage, name, x, deadline, rid)))

        try:
            while True:
                if queue and not pending:
                    ask_next()
                wait_s = deadline - time.monotonic()
                if wait_s <= 0 or not pending:
                    break
                hedge = bool(self.plan.hedge_ms and queue)
                done, pending = await asyncio.wait(
                    pending,
                    timeout=min(wait_s, self.plan.hedge_ms / 1e3) if hedge else wait_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for t in done:
                    if t.exception() is None:
                        return t.result()
                    errors.append(str(t.exception()))
                if not done and hedge:
                    ask_next()
            raise _Missing("; ".join(errors) or f"{name}: no answer within the deadline")
        finally:
            for t in pending:
                t.cancel()

    def _pinned_to(self, name: str) -> frozenset[int] | None:
        """The CPUs of the part's worker when it is one local process (Unix socket peers know theirs), else None."""
        replicas = self.peers[name]
        return getattr(replicas[0].peer, "cpus", None) if len(replicas) == 1 else None

    def _failed(self, h: PeerHealth, name: str) -> None:
        h.failures += 1
        if h.healthy and h.failures >= self.plan.unhealthy_after and not self._closed:
            h.healthy = False
            log.warning("%s at %s marked unhealthy after %d failures; probing it", name, h.peer.address, h.failures)
            h.probing = asyncio.ensure_future(self._probe(h, name))

    async def _probe(self, h: PeerHealth, name: str) -> None:
        while not self._closed:
            await asyncio.sleep(self.plan.probe_interval_ms / 1e3)
            if await h.peer.ready(timeout_s=max(self.plan.probe_interval_ms / 1e3, 0.2)):
                h.failures, h.healthy = 0, True
                log.info("%s at %s ready again: re-admitted", name, h.peer.address)
                return

    # ------------------------------------------------------------------ stages
    async def _run_stage(self, stage: StageSpec, x: np.ndarray, deadline: float, rid: str, report: RequestReport) -> np.ndarray:
        if stage.local:
            (name,) = stage.parts
            return self.local[name].run({stage.input: x})[stage.output]  # ~10 us: cheaper inline than a thread hop
        t_stage = time.perf_counter()
        shared = self.ring.put(x) if self.ring is not None and len(stage.parts) > 1 else None  # one copy for all parts
        x_sent = shared or x

        def start(name: str) -> asyncio.Future:
            return self._start_part(stage, name, x_sent, deadline, rid)

        run = _StageRun(
            stage, start, self.stats, report, t_stage, deadline, self.plan, self._pinned_to, self._blockwise.get(stage.name)
        )
        try:
            run.ask(i for i in range(len(stage.parts)) if i not in run.held_back)
            await run.wait()
        finally:
            run.cancel_pending()  # no call is left running for an answer nobody will read
            if shared is not None:  # every call that reads the slot is over: answered, failed or cancelled (a
                self.ring.release(shared)  # cancelled worker may still read it, but its answer is never used)
        if run.first_data_ms is not None:  # the yardstick for the next request, before its first data block answers
            self.stats.first_data(stage.name, run.first_data_ms)
        merged = self._merge(stage, run.answers, run.errors, report, x.shape[0], concat=run.blockwise is None)
        if run.blockwise is not None:  # the head, finished from its blocks' products (missing branches count as zeros)
            return run.blockwise[0].finish(run.head_sum)[run.blockwise[1].output]
        return merged

    def _merge(
        self,
        stage: StageSpec,
        answers: dict[int, np.ndarray],
        errors: list[str],
        report: RequestReport,
        batch: int,
        concat: bool = True,
    ) -> np.ndarray | None:
        """The stage's output; for a concat stage with ``concat=False`` only the checks and the report (None)."""
        missing = [stage.parts[i] for i in range(len(stage.parts)) if i not in answers]
        if stage.merge == "single":
            if not answers:
                raise self._failure(stage, errors)
            return answers[0]
        if stage.merge == "concat":
            if not answers or (missing and self.plan.on_missing == "fail"):
                raise self._failure(stage, errors)
            if missing:
                report.degraded = True
                report.missing.extend(missing)
            if not concat:
                return None
            dims = self.manifest.feature_dims
            return np.concatenate(
                [answers[i] if i in answers else np.zeros((batch, dims[i]), np.float32) for i in range(len(stage.parts))], axis=1
            )
        code = self.codes[stage.name]
        if len(answers) >= code.k:
            t0 = time.perf_counter()
            if all(i in answers for i in range(code.k)):  # every data block answered: the parity is not needed
                answers = {i: answers[i] for i in range(code.k)}
            else:
                report.recovered = True
            out = merge_blocks(code.decode(answers), stage.out_features)
            report.decode_ms = (report.decode_ms or 0.0) + (time.perf_counter() - t0) * 1e3
        else:
            if not answers or self.plan.on_missing == "fail":
                raise self._failure(stage, errors)
            report.degraded = True
            report.missing.extend(stage.parts[i] for i in range(code.k) if i not in answers)
            rows = next(iter(answers.values())).shape[1]
            blocks = np.stack([answers[i] if i in answers else np.zeros((batch, rows), np.float32) for i in range(code.k)])
            out = merge_blocks(blocks, stage.out_features)
        return np.maximum(out, 0) if stage.activation == "relu" else out

    def _failure(self, stage: StageSpec, errors: list[str]) -> Exception:
        detail = "; ".join(errors) or "no answer"
        if any("deadline" in e.lower() or "in time" in e for e in errors):
            return DeadlineExceeded(f"stage {stage.name}: {detail}")
        return PartUnavailable(f"stage {stage.name}: {detail}")

    async def infer(self, inputs: dict[str, np.ndarray]) -> InferResult:
        x = self._check_input(inputs)
        deadline = time.monotonic() + self.plan.timeout_ms / 1e3
        rid = str(next(self._ids))
        report = RequestReport(trace_t0=time.monotonic() if self.trace else None)
        stages = iter(self.stages)
        for stage in stages:
            x = await self._run_stage(stage, x, deadline, rid, report)
            if stage.name in self._blockwise:
                next(stages)  # the head ran blockwise within that stage
        return InferResult({"logits": x}, report.parameters())

    async def wait_ready(self, timeout_s: float = WAIT_READY_S, require_all: bool = True, progress_every_s: float = 5.0) -> None:
        """Wait until every replica reports its model ready, saying every ``progress_every_s`` what it still waits
        for and why. A server that answers without the model (a plan's addresses swapped, a wrong token) fails at
        once with its answer, whatever ``require_all``: a configuration error, not a device that is down. With
        ``require_all=False``, replicas still not ready after ``timeout_s`` start out unhealthy (skipped, probed,
        re-admitted when ready)."""
        t0 = time.monotonic()
        deadline, next_report = t0 + timeout_s, t0 + min(0.5, progress_every_s)  # the first look soon: a wrong address fails fast
        pending = [(n, h) for n, hs in self.peers.items() for h in hs]
        while pending:
            ok = await asyncio.gather(*(h.peer.ready() for _, h in pending))
            pending = [nh for nh, good in zip(pending, ok) if not good]
            if not pending:
                return
            now = time.monotonic()
            if now >= next_report or now > deadline:
                reasons = await asyncio.gather(*(_reason(h.peer) for _, h in pending))
                wrong = [
                    f"{n} at {h.peer.address}: the server answers {text}"
                    for (n, h), (kind, text) in zip(pending, reasons)
                    if kind == "refused"
                ]
                if wrong:  # a configuration error, not a device that is down: degrading would hide it
                    raise PartUnavailable("; ".join(wrong) + "; check the plan's addresses (and tokens)")
                if now <= deadline and not wrong:
                    log.warning(
                        "waiting for %s (%.0f of %.0f s)",
                        "; ".join(f"{n} at {h.peer.address}: {kind} ({text})" for (n, h), (kind, text) in zip(pending, reasons)),
                        now - t0,
                        timeout_s,
                    )
                    next_report = now + progress_every_s
                    await asyncio.sleep(0.1)
                    continue
                names = "; ".join(f"{n} at {h.peer.address}: {kind} ({text})" for (n, h), (kind, text) in zip(pending, reasons))
                if require_all:
                    raise PartUnavailable(f"not ready after {timeout_s:.0f} s: {names}")
                log.warning("starting without %s; probing, and taking each in when it is ready", names)
                for n, h in pending:
                    h.failures, h.healthy = self.plan.unhealthy_after, False
                    h.probing = asyncio.ensure_future(self._probe(h, n))
                return
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        self._closed = True
        for hs in self.peers.values():
            for h in hs:
                if h.probing:
                    h.probing.cancel()
                await h.peer.close()
        if self.ring is not None:
            self.ring.close()


async def _reason(peer) -> tuple[str, str]:
    """Why ``peer`` is not ready, (kind, text), from the peer if it can tell (edgesplit's peers can)."""
    reason = getattr(peer, "not_ready_reason", None)
    return await reason() if reason is not None else ("unreachable", "not ready")


class _StageRun:
    """One stage of one request: the parts asked, their answers as they arrive, and when the request's task must
    decide. Each answer is taken in by its future's callback (:meth:`arrived`; for a split model the branch's
    block of the head is multiplied there, while the other branches still compute); :meth:`wait` returns when
    every answer needed is in, nothing is pending, or k can no longer be reached, and asks the lazy parity
    blocks when a data block fails or is late."""

    def __init__(
        self,
        stage: StageSpec,
        start: Callable[[str], asyncio.Future],
        stats: PartStats,
        report: RequestReport,
        t_stage: float,
        deadline: float,
        plan: Plan,
        pinned_to: Callable[[str], frozenset[int] | None] = lambda part: None,
        blockwise: tuple | None = None,
    ):
        """``start(part)``: that part's call, begun now, as a future of its :class:`InferResult` (failures as
        :class:`_Missing` or any exception). ``stats``: the typical times learned so far (updated here).
        ``deadline``: monotonic() by which the stage stops waiting, whatever its peers do.
        ``plan``: on_missing, parity, parity_slack. ``pinned_to(part)``: the CPUs of the part's local worker.
        ``blockwise``: (BlockwiseGemm, head stage) when the head is multiplied branch by branch."""
        self.stage, self.start, self.stats, self.report, self.plan, self.pinned_to = stage, start, stats, report, plan, pinned_to
        self.t_stage = t_stage  # perf_counter() at the stage's start
        self.deadline = deadline
        self.coded = stage.merge == "decode"
        self.need = stage.code_k if self.coded else len(stage.parts)
        # a learned code (parity branches) decodes approximately: its data blocks are waited for unless one fails or
        # is late (lazy parity's rule), even when k answers are in; an exact code takes the first k
        self.prefer_data = self.coded and not stage.code_exact
        self.held_back = range(stage.code_k, len(stage.parts)) if self.coded and plan.parity == "lazy" else range(0)
        self.part_of: dict[asyncio.Future, int] = {}  # each call's future -> the index of its part
        self.sent_at: dict[int, float] = {}  # perf_counter() per part index
        self.pending: set[asyncio.Future] = set()
        self.answers: dict[int, np.ndarray] = {}
        self.errors: list[str] = []
        self.fatal: list[BaseException] = []  # not an Exception: re-raised by the task
        self.blockwise = blockwise
        self.head_sum = None  # with ``blockwise``: the sum of the head's products with the answers so far
        self.first_data_ms: float | None = None  # when the first data block answered (lazy parity's yardstick)
        self.wake: asyncio.Future | None = None  # resolved when :meth:`wait` has something to decide

    def ask(self, indices) -> None:
        """Start the parts ``indices``. The part that usually takes longest is asked first: on a fleet of unequal
        devices the slowest one starts earliest, and the stage, which ends with its last answer, ends sooner. A
        local worker pinned to the core this coordinator runs on is asked last: woken, it takes the core (for its
        whole compute if the other core is busy) before the requests after it are sent."""
        parts = self.stage.parts
        here = _current_cpu()

        def order(i: int) -> tuple[bool, float]:
            return self.pinned_to(parts[i]) == {here}, -self.stats.typical_ms.get(parts[i], 0.0)

        for i in sorted(indices, key=order):
            fut = self.start(parts[i])
            self.sent_at[i] = time.perf_counter()
            self.part_of[fut] = i
            self.pending.add(fut)
            fut.add_done_callback(self.arrived)

    def arrived(self, t: asyncio.Future) -> None:
        """A part's call is done: its answer or error is taken in, and the task is woken when there is something
        to decide (every answer needed is in, nothing is pending, a part failed; with lazy parity, always: the
        yardstick for lateness may have changed)."""
        self.pending.discard(t)
        if t.cancelled():  # by the stage itself, which no longer waits
            return
        i, err = self.part_of[t], t.exception()
        part = self.stage.parts[i]
        if err is None:
            self._take(i, part, t.result())
        elif isinstance(err, _Missing):
            self.errors.append(str(err))
        elif isinstance(err, Exception):  # from a call started directly: a missing answer, never a hang
            self.errors.append(_missing(part, None, err))
        else:
            self.fatal.append(err)
        wake = self.wake
        if (
            wake is not None
            and not wake.done()
            and (len(self.answers) >= self.need or not self.pending or err is not None or self.held_back)
        ):
            wake.set_result(None)

    def _take(self, i: int, part: str, r: InferResult) -> None:
        """Part ``i``'s answer: kept, its block of the head multiplied (blockwise), its timings recorded."""
        report = self.report
        self.answers[i] = r.outputs[self.stage.output]
        if self.blockwise is not None:
            product = self.blockwise[0].partial(i, self.answers[i])
            self.head_sum = product if self.head_sum is None else self.head_sum + product
        now = time.perf_counter()
        arrival_ms = (now - self.t_stage) * 1e3
        report.record("arrival_ms", part, arrival_ms)
        self.stats.took(part, (now - self.sent_at[i]) * 1e3)
        if self.coded and i < self.stage.code_k and self.first_data_ms is None:
            self.first_data_ms = arrival_ms
        for key in PART_TIMINGS:  # the worker's own account of the call, when it gives one
            if key in r.parameters:
                report.record(key, part, r.parameters[key])
        if report.trace_t0 is not None:
            for key, at in TRACE_HOPS.items():  # the traced hops, in ms after the request's start
                if at in r.parameters:
                    report.record(key, part, (r.parameters[at] - report.trace_t0) * 1e3)

    async def wait(self) -> None:
        while True:
            if self.fatal:
                raise self.fatal[0]
            late_in_s = self._late_in_s() if self.held_back or self.prefer_data else None
            if self.held_back and (self.errors or (late_in_s is not None and late_in_s <= 0)):
                held_back, self.held_back, late_in_s = self.held_back, range(0), None
                self.ask(held_back)  # lazy parity: a data block failed or is late
                self.report.parity_asked += 1
            if not self.pending or (len(self.answers) >= self.need and not self._waits_for_data(late_in_s)):
                return
            if (
                self.coded
                and len(self.answers) + len(self.pending) + len(self.held_back) < self.need
                and self.plan.on_missing == "fail"
            ):
                return  # k can no longer be reached and a degraded answer is not wanted: stop waiting
            # peers enforce the deadline on their calls; this bound holds even for one that does not
            until_deadline_s = self.deadline - time.monotonic()
            if until_deadline_s <= 0:
                self.errors.extend(f"{self.stage.parts[self.part_of[t]]}: no answer within the deadline" for t in self.pending)
                return
            loop = asyncio.get_running_loop()
            self.wake = wake = loop.create_future()
            timer = loop.call_later(
                until_deadline_s if late_in_s is None else min(late_in_s, until_deadline_s), _resolve, wake
            )  # one timer handle: cheaper than asyncio.wait's waiter
            try:
                await wake
            finally:
                timer.cancel()

    def _waits_for_data(self, late_in_s: float | None) -> bool:
        """A learned code's stage, with k answers in: whether to wait on for a data block that is neither failed nor
        late (its own answer is exact; one rebuilt from parity is not)."""
        if not self.prefer_data or all(i in self.answers for i in range(self.stage.code_k)) or self.errors:
            return False
        return late_in_s is None or late_in_s > 0

    def _late_in_s(self) -> float | None:
        """Lazy parity: seconds until the data blocks count as late, (1 + parity_slack) x the first data block's
        time (before it answers: the typical one of earlier requests; None before any request had one)."""
        ref_ms = self.first_data_ms if self.first_data_ms is not None else self.stats.typical_first_ms.get(self.stage.name)
        if ref_ms is None:
            return None
        return (1 + self.plan.parity_slack) * ref_ms / 1e3 - (time.perf_counter() - self.t_stage)

    def cancel_pending(self) -> None:
        for t in list(self.pending):  # cancelling runs arrived() later, which discards from the set
            t.cancel()


def _as_is(x: np.ndarray) -> np.ndarray:
    return x


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def _moving_average(old: float | None, new: float) -> float:
    """The per-part and per-stage typical times: an exponential moving average (the first value as it is)."""
    return new if old is None else 0.8 * old + 0.2 * new


def _load_sched_getcpu():
    try:
        import ctypes

        getcpu = ctypes.CDLL(None, use_errno=True).sched_getcpu
        getcpu.restype = ctypes.c_int
        return getcpu if getcpu() >= 0 else None
    except (OSError, AttributeError):
        return None


_SCHED_GETCPU = _load_sched_getcpu()


def _current_cpu() -> int | None:
    """The CPU this thread runs on now (Linux/glibc), else None."""
    return _SCHED_GETCPU() if _SCHED_GETCPU is not None else None


def _missing(name: str, peer: Peer | None, err: Exception) -> str:
    """Why a part's answer is missing, naming the part and its address once."""
    if isinstance(err, (PartUnavailable, DeadlineExceeded)):
        return str(err)  # these already say "part at address"
    return f"{name} at {peer.address}: {err}" if peer is not None else f"{name}: {err}"


def remote_coordinator(plan: Plan) -> Coordinator:
    """A coordinator whose peers are the plan's addresses: ``host:port`` -> :class:`GrpcPeer` (any KServe v2
    server), ``ipc:///path.sock`` -> :class:`UnixSocketPeer` (an edgesplit worker on this machine). gRPC is
    imported only when the plan has a ``host:port`` address."""

    from edgesplit.runtime.shm import available as shm_available
    from edgesplit.runtime.transport.ipc import SCHEME
    from edgesplit.runtime.transport.ipc_peer import UnixSocketPeer

    addresses = [addr for p in plan.parts for addr in p.replicas]
    if any(not addr.startswith(SCHEME) for addr in addresses):
        from edgesplit.runtime.transport.grpc_peer import ClientSecurity, GrpcPeer

        s = plan.security
        from edgesplit.runtime.secrets import read_token_file

        token = read_token_file(s.token_file, "the plan's security token_file") if s.token_file else None
        security = ClientSecurity(token, s.tls_ca, s.tls_cert, s.tls_key)

    def peer(address: str, name: str) -> Peer:
        return UnixSocketPeer(address, name) if address.startswith(SCHEME) else GrpcPeer(address, name, security)

    peers = {p.name: [peer(addr, p.remote_name) for addr in p.replicas] for p in plan.parts}
    local = sum(addr.startswith(SCHEME) for addr in addresses)
    ring = InputRing() if local > 1 and plan.shared_memory and shm_available() else None  # the broadcast to local workers
    return Coordinator(plan, peers, ring=ring)
