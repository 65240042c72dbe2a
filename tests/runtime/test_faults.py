"""Stragglers and failures with real worker processes: coded FC layers keep answering exactly."""

import os
import signal
import time

import numpy as np
import pytest

import edgesplit
from edgesplit.export.coded import export_coded_mlp, reference_forward
from edgesplit.manifest import load_manifest
from edgesplit.runtime.cluster import LocalCluster
from edgesplit.runtime.errors import PartUnavailable

K, R = 3, 1  # as conftest.coded_export
LAYERS = ("l1", "l2")


def _groups(n):
    return [[f"{layer}.{j}" for layer in LAYERS] for j in range(n)]


def _xs(n=40):
    return np.random.default_rng(5).standard_normal((n, 64)).astype(np.float32)


def _close(got, want):
    return np.linalg.norm(got - want) <= 1e-4 * np.linalg.norm(want)


def test_manifest_describes_coded_stages(coded_export):
    m = load_manifest(coded_export)
    assert [s.name for s in m.stages] == ["l1", "l2", "head"]
    assert m.stages[0].parts == ("l1.0", "l1.1", "l1.2", "l1.3") and m.stages[0].merge == "decode"
    assert m.stages[-1].local and "head" not in m.remote_parts


def test_killed_worker_mid_stream_every_answer_exact(mlp, coded_export):
    xs = _xs()
    want = reference_forward(mlp, xs)
    with (
        LocalCluster(coded_export, groups=_groups(K + R), pin=False, timeout_ms=3000) as c,
        edgesplit.connect(c.plan()) as client,
    ):
        futures = [client.submit(x[None]) for x in xs[:20]]
        c.kill("l1.1,l2.1")
        futures += [client.submit(x[None]) for x in xs[20:]]
        results = [f.result(timeout=10) for f in futures]
    for r, w in zip(results, want):
        assert not r.parameters["degraded"]
        assert _close(r.outputs["logits"][0], w)
    assert any(r.parameters["recovered"] for r in results[20:])


def test_frozen_worker_does_not_delay_answers(mlp, coded_export):
    xs = _xs(10)
    want = reference_forward(mlp, xs)
    with (
        LocalCluster(coded_export, groups=_groups(K + R), pin=False, timeout_ms=5000) as c,
        edgesplit.connect(c.plan()) as client,
    ):
        client.infer(xs[:1])
        pid = c.workers["l1.0,l2.0"].proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            for x, w in zip(xs, want):
                r = client.infer_result(x[None])
                assert r.parameters["recovered"] and _close(r.outputs["logits"][0], w)
            assert time.monotonic() - t0 < 5  # any k of k + r: nobody waits for the frozen one
        finally:
            os.kill(pid, signal.SIGCONT)


def test_lazy_parity_asks_parity_blocks_only_when_a_data_block_is_late_or_gone(mlp, coded_export):
    xs = _xs(12)
    want = reference_forward(mlp, xs)
    # slack 20: a data block is late only at 21x the first one's time, so fault-free runs never ask the parity block
    with (
        LocalCluster(coded_export, groups=_groups(K + R), pin=False, timeout_ms=5000) as c,
        edgesplit.connect(c.plan(parity="lazy", parity_slack=20.0)) as client,
    ):
        for x, w in zip(xs[:4], want):
            r = client.infer_result(x[None])
            assert "parity_asked" not in r.parameters and not r.parameters["recovered"]
            assert _close(r.outputs["logits"][0], w)
        pid = c.workers["l1.0,l2.0"].proc.pid
        os.kill(pid, signal.SIGSTOP)  # a data block that never answers: late, so parity is asked
        try:
            for x, w in zip(xs[4:8], want[4:8]):
                r = client.infer_result(x[None])
                assert r.parameters["parity_asked"] == 2 and r.parameters["recovered"]  # both coded stages
                assert _close(r.outputs["logits"][0], w)
        finally:
            os.kill(pid, signal.SIGCONT)
        c.kill("l1.1,l2.1")  # a data block that fails: parity at once
        for x, w in zip(xs[8:], want[8:]):
            r = client.infer_result(x[None])
            assert r.parameters["recovered"] and not r.parameters["degraded"] and _close(r.outputs["logits"][0], w)


