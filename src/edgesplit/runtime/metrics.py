"""Prometheus metrics of a worker or of ``serve``, at ``/metrics`` on its HTTP port (``--http-port``).

Triton's names where the meaning is the same, so that dashboards made for Triton read them:
``nv_inference_request_success`` / ``nv_inference_request_failure`` (requests that reached the model, by
``reason``), ``nv_inference_count`` (batch items), ``nv_inference_exec_count`` (executions),
``nv_inference_request_duration_us`` (cumulative). prometheus-client writes every counter ``x`` as ``x_total``
and Triton's counters have no suffix, so these few lines are written here under Triton's exact names; the rest
comes from prometheus-client's registry, prefixed ``edgesplit_``:

- ``edgesplit_requests_total{model, outcome}``: exact, degraded (a part missing, zeros in its place), recovered
  (a coded stage decoded with parity), and the failures: deadline, unavailable, invalid, error;
- ``edgesplit_request_duration_seconds{model}``: histogram of the time in the model;
- ``edgesplit_part_arrival_seconds{model, part}``: for a split model, when each part's answer arrived after the
  request started (the coordinator's view of each device);
- ``edgesplit_requests_in_flight{model}``: requests in the model now (the queue);
- ``edgesplit_frames_dropped_total``: ``stream``'s frames dropped unanswered (the fleet behind the source);
- ``edgesplit_peer_up{part, peer}``, ``edgesplit_peer_sent_bytes_total`` / ``..._received_bytes_total``, and
  ``edgesplit_peer_failures`` (consecutive) for each worker a coordinator talks to.

Requests refused before they reach the model (unparsable, over a limit, an unknown model) are answered with
their status and not counted here.
"""

from __future__ import annotations

import collections
import time

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from edgesplit.runtime.errors import DeadlineExceeded, InferError, PartUnavailable
from edgesplit.runtime.model import InferResult

RECENT = 4096  # answers (and part arrivals) kept for a live view: seconds of history at a few hundred requests/s
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
ARRIVAL_SUFFIX = "_arrival_ms"  # a coordinator's answer parameter per part (``coordinator.RequestReport``)
TRITON_COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (a batch of n counts n)",
    "nv_inference_exec_count": "Number of model executions performed",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds",
}


class Metrics:
    """One process's metrics. ``coordinators``: the coordinators whose workers are reported (``serve``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, coordinators=()):
        disable_created_metrics()  # no `_created` series beside every counter (Triton has none)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edgesplit_requests", "requests that reached the model, by outcome", ["model", "outcome"], registry=self.registry
        )
        self.duration = Histogram(
            "edgesplit_request_duration_seconds",
            "time in the model",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.arrival = Histogram(
            "edgesplit_part_arrival_seconds",
            "when a part's answer arrived after the request started (a split model's coordinator)",
            ["model", "part"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.in_flight = Gauge("edgesplit_requests_in_flight", "requests in the model now", ["model"], registry=self.registry)
        self.frames_dropped = Counter(
            "edgesplit_frames_dropped", "stream frames dropped unanswered: the fleet behind the source", registry=self.registry
        )
        self._triton: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        # what a live view (runtime/dashboard.py) reads: recent answers, each part's recent arrivals, the last
        # request (its first image, logits, parameters), the answers that were not exact, running totals
        self.model_name = ""
        self.recent: collections.deque = collections.deque(maxlen=RECENT)  # (monotonic s, ms, outcome)
        self.recent_arrivals: collections.deque = collections.deque(maxlen=RECENT)  # (monotonic s, part, ms)
        self.last: tuple | None = None
        self.events: collections.deque = collections.deque(maxlen=200)
        self.totals = {"answered": 0, "degraded": 0, "recovered": 0, "failed": 0}
        self._seq = 0
        if coordinators:
            self.registry.register(_PeerCollector(coordinators))

    def wrap(self, model):
        """``model`` with every request it answers counted."""
        return MeteredModel(model, self)

    def _add(self, name: str, labels: dict, value: float) -> None:
        key = (name, tuple(sorted(labels.items())))
        self._triton[key] = self._triton.get(key, 0.0) + value

    def record(
        self, model: str, started: float, items: int, result: InferResult | None, err: Exception | None, inputs: dict
    ) -> None:
        seconds, now = time.perf_counter() - started, time.monotonic()
        self.model_name = model
        version = {"model": model, "version": "1"}
        self.duration.labels(model).observe(seconds)
        self._add("nv_inference_request_duration_us", version, seconds * 1e6)
        if err is not None:
            outcome = _failure(err)
            self._add("nv_inference_request_failure", {**version, "reason": outcome}, 1)
            self.totals["failed"] += 1
            self._event(now, "failed", seconds, {"reason": outcome})
        else:
            p = result.parameters
            outcome = "recovered" if p.get("recovered") else "degraded" if p.get("degraded") else "exact"
            self._add("nv_inference_request_success", version, 1)
            self._add("nv_inference_count", version, items)
            self._add("nv_inference_exec_count", version, 1)
            for key, ms in p.items():
                if key.endswith(ARRIVAL_SUFFIX) and isinstance(ms, (int, float)):
                    self.arrival.labels(model, key[: -len(ARRIVAL_SUFFIX)]).observe(ms / 1e3)
                    self.recent_arrivals.append((now, key[: -len(ARRIVAL_SUFFIX)], ms))
            self.totals["answered"] += 1
            if outcome != "exact":
                self.totals[outcome] += 1
                self._event(now, outcome, seconds, {"missing": p.get("missing", "")})
            image = next(iter(inputs.values()), None)
            logits = next(iter(result.outputs.values()), None)
            if image is not None and logits is not None and getattr(image, "ndim", 0) == 4 and logits.ndim == 2:
                self.last = (np.array(image[0]), np.asarray(logits[0], dtype=np.float64), dict(p))
        self.recent.append((now, seconds * 1e3, "failed" if err is not None else outcome))
        self.requests.labels(model, outcome).inc()

    def dropped(self) -> None:
        """A stream's frame dropped before the model saw it (``stream/runner.py``)."""
        self.frames_dropped.inc()
        self.totals["dropped"] = self.totals.get("dropped", 0) + 1

    def _event(self, now: float, outcome: str, seconds: float, extra: dict) -> None:
        self._seq += 1
        self.events.append(
            {"seq": self._seq, "time": time.strftime("%H:%M:%S"), "outcome": outcome, "ms": seconds * 1e3, **extra}
        )

    def exposition(self) -> bytes:
        """The Prometheus text format: Triton's counters, then the registry's metrics."""
        lines = []
        for name, help_text in TRITON_COUNTERS.items():
            samples = [(labels, v) for (n, labels), v in sorted(self._triton.items()) if n == name]
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for labels, v in samples:
                text = ",".join(f'{k}="{_escape(val)}"' for k, val in labels)
                lines.append(f"{name}{{{text}}} {v:.17g}")
        return ("\n".join(lines) + "\n").encode() + generate_latest(self.registry)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _failure(err: Exception) -> str:
    if isinstance(err, DeadlineExceeded):
        return "deadline"
    if isinstance(err, PartUnavailable):
        return "unavailable"
    if isinstance(err, InferError):
        return "invalid"
    return "error"


