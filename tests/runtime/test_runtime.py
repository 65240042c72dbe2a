"""The distributed runtime with real worker processes over real gRPC on loopback (and the local cluster's Unix sockets)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import edgesplit
from edgesplit.data import load_dataset
from edgesplit.errors import EdgesplitError
from edgesplit.runtime.cluster import LocalCluster
from edgesplit.runtime.errors import DeadlineExceeded, InferError, PartUnavailable
from edgesplit.runtime.local import LocalModel
from edgesplit.runtime.plan import load_plan, make_plan
from edgesplit.runtime.transport.grpc_peer import ClientSecurity, GrpcPeer
from edgesplit.runtime.transport.ipc_peer import UnixSocketPeer
from edgesplit.runtime.transport.grpc_server import ServerSecurity


@pytest.fixture(scope="module")
def images():
    test = load_dataset("fashion-mnist", "test")
    return test.data[:32]  # (32, 28, 28, 1) uint8


@pytest.fixture(scope="module")
def cluster(random_export):
    with LocalCluster(random_export, timeout_ms=5000) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with edgesplit.connect(cluster.plan()) as c:
        yield c


def nchw(images):
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def test_distributed_matches_in_process(random_export, client, images):
    local = LocalModel(random_export)
    ref = local(local.prepare(images))
    got_u8 = client.infer(nchw(images))  # uint8 pixels, normalised in the workers
    got_f32 = client.infer(local.prepare(images))  # float32, already normalised
    assert np.abs(got_u8 - ref).max() < 1e-4
    assert np.abs(got_f32 - ref).max() < 1e-4
    many = client.infer_many([nchw(images[i : i + 1]) for i in range(len(images))], in_flight=8)
    assert np.abs(np.concatenate([r.outputs["logits"] for r in many]) - ref).max() < 1e-4
    assert "branch0_compute_ms" in many[0].parameters


def _worker_call(address, model, inputs, **kw):
    async def go():
        w = GrpcPeer(address, model, **kw)
        try:
            return await w.infer(inputs, timeout_s=10)
        finally:
            await w.close()

    return asyncio.run(go())


@pytest.mark.parametrize("transport", ["grpc", "ipc"])
def test_bad_requests_flood_then_good_ones_all_correct(random_export, cluster, images, transport):
    """Every worker serves both transports; the same checks answer on each."""
    worker = cluster.workers["branch0"]
    peer, address = (GrpcPeer, worker.address) if transport == "grpc" else (UnixSocketPeer, worker.plan_address)
    local = LocalModel(random_export)
    good_x = local.prepare(images[:4])
    want = local.engines["branch0"].run({"input": good_x})["features"]
    bad = [
        ({"input": good_x[:, :, :20]}, "shape"),
        ({"input": good_x.astype(np.float64)}, "datatype float64"),
        ({"input": np.full_like(good_x, np.nan)}, "NaN or Inf"),
        ({"wrong": good_x}, "takes inputs"),
        ({"input": good_x.reshape(4, 28, 28, 1)}, "shape"),
    ]

    async def flood():
        w, other = peer(address, "branch0"), peer(address, "branch7")
        goods = []
        try:
            for round_ in range(20):
                for inputs, pattern in bad:
                    with pytest.raises(InferError, match=pattern):
                        await w.infer(inputs, timeout_s=10)
                with pytest.raises(InferError, match="unknown model 'branch7'"):
                    await other.infer({"input": good_x}, timeout_s=10)
                goods.append((await w.infer({"input": good_x}, timeout_s=10)).outputs["features"])
        finally:
            await w.close()
            await other.close()
        return goods

    for got in asyncio.run(flood()):
        assert np.abs(got - want).max() < 1e-5
    assert cluster.dead() == []


def test_byte_count_mismatch_and_oversized(random_export, tmp_path):
    from edgesplit.runtime.transport import codec
    from edgesplit.runtime.transport import kserve_v2_pb2_grpc as pb_grpc
    import grpc

    with LocalCluster(random_export, parts=["branch0"], worker_args=["--max-message-mb", "0.01"]) as c:
        address = c.workers["branch0"].address
        small = np.zeros((1, 1, 28, 28), np.float32)  # 3 KiB: fine
        assert _worker_call(address, "branch0", {"input": small}).outputs["features"].shape == (1, 32)
        with pytest.raises(InferError, match="over the limit"):
            _worker_call(address, "branch0", {"input": np.zeros((8, 1, 28, 28), np.float32)})  # 25 KiB
        req = codec.encode_request("branch0", {"input": small})
        req.raw_input_contents[0] = req.raw_input_contents[0][:-4]

        async def raw_call():
            async with grpc.aio.insecure_channel(address) as ch:
                await pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=10)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            asyncio.run(raw_call())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "3132 bytes" in info.value.details()
        assert c.dead() == []


def test_stock_kserve_client_can_query_worker(random_export, cluster, images):
    """tritonclient (a stock KServe v2 gRPC client) in its own process: its protos share our package name."""
    address = cluster.workers["branch0"].address
    local = LocalModel(random_export)
    x = local.prepare(images[:2])
    np.save(cluster.log_dir / "x.npy", x)
    script = textwrap.dedent(f"""
        import json, numpy as np
        import tritonclient.grpc as tc
        c = tc.InferenceServerClient("{address}")
        meta = c.get_model_metadata("branch0", as_json=True)
        x = np.load("{cluster.log_dir / "x.npy"}")
        inp = tc.InferInput("input", list(x.shape), "FP32"); inp.set_data_from_numpy(x)
        out = c.infer("branch0", [inp], outputs=[tc.InferRequestedOutput("features")]).as_numpy("features")
        print(json.dumps({{"live": c.is_server_live(), "ready": c.is_server_ready(), "model_ready": c.is_model_ready("branch0"),
                           "meta": meta, "server": c.get_server_metadata(as_json=True), "out": out.tolist()}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["live"] and r["ready"] and r["model_ready"]
    assert r["meta"]["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}
    assert r["server"]["name"] == "edgesplit-worker"
    want = local.engines["branch0"].run({"input": x})["features"]
    assert np.abs(np.array(r["out"], np.float32) - want).max() < 1e-5


def test_killed_worker_fail_policy_gives_clear_error_no_hang(random_export, images):
    with LocalCluster(random_export, timeout_ms=3000) as c, edgesplit.connect(c.plan(on_missing="fail")) as client:
        x = nchw(images[:1])
        ref = client.infer(x)
        futures = [client.submit(x) for _ in range(20)]
        c.kill("branch1")
        futures += [client.submit(x) for _ in range(20)]
        t0 = time.monotonic()
        outcomes = []
        for f in futures:
            try:
                outcomes.append(np.abs(f.result(timeout=10).outputs["logits"] - ref).max() < 1e-4)
            except PartUnavailable as err:
                assert "branch1" in str(err)
                outcomes.append("error")
        assert time.monotonic() - t0 < 10  # every request answered or failed: no hang
        assert outcomes[-1] == "error" and all(o in (True, "error") for o in outcomes)


def test_killed_worker_degrades_then_restarted_worker_is_used_again(random_export, images):
    with (
        LocalCluster(random_export, timeout_ms=3000) as c,
        edgesplit.connect(c.plan(on_missing="degrade", probe_interval_ms=100)) as client,
    ):
        x = nchw(images[:1])
        ref = client.infer(x)
        assert client.coordinator._blockwise  # the head runs per branch as branches answer
        c.kill("branch1")
        results = [client.infer_result(x) for _ in range(10)]
        for r in results:  # each answer is flagged: branch1's features were zeros
            assert r.parameters["degraded"] and r.parameters["missing"] == "branch1"
        local = LocalModel(random_export)
        feats = local.engines["branch0"].run({"input": local.prepare(images[:1])})["features"]
        zero_b1 = local.engines["head"].run({"features": np.concatenate([feats, np.zeros_like(feats)], 1)})["logits"]
        assert np.abs(results[-1].outputs["logits"] - zero_b1).max() < 1e-4
        c.restart("branch1")
        deadline = time.monotonic() + 5  # re-admitted by the readiness probe, reconnected within the 1 s backoff cap
        while client.infer_result(x).parameters["degraded"]:
            assert time.monotonic() < deadline, "restarted worker not used again within 5 s"
            time.sleep(0.05)
        assert np.abs(client.infer(x) - ref).max() < 1e-4


@pytest.mark.parametrize("policy", ["fail", "degrade"])
def test_frozen_worker_is_cut_off_by_deadline(random_export, images, policy):
    with LocalCluster(random_export, timeout_ms=500) as c, edgesplit.connect(c.plan(on_missing=policy)) as client:
        x = nchw(images[:1])
        client.infer(x)
        os.kill(c.workers["branch0"].proc.pid, signal.SIGSTOP)  # alive but never answers
        try:
            t0 = time.monotonic()
            if policy == "fail":
                with pytest.raises((DeadlineExceeded, PartUnavailable), match="branch0"):
                    client.infer(x)
            else:
                assert client.infer_result(x).parameters["degraded"]
            assert time.monotonic() - t0 < 2.0
        finally:
            os.kill(c.workers["branch0"].proc.pid, signal.SIGCONT)


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_no_orphans_after_stop_exception_and_sigkill(random_export, tmp_path):
    c = LocalCluster(random_export).start()
    pids = [w.proc.pid for w in c.workers.values()]
    c.stop()
    assert not any(_alive(p) for p in pids)
    with pytest.raises(RuntimeError):
        with LocalCluster(random_export) as c2:
            pids = [w.proc.pid for w in c2.workers.values()]
            raise RuntimeError("boom")
    assert not any(_alive(p) for p in pids)
    # the owner process is SIGKILLed: its workers get SIGTERM from the kernel
    script = (
        f"from edgesplit.runtime.cluster import LocalCluster\n"
        f"c = LocalCluster({str(random_export)!r}).start()\n"
        f"print(' '.join(str(w.proc.pid) for w in c.workers.values()), flush=True)\n"
        f"import time; time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in owner.stdout.readline().split()]
    assert pids and all(_alive(p) for p in pids)
    owner.kill()
    owner.wait()
    owner.stdout.close()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as stopped
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_worker_start_failure_is_reported(random_export, tmp_path):
    import shutil

    d = tmp_path / "e"
    shutil.copytree(random_export, d)
    (d / "branch1.onnx").write_bytes(b"broken")
    with pytest.raises(EdgesplitError, match="sha256"):
        LocalCluster(d)


def test_token_required_on_every_call(random_export, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "token").chmod(0o600)
    with LocalCluster(random_export, parts=["branch0"], worker_args=["--token-file", str(tmp_path / "token")]) as c:
        address = c.workers["branch0"].address
        x = {"input": np.zeros((1, 1, 28, 28), np.float32)}
        with pytest.raises(PartUnavailable, match="UNAUTHENTICATED"):
            _worker_call(address, "branch0", x)
        with pytest.raises(PartUnavailable, match="UNAUTHENTICATED"):
            _worker_call(address, "branch0", x, security=ClientSecurity(token="wrong"))
        assert _worker_call(address, "branch0", x, security=ClientSecurity(token="s3cret")).outputs["features"].shape == (1, 32)


def test_non_loopback_needs_tls_or_token():
    with pytest.raises(EdgesplitError, match="refusing to listen on 0.0.0.0"):
        ServerSecurity().check_bind("0.0.0.0")
    ServerSecurity(token="t").check_bind("0.0.0.0")
    ServerSecurity(insecure=True).check_bind("10.1.2.3")
    ServerSecurity().check_bind("127.0.0.1")
    ServerSecurity().check_bind("::1")


def test_worker_cli_refuses_busy_port_and_public_bind(random_export):
    proc = subprocess.run(
        [sys.executable, "-m", "edgesplit", "worker", str(random_export), "--part", "branch0", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "refusing to listen on 0.0.0.0" in proc.stderr and "Traceback" not in proc.stderr
    with LocalCluster(random_export, parts=["branch0"]) as c:
        port = str(c.workers["branch0"].port)
        proc = subprocess.run(
            [sys.executable, "-m", "edgesplit", "worker", str(random_export), "--part", "branch0", "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and "cannot listen" in proc.stderr


def test_serve_local_endpoint_serves_whole_model(random_export, images, serving):
    with serving("--local", random_export, "--poll-ms", 1, "--max-batch", 8) as (proc, port):
        local = LocalModel(random_export)
        out = _worker_call(f"127.0.0.1:{port}", "resnet18-split2", {"input": nchw(images[:3])})
        assert np.abs(out.outputs["logits"] - local(local.prepare(images[:3]))).max() < 1e-4
        with pytest.raises(InferError, match="expected Bx1x28x28"):
            _worker_call(f"127.0.0.1:{port}", "resnet18-split2", {"input": np.zeros((1, 3, 28, 28), np.uint8)})
        # the coordinator's endpoint has the workers' limits: a batch over --max-batch, bytes that do not parse
        with pytest.raises(InferError, match="a batch of 9 items, over the limit of 8"):
            _worker_call(f"127.0.0.1:{port}", "resnet18-split2", {"input": np.zeros((9, 1, 28, 28), np.uint8)})
        import grpc

        async def garbage():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\x0a\x05ab", timeout=10)
                return err.value.code()

        assert asyncio.run(garbage()) == grpc.StatusCode.INVALID_ARGUMENT
        children = _children(proc.pid)
        assert len(children) == 2  # one worker per branch
        assert all(b"--poll-ms\x001" in open(f"/proc/{c}/cmdline", "rb").read() for c in children)
        proc.stdout.close()
        proc.stderr.close()
    assert not any(_alive(p) for p in children)


def test_make_plan_balances_and_validates(random_export, tmp_path):
    plan = make_plan(str(random_export), ["a:1", "b:2", "c:3"], speeds=[1, 3, 1])
    assert [p.replicas for p in plan.parts] == [("b:2",), ("a:1", "c:3")]
    plan.write(tmp_path / "plan.yaml")
    assert load_plan(tmp_path / "plan.yaml").parts == plan.parts
    with pytest.raises(EdgesplitError, match="need at least 2"):
        make_plan(str(random_export), ["a:1"])
    (tmp_path / "bad.yaml").write_text(f"export: {random_export}\nparts:\n  branch0: {{replicas: [x:1]}}\n")
    with pytest.raises(EdgesplitError, match=r"does not place \['branch1'\]"):
        load_plan(tmp_path / "bad.yaml")


def test_worker_and_coordinator_import_no_torch():
    code = (
        "import sys, edgesplit.runtime.worker, edgesplit.runtime.coordinator, edgesplit.runtime.cluster, "
        "edgesplit.runtime.client, edgesplit.runtime.serve, edgesplit.cli; "
        "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_malformed_protobuf_is_invalid_argument_and_logs_nothing(cluster):
    """Bytes that are not a ModelInferRequest (random, truncated, invalid UTF-8 in a string, an 11-byte varint,
    field number 0) get INVALID_ARGUMENT, not UNKNOWN, and no traceback in the worker's log; it keeps serving."""
    import grpc

    from edgesplit.runtime.transport import kserve_v2_pb2 as pb

    w = cluster.workers["branch0"]
    before = w.log_path.read_text() if w.log_path.exists() else ""
    good = pb.ModelInferRequest(model_name="branch0", id="7").SerializeToString()
    rng = np.random.default_rng(0)
    payloads = [rng.bytes(64), rng.bytes(7), good[:-1], b"\x0a\x03\xff\xfe\xfd", b"\x10" + b"\xff" * 10 + b"\x01", b"\x00\x01"]

    async def go():
        channel = grpc.aio.insecure_channel(w.address)
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # raw bytes in and out
        codes = []
        try:
            for p in payloads:
                try:
                    await call(p, timeout=10)
                    codes.append("OK")
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code().name)
        finally:
            await channel.close()
        return codes

    assert asyncio.run(go()) == ["INVALID_ARGUMENT"] * len(payloads)
    assert "Traceback" not in w.log_path.read_text()[len(before) :]
    assert _worker_call(w.address, "branch0", {"input": np.zeros((1, 1, 28, 28), np.float32)}).outputs["features"].shape[0] == 1


def test_swapped_addresses_fail_at_once_with_the_servers_answer(random_export, cluster):
    """A plan whose two branch addresses are swapped: each server answers, but serves the other branch; the
    coordinator says so at once (not a 30 s wait and 'not ready'), over gRPC and over the Unix socket."""
    for attr in ("address", "plan_address"):
        a, b = (getattr(cluster.workers[p], attr) for p in ("branch0", "branch1"))
        plan = load_plan_dict(random_export, {"branch0": b, "branch1": a})
        t0 = time.monotonic()
        with pytest.raises(PartUnavailable) as err:
            edgesplit.connect(plan, wait_ready_s=30)
        assert time.monotonic() - t0 < 10
        assert "this server has: branch1" in str(err.value) and "check the plan's addresses" in str(err.value)
    plan = load_plan_dict(
        random_export, {"branch0": cluster.workers["branch1"].address, "branch1": cluster.workers["branch0"].address}
    )
    plan.write(random_export.parent / "swapped.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "edgesplit", "serve", "--plan", str(random_export.parent / "swapped.yaml"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgesplit: error")]
    assert proc.returncode == 2 and len(errors) == 1 and "this server has: branch1" in errors[0]
    assert "Traceback" not in proc.stderr


def load_plan_dict(export, addresses):
    from edgesplit.runtime.plan import PartPlacement, Plan

    return Plan(str(export), tuple(PartPlacement(p, (addr,)) for p, addr in addresses.items()), timeout_ms=5000)


def test_serve_starts_degraded_and_takes_the_part_in_when_it_comes_up(random_export, tmp_path, images, serving):
    import socket as socketlib

    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with LocalCluster(random_export, parts=["branch0"], pin=False) as c:
        plan = load_plan_dict(random_export, {"branch0": c.workers["branch0"].address, "branch1": f"127.0.0.1:{free}"})
        plan_path = tmp_path / "plan.yaml"
        plan = type(plan)(**{**plan.__dict__, "probe_interval_ms": 200})
        plan.write(plan_path)
        late = LocalCluster(random_export, parts=["branch1"], pin=False)
        try:
            with serving("--plan", plan_path, "--wait-ready-s", 1) as (proc, port):
                x = {"input": nchw(images[:1])}
                assert _worker_call(f"127.0.0.1:{port}", "resnet18-split2", x).parameters.get("degraded")
                late.start_worker("branch1", port=free)  # the missing device comes up
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    if not _worker_call(f"127.0.0.1:{port}", "resnet18-split2", x).parameters.get("degraded"):
                        break
                    time.sleep(0.3)
                else:
                    pytest.fail("the part that came up was never taken in")
        finally:
            late.stop()
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert "starting without branch1" in err and "unreachable" in err


def test_waiting_for_a_dead_worker_says_what_it_waits_for(random_export, cluster, caplog):
    import logging
    import socket as socketlib

    from edgesplit.runtime.coordinator import remote_coordinator

    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    plan = load_plan_dict(random_export, {"branch0": cluster.workers["branch0"].address, "branch1": f"127.0.0.1:{free}"})

    async def go():
        coord = remote_coordinator(plan)
        try:
            await coord.wait_ready(2.0, progress_every_s=0.5)
        finally:
            await coord.close()

    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(PartUnavailable, match=f"not ready after 2 s: branch1 at 127.0.0.1:{free}: unreachable"),
    ):
        asyncio.run(go())
    waiting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for")]
    assert len(waiting) >= 2 and all(f"branch1 at 127.0.0.1:{free}: unreachable" in m for m in waiting)
