"""The Unix socket transport (the local cluster's fast path) with real worker processes, and the fast request encoder."""

import asyncio
import os
import stat
import time

import numpy as np
import pytest

import edgesplit
from edgesplit.data import load_dataset
from edgesplit.errors import EdgesplitError
from edgesplit.runtime.cluster import LocalCluster
from edgesplit.runtime.errors import DeadlineExceeded, InferError, OverLimit, PartUnavailable
from edgesplit.runtime.local import LocalModel
from edgesplit.runtime.transport import codec
from edgesplit.runtime.transport import kserve_v2_pb2 as pb
from edgesplit.runtime.transport.grpc_peer import GrpcPeer
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesplit.runtime.transport.ipc import HEADER, INFER, FrameReader, _frame, socket_path
from edgesplit.runtime.transport.ipc_peer import UnixSocketPeer
from edgesplit.runtime.transport.limits import ServerLimits


@pytest.fixture(scope="module")
def images():
    return load_dataset("fashion-mnist", "test").data[:16]  # (16, 28, 28, 1) uint8


@pytest.fixture(scope="module")
def cluster(random_export):
    with LocalCluster(random_export, timeout_ms=5000) as c:  # transport="ipc" is the default
        yield c


def _call(worker_cls, address, model, inputs, timeout_s=10.0):
    async def go():
        w = worker_cls(address, model)
        try:
            return await w.infer(inputs, timeout_s=timeout_s)
        finally:
            await w.close()

    return asyncio.run(go())


@pytest.mark.parametrize(
    "inputs",
    [
        {"input": np.arange(3 * 32 * 32, dtype=np.uint8).reshape(1, 3, 32, 32)},
        {"a": np.random.default_rng(0).random((2, 300)).astype(np.float32)[:, ::3], "b": np.arange(5, dtype=np.int64)},
        {"empty": np.zeros((1, 0), np.float32)},
        {"big": np.ones((1, 3, 224, 224), np.uint8), "f64": np.zeros((2, 2), np.float64)},
    ],
)
def test_fast_request_encoding_is_protobufs_own(inputs):
    fast = codec.serialize_request("m", inputs, "42")
    assert fast == codec.encode_request("m", inputs, "42").SerializeToString()
    back = codec.decode_request(pb.ModelInferRequest.FromString(fast))
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in inputs.items())


@pytest.mark.parametrize(
    "outputs,params",
    [
        ({"features": np.random.default_rng(0).random((1, 256)).astype(np.float32)}, {"compute_ms": 13.25, "server_ms": 0.4}),
        (
            {"a": np.arange(6, dtype=np.int64).reshape(2, 3)[:, ::2], "b": np.zeros((1, 0), np.float32)},
            {"flag": True, "off": False, "n": 7, "neg": -3, "big": 2**62, "text": "héllo", "t": 1e-300},
        ),
        ({"logits": np.ones((4, 1000), np.float32)}, {}),
    ],
)
@pytest.mark.parametrize("rid", ["", "1", "x" * 200])
def test_fast_response_encoding_is_the_same_message(outputs, params, rid):
    fast = pb.ModelInferResponse.FromString(codec.serialize_response("branch0", rid, outputs, params))
    assert fast == codec.encode_response("branch0", rid, outputs, params)
    got, got_params = codec.decode_response(fast)
    assert all(np.array_equal(got[k], v) and got[k].dtype == v.dtype for k, v in outputs.items())
    assert got_params == params and all(type(got_params[k]) is type(v) for k, v in params.items())


_DTYPES = ["float32", "float64", "int64", "int32", "uint8", "int8", "float16"]
_PARAMS = st.dictionaries(
    st.text(max_size=12),
    st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=20)),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(
    outputs=st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.tuples(st.sampled_from(_DTYPES), st.lists(st.integers(0, 4), min_size=1, max_size=3)),
        min_size=1,
        max_size=3,
    ),
    params=_PARAMS,
    rid=st.text(max_size=8),
    fast=st.booleans(),
)
def test_parsed_responses_are_protobufs_decoding(outputs, params, rid, fast):
    """codec.parse_response reads the wire format itself: whatever the message, it gives decode_response's result."""
    rng = np.random.default_rng(0)
    arrays = {k: (rng.standard_normal(shape) * 100).astype(dtype) for k, (dtype, shape) in outputs.items()}
    body = (
        codec.serialize_response("m", rid, arrays, params)
        if fast
        else codec.encode_response("m", rid, arrays, params).SerializeToString()
    )
    got_out, got_params = codec.parse_response(body)
    want_out, want_params = codec.decode_response(pb.ModelInferResponse.FromString(body))
    assert got_params == want_params and all(type(got_params[k]) is type(v) for k, v in want_params.items())
    assert list(got_out) == list(want_out)
    for k in want_out:
        assert got_out[k].dtype == want_out[k].dtype and got_out[k].shape == want_out[k].shape
        assert np.array_equal(got_out[k], want_out[k], equal_nan=True)


