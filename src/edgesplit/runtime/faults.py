"""Fault injection for a worker: slow calls, failed calls, a crash after N requests.

Used by tests and ``edgesplit bench faults`` to reproduce what edge devices do (the
the edge-collaboration slides' long-tail arrival times on a Raspberry Pi cluster). Seeded, so a run repeats.

* ``delay_ms`` with ``delay_dist`` fixed | exp (mean delay_ms) | lognormal (median
  delay_ms, sigma 1: a long tail), added to a fraction ``prob`` of calls;
* ``slowdown``: a fraction ``prob`` of calls take ``slowdown`` times their compute
  time (the straggler pattern "10% of calls delayed 10x");
* ``error_prob``: fraction of calls answered with an error (gRPC INTERNAL);
* ``crash_after``: the process exits abruptly after that many requests (power loss).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import numpy as np

from edgesplit.runtime.config import FaultConfig
from edgesplit.runtime.model import InferResult

log = logging.getLogger(__name__)


class InjectedFault(Exception):
    """An error injected on purpose."""


class FaultyModel:
    """Wraps a served model; behaves like it except for the injected faults."""

    def __init__(self, model, faults: FaultConfig):
        if faults.delay_dist not in ("fixed", "exp", "lognormal"):
            raise ValueError(f"unknown delay distribution {faults.delay_dist!r}; use fixed, exp or lognormal")
        self.model, self.faults = model, faults
        self.meta = model.meta
        self.rng = np.random.default_rng(faults.seed)
        self.calls = 0

    def ready(self) -> bool:
        return self.model.ready()

    def _delay_s(self, compute_s: float) -> float:
        f = self.faults
        if self.rng.random() >= f.prob:
            return 0.0
        extra = (f.slowdown - 1.0) * compute_s
        if f.delay_ms > 0:
            base = f.delay_ms / 1e3
            extra += {"fixed": base, "exp": self.rng.exponential(base), "lognormal": base * self.rng.lognormal(0.0, 1.0)}[
                f.delay_dist
            ]
        return extra

    async def infer(self, inputs: dict[str, np.ndarray]) -> InferResult:
        self.calls += 1
        f = self.faults
        if f.crash_after is not None and self.calls > f.crash_after:
            log.error("injected crash after %d requests", f.crash_after)
            os._exit(3)
        if f.error_prob and self.rng.random() < f.error_prob:
            raise InjectedFault("injected error")
        t0 = time.perf_counter()
        result = await self.model.infer(inputs)
        delay = self._delay_s(time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
            result.parameters["injected_delay_ms"] = delay * 1e3
        return result
