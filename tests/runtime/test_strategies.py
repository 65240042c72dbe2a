"""The ways to spread a model over devices (issue 19): split, pipeline, data-parallel, single; same plan/serve API."""

import os

import numpy as np
import pytest
import torch

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.local import LocalModel
from edgesplit.runtime.plan import make_plan

SHAPE = (1, 28, 28)


def _checkpoint(name: str):
    from edgesplit.data.datasets import FASHION_MNIST_CLASSES
    from edgesplit.data.preprocess import Preprocess
    from edgesplit.models import create_model

    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_chans": SHAPE[0], "input_size": SHAPE[1:], "width_mult": 0.25}
    model = create_model(name, **kwargs).eval()
    ckpt = {
        "model": name,
        "model_kwargs": kwargs,
        "state_dict": model.state_dict(),
        "classes": list(FASHION_MNIST_CLASSES),
        "preprocess": Preprocess(SHAPE[1:], (0.286,), (0.353,)).to_dict(),
    }
    return model, ckpt


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """resnet18 (random weights) exported whole and cut into 3 pipeline stages; resnet18-split2 for contrast."""
    from edgesplit.export.onnx_export import export_model

    root = tmp_path_factory.mktemp("strategies")
    model, ckpt = _checkpoint("resnet18")
    export_model(model, ckpt, root / "whole")
    export_model(model, ckpt, root / "pipeline", pipeline=3)
    split, split_ckpt = _checkpoint("resnet18-split2")
    export_model(split, split_ckpt, root / "split")
    return {"model": model, **{k: root / k for k in ("whole", "pipeline", "split")}}


def test_a_pipeline_export_is_the_model_cut_at_its_blocks(exports):
    from edgesplit.manifest import load_manifest

    m = load_manifest(exports["pipeline"])
    assert [s.parts for s in m.stages] == [("stage0",), ("stage1",), ("stage2",)]
    assert [(s.input, s.output) for s in m.stages] == [("input", "act1"), ("act1", "act2"), ("act2", "logits")]
    local = LocalModel(exports["pipeline"])
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        want = exports["model"](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(local(x), want, rtol=1e-4, atol=1e-4)


def test_plans_place_each_strategy_as_it_says(exports):
    addrs, speeds = ["a:1", "b:1", "c:1"], [1.0, 3.0, 2.0]
    single = make_plan(str(exports["whole"]), addrs, speeds, strategy="single")
    assert [(p.name, p.replicas) for p in single.parts] == [("model", ("b:1",))]  # the fastest device alone
    parallel = make_plan(str(exports["whole"]), addrs, speeds)  # what a whole-model export is made for
    assert [(p.name, sorted(p.replicas)) for p in parallel.parts] == [("model", ["a:1", "b:1", "c:1"])]
    pipeline = make_plan(str(exports["pipeline"]), addrs, speeds)
    assert {p.name: p.replicas for p in pipeline.parts} == {"stage0": ("b:1",), "stage1": ("c:1",), "stage2": ("a:1",)}
    with pytest.raises(EdgesplitError, match="strategy pipeline needs an export cut into stages"):
        make_plan(str(exports["whole"]), addrs, strategy="pipeline")
    with pytest.raises(EdgesplitError, match="strategy single needs an unsplit model's export.*made for split"):
        make_plan(str(exports["split"]), addrs, strategy="single")
    with pytest.raises(EdgesplitError, match="3 parts need at least 3 worker addresses"):
        make_plan(str(exports["pipeline"]), addrs[:2])


def test_pipeline_export_refuses_what_it_cannot_cut(exports, tmp_path):
    from edgesplit.export.onnx_export import export_model

    split, ckpt = _checkpoint("resnet18-split2")
    with pytest.raises(EdgesplitError, match="--pipeline cuts an unsplit model"):
        export_model(split, ckpt, tmp_path / "x", pipeline=2)
    model, ckpt = _checkpoint("resnet18")
    with pytest.raises(EdgesplitError, match="--pipeline takes 2 to 11 stages for ResNet"):
        export_model(model, ckpt, tmp_path / "y", pipeline=40)
    with pytest.raises(EdgesplitError, match="--pipeline-speeds: give 2 positive speeds"):
        export_model(model, ckpt, tmp_path / "z", pipeline=2, pipeline_speeds=[1.0, 0.0])


def test_pipeline_stages_follow_the_devices_speeds(exports, tmp_path):
    """--pipeline-speeds: the fastest device's first stage holds more of the model than an equal cut gives it."""
    from edgesplit.export.onnx_export import export_model
    from edgesplit.hardware.graph import load_graph

    model, ckpt = _checkpoint("resnet18")
    export_model(model, ckpt, tmp_path / "equal", pipeline=2)
    export_model(model, ckpt, tmp_path / "fast_first", pipeline=2, pipeline_speeds=[1.0, 3.0])  # sorted: 3 first
    macs = {d: [load_graph(str(tmp_path / d / f"stage{i}.onnx")).macs for i in (0, 1)] for d in ("equal", "fast_first")}
    assert macs["fast_first"][0] > macs["equal"][0]
    assert macs["fast_first"][0] / sum(macs["fast_first"]) > 0.6


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    reason="the testbed needs root (CI runs as root) and the cgroup v1 CPU controller",
)
def test_every_strategy_over_emulated_devices(exports, tmp_path):
    """On the testbed (two devices, 20 Mbit/s links): pipeline, data-parallel and single answer as the model does,
    through the same plan/connect API; data-parallel spreads requests over both devices, single uses one."""
    import edgesplit
    from edgesplit.testbed import Testbed

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("link_mbps: 20\ndevices:\n  - {device: raspberry-pi-4, count: 3, cpu_share: 0.5}\n")
    x = np.random.default_rng(1).integers(0, 256, (6, 1, *SHAPE), dtype=np.uint8)  # (N, 1, C, H, W)
    want = LocalModel(exports["whole"])
    expected = [want(want.pre.normalize(xi)) for xi in x]
    with Testbed(fleet, "strat") as tb:
        for strategy, export, parts in (
            ("pipeline", exports["pipeline"], ["stage0", "stage1", "stage2"]),
            ("data-parallel", exports["whole"], ["model", "model", "model"]),
        ):
            addresses = [tb.start_worker(i, export, part) for i, part in enumerate(parts)]
            plan = make_plan(str(export), addresses, strategy=strategy)
            before = tb.link_bytes()
            with edgesplit.connect(plan) as client:
                got = [client.infer(xi) for xi in x]
            after = tb.link_bytes()
            for g, e in zip(got, expected):
                np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=strategy)
            used = [ns for ns in after if after[ns]["to_device"] - before[ns]["to_device"] > len(x) * 100]
            assert len(used) == 3, (strategy, used)  # pipeline: every stage; data-parallel: requests spread
            for i in range(3):
                tb.stop_worker(i)
        plan = make_plan(str(exports["whole"]), [tb.start_worker(0, exports["whole"], "model")], strategy="single")
        with edgesplit.connect(plan) as client:
            np.testing.assert_allclose(client.infer(x[0]), expected[0], rtol=1e-4, atol=1e-4)
