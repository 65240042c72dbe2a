"""Hostile and broken clients against real worker processes (gRPC on loopback and the Unix socket): every bad
message gets the right status, memory and connections are bounded, and good requests keep their answers."""

import asyncio
import os
import socket
import time

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.cluster import LocalCluster
from edgesplit.runtime.errors import OverLimit
from edgesplit.runtime.local import LocalModel
from edgesplit.runtime.shm import PREFIX, SHM_DIR, SUFFIX, InputRing
from edgesplit.runtime.transport import codec
from edgesplit.runtime.transport import kserve_v2_pb2 as pb
from edgesplit.runtime.transport.grpc_peer import ClientSecurity, GrpcPeer
from edgesplit.runtime.transport.grpc_server import ServerSecurity
from edgesplit.runtime.transport.ipc import FAILED, HEADER, INFER, REGISTER, REGISTERED, RESULT
from edgesplit.runtime.transport.limits import ServerLimits

METHOD = "/inference.GRPCInferenceService/ModelInfer"
GOOD = codec.encode_request("branch0", {"input": np.zeros((1, 1, 28, 28), np.float32)}, "g").SerializeToString()


@pytest.fixture(scope="module")
def worker(random_export):
    with LocalCluster(random_export, parts=["branch0"], pin=False) as c:
        yield c.workers["branch0"]


@pytest.fixture(scope="module")
def expected(random_export):
    local = LocalModel(random_export)
    return local.engines["branch0"].run({"input": np.zeros((1, 1, 28, 28), np.float32)})["features"]


def _grpc_raw(address, bodies, metadata=None):
    """Status name (and answer bytes) of each raw ModelInfer body, on one channel."""

    async def go():
        async with grpc.aio.insecure_channel(address) as channel:
            call, out = channel.unary_unary(METHOD), []
            for body in bodies:
                try:
                    out.append(("OK", await call(body, timeout=10, metadata=metadata)))
                except grpc.aio.AioRpcError as err:
                    out.append((err.code().name, err.details()))
            return out

    return asyncio.run(go())


def _ipc_raw(path, frames):
    """(kind, body) of the answer to each raw (kind, body) frame, on one Unix socket connection."""

    async def go():
        reader, writer = await asyncio.open_unix_connection(path)
        out = []
        try:
            for i, (kind, body) in enumerate(frames):
                writer.write(HEADER.pack(len(body), kind, i) + body)
                size, akind, _ = HEADER.unpack(await asyncio.wait_for(reader.readexactly(HEADER.size), 10))
                out.append((akind, await reader.readexactly(size)))
        finally:
            writer.close()
        return out

    return asyncio.run(go())


def _features(answer: bytes):
    return codec.decode_response(pb.ModelInferResponse.FromString(answer))[0]["features"]


def _mutate(at, value, cut):
    b = bytearray(GOOD)
    for i, v in zip(at, value):
        b[i % len(b)] = v
    return bytes(b[: max(1, len(b) - cut)])


mutations = st.builds(
    _mutate, st.lists(st.integers(0, 10_000), max_size=6), st.lists(st.integers(0, 255), max_size=6), st.integers(0, 40)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=mutations)
def test_mutated_requests_get_a_protocol_status_and_the_worker_keeps_serving(worker, expected, body):
    """Valid ModelInfer bytes with bytes flipped and the end cut off: OK, INVALID_ARGUMENT or (a dimension flipped
    large) RESOURCE_EXHAUSTED on both transports, never UNKNOWN or a hang, and a good request right after is answered
    correctly."""
    (status, _), (good_status, good) = _grpc_raw(worker.address, [body, GOOD])
    assert status in ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"), status
    assert good_status == "OK" and np.allclose(_features(good), expected, atol=1e-5)
    (kind, answer), (good_kind, good) = _ipc_raw(str(worker.unix_socket), [(INFER, body), (INFER, GOOD)])
    assert kind == RESULT or answer.startswith((b"INVALID_ARGUMENT\n", b"RESOURCE_EXHAUSTED\n")), answer[:200]
    assert good_kind == RESULT and np.allclose(_features(good), expected, atol=1e-5)