def _items(inputs: dict) -> int:
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and getattr(first, "ndim", 0) else 1


class MeteredModel:
    """A served model whose answers are counted; what it serves is the wrapped model's, unchanged."""

    def __init__(self, model, metrics: Metrics):
        self.model, self.metrics, self.meta = model, metrics, model.meta
        self._gauge = metrics.in_flight.labels(model.meta.name)
        if hasattr(model, "infer_now"):
            self.infer_now = self._infer_now  # the Unix socket server calls it directly when idle
        if hasattr(model, "infer_stream"):
            self.infer_stream = self._infer_stream

    def ready(self) -> bool:
        return self.model.ready()

    async def infer(self, inputs: dict) -> InferResult:
        return await self._timed(self.model.infer(inputs), inputs)

    async def _infer_stream(self, inputs: dict, stream: str) -> InferResult:
        return await self._timed(self.model.infer_stream(inputs, stream), inputs)

    async def _timed(self, pending, inputs: dict) -> InferResult:
        started, result = time.perf_counter(), None
        self._gauge.inc()
        try:
            result = await pending
            return result
        except Exception as err:
            self.metrics.record(self.meta.name, started, _items(inputs), None, err, inputs)
            raise
        finally:
            self._gauge.dec()
            if result is not None:
                self.metrics.record(self.meta.name, started, _items(inputs), result, None, inputs)

    def _infer_now(self, inputs: dict) -> InferResult:
        started = time.perf_counter()
        try:
            result = self.model.infer_now(inputs)
        except Exception as err:
            self.metrics.record(self.meta.name, started, _items(inputs), None, err, inputs)
            raise
        self.metrics.record(self.meta.name, started, _items(inputs), result, None, inputs)
        return result


class _PeerCollector:
    """At each scrape: every worker of every coordinator, up or not, its consecutive failures, its bytes."""

    def __init__(self, coordinators):
        self.coordinators = coordinators

    def collect(self):
        up = GaugeMetricFamily("edgesplit_peer_up", "1 while the coordinator asks this worker", labels=["part", "peer"])
        failures = GaugeMetricFamily("edgesplit_peer_failures", "consecutive failed calls", labels=["part", "peer"])
        sent = CounterMetricFamily("edgesplit_peer_sent_bytes", "request bytes sent", labels=["part", "peer"])
        received = CounterMetricFamily("edgesplit_peer_received_bytes", "answer bytes received", labels=["part", "peer"])
        for c in self.coordinators:
            for part, replicas in c.peers.items():
                for h in replicas:
                    labels = [part, h.peer.address]
                    up.add_metric(labels, 1.0 if h.healthy else 0.0)
                    failures.add_metric(labels, h.failures)
                    sent.add_metric(labels, getattr(h.peer, "bytes_sent", 0))
                    received.add_metric(labels, getattr(h.peer, "bytes_received", 0))
        yield from (up, failures, sent, received)
