"""The input broadcast through shared memory, with real worker processes over the Unix socket transport."""

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from edgesplit.data import load_dataset
from edgesplit.runtime.client import AsyncClient
from edgesplit.runtime.cluster import LocalCluster
from edgesplit.runtime.coordinator import remote_coordinator
from edgesplit.runtime.errors import InferError
from edgesplit.runtime.shm import SHM_DIR, InputRing, RegionMap, SharedTensor
from edgesplit.runtime.transport import codec
from edgesplit.runtime.transport import kserve_v2_pb2 as pb
from edgesplit.runtime.transport.ipc import HEADER, INFER, REGISTER, REGISTERED, RESULT
from edgesplit.runtime.transport.limits import ServerLimits

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs /dev/shm")


@pytest.fixture(scope="module")
def images():
    return load_dataset("fashion-mnist", "test").data[:12].transpose(0, 3, 1, 2)  # (12, 1, 28, 28) uint8


@pytest.fixture(scope="module")
def cluster(random_export):
    with LocalCluster(random_export, timeout_ms=5000) as c:
        yield c


def _run(plan, images, ring=None, in_flight=1):
    """Logits for ``images`` through a coordinator (with ``ring`` as its input ring), and the coordinator's peers."""

    async def go():
        coord = remote_coordinator(plan)
        if ring is not None:
            coord.ring = ring
        client = AsyncClient(coord)
        await coord.wait_ready(10)
        sem = asyncio.Semaphore(in_flight)

        async def one(img):
            async with sem:
                return await client.infer(img[None])

        try:
            out = await asyncio.gather(*(one(img) for img in images))
            registered = [h.peer._conn.regions for hs in coord.peers.values() for h in hs]
            return np.concatenate(out), registered
        finally:
            await client.close()

    return asyncio.run(go())


def test_shared_input_gives_the_inline_answers_and_returns_every_slot(cluster, images):
    want, _ = _run(cluster.plan(shared_memory=False), images)
    ring = InputRing(slots=4, min_bytes=0)  # the 28x28 test images are under the default threshold
    got, registered = _run(cluster.plan(), images, ring, in_flight=3)
    assert np.array_equal(got, want)
    assert ring.region is not None and all(r == {ring.region.name: True} for r in registered)
    assert ring.free_slots == 4  # every slot back once its stage ended
    assert not Path(ring.region.path).exists()  # removed when the coordinator closed


def test_more_requests_than_slots_fall_back_to_inline(cluster, images):
    want, _ = _run(cluster.plan(shared_memory=False), images)
    ring = InputRing(slots=1, min_bytes=0)
    got, _ = _run(cluster.plan(), images, ring, in_flight=6)
    assert np.array_equal(got, want) and ring.free_slots == 1


def test_default_coordinator_shares_only_large_inputs(cluster):
    coord = remote_coordinator(cluster.plan())
    try:
        assert coord.ring is not None and coord.ring.put(np.zeros((1, 1, 28, 28), np.uint8)) is None  # small: inline
    finally:
        asyncio.run(coord.close())
    assert remote_coordinator(cluster.plan(shared_memory=False)).ring is None


def _frames(address, frames):
    """Send raw frames to a worker and read one answer per frame."""

    async def go():
        reader, writer = await asyncio.open_unix_connection(address[len("ipc://") :])
        answers = []
        for kind, body in frames:
            writer.write(HEADER.pack(len(body), kind, len(answers) + 1) + body)
            size, akind, _ = HEADER.unpack(await reader.readexactly(HEADER.size))
            answers.append((akind, await reader.readexactly(size)))
        writer.close()
        return answers

    return asyncio.run(go())