def test_plan_refuses_unknown_parity_policy(coded_export):
    from edgesplit.errors import EdgesplitError
    from edgesplit.runtime.plan import Plan, PartPlacement, validate_plan

    parts = tuple(PartPlacement(p, ("127.0.0.1:1",)) for p in load_manifest(coded_export).remote_parts)
    for bad, needle in (({"parity": "sometimes"}, "parity must be eager or lazy"), ({"parity_slack": -1}, "parity_slack")):
        with pytest.raises(EdgesplitError, match=needle):
            validate_plan(Plan(str(coded_export), parts, **bad), load_manifest(coded_export))


@pytest.mark.parametrize(
    "faulty", [["--inject-error-prob", "0.3", "--inject-seed", "4"], ["--crash-after", "10"]], ids=["errors", "crash"]
)
def test_injected_faults_on_one_worker_are_recovered_then_it_is_readmitted(mlp, coded_export, faulty):
    xs = _xs(30)
    want = reference_forward(mlp, xs)
    name = "l1.2,l2.2"
    with (
        LocalCluster(coded_export, groups=_groups(K + R), pin=False, extra_args={name: faulty}, timeout_ms=3000) as c,
        edgesplit.connect(c.plan(probe_interval_ms=100)) as client,
    ):
        for x, w in zip(xs, want):
            r = client.infer_result(x[None])
            assert not r.parameters["degraded"] and _close(r.outputs["logits"][0], w)
        if "--crash-after" in faulty:
            time.sleep(0.5)
            assert c.dead() == [name]  # crashed after 10 requests, as injected
            c.extra_args.pop(name)
            c.restart(name)
            coord = client.coordinator
            deadline = time.monotonic() + 5
            while not all(h.healthy for hs in coord.peers.values() for h in hs):  # the probe re-admits it
                client.infer(xs[:1])
                assert time.monotonic() < deadline, "restarted worker not re-admitted within 5 s"
                time.sleep(0.05)


def test_without_parity_a_missing_block_gives_flagged_degraded_answer(mlp, tmp_path):
    export_coded_mlp(mlp, tmp_path, K, 0, "mlp", layer_names=LAYERS)
    x = _xs(1)
    with LocalCluster(tmp_path, groups=_groups(K), pin=False, timeout_ms=3000) as c:
        with edgesplit.connect(c.plan()) as client:
            assert not client.infer_result(x).parameters["degraded"]
            c.kill("l1.1,l2.1")
            r = client.infer_result(x)
            assert r.parameters["degraded"] and "l1.1" in r.parameters["missing"]
        with pytest.raises(PartUnavailable, match="not ready"):
            edgesplit.connect(c.plan(), wait_ready_s=0.5)
        with edgesplit.connect(c.plan(on_missing="fail"), wait_ready_s=0.5, require_all=False) as client:
            with pytest.raises(PartUnavailable, match="l1.1"):
                client.infer(x)


def test_share_of_requests_parity_cannot_shield():
    from edgesplit.bench.faults import p_more_stragglers_than_parity

    assert p_more_stragglers_than_parity(5, 1, 0.1) == pytest.approx(1 - 0.9**5 - 5 * 0.1 * 0.9**4)
    rng = np.random.default_rng(0)
    draws = (rng.random((200_000, 7)) < 0.1).sum(1)
    assert p_more_stragglers_than_parity(7, 3, 0.1) == pytest.approx((draws > 3).mean(), abs=5e-4)


@pytest.fixture(scope="module")
def coded_head_export(tmp_path_factory):
    """A tiny split model whose head has a hidden layer, exported with that layer over 3 data + 1 parity blocks."""
    import torch

    from edgesplit.export.onnx_export import export_model
    from edgesplit.models import create_model

    torch.manual_seed(0)
    kw = {"num_classes": 10, "in_chans": 1, "input_size": [28, 28], "width_mult": 0.125, "head_hidden": 40}
    model = create_model("resnet18-split2", **kw).eval()
    ckpt = {
        "model": "resnet18-split2",
        "model_kwargs": kw,
        "classes": [str(i) for i in range(10)],
        "preprocess": {"size": [28, 28], "mean": [0.5], "std": [0.25]},
    }
    out = tmp_path_factory.mktemp("coded_head")
    export_model(model, ckpt, out, code_head=(3, 1))
    return model, out


