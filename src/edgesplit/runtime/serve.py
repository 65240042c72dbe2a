"""``edgesplit serve``: the coordinator behind one KServe v2 endpoint, over a plan or a local cluster."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from edgesplit.runtime.config import WAIT_READY_S, WorkerConfig
from edgesplit.runtime.cluster import LocalCluster
from edgesplit.runtime.coordinator import remote_coordinator
from edgesplit.runtime.plan import has_local_workers, load_plan
from edgesplit.runtime.streams import StreamRouter, is_group_file, load_groups
from edgesplit.runtime.tuning import defer_to_workers
from edgesplit.runtime.transport.grpc_server import KServeServer, ServerSecurity, until_signalled
from edgesplit.runtime.transport.limits import ServerLimits

log = logging.getLogger(__name__)

READY_LINE = "EDGESPLIT-SERVE-READY"


async def serve(
    plan_path: str | None,
    local_export: str | None,
    host: str,
    port: int,
    security: ServerSecurity,
    limits: ServerLimits = ServerLimits(),
    worker_poll_ms: float = WorkerConfig.poll_ms,
    wait_ready_s: float = WAIT_READY_S,
    http_port: int | None = None,
    share_port: bool = False,
    on_ready: Callable[[str, int, int | None], None] | None = None,
    grace_s: float = 5.0,
    dashboard: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting and give calls in flight ``grace_s`` to finish.

    ``worker_poll_ms``: the local workers' ``--poll-ms`` (``local_export`` only). ``wait_ready_s``: how long to
    wait for every worker; then a plan with ``on_missing: degrade`` starts without the missing ones. ``http_port``:
    also the HTTP/REST API and /metrics there (and with ``dashboard``, the live page: ``runtime/dashboard.py``;
    unplug and restore for the workers of ``local_export``). ``share_port``: one of several coordinators on this address
    (``runtime/coordinators.py``). ``on_ready(model, port, http_port)`` is called once it serves; without it, a
    ready line is printed."""
    security.check_bind(host)
    cluster = LocalCluster(local_export, poll_ms=worker_poll_ms).start() if local_export else None
    try:
        # a group file (`edgesplit plan --streams`): a coordinator per group, served as one model by a StreamRouter
        plans = [cluster.plan()] if cluster else load_groups(plan_path) if is_group_file(plan_path) else [load_plan(plan_path)]
        if any(has_local_workers(p) for p in plans):
            defer_to_workers()  # this thread runs the coordinator (gRPC's own threads are left as they are)
        coordinators = []
        try:
            for plan in plans:
                coordinators.append(remote_coordinator(plan))
                # a plan that degrades without a part also starts without it (probed, taken in when it comes up)
                await coordinators[-1].wait_ready(wait_ready_s, require_all=plan.on_missing == "fail")
            model = coordinators[0] if len(coordinators) == 1 else StreamRouter(coordinators)
            view = (cluster,) if dashboard else None
            await _serve_model(model, coordinators, host, port, security, limits, http_port, share_port, on_ready, grace_s, view)
        finally:
            for coordinator in coordinators:
                await coordinator.close()
    finally:
        if cluster:
            cluster.stop()


async def _serve_model(
    model, coordinators, host, port, security, limits, http_port, share_port, on_ready, grace_s, view=None
) -> None:
    """``view``: (the local cluster or None,) for the dashboard; None: no dashboard."""
    name, http_server, metrics, dashboard = model.meta.name, None, None, None
    if http_port is not None:  # the REST half, and the metrics it serves, counted over both halves
        from edgesplit.runtime.metrics import Metrics
        from edgesplit.runtime.transport.http_server import KServeHttpServer

        metrics = Metrics(coordinators)
        model = metrics.wrap(model)
        if view is not None:
            from edgesplit.runtime.dashboard import Dashboard

            dashboard = Dashboard(metrics, coordinators, coordinators[0].manifest.classes, cluster=view[0])
    server = KServeServer([model], host, port, security, limits, "edgesplit-coordinator", share_port)
    if http_port is not None:
        args = (security, limits, server.budget, "edgesplit-coordinator", metrics, share_port, dashboard)
        http_server = KServeHttpServer([model], host, http_port, *args)
    signalled = until_signalled()  # handlers in place before anyone learns that this server is up
    port = await server.start()
    try:
        http_port = await http_server.start() if http_server else None
        if on_ready:
            on_ready(name, port, http_port)
        else:
            http = f" http={http_port}" if http_server else ""
            print(f"{READY_LINE} model={name}{http} port={port}", flush=True)
        await signalled.wait()
        log.info("stopping: finishing calls in flight")
    finally:
        await asyncio.gather(server.stop(grace_s), *([http_server.stop()] if http_server else []))
