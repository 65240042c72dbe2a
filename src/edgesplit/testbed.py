"""Emulated edge devices on one machine: each device of a fleet file is a Linux network namespace behind a
shaped link, with its CPU speed emulated by a cgroup quota, running its own ``edgesplit worker``.

What is emulated (docs/testbed.md): the link's rate, both ways (a ``tbf`` qdisc on each end of a veth
pair), and the device's compute speed relative to this machine (a cgroup v1 CPU quota: the device's
per-core peak GFLOP/s over one core of this machine, measured at ``up``; an FPGA board's accelerator is
not emulated: its worker gets the fleet entry's ``cpu_share``, or one core). What is not: propagation
delay and loss (this kernel has no ``netem``), memory size, and contention between devices beyond the
machine's own cores.

Everything made is named after the testbed (``es-NAME-I`` namespaces, ``esNAMEIh``/``esNAMEId`` links,
``edgesplit-testbed/NAME-I`` cgroups) and recorded in ``/run/edgesplit/testbed-NAME.json``; ``down``
removes it from that record and from the names, so a crashed or interrupted run is cleaned by the next
``up`` or ``down``. Worker processes are found through their cgroup. Needs root.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgesplit.errors import EdgesplitError

log = logging.getLogger(__name__)

STATE_DIR = Path("/run/edgesplit")
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_PARENT = "edgesplit-testbed"
MIN_QUOTA_US = 1000  # the kernel's smallest CFS quota (and period)
SUBNET = "10.77"  # device i: 10.77.i.0/30, this machine .1, the device .2
WORKER_PORT = 50051
TBF_LATENCY_MS = 50  # how long a packet may wait in the shaper's queue before it is dropped
NAME_RE = re.compile(r"[a-z0-9]{1,6}")
DEFAULT_NAME = "tb"


@dataclass(frozen=True)
class EmulatedDevice:
    index: int
    device: str  # catalog name
    namespace: str
    host_if: str  # this machine's end of the link
    device_if: str
    host_ip: str
    device_ip: str
    link_mbps: float
    cpu_share: float  # of one core of this machine

    @property
    def address(self) -> str:
        return f"{self.device_ip}:{WORKER_PORT}"


def host_core_gflops(seconds: float = 0.3) -> float:
    """Float32 GFLOP/s of one core of this machine (a numpy matrix product on one thread, best of a few)."""
    import numpy as np

    from edgesplit.runtime.tuning import limit_threads

    limit_threads()
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ a
        best = max(best, 2 * 256**3 / (time.perf_counter() - t0) / 1e9)
    return best


def cfs_period_us(share: float) -> int:
    """The shortest CFS period whose quota (``share`` of it) the kernel accepts: a device out of quota waits at most
    a period less its share, so its speed is its share's even over a few milliseconds of work (a 10 ms period let a
    half-core device run a 3 ms part at full speed, and a 100 ms one stalled it up to 50 ms)."""
    return max(MIN_QUOTA_US, math.ceil(MIN_QUOTA_US / share))


def layout(
    fleet_path: str | Path, name: str, link_mbps: float | None = None, devices_dir: str | None = None
) -> list[EmulatedDevice]:
    """The emulated devices of a fleet file: names, addresses, link rates and CPU shares (nothing is created)."""
    from edgesplit.codesign.fleet import load_fleet

    if not NAME_RE.fullmatch(name):
        raise EdgesplitError(f"testbed name {name!r}: 1 to 6 lower-case letters or digits (it goes into interface names)")
    fleet = load_fleet(fleet_path, devices_dir)
    if len(fleet.devices) > 250:
        raise EdgesplitError(f"{fleet_path}: {len(fleet.devices)} devices; the testbed emulates at most 250")
    core = host_core_gflops()
    out = []
    for i, fd in enumerate(fleet.devices):
        d, share = fd.device, fd.cpu_share
        if share is None:
            share = min(1.0, d.peak_gflops / d.cores / core) if d.kind == "cpu" else 1.0
        if not 0.01 <= float(share) <= 1.0:
            raise EdgesplitError(f"{fleet_path}: cpu_share of device {i} must be between 0.01 and 1, got {share}")
        out.append(
            EmulatedDevice(
                index=i,
                device=d.name,
                namespace=f"es-{name}-{i}",
                host_if=f"es{name}{i}h",
                device_if=f"es{name}{i}d",
                host_ip=f"{SUBNET}.{i}.1",
                device_ip=f"{SUBNET}.{i}.2",
                link_mbps=float(link_mbps or fleet.link_mbps),
                cpu_share=round(float(share), 3),
            )
        )
    return out


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise EdgesplitError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def tbf_burst_bytes(mbps: float) -> int:
    """The shaper's burst: 1 ms of traffic, at least two full Ethernet frames (a larger one lets a whole small
    request through at once and hides the link's serialisation time)."""
    return max(3028, int(mbps * 1e6 / 8 / 1000))


