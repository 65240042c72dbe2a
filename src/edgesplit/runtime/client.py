"""The Python API: ``edgesplit.connect(plan)`` -> :class:`Client` (blocking) or :class:`AsyncClient`.

    with edgesplit.connect("plan.yaml") as client:
        logits = client.infer(images)          # (B, C, H, W) uint8 pixels or normalised float32

The blocking client runs the asyncio coordinator on a background thread, so many
``infer`` calls can be in flight at once from several threads (``infer_many`` does that).
With workers on this machine that thread defers to them (``tuning.defer_to_workers``); an
application running :class:`AsyncClient` on its own event loop next to local workers can call
that function on its loop's thread too.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Sequence

import numpy as np

from edgesplit.runtime.config import WAIT_READY_S
from edgesplit.runtime.coordinator import Coordinator, remote_coordinator
from edgesplit.runtime.model import InferResult
from edgesplit.runtime.plan import Plan, has_local_workers, load_plan
from edgesplit.runtime.tuning import defer_to_workers


def _as_plan(plan: Plan | str | Path) -> Plan:
    return plan if isinstance(plan, Plan) else load_plan(plan)


class AsyncClient:
    def __init__(self, coordinator: Coordinator):
        self.coordinator = coordinator
        self._model = coordinator  # the coordinator itself, or counted for a dashboard (start_dashboard)
        self._dashboard = None
        self.metrics = None

    @classmethod
    async def connect(
        cls, plan: Plan | str | Path, wait_ready_s: float = WAIT_READY_S, require_all: bool = True
    ) -> "AsyncClient":
        """``require_all=False``: start even if some workers are down (they are probed and used once ready)."""
        coord = remote_coordinator(_as_plan(plan))
        try:
            await coord.wait_ready(wait_ready_s, require_all)
        except BaseException:
            await coord.close()  # the connections opened while waiting
            raise
        return cls(coord)

    async def infer_result(self, images: np.ndarray) -> InferResult:
        return await self._model.infer({"input": images})

    async def infer(self, images: np.ndarray) -> np.ndarray:
        return (await self.infer_result(images)).outputs["logits"]

    async def start_dashboard(self, port: int = 0, host: str = "127.0.0.1", cluster=None) -> str:
        """Serve the live page (``runtime/dashboard.py``) and ``/metrics`` for this client's requests on
        ``host:port``, until :meth:`close`; its address. ``cluster``: a ``LocalCluster`` whose workers the page
        may unplug and restore."""
        from edgesplit.runtime.dashboard import start_dashboard
        from edgesplit.runtime.metrics import Metrics

        self.metrics = Metrics([self.coordinator])
        self._model = self.metrics.wrap(self.coordinator)
        classes = self.coordinator.manifest.classes
        self._dashboard, port = await start_dashboard(self.metrics, [self.coordinator], classes, host, port, cluster)
        return f"http://{host}:{port}/dashboard"

    async def close(self) -> None:
        if self._dashboard is not None:
            await self._dashboard.cleanup()
            self._dashboard = None
        await self.coordinator.close()


class Client:
    def __init__(self, plan: Plan | str | Path, wait_ready_s: float = WAIT_READY_S, require_all: bool = True):
        plan = _as_plan(plan)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgesplit-client", daemon=True)
        self._thread.start()
        try:
            if has_local_workers(plan):  # the coordinator's thread shares this machine's cores with workers
                self._loop.call_soon_threadsafe(defer_to_workers)  # runs before the connection below
            self._async = self._run(AsyncClient.connect(plan, wait_ready_s, require_all))
        except BaseException:
            self._shutdown_loop()
            raise

    def _run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def coordinator(self) -> Coordinator:
        return self._async.coordinator

    def submit(self, images: np.ndarray) -> Future:
        """Start one inference; the future yields an :class:`InferResult`."""
        return asyncio.run_coroutine_threadsafe(self._async.infer_result(images), self._loop)

    def infer_result(self, images: np.ndarray) -> InferResult:
        return self.submit(images).result()

    def infer(self, images: np.ndarray) -> np.ndarray:
        """(B, C, H, W) uint8 or float32 -> logits (B, num_classes)."""
        return self.infer_result(images).outputs["logits"]

    def start_dashboard(self, port: int = 0, host: str = "127.0.0.1", cluster=None) -> str:
        """:meth:`AsyncClient.start_dashboard`, on this client's loop."""
        return self._run(self._async.start_dashboard(port, host, cluster))

    def infer_many(self, batches: Sequence[np.ndarray], in_flight: int = 8) -> list[InferResult]:
        """Run all ``batches`` with up to ``in_flight`` requests outstanding; results in order."""

        async def run_all():
            sem = asyncio.Semaphore(in_flight)

            async def one(b):
                async with sem:
                    return await self._async.infer_result(b)

            return await asyncio.gather(*(one(b) for b in batches))

        return self._run(run_all())

    def close(self) -> None:
        if self._loop.is_running():
            try:
                self._run(self._async.close(), timeout=5)
            finally:
                self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(plan: Plan | str | Path, wait_ready_s: float = WAIT_READY_S, require_all: bool = True) -> Client:
    return Client(plan, wait_ready_s, require_all)


async def connect_async(plan: Plan | str | Path, wait_ready_s: float = WAIT_READY_S, require_all: bool = True) -> AsyncClient:
    return await AsyncClient.connect(plan, wait_ready_s, require_all)
