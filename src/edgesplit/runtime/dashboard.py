"""``edgesplit serve --dashboard``: one live page at ``/dashboard`` on the HTTP port.

The page (``dashboard.html``: plain HTML and JavaScript, no build step, nothing fetched from elsewhere) listens to
``/dashboard/events``, server-sent events carrying a snapshot every ``INTERVAL_S``: answers, requests/s and
latency over the last ``WINDOW_S``, each worker (up or down, its consecutive failures, when its answers arrive,
answers/s, bytes/s each way), the last request's image and top classes, and the degraded, recovered and failed
answers since the previous snapshot. For a local cluster (``serve --local``) ``POST /dashboard/unplug/PART`` kills
that part's worker (SIGKILL, a device unplugged) and ``/dashboard/restore/PART`` starts it again; the coordinator
finds out by itself, as it would on a real fleet.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from importlib import resources

import numpy as np
from aiohttp import web

log = logging.getLogger(__name__)

INTERVAL_S = 0.5
WINDOW_S = 5.0
MAX_VIEWERS = 8  # event streams open at once; more are refused 503 (each holds a connection and a task)


class Dashboard:
    def __init__(self, metrics, coordinators, classes: tuple[str, ...], cluster=None):
        self.metrics, self.coordinators, self.classes, self.cluster = metrics, coordinators, classes, cluster
        self.viewers = 0
        self._page = resources.files("edgesplit.runtime").joinpath("dashboard.html").read_bytes()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/dashboard", self.page)
        app.router.add_get("/dashboard/events", self.events)
        app.router.add_post("/dashboard/unplug/{part}", self.unplug)
        app.router.add_post("/dashboard/restore/{part}", self.restore)

    async def page(self, request):
        return web.Response(body=self._page, content_type="text/html")

    async def events(self, request):
        if self.viewers >= MAX_VIEWERS:
            return web.json_response({"error": f"{MAX_VIEWERS} dashboards are open already; close one"}, status=503)
        self.viewers += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await response.prepare(request)
            view = _View()
            while True:
                await response.write(f"data: {json.dumps(self.snapshot(view))}\n\n".encode())
                await asyncio.sleep(INTERVAL_S)
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the page closed, or the server stops
        finally:
            self.viewers -= 1
        return response

    async def unplug(self, request):
        return await self._control(request, "kill", "unplugged")

    async def restore(self, request):
        return await self._control(request, "restart", "restored")

    async def _control(self, request, action: str, done: str):
        part = request.match_info["part"]
        if self.cluster is None:
            return web.json_response({"error": "unplug and restore are for a local cluster (serve --local)"}, status=404)
        if part not in self.cluster.workers:
            known = ", ".join(self.cluster.workers)
            return web.json_response({"error": f"no worker for part {part[:64]!r}; this cluster has: {known}"}, status=404)
        try:  # a restart waits for the worker to be ready: off the event loop
            await asyncio.get_running_loop().run_in_executor(None, getattr(self.cluster, action), part)
        except Exception as err:
            return web.json_response({"error": f"{action} {part}: {err}"}, status=500)
        log.info("dashboard: %s %s", done, part)
        return web.json_response({"part": part, done: True})

    def snapshot(self, view: "_View") -> dict:
        """What the page shows now; ``view`` remembers what this page saw last (for rates and new events)."""
        now, m = time.monotonic(), self.metrics
        recent = [a for a in m.recent if a[0] >= now - WINDOW_S]
        ms = [a[1] for a in recent if a[2] != "failed"]
        window = {
            "rps": len(recent) / WINDOW_S,
            "p50_ms": float(np.percentile(ms, 50)) if ms else None,
            "p99_ms": float(np.percentile(ms, 99)) if ms else None,
        }
        arrivals: dict[str, list[float]] = {}
        for t, part, arrival_ms in m.recent_arrivals:
            if t >= now - WINDOW_S:
                arrivals.setdefault(part, []).append(arrival_ms)
        dt = max(now - view.at, 1e-3) if view.at else None
        devices = []
        for c in self.coordinators:
            for part, replicas in c.peers.items():
                for i, h in enumerate(replicas):
                    key = (part, h.peer.address)
                    sent, received = getattr(h.peer, "bytes_sent", 0), getattr(h.peer, "bytes_received", 0)
                    before = view.bytes.get(key)
                    view.bytes[key] = (sent, received)
                    mine = arrivals.get(part, [])
                    devices.append(
                        {
                            "part": part,
                            "replica": i,
                            "peer": h.peer.address,
                            "up": h.healthy,
                            "failures": h.failures,
                            "arrival_ms": float(np.mean(mine)) if mine else None,
                            "rps": len(mine) / WINDOW_S,
                            "sent_bytes_per_s": (sent - before[0]) / dt if before and dt else 0.0,
                            "received_bytes_per_s": (received - before[1]) / dt if before and dt else 0.0,
                        }
                    )
        view.at = now
        events = [e for e in m.events if e["seq"] > view.seq]
        view.seq = max([view.seq, *(e["seq"] for e in events)])
        return {
            "model": m.model_name,
            "local": self.cluster is not None,
            "totals": dict(m.totals),
            "window": window,
            "devices": devices,
            "last": self._last(),
            "events": events[-50:],
        }

    def _last(self) -> dict | None:
        last = self.metrics.last
        if last is None:
            return None
        image, logits, params = last
        a = np.asarray(image)
        if a.dtype != np.uint8:  # normalised float input: stretched to 0-255 to be seen
            lo, hi = float(a.min()), float(a.max())
            a = ((a - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)
        z = np.exp(logits - logits.max())
        p = z / z.sum()
        top = [[self.classes[i] if i < len(self.classes) else str(i), float(p[i])] for i in np.argsort(-p)[:3]]
        return {
            "shape": list(a.shape),
            "pixels": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode(),
            "top": top,
            "degraded": bool(params.get("degraded", False)),
            "recovered": bool(params.get("recovered", False)),
        }


class _View:
    """What one open page has seen: when, the peers' byte counts, the last event."""

    def __init__(self):
        self.at: float | None = None
        self.bytes: dict[tuple[str, str], tuple[int, int]] = {}
        self.seq = 0


async def start_dashboard(metrics, coordinators, classes, host: str, port: int, cluster=None) -> tuple[web.AppRunner, int]:
    """The page and /metrics alone on ``host:port`` (for a process that serves no KServe endpoint: ``stream``);
    stop with ``await runner.cleanup()``."""
    from edgesplit.errors import EdgesplitError

    app = web.Application()
    Dashboard(metrics, coordinators, classes, cluster).add_routes(app)

    async def scrape(request):
        return web.Response(body=metrics.exposition(), headers={"Content-Type": metrics.content_type})

    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise EdgesplitError(f"cannot listen on {host}:{port} for the dashboard ({err.strerror}); pick another port") from None
    return runner, site._server.sockets[0].getsockname()[1]