def _shape(dev: str, mbps: float, namespace: str | None = None) -> None:
    """A token bucket at ``mbps`` on ``dev``'s egress, with :func:`tbf_burst_bytes`."""
    burst_bytes = tbf_burst_bytes(mbps)
    ns = ("-n", namespace) if namespace else ()
    _run("tc", *ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{mbps}mbit", "burst", str(burst_bytes),
         "latency", f"{TBF_LATENCY_MS}ms")  # fmt: skip


class Testbed:
    """``up`` makes the devices of a fleet file, ``start_worker`` runs a worker in one, ``down`` removes it all.
    A context manager: ``with Testbed(...) as tb:`` is up inside, down after (on errors and Ctrl-C too)."""

    def __init__(
        self, fleet_path: str | Path, name: str = DEFAULT_NAME, link_mbps: float | None = None, devices_dir: str | None = None
    ):
        self.name = name
        self.fleet_path, self.link_mbps, self.devices_dir = fleet_path, link_mbps, devices_dir
        self.devices: list[EmulatedDevice] = []
        self.workers: dict[int, int] = {}  # device index -> pid
        self._procs: dict[int, subprocess.Popen] = {}

    @property
    def state_path(self) -> Path:
        return STATE_DIR / f"testbed-{self.name}.json"

    def _cgroup(self, i: int) -> Path:
        return CGROUP_CPU / CGROUP_PARENT / f"{self.name}-{i}"

    def up(self) -> list[EmulatedDevice]:
        check_root()
        if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
            raise EdgesplitError(f"no cgroup v1 CPU controller at {CGROUP_CPU}; the testbed emulates device speed with it")
        down(self.name)  # whatever a crashed run of this name left
        self.devices = layout(self.fleet_path, self.name, self.link_mbps, self.devices_dir)
        self._save()  # recorded before anything exists, so an interrupted up is cleaned by down
        try:
            for d in self.devices:
                _run("ip", "netns", "add", d.namespace)
                _run("ip", "link", "add", d.host_if, "type", "veth", "peer", "name", d.device_if)
                _run("ip", "link", "set", d.device_if, "netns", d.namespace)
                _run("ip", "addr", "add", f"{d.host_ip}/30", "dev", d.host_if)
                _run("ip", "link", "set", d.host_if, "up")
                _run("ip", "-n", d.namespace, "addr", "add", f"{d.device_ip}/30", "dev", d.device_if)
                _run("ip", "-n", d.namespace, "link", "set", d.device_if, "up")
                _run("ip", "-n", d.namespace, "link", "set", "lo", "up")
                _shape(d.host_if, d.link_mbps)  # this machine -> device
                _shape(d.device_if, d.link_mbps, d.namespace)  # device -> this machine
                cg = self._cgroup(d.index)
                cg.mkdir(parents=True, exist_ok=True)
                period_us = cfs_period_us(d.cpu_share)
                (cg / "cpu.cfs_period_us").write_text(str(period_us))
                (cg / "cpu.cfs_quota_us").write_text(str(max(MIN_QUOTA_US, round(d.cpu_share * period_us))))
        except BaseException:
            down(self.name)
            raise
        log.info("testbed %s up: %d devices", self.name, len(self.devices))
        return self.devices

    def start_worker(self, i: int, export: str | Path, part: str, die_with_us: bool = True, timeout_s: float = 60.0) -> str:
        """``edgesplit worker EXPORT --part PART`` inside device ``i``'s namespace and cgroup; its address when ready."""
        from edgesplit.runtime.worker import READY_LINE

        d = self.devices[i]
        log_path = STATE_DIR / f"testbed-{self.name}-{i}.log"
        # --insecure: the address exists only inside this testbed's namespace, on this machine
        cmd = ["ip", "netns", "exec", d.namespace, sys.executable, "-m", "edgesplit", "worker", str(Path(export).resolve()),
               "--part", part, "--host", d.device_ip, "--port", str(WORKER_PORT), "--insecure"]  # fmt: skip
        env = dict(os.environ)
        if die_with_us:
            env["EDGESPLIT_PARENT_PID"] = str(os.getpid())
        else:
            env.pop("EDGESPLIT_PARENT_PID", None)
        with open(log_path, "w") as log_file:  # the worker's ready line and its log, read back below
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=not die_with_us)  # fmt: skip
        self.workers[i], self._procs[i] = proc.pid, proc
        self._save()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if READY_LINE in log_path.read_text():
                # the device's speed from here on: its start (imports, loading the model) is not what is emulated
                (self._cgroup(i) / "cgroup.procs").write_text(str(proc.pid))
                return d.address
            if proc.poll() is not None:
                raise EdgesplitError(f"the worker in {d.namespace} exited at start: {log_path.read_text().strip()[-400:]}")
            time.sleep(0.1)
        raise EdgesplitError(f"the worker in {d.namespace} did not come up in {timeout_s:.0f} s (log: {log_path})")

    def stop_worker(self, i: int, timeout_s: float = 10.0) -> None:
        """Stop device ``i``'s worker (SIGTERM: it finishes the calls in flight), killing it after ``timeout_s``."""
        proc = self._procs.pop(i)
        self.workers.pop(i, None)
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._save()

    def kill_worker(self, i: int) -> None:
        """Kill device ``i``'s worker at once (SIGKILL: the device unplugged); ``stop_worker`` reaps it."""
        self._procs[i].kill()

    def link_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes each link has carried so far, read from this machine's end of it."""
        out = {}
        for d in self.devices:
            stats = Path("/sys/class/net") / d.host_if / "statistics"
            out[d.namespace] = {
                "to_device": int((stats / "tx_bytes").read_text()),
                "from_device": int((stats / "rx_bytes").read_text()),
            }
        return out

    def down(self) -> None:
        down(self.name)
        for proc in self._procs.values():  # reaped: killed by down
            proc.wait()
        self._procs.clear()
        self.workers.clear()

    def _save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {"name": self.name, "devices": [asdict(d) for d in self.devices], "workers": self.workers}
        self.state_path.write_text(json.dumps(state, indent=1))

    def __enter__(self) -> "Testbed":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()