def test_parsed_responses_of_other_shapes_are_left_to_protobuf():
    typed = pb.ModelInferResponse(model_name="m", id="1")
    t = typed.outputs.add(name="y", datatype="FP32", shape=[2])
    t.contents.fp32_contents.extend([1.5, -2.0])
    typed.parameters["none"].Clear()  # an entry with no value: left out
    out, params = codec.parse_response(typed.SerializeToString())
    assert np.array_equal(out["y"], np.array([1.5, -2.0], np.float32)) and params == {}
    short = codec.encode_response("m", "1", {"y": np.ones(4, np.float32)})
    short.raw_output_contents[0] = b"\0" * 12
    with pytest.raises(InferError, match="12 bytes"):
        codec.parse_response(short.SerializeToString())
    with pytest.raises(Exception, match="[Ee]rror"):  # protobuf's DecodeError, as before the fast path
        codec.parse_response(b"\x0a\xff\xff")


def test_cluster_plan_uses_unix_sockets_and_workers_still_speak_grpc(random_export, cluster, images):
    plan = cluster.plan()
    addresses = [a for p in plan.parts for a in p.replicas]
    assert addresses and all(a.startswith("ipc:///") for a in addresses)
    for a in addresses:
        assert stat.S_IMODE(os.stat(socket_path(a)).st_mode) == 0o600  # only this user can connect
    local = LocalModel(random_export)
    x = local.prepare(images[:4])
    want = local.engines["branch0"].run({"input": x})["features"]
    w = cluster.workers["branch0"]
    over_ipc = _call(UnixSocketPeer, w.plan_address, "branch0", {"input": x})
    over_grpc = _call(GrpcPeer, w.address, "branch0", {"input": x})
    assert np.abs(over_ipc.outputs["features"] - want).max() < 1e-5
    assert np.array_equal(over_ipc.outputs["features"], over_grpc.outputs["features"])
    assert over_ipc.parameters["compute_ms"] > 0 and over_ipc.parameters["server_ms"] >= over_ipc.parameters["compute_ms"]


def test_grpc_transport_cluster_gives_the_same_answers(random_export, images):
    local = LocalModel(random_export)
    ref = local(local.prepare(images))
    with LocalCluster(random_export, timeout_ms=5000, transport="grpc") as c, edgesplit.connect(c.plan()) as client:
        assert all(not a.startswith("ipc:") for p in c.plan().parts for a in p.replicas)
        got = client.infer(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        _check_trace(client, images)
    assert np.abs(got - ref).max() < 1e-4
    with pytest.raises(EdgesplitError, match="unknown transport 'tcp'"):
        LocalCluster(random_export, transport="tcp")


def _check_trace(client, images):
    """With Coordinator.trace every answer says, per part, when its call was sent, received by the worker,
    answered and decoded, in that order and within the request; untraced answers say nothing of it."""
    x = np.ascontiguousarray(images[:2].transpose(0, 3, 1, 2))
    assert not any(k.endswith("_sent_ms") for k in client.infer_result(x).parameters)
    client.coordinator.trace = True
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            p = client.infer_result(x).parameters
            e2e_ms = (time.perf_counter() - t0) * 1e3
            for part in ("branch0", "branch1"):
                hops = [p[f"{part}_{k}"] for k in ("sent_ms", "received_ms", "answered_ms", "decoded_ms")]
                assert 0 <= hops[0] <= hops[1] <= hops[2] <= hops[3] <= e2e_ms, hops
                assert hops[2] - hops[1] >= p[f"{part}_server_ms"] >= p[f"{part}_compute_ms"] > 0
    finally:
        client.coordinator.trace = False


def test_traced_requests_over_unix_sockets(cluster, images):
    with edgesplit.connect(cluster.plan()) as client:
        _check_trace(client, images)


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=40), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    limit=st.sampled_from([None, 0, 8, 20]),
)
def test_frame_reader_cuts_any_chunking_into_the_frames_sent(bodies, cuts, limit):
    """Frames come back whole and in order however the stream is chunked; a frame over the limit is reported
    with no body and its bytes never reach the next frame."""
    stream = b"".join(_frame(INFER, i, body) for i, body in enumerate(bodies))
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    reader = FrameReader(limit)
    got = [f for a, b in zip(edges, edges[1:]) for f in reader.feed(stream[a:b])]
    over = limit is not None
    assert got == [(INFER, i, len(body), None if over and len(body) > limit else body) for i, body in enumerate(bodies)]
    assert reader.feed(b"") == [] and not reader._buf and not reader._skip


