"""TLS, graceful stop, hedged requests and the plan command, with real worker processes."""

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import threading
import time

from dataclasses import replace

import numpy as np
import pytest

import edgesplit
from edgesplit.runtime.cluster import LocalCluster
from edgesplit.runtime.plan import load_plan
from edgesplit.runtime.transport.grpc_peer import ClientSecurity, GrpcPeer
from edgesplit.runtime.errors import PartUnavailable

HEDGE_MS = 50  # checked: with hedging off this test fails (the slow replica takes 2 s)
X = {"input": np.zeros((1, 1, 28, 28), np.float32)}


def _call(address, security=ClientSecurity(), timeout=10):
    async def go():
        w = GrpcPeer(address, "branch0", security)
        try:
            return await w.infer(X, timeout_s=timeout)
        finally:
            await w.close()

    return asyncio.run(go())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
def test_tls_worker_on_loopback(random_export, tmp_path):
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    args = ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
    with LocalCluster(random_export, parts=["branch0"], worker_args=args) as c:
        address = c.workers["branch0"].address
        assert _call(address, ClientSecurity(tls_ca=str(tmp_path / "cert.pem"))).outputs["features"].shape == (1, 32)
        with pytest.raises(PartUnavailable):  # plaintext to a TLS server fails cleanly
            _call(address, timeout=3)


def test_sigterm_lets_the_call_in_flight_finish(random_export):
    with LocalCluster(random_export, parts=["branch0"], worker_args=["--inject-delay-ms", "1500"]) as c:
        w = c.workers["branch0"]
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("r", _call(w.address)))
        t.start()
        time.sleep(0.5)  # the call is inside its injected delay
        w.proc.send_signal(signal.SIGTERM)
        t.join(15)
        assert result["r"].outputs["features"].shape == (1, 32)
        assert w.proc.wait(10) == 0


def test_hedged_request_uses_the_fast_replica(random_export, images_u8):
    # branch0 has two replicas: the first always takes 2 s more, the second is normal
    with (
        LocalCluster(random_export, parts=["branch0"], worker_args=["--inject-delay-ms", "2000"]) as slow,
        LocalCluster(random_export, parts=["branch0", "branch1"]) as fast,
    ):
        plan = fast.plan(hedge_ms=HEDGE_MS, timeout_ms=5000)
        slow_addr = slow.workers["branch0"].address
        parts = tuple(replace(p, replicas=(slow_addr, *p.replicas)) if p.name == "branch0" else p for p in plan.parts)
        plan = replace(plan, parts=parts)
        with edgesplit.connect(plan) as client:
            for _ in range(4):  # the round-robin start alternates replicas; hedging covers the slow one
                t0 = time.monotonic()
                r = client.infer_result(images_u8)
                assert time.monotonic() - t0 < 1.0 and not r.parameters["degraded"]


@pytest.fixture
def images_u8():
    from edgesplit.data import load_dataset

    return np.ascontiguousarray(load_dataset("fashion-mnist", "test").data[:1].transpose(0, 3, 1, 2))


