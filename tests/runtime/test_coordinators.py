"""Several coordinator processes behind one address (`edgesplit serve --coordinators N`), with real workers, each
client on a gRPC connection of its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import numpy as np

from edgesplit.data.datasets import load_dataset
from edgesplit.runtime.local import LocalModel
from edgesplit.runtime.transport.codec import parse_response, serialize_request


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _coordinator_pids(serve_pid: int) -> set[int]:
    """The supervisor's coordinator processes (not its workers, not multiprocessing's resource tracker)."""
    pids = set()
    for p in _children(serve_pid):
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmd:
            pids.add(p)
    return pids


def _established(pid: int, port: int) -> int:
    """TCP connections on ``port`` that process ``pid`` holds, accepted (its end is the local port)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):  # gRPC's sockets are IPv6 ones, IPv4 addresses mapped
        for line in open(f"/proc/{pid}/net/{table}").read().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            count += local_port == port and state == "01" and inode in inodes
    return count


def _client(port: int) -> grpc.Channel:
    # its own connection: gRPC would otherwise share one between channels to the same address
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


def _infer(channel: grpc.Channel, x: np.ndarray) -> np.ndarray:
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    outputs, _ = parse_response(call(serialize_request("resnet18-split2", {"input": x}), timeout=20))
    return outputs["logits"]


def _infer_new_connection(port: int, x: np.ndarray) -> np.ndarray:
    """As a client does: a connection reset while a coordinator dies (one that was waiting in its accept queue)
    is UNAVAILABLE, and asked again."""
    for attempt in range(3):
        c = _client(port)
        try:
            return _infer(c, x)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                raise
        finally:
            c.close()


def test_coordinators_share_one_address_spread_connections_and_are_restarted(random_export, serving):
    images = load_dataset("fashion-mnist", "test").data[:2]  # (2, 28, 28, 1) uint8
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    local = LocalModel(random_export)
    want = local(local.prepare(images))
    with serving("--local", random_export, "--coordinators", 2) as (proc, port):
        coordinators = _coordinator_pids(proc.pid)
        assert len(coordinators) == 2
        clients = [_client(port) for _ in range(16)]
        try:
            for c in clients:  # every answer right, whichever coordinator the connection landed on
                assert np.abs(_infer(c, x) - want).max() < 1e-4
            # 16 connections over 2 coordinators: each holds some (all on one: a chance of 2 in 65,536)
            held = {pid: _established(pid, port) for pid in coordinators}
            assert sum(held.values()) == 16 and min(held.values()) >= 1, held
        finally:
            for c in clients:
                c.close()

        lost = min(coordinators)
        os.kill(lost, signal.SIGKILL)  # a coordinator dies: the others answer, and it is started again
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (lost in (now := _coordinator_pids(proc.pid)) or len(now) < 2):
            assert np.abs(_infer_new_connection(port, x) - want).max() < 1e-4
            time.sleep(0.2)
        assert lost not in now and len(now) == 2
        c = _client(port)
        try:
            assert np.abs(_infer(c, x) - want).max() < 1e-4
        finally:
            c.close()
        everything = set(_children(proc.pid))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (left := [p for p in everything if os.path.exists(f"/proc/{p}")]):
        time.sleep(0.1)
    assert not left, [open(f"/proc/{p}/cmdline", "rb").read() for p in left]  # SIGTERM stopped every process it started


def test_bad_coordinator_settings_are_one_line(random_export):
    def serve(*argv):
        cmd = [sys.executable, "-m", "edgesplit", "serve", "--local", str(random_export), *map(str, argv)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        return proc.stderr

    assert "--coordinators takes 1 or more processes" in serve("--coordinators", 0)
    with socket.socket() as taken:  # a program that does not share its port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in serve("--coordinators", 2, "--port", port)
