"""Many streams on one fleet (issue 20 part 2): groups of real workers, each its own copy of the split model,
served as one model by a StreamRouter; a stream stays on its group and moves when the group degrades."""

import asyncio

import numpy as np
import pytest

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.cluster import LocalCluster
from edgesplit.runtime.coordinator import remote_coordinator
from edgesplit.runtime.local import LocalModel
from edgesplit.runtime.streams import StreamRouter, load_groups


@pytest.fixture
def images():
    from edgesplit.data import load_dataset

    data = load_dataset("fashion-mnist", "test").data[:8]
    return np.ascontiguousarray(data.transpose(0, 3, 1, 2))[:, None]  # (N, 1, C, H, W): one image per request


def test_streams_stay_on_their_group_and_move_when_it_degrades(random_export, images):
    local = LocalModel(random_export)
    expected = local(local.pre.normalize(images[:, 0]))  # the same model in this process

    async def go(clusters):
        groups = [remote_coordinator(c.plan()) for c in clusters]
        for g in groups:
            await g.wait_ready(30)
        router = StreamRouter(groups, hold_s=60)
        try:
            first = [await router.infer_stream({"input": images[0]}, s) for s in ("a", "b")]
            placed = {s: r.parameters["group"] for s, r in zip("ab", first)}
            assert sorted(placed.values()) == [0, 1]  # two new streams: one per group
            for x in images[1:4]:  # frames of a stream stay on its group
                for s in "ab":
                    r = await router.infer_stream({"input": x}, s)
                    assert r.parameters["group"] == placed[s] and not r.parameters.get("degraded")
            clusters[placed["a"]].kill("branch1")  # a device of stream a's group unplugged
            after = [await router.infer_stream({"input": x}, "a") for x in images[4:8]]
            b_after = await router.infer_stream({"input": images[4]}, "b")
            return placed, after, b_after, router
        finally:
            await router.close()

    with LocalCluster(random_export, pin=False) as one, LocalCluster(random_export, pin=False) as two:
        placed, after, b_after, router = asyncio.run(go([one, two]))
    other = 1 - placed["a"]
    # every frame answered: the one that met the dead worker degraded (or asked again elsewhere), then the other group
    assert all(r.outputs["logits"].shape == (1, 10) for r in after)
    moved = [r for r in after if r.parameters["group"] == other]
    assert len(moved) >= 3 and not any(r.parameters.get("degraded") for r in moved)
    assert router.streams["a"] == other
    assert b_after.parameters["group"] == placed["b"]  # the healthy group's stream never moved
    np.testing.assert_allclose(moved[-1].outputs["logits"][0], expected[7], atol=1e-4)


def test_requests_without_a_stream_go_to_the_groups_in_turn(random_export, images):
    async def go(clusters):
        groups = [remote_coordinator(c.plan()) for c in clusters]
        for g in groups:
            await g.wait_ready(30)
        router = StreamRouter(groups)
        try:
            return [(await router.infer({"input": x})).parameters["group"] for x in images[:4]]
        finally:
            await router.close()

    with LocalCluster(random_export, pin=False) as one, LocalCluster(random_export, pin=False) as two:
        assert asyncio.run(go([one, two])) == [0, 1, 0, 1]


def test_a_group_file_that_is_not_one_is_one_line(tmp_path):
    bad = tmp_path / "groups.yaml"
    bad.write_text("groups: 3\n")
    with pytest.raises(EdgesplitError, match="is not a valid group file"):
        load_groups(bad)
    bad.write_text("groups: []\n")
    with pytest.raises(EdgesplitError, match="lists no groups"):
        load_groups(bad)


def test_serve_a_group_file_spreads_streams_over_kserve(random_export, images, tmp_path, serving):
    """`edgesplit serve --plan groups.yaml`: one KServe v2 endpoint over two groups; the request parameter
    `stream` keeps a stream's frames on one group, and a new stream goes to the emptier group."""
    import yaml

    from edgesplit.runtime.transport.grpc_peer import GrpcPeer

    async def go(port):
        peer = GrpcPeer(f"127.0.0.1:{port}", "resnet18-split2")
        try:
            out = []
            for stream in ("s1", "s2", "s1", "s2", "s1"):
                r = await peer.infer({"input": images[0]}, timeout_s=10, parameters={"stream": stream})
                out.append((stream, r.parameters["group"]))
            return out
        finally:
            await peer.close()

    with LocalCluster(random_export, pin=False) as one, LocalCluster(random_export, pin=False) as two:
        for i, cluster in enumerate((one, two)):
            cluster.plan().write(tmp_path / f"g{i}.yaml")
        (tmp_path / "groups.yaml").write_text(yaml.safe_dump({"groups": ["g0.yaml", "g1.yaml"]}))
        with serving("--plan", tmp_path / "groups.yaml") as (_, port):
            answers = asyncio.run(go(port))
    groups = {s: {g for t, g in answers if t == s} for s in ("s1", "s2")}
    assert groups["s1"] != groups["s2"] and all(len(g) == 1 for g in groups.values())