def test_frames_that_are_not_kserve_get_invalid_argument(random_export, cluster, images):
    """(Bad KServe v2 requests over either transport: test_runtime.py's flood test.)"""
    address = cluster.workers["branch0"].plan_address
    x = LocalModel(random_export).prepare(images[:2])

    async def go():
        reader, writer = await asyncio.open_unix_connection(socket_path(address))
        writer.write(HEADER.pack(3, INFER, 7) + b"\xff\xff\xff")
        writer.write(HEADER.pack(0, 99, 8))
        answers = {}
        for _ in range(2):
            size, kind, call_id = HEADER.unpack(await reader.readexactly(HEADER.size))
            answers[call_id] = (await reader.readexactly(size)).decode()
        writer.close()
        return answers, await _call_async(address, {"input": x})

    answers, good = asyncio.run(go())
    assert answers[7].startswith("INVALID_ARGUMENT\n") and "ModelInferRequest" in answers[7]
    assert answers[8].startswith("INVALID_ARGUMENT\n") and "frame kind 99" in answers[8]
    assert good.outputs["features"].shape == (2, 32)
    assert cluster.dead() == []


async def _call_async(address, inputs):
    w = UnixSocketPeer(address, "branch0")
    try:
        return await w.infer(inputs, timeout_s=10)
    finally:
        await w.close()


def test_message_limits_over_ipc(random_export):
    with LocalCluster(random_export, parts=["branch0"], worker_args=["--max-message-mb", "0.01"]) as c:
        address = c.workers["branch0"].plan_address

        async def go():
            w = UnixSocketPeer(address, "branch0")
            try:
                with pytest.raises(InferError, match="over the limit"):  # 25 KiB: answered, connection kept
                    await w.infer({"input": np.zeros((8, 1, 28, 28), np.float32)}, timeout_s=10)
                with pytest.raises(OverLimit, match="is over the limit"):  # 1.6 MiB: skipped unread
                    await w.infer({"input": np.zeros((512, 1, 28, 28), np.float32)}, timeout_s=10)
                return await w.infer({"input": np.zeros((1, 1, 28, 28), np.float32)}, timeout_s=10)
            finally:
                await w.close()

        assert asyncio.run(go()).outputs["features"].shape == (1, 32)
        assert c.dead() == []


def test_deadline_then_killed_then_restarted_worker(random_export):
    x = np.zeros((1, 1, 28, 28), np.float32)
    with LocalCluster(random_export, parts=["branch0"], worker_args=["--inject-delay-ms", "1500"]) as c:
        address = c.workers["branch0"].plan_address

        async def go():
            w = UnixSocketPeer(address, "branch0")
            try:
                t0 = time.monotonic()
                with pytest.raises(DeadlineExceeded, match="did not answer in time"):
                    await w.infer({"input": x}, timeout_s=0.3)
                assert time.monotonic() - t0 < 1.0
                assert await w.ready()
                c.kill("branch0")
                t0 = time.monotonic()
                with pytest.raises(PartUnavailable):
                    await w.infer({"input": x}, timeout_s=5)
                assert time.monotonic() - t0 < 1.0  # a dead worker is an error at once, never a hang
                assert not await w.ready(timeout_s=0.5)
                await asyncio.get_running_loop().run_in_executor(None, c.restart, "branch0")
                assert c.workers["branch0"].plan_address == address  # same socket path after a restart
                return await w.infer({"input": x}, timeout_s=5)  # the handle reconnects by itself
            finally:
                await w.close()

        assert asyncio.run(go()).parameters["injected_delay_ms"] == pytest.approx(1500)


