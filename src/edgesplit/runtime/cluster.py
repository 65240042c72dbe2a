"""The embedded default: one worker process per part on 127.0.0.1, owned by a :class:`LocalCluster`.

    with LocalCluster(export_dir) as cluster:      # starts workers, waits until all are ready
        with connect(cluster.plan()) as client:
            client.infer(images)
                                                   # workers stopped here: SIGTERM, then SIGKILL
Each worker is pinned to its own core when there are at least as many cores as
workers, runs ONNX Runtime with one thread, and asks Linux for SIGTERM when this
process dies (parent-death signal), so no worker outlives its cluster, also after SIGKILL.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.transport import TRANSPORTS
from edgesplit.manifest import load_manifest
from edgesplit.runtime.plan import PartPlacement, Plan
from edgesplit.runtime.tuning import SINGLE_THREAD_ENV
from edgesplit.runtime.transport.ipc import SCHEME as IPC_SCHEME
from edgesplit.runtime.worker import PARENT_PID_ENV, READY_LINE

log = logging.getLogger(__name__)


@dataclass
class WorkerProcess:
    part: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    cpus: tuple[int, ...] | None
    unix_socket: Path | None = None

    @property
    def address(self) -> str:
        """The worker's gRPC address (what a stock KServe v2 client uses)."""
        return f"127.0.0.1:{self.port}"

    @property
    def plan_address(self) -> str:
        """Where the coordinator reaches it: the Unix socket when it has one."""
        return f"{IPC_SCHEME}{self.unix_socket}" if self.unix_socket else self.address

    def alive(self) -> bool:
        return self.proc.poll() is None