def check_root() -> None:
    if os.geteuid() != 0:
        raise EdgesplitError("the testbed needs root (network namespaces, qdiscs, cgroups): run it with sudo")


def down(name: str) -> list[str]:
    """Remove everything testbed ``name`` made: its workers, namespaces (their links go with them), cgroups and
    record, whether or not the record survived. Returns what was removed."""
    check_root()
    removed = []
    state = STATE_DIR / f"testbed-{name}.json"
    recorded = json.loads(state.read_text()).get("workers", {}).values() if state.exists() else []
    for pid in recorded:  # workers not yet moved into their cgroup
        try:
            args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            if "worker" in args and any(a.startswith(f"{SUBNET}.") for a in args):  # still ours, not a reused pid
                os.kill(int(pid), signal.SIGKILL)
                removed.append(f"process {pid}")
        except (ProcessLookupError, FileNotFoundError):
            pass
    groups = sorted((CGROUP_CPU / CGROUP_PARENT).glob(f"{name}-*")) if (CGROUP_CPU / CGROUP_PARENT).exists() else []
    for cg in groups:  # the workers, by the cgroup they were started in
        for pid in (cg / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
                removed.append(f"process {pid}")
            except ProcessLookupError:
                pass
    for cg in groups:
        for _ in range(50):  # a killed process leaves its cgroup when it has exited
            if not (cg / "cgroup.procs").read_text().strip():
                break
            time.sleep(0.02)
        cg.rmdir()
        removed.append(f"cgroup {cg.name}")
    parent = CGROUP_CPU / CGROUP_PARENT
    if parent.exists() and not any(p.is_dir() for p in parent.iterdir()):  # no other testbed is up
        parent.rmdir()
    for ns in _run("ip", "netns", "list").stdout.split("\n"):
        ns = ns.split(" ")[0]
        if ns.startswith(f"es-{name}-"):
            _run("ip", "netns", "delete", ns)
            removed.append(f"namespace {ns}")
    for line in _run("ip", "-o", "link", "show").stdout.splitlines():  # a link whose namespace was never made
        ifname = line.split(":")[1].strip().split("@")[0]
        if re.fullmatch(rf"es{name}\d+[hd]", ifname):  # also one the kernel is still removing with its namespace
            _run("ip", "link", "delete", ifname, check=False)
            removed.append(f"link {ifname}")
    for path in [STATE_DIR / f"testbed-{name}.json", *STATE_DIR.glob(f"testbed-{name}-*.log")]:
        if path.exists():
            path.unlink()
    return list(dict.fromkeys(removed))  # a worker is found both by its record and by its cgroup