def test_bad_socket_addresses(tmp_path):
    with pytest.raises(EdgesplitError, match="ipc:///absolute/path.sock"):
        UnixSocketPeer("ipc://relative.sock", "m")
    with pytest.raises(PartUnavailable, match="cannot connect"):
        _call(UnixSocketPeer, f"ipc://{tmp_path}/nobody.sock", "m", {"input": np.zeros((1, 2), np.float32)})
    from edgesplit.runtime.transport.ipc_server import UnixSocketServer

    (tmp_path / "file").write_text("not a socket")
    with pytest.raises(EdgesplitError, match="not a socket"):
        asyncio.run(UnixSocketServer([], tmp_path / "file", ServerLimits(max_message_bytes=1 << 20)).start())

    async def twice():
        first = UnixSocketServer([], tmp_path / "w.sock", ServerLimits(max_message_bytes=1 << 20))
        await first.start()
        try:
            with pytest.raises(EdgesplitError, match="another process is serving"):
                await UnixSocketServer([], tmp_path / "w.sock", ServerLimits(max_message_bytes=1 << 20)).start()
        finally:
            await first.stop()
        assert not (tmp_path / "w.sock").exists()

    asyncio.run(twice())


def test_a_handler_that_breaks_answers_unknown_not_silence(tmp_path):
    """An answer the codec cannot encode (complex output) fails that call at once; the server keeps serving."""
    from edgesplit.manifest import TensorSpec
    from edgesplit.runtime.model import InferResult, ModelMeta
    from edgesplit.runtime.transport.ipc_server import UnixSocketServer

    class Odd:
        meta = ModelMeta("odd", "test", (TensorSpec("x", (-1, 2), "float32"),), (TensorSpec("y", (-1, 2), "float32"),))

        def ready(self):
            return True

        async def infer(self, inputs):
            x = inputs["x"]
            return InferResult({"y": x.astype(np.complex64) if x[0, 0] < 0 else x})

    async def go():
        server = UnixSocketServer([Odd()], tmp_path / "odd.sock", ServerLimits(max_message_bytes=1 << 20))
        await server.start()
        w = UnixSocketPeer(server.address, "odd")
        try:
            with pytest.raises(PartUnavailable, match="UNKNOWN"):
                await w.infer({"x": -np.ones((1, 2), np.float32)})  # no timeout: it must not hang
            return (await w.infer({"x": np.ones((1, 2), np.float32)}, timeout_s=5)).outputs["y"]
        finally:
            await w.close()
            await server.stop()

    assert np.array_equal(asyncio.run(go()), np.ones((1, 2), np.float32))


def test_polling_worker_answers_and_stops_polling_when_idle(random_export, images):
    def states(pid, n=40, every_s=0.005):  # the event loop thread's scheduler state: R running/runnable, S asleep
        out = []
        for _ in range(n):
            out.append(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0])
            time.sleep(every_s)
        return out

    local = LocalModel(random_export)
    x = local.prepare(images[:4])
    want = local(x)
    with LocalCluster(random_export, timeout_ms=5000, poll_ms=300) as c, edgesplit.connect(c.plan()) as client:
        got = np.concatenate([client.infer(xi[None]) for xi in x])
        pid = c.workers["branch0"].proc.pid
        polling = states(pid)  # within 300 ms of the last answer
        time.sleep(0.4)
        idle = states(pid)  # past the window
    assert np.allclose(got, want, atol=1e-4)
    assert "R" in polling and set(idle) == {"S"}, (polling, idle)