def test_limits_refuse_what_would_exhaust_memory(random_export, expected):
    """A low in-flight cap refuses a request whose peak would pass it (RESOURCE_EXHAUSTED, before parsing) on both
    transports; the batch limit and the message limit derived from it refuse more items (RESOURCE_EXHAUSTED too)."""
    args = ["--max-inflight-mb", "0.5", "--max-batch", "16"]
    with LocalCluster(random_export, parts=["branch0"], pin=False, worker_args=args) as c:
        w = c.workers["branch0"]
        big = codec.encode_request("branch0", {"input": np.zeros((20, 1, 28, 28), np.float32)}).SerializeToString()  # 63 KB
        many = codec.encode_request("branch0", {"input": np.zeros((17, 1, 28, 28), np.uint8)}).SerializeToString()
        over = codec.encode_request("branch0", {"input": np.zeros((200, 1, 28, 28), np.float32)}).SerializeToString()
        grpc_out = _grpc_raw(w.address, [big, many, over, GOOD])
        ipc_out = _ipc_raw(str(w.unix_socket), [(INFER, big), (INFER, many), (INFER, over), (INFER, GOOD)])
        # 16 float32 images = 50 KB + 64 KB of overhead: the 20-image request fits the message limit but a batch of 20
        assert grpc_out[0][0] == "RESOURCE_EXHAUSTED" and "over the limit of 16" in grpc_out[0][1]
        assert grpc_out[1][0] == "RESOURCE_EXHAUSTED" and "17 items" in grpc_out[1][1]
        assert grpc_out[2][0] == "RESOURCE_EXHAUSTED" and "retry later" in grpc_out[2][1]  # 627 KB x 3 > 0.5 MiB
        assert grpc_out[3][0] == "OK" and np.allclose(_features(grpc_out[3][1]), expected, atol=1e-5)
        assert ipc_out[0][1].startswith(b"RESOURCE_EXHAUSTED\n") and ipc_out[1][1].startswith(b"RESOURCE_EXHAUSTED\n")
        assert ipc_out[2][0] == FAILED and ipc_out[2][1].startswith(b"RESOURCE_EXHAUSTED\n")
        assert ipc_out[3][0] == RESULT
        assert c.dead() == []


def test_typed_contents_are_checked_before_conversion(worker):
    req = pb.ModelInferRequest(model_name="branch0")
    t = req.inputs.add(name="input", datatype="INT64", shape=[10_000, 1, 28, 28])
    t.contents.int64_contents.extend([1] * 10)
    ((status, details),) = _grpc_raw(worker.address, [req.SerializeToString()])
    assert status == "RESOURCE_EXHAUSTED" and "over the limit" in details


def test_idle_stalled_and_unread_connections_are_closed(random_export):
    args = ["--idle-timeout-s", "1", "--max-connection-age-s", "2"]
    with LocalCluster(random_export, parts=["branch0"], pin=False, worker_args=args) as c:
        w = c.workers["branch0"]
        idle = socket.create_connection(("127.0.0.1", w.port))
        preface = socket.create_connection(("127.0.0.1", w.port))
        preface.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        unix_idle = socket.socket(socket.AF_UNIX)
        unix_idle.connect(str(w.unix_socket))
        unix_stalled = socket.socket(socket.AF_UNIX)
        unix_stalled.connect(str(w.unix_socket))
        unix_stalled.sendall(HEADER.pack(1000, INFER, 1) + b"\x0a")  # a frame that never completes
        held = [idle, preface, unix_idle, unix_stalled]
        deadline, closed = time.monotonic() + 10, set()
        while time.monotonic() < deadline and len(closed) < len(held):
            time.sleep(0.2)
            for i, s in enumerate(held):
                s.setblocking(False)
                try:
                    while s.recv(65536):
                        pass
                    closed.add(i)  # EOF
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(i)
        assert closed == {0, 1, 2, 3}
        # the worker still serves, and a good client's channel survives its connection being recycled (age 2 s)
        assert _grpc_raw(w.address, [GOOD])[0][0] == "OK"
        for s in held:
            s.close()