def test_worker_maps_only_edgesplit_rings_and_checks_every_reference(cluster, images, tmp_path):
    address = cluster.workers["branch0"].plan_address
    outside = tmp_path / "edgesplit-1-x.ring"
    outside.write_bytes(b"\0" * 4096)
    ring = InputRing(slots=2, min_bytes=0)
    ref = ring.put(np.ascontiguousarray(images[:1]))
    bad = [f"r\n{outside}\n4096", "r\n/etc/passwd\n10", "r\n/dev/shm/not-ours\n10", f"r\n{ring.region.path}\n{10**9}", "garbage"]
    good = f"{ring.region.name}\n{ring.region.path}\n{ring.region.byte_size}"

    def infer_frame(shared):
        return (1, codec.serialize_request("branch0", {"input": shared}, "1"))

    out_of_range = SharedTensor(ref.array, ref.region, ring.region.byte_size - 10)
    answers = _frames(
        address,
        [(REGISTER, b.encode()) for b in bad]
        + [infer_frame(ref), (REGISTER, good.encode()), infer_frame(ref), infer_frame(out_of_range)],
    )
    *refused, unregistered, registered, ok, outside_region = answers
    assert all(kind == 5 and body.startswith(b"INVALID_ARGUMENT") for kind, body in refused)  # FAILED
    assert unregistered[0] == 5 and b"is not registered here" in unregistered[1]
    assert registered[0] == 8 and ok[0] == 4  # REGISTERED, RESULT
    assert outside_region[0] == 5 and b"outside region" in outside_region[1]
    ring.close()


def test_codec_and_region_map_round_trip(tmp_path):
    ring = InputRing(slots=2, min_bytes=0)
    x = np.random.default_rng(0).random((2, 3, 5, 5)).astype(np.float32)
    ref = ring.put(x)
    body = codec.serialize_request("m", {"a": ref, "b": np.arange(4, dtype=np.int64)}, "9")
    req = pb.ModelInferRequest.FromString(body)
    assert len(req.raw_input_contents) == 1  # only the inline input has a raw buffer
    with pytest.raises(InferError, match="not registered"):
        codec.decode_request(req)
    regions = RegionMap()
    regions.register(ring.region.name, ring.region.path, ring.region.byte_size)
    got = codec.decode_request(req, regions)
    assert np.array_equal(got["a"], x) and np.array_equal(got["b"], np.arange(4))
    del got
    regions.close()
    ring.close()


def test_ring_left_by_a_dead_process_is_removed(tmp_path):
    stale = SHM_DIR / f"edgesplit-{2**22 + 12345}-dead.ring"  # no such pid (above the default pid_max)
    stale.write_bytes(b"\0")
    ring = InputRing(min_bytes=0)
    ring.put(np.zeros(8, np.uint8))
    assert not stale.exists() and Path(ring.region.path).exists() and oct(os.stat(ring.region.path).st_mode)[-3:] == "600"
    ring.close()


def test_fast_encoding_of_shared_inputs_is_protobufs_own():
    """serialize_request caches a request's metadata: the bytes stay protobuf's own for every id and slot."""
    ring = InputRing(slots=2, min_bytes=0)
    x = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    b = np.arange(4, dtype=np.int64)
    for rid in ("1", "", "12345", "1"):
        ref = ring.put(x)
        want = pb.ModelInferRequest(model_name="branch0", id=rid)
        t = want.inputs.add(name="input", datatype="UINT8", shape=x.shape)
        t.parameters[codec.SHM_REGION].string_param = ring.region.name
        t.parameters[codec.SHM_OFFSET].int64_param = ref.offset
        t.parameters[codec.SHM_BYTES].int64_param = x.nbytes
        want.inputs.add(name="b", datatype="INT64", shape=b.shape)
        want.raw_input_contents.append(b.tobytes())
        assert codec.serialize_request("branch0", {"input": ref, "b": b}, rid) == want.SerializeToString()
        ring.release(ref)
    ring.close()