def test_an_idle_worker_answers_a_synchronous_model_without_a_task(tmp_path):
    """A model with ``infer_now`` is answered inside the read when nothing else is running; a model without it
    (or with calls in flight) goes through a task. Both give the same answers, including errors."""
    from edgesplit.runtime.errors import InferError
    from edgesplit.manifest import TensorSpec
    from edgesplit.runtime.model import InferResult, ModelMeta
    from edgesplit.runtime.transport.ipc_server import UnixSocketServer

    calls = []

    class AsyncOnly:
        def __init__(self, name):
            self.meta = ModelMeta(name, "test", (TensorSpec("x", (-1, 2), "float32"),), (TensorSpec("y", (-1, 2), "float32"),))

        def ready(self):
            return True

        async def infer(self, inputs):
            calls.append((self.meta.name, "task", asyncio.current_task()))
            await asyncio.sleep(0.01)
            return InferResult({"y": inputs["x"] * 2})

    class Double(AsyncOnly):
        def infer_now(self, inputs):
            calls.append((self.meta.name, "now", asyncio.current_task()))
            if inputs["x"][0, 0] < 0:
                raise InferError("negative input; send positive numbers")
            return InferResult({"y": inputs["x"] * 2})

    async def go():
        now, later = Double("now"), AsyncOnly("later")
        server = UnixSocketServer([now, later], tmp_path / "m.sock", ServerLimits(max_message_bytes=1 << 20))
        await server.start()
        a, b = UnixSocketPeer(server.address, "now"), UnixSocketPeer(server.address, "later")
        try:
            x = np.ones((1, 2), np.float32)
            y_now = (await a.infer({"x": x}, timeout_s=5)).outputs["y"]
            y_task = (await b.infer({"x": x}, timeout_s=5)).outputs["y"]
            with pytest.raises(InferError, match="negative input"):
                await a.infer({"x": -x}, timeout_s=5)
            both = await asyncio.gather(b.infer({"x": x}, timeout_s=5), a.infer({"x": x}, timeout_s=5))  # one in flight
            return y_now, y_task, both
        finally:
            await a.close()
            await b.close()
            await server.stop()

    y_now, y_task, both = asyncio.run(go())
    assert np.array_equal(y_now, 2 * np.ones((1, 2))) and np.array_equal(y_task, y_now)
    assert all(np.array_equal(r.outputs["y"], y_now) for r in both)
    assert calls[0] == ("now", "now", None) and calls[1][:2] == ("later", "task") and calls[1][2] is not None
    assert calls[2][:2] == ("now", "now")
    assert calls[-1][:2] == ("now", "task")  # while "later" was in flight: queued behind it as a task


class _AsyncScaled:
    """A served model for in-process servers: y = 2x, answered after as many seconds as the input's first value
    (calls run as concurrent tasks)."""

    def __init__(self, name="m"):
        from edgesplit.manifest import TensorSpec
        from edgesplit.runtime.model import ModelMeta

        self.meta = ModelMeta(name, "test", (TensorSpec("x", (-1, 2), "float32"),), (TensorSpec("y", (-1, 2), "float32"),))

    def ready(self):
        return True

    async def infer(self, inputs):
        from edgesplit.runtime.model import InferResult

        await asyncio.sleep(float(inputs["x"][0, 0]))
        return InferResult({"y": inputs["x"] * 2})


class _Scaled(_AsyncScaled):
    """The same model, synchronous (``infer_now``); ``log`` records (the input's second value, the task it ran in)."""

    def __init__(self, name="m", log=None):
        super().__init__(name)
        self.log = log if log is not None else []

    def infer_now(self, inputs):
        from edgesplit.runtime.model import InferResult

        self.log.append((float(inputs["x"][0, 1]), asyncio.current_task()))
        return InferResult({"y": inputs["x"] * 2})


def test_each_call_fails_at_its_own_deadline_on_a_shared_connection(tmp_path):
    """One timer serves every call's deadline on a connection: a call with an earlier deadline than the calls
    already pending fails on time, the others still get their answers, and a later call's deadline works too."""
    from edgesplit.runtime.transport.ipc_server import UnixSocketServer

    async def go():
        server = UnixSocketServer([_AsyncScaled()], tmp_path / "d.sock", ServerLimits(max_message_bytes=1 << 20))
        await server.start()
        w = UnixSocketPeer(server.address, "m")
        slow = np.array([[0.6, 1.0]], np.float32)  # answers after 0.6 s
        try:
            await w.infer({"x": np.zeros((1, 2), np.float32)}, timeout_s=5)  # connected
            t0 = time.monotonic()
            a = w.start({"x": slow}, timeout_s=3.0)
            b = w.start({"x": slow}, timeout_s=0.15)  # earlier than a's deadline: re-arms the timer
            c = w.start({"x": np.zeros((1, 2), np.float32)}, timeout_s=3.0)
            with pytest.raises(DeadlineExceeded, match="did not answer in time"):
                await b
            b_s = time.monotonic() - t0
            ra, rc = await a, await c
            t1 = time.monotonic()
            with pytest.raises(DeadlineExceeded):  # after the timer fired and found nothing left to watch
                await w.infer({"x": slow}, timeout_s=0.1)
            d_s = time.monotonic() - t1
            return b_s, d_s, ra, rc, w._conn.pending
        finally:
            await w.close()
            await server.stop()

    b_s, d_s, ra, rc, pending = asyncio.run(go())
    assert 0.14 <= b_s < 0.45 and 0.09 <= d_s < 0.4, (b_s, d_s)
    assert np.array_equal(ra.outputs["y"], np.float32([[1.2, 2.0]])) and np.array_equal(rc.outputs["y"], [[0.0, 0.0]])
    assert pending == {}  # answered, failed or forgotten: nothing kept