def test_plan_command(random_export, tmp_path):
    out = tmp_path / "plan.yaml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesplit",
            "plan",
            str(random_export),
            "--workers",
            "a:1",
            "b:2",
            "--speeds",
            "1,2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    plan = load_plan(out)
    assert {p.name: p.replicas for p in plan.parts} == {"branch0": ("b:2",), "branch1": ("a:1",)}
    proc = subprocess.run(
        [sys.executable, "-m", "edgesplit", "serve", "--plan", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_serve_accounts_for_the_time(tmp_path):
    """`edgesplit bench serve` on a small input: both transports measured, and the breakdown adds up."""
    from edgesplit.cli import main

    out = tmp_path / "serve.json"
    assert (
        main(["bench", "serve", "--input", "1x32x32", "--requests", "12", "--rounds", "1", "--block", "5", "--json", str(out)])
        == 0
    )
    r = json.loads(out.read_text())
    assert r["transport"] == "ipc" and set(r["transports"]) == {"ipc", "grpc"}
    for t, m in r["transports"].items():
        b = m["breakdown_ms"]
        slowest_arrival = max(p["compute"] + p["handler"] + p["transport"] for p in b["parts"].values())
        assert m["end_to_end_p50_ms"] > max(m["branch_compute_p50_ms"].values()) > 0
        # medians of the parts of one interval, not of the interval itself: they add up only roughly
        assert slowest_arrival < b["end_to_end"] + 0.5 and b["coordinator"] >= 0
        assert set(m["cpu_ms_per_request"]) == {"coordinator", "branch0", "branch1"}
        assert m["throughput_speedup"] == pytest.approx(m["split_throughput_rps"] / m["unsplit_throughput_rps"])
        round_ = r["per_round"][0][t]
        assert round_["unsplit"]["latency"]["n"] == 12 and round_["branch_compute"]["branch0"]["n"] == 12
        assert m["overhead_ratio"] == pytest.approx(m["end_to_end_p50_ms"] / max(m["branch_compute_p50_ms"].values()))
        hops = b["hops"]  # the traced split of each part's transport
        assert set(hops["parts"]) == set(b["parts"]) and hops["after_last_answer"] >= 0
        for name, h in hops["parts"].items():
            assert min(h.values()) >= 0, h
            assert sum(h.values()) <= b["parts"][name]["transport"] + 1.0  # medians of parts of the same interval
    assert r["throughput_speedup"] > 0 and r["unsplit_throughput_rps"] > 0


def test_the_part_that_usually_answers_last_is_asked_first(random_export, images_u8, monkeypatch):
    """branch1's worker takes 30 ms more per call (a slower device): after its first answers the coordinator
    sends it each request before branch0, whose answer would otherwise not be waited for anyway."""
    import edgesplit.runtime.coordinator as coordinator_module

    monkeypatch.setattr(coordinator_module, "_current_cpu", lambda: None)  # the order by core is another test's
    with (
        LocalCluster(random_export, extra_args={"branch1": ["--inject-delay-ms", "30"]}) as c,
        edgesplit.connect(c.plan()) as client,
    ):
        client.infer(images_u8)  # branch0 first: nothing is known yet
        client.coordinator.trace = True
        first = client.infer_result(images_u8).parameters
        assert first["branch1_sent_ms"] < first["branch0_sent_ms"]
        assert client.coordinator.stats.typical_ms["branch1"] > client.coordinator.stats.typical_ms["branch0"] + 20


def test_a_worker_pinned_to_the_coordinators_core_is_asked_last(random_export, images_u8, monkeypatch):
    """Unix socket peers learn their worker's CPUs from the socket; a stage asks the worker pinned to the core the
    coordinator runs on after the others (woken first, it would take that core before the other requests leave)."""
    import os

    import edgesplit.runtime.coordinator as coordinator_module

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores to pin 2 workers")
    with LocalCluster(random_export) as c, edgesplit.connect(c.plan()) as client:
        client.infer(images_u8)  # connects
        peers = {name: hs[0].peer for name, hs in client.coordinator.peers.items()}
        assert {name: p.cpus for name, p in peers.items()} == {name: frozenset(w.cpus) for name, w in c.workers.items()}
        client.coordinator.trace = True
        for name, w in c.workers.items():
            monkeypatch.setattr(coordinator_module, "_current_cpu", lambda cpu=w.cpus[0]: cpu)
            p = client.infer_result(images_u8).parameters
            other = next(n for n in c.workers if n != name)
            assert p[f"{name}_sent_ms"] > p[f"{other}_sent_ms"], name


def test_the_coordinators_thread_defers_to_local_workers(random_export, images_u8):
    """With workers on this machine the blocking client's coordinator thread runs under SCHED_BATCH (it waits for a
    worker's time slice instead of cutting it); a thread's policy is restored after ``deferring_to_workers``; a
    plan only reaching other machines is not local."""
    import os

    from edgesplit.runtime.plan import PartPlacement, Plan, has_local_workers
    from edgesplit.runtime.tuning import deferring_to_workers

    if not hasattr(os, "SCHED_BATCH"):
        pytest.skip("no SCHED_BATCH on this OS")
    with LocalCluster(random_export) as c, edgesplit.connect(c.plan()) as client:
        assert has_local_workers(c.plan())
        client.infer(images_u8)
        assert os.sched_getscheduler(client._thread.native_id) == os.SCHED_BATCH
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread is left alone
    seen = []

    def in_a_thread():
        with deferring_to_workers() as applied:
            seen.append((applied, os.sched_getscheduler(0)))
        seen.append(os.sched_getscheduler(0))

    t = threading.Thread(target=in_a_thread)
    t.start()
    t.join()
    assert seen == [(True, os.SCHED_BATCH), os.SCHED_OTHER]
    remote = Plan(
        str(random_export), (PartPlacement("branch0", ("10.0.0.11:50051",)), PartPlacement("branch1", ("jetson.lan:50051",)))
    )
    assert not has_local_workers(remote)
    assert has_local_workers(replace(remote, parts=(*remote.parts[:1], PartPlacement("branch1", ("localhost:50052",)))))


def test_more_requests_in_flight_than_a_workers_streams_over_grpc(random_export, images_u8):
    """A worker takes 16 calls at once on a connection and resets the rest (REFUSED_STREAM); with 40 requests in
    flight the coordinator keeps under that and every request is answered exactly (they were failed before)."""
    from edgesplit.runtime.client import AsyncClient
    from edgesplit.runtime.transport.grpc_peer import CALLS_PER_PEER
    from edgesplit.runtime.transport.grpc_server import STREAMS_PER_CONNECTION

    assert CALLS_PER_PEER < STREAMS_PER_CONNECTION

    async def go(plan):
        client = await AsyncClient.connect(plan)
        try:
            return await asyncio.gather(*(client.infer_result(images_u8) for _ in range(200)), return_exceptions=True)
        finally:
            await client.close()

    with LocalCluster(random_export, pin=False, transport="grpc") as cluster:
        results = asyncio.run(go(cluster.plan()))
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, failed[:3]
    assert not any(r.parameters.get("degraded") for r in results)
