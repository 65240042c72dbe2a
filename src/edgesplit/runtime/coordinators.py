"""Several coordinator processes behind one address: ``edgesplit serve --coordinators N``.

One coordinator is one Python process on one core (``docs/benchmarks.md``: its requests/s). Past that, N
coordinator processes bind the same host:port with ``SO_REUSEPORT`` and Linux hands each new connection to one of
them (by a hash of the connection's addresses): a client's calls stay on the coordinator its connection landed on,
and many clients spread over all of them. Any KServe v2 client works unchanged. Each coordinator holds its own
connections to the workers, and its own health view of them.

This process supervises: it starts the local workers once (``--local``) and gives every coordinator the same
plan, waits until all are serving before it prints the ready line, starts again a coordinator that dies (its
clients reconnect and land on the others meanwhile), and on SIGTERM/SIGINT stops them all, each finishing the
calls it has in flight.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.transport.grpc_server import ServerSecurity
from edgesplit.runtime.transport.limits import ServerLimits

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0  # a coordinator finishing its calls in flight (its own grace is 5 s), then it is killed
RESTART_DELAY_S = 1.0  # between a coordinator's death and its replacement: a crash loop costs little


def serve_coordinators(
    count: int,
    plan_path: str | None,
    local_export: str | None,
    host: str,
    port: int,
    security: ServerSecurity,
    limits: ServerLimits,
    worker_poll_ms: float,
    wait_ready_s: float,
    http_port: int | None,
    ready_line: str,
) -> None:
    """Run ``count`` coordinators of ``plan_path`` (or of local workers for ``local_export``) on ``host:port`` (and
    ``http_port``) until SIGTERM/SIGINT; print ``ready_line`` (``{model}``, ``{http}``, ``{port}`` filled in) once
    all serve."""
    from edgesplit.runtime.cluster import LocalCluster

    security.check_bind(host)
    # port 0: one free port, held until every coordinator listens on it
    reserved = [_reserve(host, p) for p in (port, *([http_port] if http_port is not None else []))]
    port, http_port = reserved[0].getsockname()[1], reserved[1].getsockname()[1] if http_port is not None else None
    stopping: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stopping.append(signum)) for sig in (signal.SIGTERM, signal.SIGINT)}
    cluster, tmp, children = None, None, []
    try:
        if local_export:
            cluster = LocalCluster(local_export, poll_ms=worker_poll_ms).start()
            tmp = tempfile.TemporaryDirectory(prefix="edgesplit-serve-")
            plan_path = str(Path(tmp.name) / "plan.yaml")
            cluster.plan().write(plan_path)
        args = (plan_path, host, port, security, limits, wait_ready_s, http_port)
        children = [_Coordinator(i, args) for i in range(count)]
        models = [c.wait_ready(wait_ready_s + 30.0, stopping) for c in children]
        for r in reserved:
            r.close()
        http = f" http={http_port}" if http_port is not None else ""
        print(ready_line.format(port=port, model=models[0], http=http), flush=True)
        _supervise(children, stopping)
    finally:
        for r in reserved:
            r.close()
        for c in children:
            c.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if cluster:
            cluster.stop()
        if tmp:
            tmp.cleanup()


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT and not listening (it takes no connections): picks the
    port when ``port`` is 0, and keeps another program's non-shared socket off it while the coordinators start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind((host, port))
    except OSError as err:
        s.close()
        raise EdgesplitError(f"cannot listen on {host}:{port} ({err.strerror}); pick another --port") from None
    return s


def _supervise(children: list["_Coordinator"], stopping: list[int]) -> None:
    """Until a signal: a coordinator that exits is started again."""
    while not stopping:
        multiprocessing.connection.wait([c.process.sentinel for c in children], timeout=0.5)
        for c in children:
            if not stopping and not c.process.is_alive():
                log.warning("coordinator %d exited (code %s); starting it again", c.index, c.process.exitcode)
                time.sleep(RESTART_DELAY_S)
                c.start()


class _Coordinator:
    """One coordinator process, and the pipe on which it says it serves (or why it cannot)."""

    def __init__(self, index: int, args: tuple):
        self.index, self.args = index, args
        self.start()

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a parent that may hold gRPC or ONNX Runtime threads
        self.messages, child_end = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_coordinator_main, args=(*self.args, child_end, os.getpid()), daemon=False)
        self.process.start()
        child_end.close()

    def wait_ready(self, timeout_s: float, stopping: list[int]) -> str:
        """The model it serves, once it listens; its error as one line if it could not start."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not stopping:
            if self.messages.poll(0.2):
                try:
                    kind, text = self.messages.recv()
                except EOFError:
                    break
                if kind == "ready":
                    return text
                raise EdgesplitError(f"coordinator {self.index} could not start: {text}")
            if not self.process.is_alive():
                break
        if stopping:
            raise EdgesplitError("stopped while the coordinators were starting")
        raise EdgesplitError(
            f"coordinator {self.index} did not start within {timeout_s:.0f} s (exit code {self.process.exitcode}); "
            "see its log above"
        )

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: it stops accepting and finishes its calls in flight
        self.process.join(STOP_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.messages.close()


def _coordinator_main(plan_path, host, port, security, limits, wait_ready_s, http_port, messages, parent_pid) -> None:
    """A coordinator process: the plan served on the shared port; says on ``messages`` that it serves, or why not."""
    from edgesplit.runtime.tuning import tune_runtime_process
    from edgesplit.runtime.worker import PARENT_PID_ENV, die_with_parent

    os.environ[PARENT_PID_ENV] = str(parent_pid)
    die_with_parent()  # no coordinator outlives its supervisor
    tune_runtime_process()
    import asyncio

    from edgesplit.runtime.serve import serve

    try:
        asyncio.run(
            serve(
                plan_path,
                None,
                host,
                port,
                security,
                limits,
                wait_ready_s=wait_ready_s,
                http_port=http_port,
                share_port=True,
                on_ready=lambda model, port, http_port: messages.send(("ready", model)),
            )
        )
    except EdgesplitError as err:
        messages.send(("error", str(err)))
        raise SystemExit(2) from None