def test_requests_read_together_are_answered_in_turn_without_tasks_and_cancelled_ones_skipped(tmp_path):
    """Several requests in one read, to a synchronous model with nothing else running, are answered in order
    inside the read; a request cancelled in the same read is not run and gets no answer."""
    from edgesplit.runtime.transport.ipc import CANCEL, RESULT
    from edgesplit.runtime.transport.ipc_server import UnixSocketServer

    log = []

    async def go():
        server = UnixSocketServer([_Scaled(log=log)], tmp_path / "b.sock", ServerLimits(max_message_bytes=1 << 20))
        await server.start()
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "b.sock"))
        try:
            x = {i: np.array([[0.0, float(i)]], np.float32) for i in (1, 2, 3)}
            writer.write(
                b"".join(
                    [
                        _frame(INFER, 1, codec.serialize_request("m", {"x": x[1]}, "1")),
                        _frame(INFER, 2, codec.serialize_request("m", {"x": x[2]}, "2")),
                        _frame(CANCEL, 2, b""),
                        _frame(INFER, 3, codec.serialize_request("m", {"x": x[3]}, "3")),
                    ]
                )
            )
            answers = []
            for _ in range(2):
                size, kind, call_id = HEADER.unpack(await reader.readexactly(HEADER.size))
                outputs, _ = codec.parse_response(await reader.readexactly(size))
                answers.append((kind, call_id, outputs["y"]))
            return answers
        finally:
            writer.close()
            await server.stop()

    answers = asyncio.run(go())
    assert [(k, i) for k, i, _ in answers] == [(RESULT, 1), (RESULT, 3)]
    assert np.array_equal(answers[1][2], [[0.0, 6.0]])
    assert log == [(1.0, None), (3.0, None)]  # in order, outside any task; the cancelled call never ran


def test_a_unix_socket_only_coordinator_never_imports_grpc(random_export):
    """A process whose plan has only ipc:// addresses runs the split model without loading grpc (its workers,
    separate processes, still serve gRPC too)."""
    import subprocess
    import sys

    script = f"""
import sys
import numpy as np
import edgesplit
from edgesplit.runtime.cluster import LocalCluster
with LocalCluster({str(random_export)!r}, timeout_ms=5000, pin=False) as c, edgesplit.connect(c.plan()) as client:
    logits = client.infer(np.zeros((1, 1, 28, 28), np.uint8))
assert logits.shape == (1, 10), logits.shape
print(sorted(m for m in sys.modules if m == "grpc" or m.startswith("grpc.")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "build,pattern",
    [
        (
            lambda r: r.inputs.add(
                name="x", datatype="UINT8", shape=[1, 2], contents=pb.InferTensorContents(uint_contents=[1, 300])
            ),
            "UINT8 values must lie in 0..255",
        ),
        (
            lambda r: r.inputs.add(
                name="x", datatype="UINT8", shape=[1], contents=pb.InferTensorContents(uint_contents=[2**32 - 1])
            ),
            "UINT8 values must lie in 0..255",
        ),
        (
            lambda r: r.inputs.add(name="x", datatype="INT8", shape=[1], contents=pb.InferTensorContents(int_contents=[-200])),
            "INT8 values must lie in -128..127",
        ),
        (
            lambda r: [
                r.inputs.add(name="x", datatype="FP32", shape=[1], contents=pb.InferTensorContents(fp32_contents=[1.0]))
                for _ in range(2)
            ],
            "given twice",
        ),
        (lambda r: r.inputs.add(name="x", datatype="FP32", shape=[1] * 10_000), "10000 dimensions; at most 32"),
    ],
)
def test_malformed_typed_tensors_are_refused_by_the_shared_decoder(build, pattern):
    """decode_request answers both transports: values that do not fit, a name twice, absurd ranks are InferError
    (INVALID_ARGUMENT), never wrapped, merged or a crash."""
    req = pb.ModelInferRequest(model_name="m")
    build(req)
    with pytest.raises(InferError, match=pattern):
        codec.decode_request(req)


def test_typed_tensors_in_range_still_decode():
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="UINT8", shape=[1, 3], contents=pb.InferTensorContents(uint_contents=[0, 7, 255]))
    x = codec.decode_request(req)["x"]
    assert x.dtype == np.uint8 and x.tolist() == [[0, 7, 255]]