def test_split_model_with_coded_head_runs_as_stages_and_survives_a_lost_block(coded_head_export):
    import torch

    from edgesplit.runtime.local import LocalModel

    model, export = coded_head_export
    m = load_manifest(export)
    assert [(s.name, s.merge, s.local) for s in m.stages] == [
        ("branches", "concat", False),
        ("head_fc", "decode", False),
        ("head", "single", True),
    ]
    assert m.stages[1].parts == ("head_fc.0", "head_fc.1", "head_fc.2", "head_fc.3") and m.stages[1].activation == "relu"
    x = np.random.default_rng(2).standard_normal((6, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(LocalModel(export)(x) - want).max() < 1e-4  # the data blocks alone give the head
    groups = [["branch0", "head_fc.0"], ["branch1", "head_fc.1"], ["head_fc.2"], ["head_fc.3"]]
    with (
        LocalCluster(export, groups=groups, pin=False, timeout_ms=5000, input_dtype="float32") as c,
        edgesplit.connect(c.plan()) as client,
    ):
        for xi, w in zip(x[:3], want):
            r = client.infer_result(xi[None])
            assert not r.parameters["degraded"] and _close(r.outputs["logits"][0], w)
        c.kill("head_fc.2")  # a data block of the head's hidden layer: the parity block stands in
        for xi, w in zip(x[3:], want[3:]):
            r = client.infer_result(xi[None])
            assert r.parameters["recovered"] and not r.parameters["degraded"] and _close(r.outputs["logits"][0], w)


def test_code_head_needs_a_hidden_layer(tiny_run, tmp_path, capsys):
    from edgesplit.cli import main

    assert main(["export", str(tiny_run), "--out", str(tmp_path / "x"), "--code-head", "3,1"]) == 2
    assert "head_hidden" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "y"), "--code-head", "9,1"]) == 2
    assert "1 <= K <= 8" in capsys.readouterr().err


def test_plan_spreads_coded_blocks_one_per_device(coded_head_export):
    from edgesplit.runtime.plan import make_plan, parts_by_address

    _, export = coded_head_export
    plan = make_plan(str(export), ["a:1", "b:1", "c:1", "d:1"], speeds=[1, 1, 2, 2])
    where = {p.name: p.replicas for p in plan.parts}
    assert {where["branch0"][0], where["branch1"][0]} == {"c:1", "d:1"}  # branches on the fastest devices
    assert sorted(where[f"head_fc.{j}"][0] for j in range(4)) == ["a:1", "b:1", "c:1", "d:1"]  # one block each
    assert sorted(n for names in parts_by_address(plan).values() for n in names) == sorted(where)


def test_plan_refuses_to_put_more_blocks_on_a_device_than_the_code_can_lose(coded_head_export, tmp_path):
    """3 data + 1 parity blocks need 4 devices for one per device: on 3, one device would hold 2 and losing it
    would degrade every answer. The refusal says what the code needs; with enough devices the output says what
    can be lost."""
    import subprocess
    import sys

    from edgesplit.errors import EdgesplitError
    from edgesplit.runtime.plan import coded_tolerance, make_plan

    _, export = coded_head_export
    with pytest.raises(
        EdgesplitError,
        match="would put 2 blocks on one device, more than the 1 the code can lose; give at least 4 worker addresses",
    ):
        make_plan(str(export), ["a:1", "b:1", "c:1"])
    plan = make_plan(str(export), [f"h{i}:1" for i in range(4)])
    assert coded_tolerance(plan) == [
        "head_fc: 3 data + 1 parity blocks on 4 device(s), at most 1 per device: any 1 "
        "device(s) can be lost without a degraded answer"
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesplit",
            "plan",
            str(export),
            "--workers",
            "a:1",
            "b:1",
            "c:1",
            "--out",
            str(tmp_path / "p.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "at least 4" in proc.stderr
    assert not (tmp_path / "p.yaml").exists()