def test_unix_socket_stops_reading_a_client_that_does_not_read(worker):
    """Back-pressure: a client that writes requests and never reads its answers is soon not read either."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(worker.unix_socket))
    s.setblocking(False)
    frame = HEADER.pack(len(GOOD), INFER, 1) + GOOD
    sent, blocked_since = 0, None
    while sent < 100_000:
        try:
            s.sendall(frame)
            sent, blocked_since = sent + 1, None
        except BlockingIOError:
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > 2:
                break
            time.sleep(0.05)
    s.close()
    assert sent < 100_000  # the worker stopped reading: its buffered answers are bounded
    assert _grpc_raw(worker.address, [GOOD])[0][0] == "OK"


@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs /dev/shm")
def test_shared_memory_fifo_is_refused_at_once(worker):
    fifo = SHM_DIR / f"{PREFIX}{os.getpid()}-fifo{SUFFIX}"
    os.mkfifo(fifo, 0o600)
    ring = InputRing(slots=2, min_bytes=0)
    try:
        ref = ring.put(np.zeros((1, 1, 28, 28), np.uint8))
        request = codec.serialize_request("branch0", {"input": ref}, "1")
        good = f"{ring.region.name}\n{ring.region.path}\n{ring.region.byte_size}".encode()
        t0 = time.monotonic()
        out = _ipc_raw(str(worker.unix_socket), [(REGISTER, f"f\n{fifo}\n4096".encode()), (REGISTER, good), (INFER, request)])
        assert time.monotonic() - t0 < 5  # a FIFO would have blocked the worker in open()
        assert out[0][0] == FAILED and b"not a regular file" in out[0][1]
        assert out[1][0] == REGISTERED and out[2][0] == RESULT
    finally:
        fifo.unlink()
        ring.close()
    assert _grpc_raw(worker.address, [GOOD])[0][0] == "OK"  # alive


@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs /dev/shm")
def test_region_truncated_after_registration_is_answered_not_sigbus(worker):
    ring = InputRing(slots=2, min_bytes=0)
    try:
        ref = ring.put(np.zeros((1, 1, 28, 28), np.uint8))
        request = codec.serialize_request("branch0", {"input": ref}, "1")
        good = f"{ring.region.name}\n{ring.region.path}\n{ring.region.byte_size}".encode()

        async def go():
            reader, writer = await asyncio.open_unix_connection(str(worker.unix_socket))
            out = []
            for i, (kind, body) in enumerate([(REGISTER, good), (INFER, request), ("truncate", b""), (INFER, request)]):
                if kind == "truncate":
                    os.truncate(ring.region.path, 0)
                    continue
                writer.write(HEADER.pack(len(body), kind, i) + body)
                size, akind, _ = HEADER.unpack(await asyncio.wait_for(reader.readexactly(HEADER.size), 10))
                out.append((akind, await reader.readexactly(size)))
            writer.close()
            return out

        registered, first, after = asyncio.run(go())
        assert registered[0] == REGISTERED and first[0] == RESULT
        assert after[0] == FAILED and b"shrank" in after[1]  # answered, not SIGBUS
    finally:
        ring.close()
    assert _grpc_raw(worker.address, [GOOD])[0][0] == "OK"


def test_long_names_are_not_echoed_whole(worker):
    req = codec.encode_request("m" * 20_000, {"input": np.zeros((1, 1, 28, 28), np.float32)}).SerializeToString()
    ((status, details),) = _grpc_raw(worker.address, [req])
    assert status == "INVALID_ARGUMENT" and "20000 characters" in details and len(details) < 500


def test_two_authorization_headers_are_refused(random_export, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    with LocalCluster(random_export, parts=["branch0"], pin=False, worker_args=["--token-file", str(token)]) as c:
        address = c.workers["branch0"].address
        right, wrong = ("authorization", "Bearer s3cret"), ("authorization", "Bearer nope")
        assert _grpc_raw(address, [GOOD], metadata=(right,))[0][0] == "OK"
        for twice in ((wrong, right), (right, wrong), (right, right)):
            assert _grpc_raw(address, [GOOD], metadata=twice)[0][0] == "UNAUTHENTICATED"


def test_tls_alone_is_not_client_authentication():
    with pytest.raises(EdgesplitError, match="no client authentication"):
        ServerSecurity(tls_cert="c.pem", tls_key="k.pem").check_bind("0.0.0.0")
    ServerSecurity(tls_cert="c.pem", tls_key="k.pem", tls_client_ca="ca.pem").check_bind("0.0.0.0")
    ServerSecurity(tls_cert="c.pem", tls_key="k.pem", token="t").check_bind("0.0.0.0")
    ServerSecurity(tls_cert="c.pem", tls_key="k.pem").check_bind("127.0.0.1")


def test_server_limits_validate_and_derive_the_message_limit(random_export):
    with pytest.raises(ValueError, match="max_batch=0"):
        ServerLimits(max_batch=0)
    from edgesplit.runtime.worker import WorkerConfig, load_parts

    part = load_parts(WorkerConfig(str(random_export), part="branch0"))[0]
    assert ServerLimits(max_batch=10).message_bytes([part]) == 10 * 28 * 28 * 4 + (64 << 10)
    assert ServerLimits(max_message_bytes=5).message_bytes([part]) == 5


def test_peer_errors_keep_their_meaning(worker):
    """The peer maps a request over the limit to OverLimit, an InferError: the caller's to fix, not a part down."""

    async def go():
        p = GrpcPeer(worker.address, "branch0", ClientSecurity())
        try:
            return await p.infer({"input": np.zeros((300, 1, 28, 28), np.float32)}, timeout_s=10)
        finally:
            await p.close()

    with pytest.raises(OverLimit, match="over the limit of 868352"):
        asyncio.run(go())


def test_connections_over_the_limit_are_closed_and_new_clients_get_in_after_the_timeout(random_export):
    args = ["--max-connections", "3", "--idle-timeout-s", "1"]
    with LocalCluster(random_export, parts=["branch0"], pin=False, worker_args=args) as c:
        w = c.workers["branch0"]
        held = [socket.create_connection(("127.0.0.1", w.port)) for _ in range(4)]
        for s in held:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # preface + SETTINGS
        time.sleep(0.5)
        states = []
        for s in held:
            s.setblocking(False)
            try:
                states.append("closed" if not s.recv(4096) else "open")
            except BlockingIOError:
                states.append("open")
        assert states == ["open", "open", "open", "closed"]  # the server's SETTINGS for the first three
        time.sleep(1.5)  # the idle timeout frees the slots the silent clients held
        assert _grpc_raw(w.address, [GOOD])[0][0] == "OK"
        for s in held:
            s.close()
