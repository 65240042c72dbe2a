"""Learned parity branches (`edgesplit add-parity`): the code they learn, the export as a coded stage, a killed
worker's features rebuilt by the coordinator through real workers (`recovered`), a code that does not match refused."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from edgesplit.data.datasets import load_dataset
from edgesplit.errors import EdgesplitError
from edgesplit.manifest import load_manifest
from edgesplit.training.checkpoint import checkpoint_preprocess, load_model, read_checkpoint
from edgesplit.training.config import ParityConfig
from edgesplit.training.parity import parity_branches, rebuild, train_parity


@pytest.fixture(scope="module")
def parity_run(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("parity")
    summary = train_parity(tiny_run, out, ParityConfig(epochs=3, max_train_samples=512, threads=1))
    return out, summary


@pytest.fixture(scope="module")
def parity_export(parity_run, tmp_path_factory):
    from edgesplit.export.onnx_export import export_model

    model, ckpt = load_model(parity_run[0])
    out = tmp_path_factory.mktemp("parity_export")
    export_model(model, ckpt, out)
    return out


def _test_images(n=64):
    test = load_dataset("fashion-mnist", "test")
    return test.data[:n]


def test_the_parity_branch_learns_the_sum_of_the_branches(parity_run):
    from edgesplit.data.transforms import to_tensor

    out, summary = parity_run
    assert summary["k"] == 2 and summary["code"] == "sum" and summary["parity_parameters"] == summary["branch_parameters"]
    model, ckpt = load_model(out)
    parity = parity_branches(model, ckpt["parity"])
    code = torch.ones(1, 2)
    x = to_tensor(_test_images(256), checkpoint_preprocess(ckpt))
    with torch.no_grad():
        f = model.forward_features(x)
        rebuilt = rebuild(f, parity[0](x), code, 1)[1]
    # branch1's features solved from branch0 and the parity branch: closer than the zeros a missing branch gives
    # (the parity branch starts as a copy of branch0, whose rebuilt features are exactly those zeros: it learned)
    assert float((rebuilt - f[1]).norm()) < 0.9 * float(f[1].norm())
    assert set(summary["test"]) == {
        "all",
        "without_branch0_zeros",
        "without_branch0_parity",
        "without_branch1_zeros",
        "without_branch1_parity",
    }


def test_export_is_a_coded_stage_of_branches_and_parity(parity_export):
    m = load_manifest(parity_export)
    stage = m.stages[0]
    assert stage.merge == "decode" and stage.parts == ("branch0", "branch1", "parity0")
    assert (stage.code_k, stage.code_r, stage.out_features) == (2, 1, sum(m.feature_dims))
    assert [p.role for p in m.parts] == ["branch", "branch", "parity", "head"] and not stage.code_exact


def test_a_killed_branch_worker_is_answered_recovered_through_real_workers(parity_run, parity_export):
    from edgesplit.data.transforms import to_tensor
    from edgesplit.runtime.client import connect
    from edgesplit.runtime.cluster import LocalCluster
    from edgesplit.runtime.local import LocalModel

    images = _test_images(8)
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    local = LocalModel(parity_export)
    model, ckpt = load_model(parity_run[0])
    parity = parity_branches(model, ckpt["parity"])
    with torch.no_grad():
        t = to_tensor(images, checkpoint_preprocess(ckpt))
        f = model.forward_features(t)
        want = model.forward_head(rebuild(f, parity[0](t), torch.ones(1, 2), 1)).numpy()
    # a slack no scheduling delay reaches: every branch answers in full while it is there
    with LocalCluster(parity_export, pin=False) as cluster, connect(cluster.plan(parity_slack=100.0)) as client:
        r = client.infer_result(x)
        assert not r.parameters["recovered"] and not r.parameters["degraded"]
        assert np.abs(r.outputs["logits"] - local(local.prepare(images))).max() < 1e-4  # every branch: exact
        cluster.kill("branch1")  # the device is unplugged
        deadline = time.monotonic() + 20
        while True:
            r = client.infer_result(x)
            if r.parameters["recovered"] or time.monotonic() > deadline:
                break
        assert r.parameters["recovered"] and not r.parameters["degraded"]
        assert np.abs(r.outputs["logits"] - want).max() < 1e-3  # the head on branch1's features rebuilt from parity


def test_an_export_whose_parity_code_does_not_match_is_refused(parity_export, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(parity_export, bad)
    d = json.loads((bad / "manifest.json").read_text())
    d["stages"][0]["code_r"] = 2
    (bad / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(EdgesplitError, match="parity code .* does not match its 2 branches"):
        load_manifest(bad, verify=False)


def test_parity_needs_a_split_model_of_equal_branches(tiny_run, tmp_path):
    ckpt = read_checkpoint(tiny_run)
    with pytest.raises(EdgesplitError, match="more than the 2 data branches"):
        train_parity(tiny_run, tmp_path / "a", ParityConfig(parity_branches=3, epochs=1, max_train_samples=64))
    with pytest.raises(EdgesplitError, match="at least 1"):
        ParityConfig(parity_branches=0)
    assert ckpt["model"] == "resnet18-split2"


def test_bench_parity_loses_nothing_when_a_branch_worker_dies_or_hangs(parity_export):
    from edgesplit.bench.config import ParityBench
    from edgesplit.bench.parity import bench_parity, text_report

    r = bench_parity(ParityBench(str(parity_export), images=40, in_flight=2, parity_slack=100.0))
    s = r["scenarios"]
    assert r["victim"] == "branch1" and all(v["lost"] == 0 for v in s.values())
    assert s["fault_free"]["recovered"] == 0 and s["fault_free"]["exact"] == 40  # no fault, no rebuilt answer
    assert s["kill"]["recovered"] > 0 and s["freeze"]["recovered"] > 0  # after the fault: rebuilt from the parity
    assert "recovered acc." in text_report(r)


def test_train_with_parity_branches_writes_them_into_its_checkpoint(tmp_path, capsys):
    from edgesplit.cli import main

    out = tmp_path / "run"
    argv = ["train", "resnet18-split2", "--model-arg", "width_mult=0.125", "--epochs", "1", "--train-images", "256",
            "--val-size", "128", "--threads", "1", "--quiet", "--parity-branches", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    ckpt = read_checkpoint(out)
    assert ckpt["parity"]["r"] == 1 and ckpt["parity"]["kind"] == "sum" and "optimizer" in ckpt
    assert "1 parity branch(es): all" in capsys.readouterr().out
    assert main(["train", "resnet18", "--epochs", "1", "--parity-branches", "-1", "--out", str(tmp_path / "x")]) == 2
