"""``edgesplit serve``: the coordinator behind one KServe v2 endpoint, over a plan or a local cluster."""

from __future__ import annotations

import logging
from typing import Callable

from edgesplit.runtime.config import WAIT_READY_S, WorkerConfig
from edgesplit.runtime.cluster import LocalCluster
from edgesplit.runtime.coordinator import remote_coordinator
from edgesplit.runtime.plan import has_local_workers, load_plan
from edgesplit.runtime.streams import StreamRouter, is_group_file, load_groups
from edgesplit.runtime.tuning import defer_to_workers
from edgesplit.runtime.transport.grpc_server import KServeServer, ServerSecurity
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
    share_port: bool = False,
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """``worker_poll_ms``: the local workers' ``--poll-ms`` (``local_export`` only). ``wait_ready_s``: how long to
    wait for every worker; then a plan with ``on_missing: degrade`` starts without the missing ones. ``share_port``:
    one of several coordinators on this address (``runtime/coordinators.py``). ``on_ready(model, port)`` is called
    once it serves; without it, a ready line is printed."""
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
            server = KServeServer([model], host, port, security, limits, "edgesplit-coordinator", share_port)
            await server.serve_until_signalled(
                f"{READY_LINE} model={model.meta.name} port={{port}}",
                on_ready=on_ready and (lambda port: on_ready(model.meta.name, port)),
            )
        finally:
            for coordinator in coordinators:
                await coordinator.close()
    finally:
        if cluster:
            cluster.stop()