def test_requests_that_differ_only_by_id_are_answered_with_their_own_id_and_image(cluster, random_export, images):
    """A worker keeps what it decoded of a request that names a shared-memory slot; the next request for the same
    slot, with another id and another image in the slot, gets its own id and its own image's features."""
    from edgesplit.runtime.local import LocalModel

    local = LocalModel(random_export)
    ring = InputRing(slots=1, min_bytes=0)
    path = cluster.workers["branch0"].plan_address[len("ipc://") :]
    ids = ["7", "", "x" * 300, "8", "7"]

    async def go():
        reader, writer = await asyncio.open_unix_connection(path)

        async def send(kind, body, call_id):
            writer.write(HEADER.pack(len(body), kind, call_id) + body)
            size, akind, _ = HEADER.unpack(await reader.readexactly(HEADER.size))
            return akind, await reader.readexactly(size)

        answers = []
        for i, rid in enumerate(ids):
            ref = ring.put(np.ascontiguousarray(images[i : i + 1]))
            if i == 0:
                region = f"{ring.region.name}\n{ring.region.path}\n{ring.region.byte_size}".encode()
                assert (await send(REGISTER, region, 100))[0] == REGISTERED
            answers.append(await send(INFER, codec.serialize_request("branch0", {"input": ref}, rid), i + 1))
            ring.release(ref)  # the one slot again, with the next image
        writer.close()
        return answers

    answers = asyncio.run(go())
    for i, (rid, (kind, body)) in enumerate(zip(ids, answers)):
        assert kind == RESULT
        resp = pb.ModelInferResponse.FromString(body)
        outputs, _ = codec.decode_response(resp)
        want = local.engines["branch0"].run({"input": local.pre.normalize(images[i : i + 1])})["features"]
        assert resp.id == rid and np.abs(outputs["features"] - want).max() < 1e-5
    ring.close()


def test_split_request_id():
    ring = InputRing(slots=1, min_bytes=0)
    ref = ring.put(np.zeros((1, 3, 4, 4), np.uint8))
    keys = set()
    for rid in ["", "1", "x" * 200, "é"]:
        body = codec.serialize_request("branch0", {"input": ref}, rid)
        key, got = codec.split_request_id(body)
        assert got == rid and pb.ModelInferRequest.FromString(key) == pb.ModelInferRequest.FromString(
            codec.serialize_request("branch0", {"input": ref}, "")
        )
        keys.add(key)
    assert len(keys) == 1
    other = pb.ModelInferRequest(model_name="m", model_version="2", id="9").SerializeToString()  # another layout
    assert codec.split_request_id(other) == (other, "")  # the id stays in the key: never shared
    assert codec.split_request_id(pb.ModelInferRequest(id="9").SerializeToString()) is None
    assert codec.split_request_id(b"\x0a\xff") is None  # truncated
    ring.close()


def test_a_worker_decodes_a_repeated_request_once(random_export, tmp_path):
    from edgesplit.runtime.worker import WorkerConfig, load_parts
    from edgesplit.runtime.transport.ipc_server import UnixSocketServer, _ServerConnection

    server = UnixSocketServer(
        load_parts(WorkerConfig(str(random_export), part="branch0")), tmp_path / "w.sock", ServerLimits(max_message_bytes=1 << 20)
    )
    conn = _ServerConnection(server)
    ring = InputRing(slots=1, min_bytes=0)
    ref = ring.put(np.zeros((1, 1, 28, 28), np.uint8))
    conn.regions.register(ring.region.name, ring.region.path, ring.region.byte_size)
    first = conn.decode(codec.serialize_request("branch0", {"input": ref}, "1"), server)
    again = conn.decode(codec.serialize_request("branch0", {"input": ref}, "2"), server)
    assert (first.request_id, again.request_id) == ("1", "2") and again.inputs is first.inputs  # not decoded again
    traced = conn.decode(codec.serialize_request("branch0", {"input": ref}, "3", {"edgesplit_trace": True}), server)
    assert traced.traced and not again.traced and traced.inputs is not first.inputs
    conn.regions.close()
    ring.close()