class LocalCluster:
    def __init__(
        self,
        export_dir: str | Path,
        parts: Sequence[str] | None = None,
        threads: int = 1,
        pin: bool = True,
        startup_timeout_s: float = 60.0,
        worker_args: Sequence[str] = (),
        log_dir: str | Path | None = None,
        timeout_ms: float = 2000.0,
        input_dtype: str = "uint8",
        groups: Sequence[Sequence[str]] | None = None,
        extra_args: dict[str, Sequence[str]] | None = None,
        transport: str = "ipc",
        poll_ms: float = 0.0,
    ):
        """``parts``: one worker each (default: every part workers serve). ``groups``: instead, one worker per
        group of parts (a device serving several FC blocks). ``extra_args``: more worker arguments by worker
        name (the group's parts joined by commas), e.g. fault injection for one device. ``transport``: how the
        plan reaches the workers: ``ipc`` (a Unix socket each, the fast path) or ``grpc`` (loopback TCP);
        every worker serves gRPC either way. ``poll_ms``: the workers' ``--poll-ms`` (Unix sockets only)."""
        if transport not in TRANSPORTS:
            raise EdgesplitError(f"unknown transport {transport!r}; use one of {', '.join(TRANSPORTS)}")
        self.transport = transport
        self.export_dir = Path(export_dir)
        manifest = load_manifest(self.export_dir)  # verify every file once, here
        groups = [list(g) for g in groups] if groups else [[p] for p in (parts or manifest.remote_parts)]
        self.groups = {",".join(g): g for g in groups}
        self.parts = [p for g in groups for p in g]
        self.threads, self.pin, self.startup_timeout_s = threads, pin, startup_timeout_s
        self.worker_args = list(worker_args)
        self.poll_ms = poll_ms
        self.extra_args = {k: list(v) for k, v in (extra_args or {}).items()}
        self.timeout_ms, self.input_dtype = timeout_ms, input_dtype
        self._tmp = None if log_dir else tempfile.TemporaryDirectory(prefix="edgesplit-cluster-")
        self.log_dir = Path(log_dir) if log_dir else Path(self._tmp.name)
        # sockets in a private folder of their own: a short path (108-byte limit), mode 0700
        self._sockets = tempfile.TemporaryDirectory(prefix="edgesplit-ipc-") if transport == "ipc" else None
        self.workers: dict[str, WorkerProcess] = {}

    def _cpu_plan(self) -> list[tuple[int, ...] | None]:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        n = len(self.groups)
        if not self.pin or len(cpus) < n * self.threads:
            return [None] * n
        return [tuple(cpus[i * self.threads : (i + 1) * self.threads]) for i in range(n)]

    def start_worker(self, part: str, cpus: tuple[int, ...] | None = None, port: int = 0) -> WorkerProcess:
        """Start (or restart) the worker named ``part`` (a part, or a group's parts joined by commas)
        and wait for its ready line."""
        log_path = self.log_dir / f"{part}.log"
        cmd = [
            sys.executable,
            "-m",
            "edgesplit",
            "worker",
            str(self.export_dir),
            "--part",
            part,
            "--port",
            str(port),
            "--threads",
            str(self.threads),
            *self.worker_args,
            *self.extra_args.get(part, []),
        ]
        if cpus:
            cmd += ["--cpus", ",".join(map(str, cpus))]
        sock = Path(self._sockets.name) / f"w{list(self.groups).index(part)}.sock" if self._sockets else None
        if sock:
            cmd += ["--unix-socket", str(sock)] + (["--poll-ms", str(self.poll_ms)] if self.poll_ms else [])
        env = {**os.environ, **SINGLE_THREAD_ENV, "PYTHONUNBUFFERED": "1", PARENT_PID_ENV: str(os.getpid())}
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, stdin=subprocess.DEVNULL, env=env)
        port = self._wait_ready(proc, part, log_path)
        worker = WorkerProcess(part, proc, port, log_path, cpus, sock)
        self.workers[part] = worker
        return worker

    def _wait_ready(self, proc: subprocess.Popen, part: str, log_path: Path) -> int:
        found: list[int] = []

        def read():
            for raw in proc.stdout:  # keeps draining after the ready line, so the pipe never fills
                line = raw.decode(errors="replace")
                if line.startswith(READY_LINE) and not found:
                    found.append(int(line.split("port=")[1].split()[0]))

        threading.Thread(target=read, name=f"stdout-{part}", daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not found:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
                raise EdgesplitError(
                    f"worker {part} exited with code {proc.returncode} before it was ready"
                    + (f": {tail[0]}" if tail else "")
                    + f" (log: {log_path})"
                )
            if time.monotonic() > deadline:
                _stop_process(proc)
                raise EdgesplitError(f"worker {part} not ready after {self.startup_timeout_s:.0f} s (log: {log_path})")
            time.sleep(0.02)
        return found[0]

    def start(self) -> "LocalCluster":
        try:
            for part, cpus in zip(self.groups, self._cpu_plan()):
                w = self.start_worker(part, cpus)
                log.info("worker %s ready on %s (pid %d, cpus %s)", part, w.address, w.proc.pid, cpus)
        except BaseException:
            self.stop()
            raise
        return self

    def plan(self, **settings) -> Plan:
        """A plan placing each part on its local worker; ``settings`` override Plan fields (on_missing, ...)."""
        address = {p: self.workers[name].plan_address for name, group in self.groups.items() for p in group}
        return Plan(
            str(self.export_dir),
            tuple(PartPlacement(p, (address[p],)) for p in self.parts),
            **{"timeout_ms": self.timeout_ms, "input_dtype": self.input_dtype, **settings},
        )

    def dead(self) -> list[str]:
        return [p for p, w in self.workers.items() if not w.alive()]

    def kill(self, part: str) -> None:
        """Kill a worker hard (SIGKILL), as if its device were unplugged."""
        self.workers[part].proc.kill()
        self.workers[part].proc.wait()

    def restart(self, part: str) -> WorkerProcess:
        """Start ``part`` again on its old port and CPUs."""
        old = self.workers[part]
        _stop_process(old.proc)
        return self.start_worker(part, old.cpus, old.port)

    def stop(self) -> None:
        for w in self.workers.values():
            if w.alive():
                w.proc.terminate()  # graceful: calls in flight finish
        for w in self.workers.values():
            _stop_process(w.proc)
        self.workers.clear()
        for tmp in ("_tmp", "_sockets"):
            if getattr(self, tmp, None) is not None:
                getattr(self, tmp).cleanup()
                setattr(self, tmp, None)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):
        if getattr(self, "workers", None):
            self.stop()


def _stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()
