"""The generated accelerator: C simulation with g++, bit for bit against the integer reference, on real images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgesplit.cli import main
from edgesplit.errors import EdgesplitError
from edgesplit.hls.build import build_hls
from edgesplit.hls.csim import compare, run_csim
from edgesplit.hls.project import HlsConfig, check_supported
from edgesplit.quant.fixed import Fixed, QGraph, QOp, QScheme

TINY = HlsConfig(tm=8, tn=4, td=8, tr=8, tc=8)


@pytest.fixture(scope="module")
def bundle_project(tmp_path_factory):
    out = tmp_path_factory.mktemp("hls_bundlenet")
    return out, build_hls("bundlenet", out, 8, 8, TINY, csim_images=3)


def test_a_bundle_network_is_bit_exact_and_its_cycles_match_the_model(bundle_project):
    out, r = bundle_project
    assert r["bit_exact"] and r["first_mismatch"] is None and r["csim_images"] == 3
    kinds = {row["kind"] for row in r["cycles"]}
    assert {"conv", "bundle-dw", "bundle-pw", "linear"} <= kinds  # a conv, fused DW -> PW bundles, the classifier
    assert r["cycles_within_10_percent"] and all(row["ratio"] == pytest.approx(1.0, abs=0.10) for row in r["cycles"])
    for name in ("net.cpp", "net.h", "edgesplit_layers.h", "tb.cpp", "run_hls.tcl", "README.md", "weights.bin", "layout.json"):
        assert (out / name).is_file(), name
    cpp = (out / "net.cpp").read_text()
    assert "#pragma HLS INTERFACE m_axi port=fm" in cpp and "s_axilite port=return" in cpp
    assert "es::bundle<" in cpp and "es::conv<" in cpp
    layers = (out / "edgesplit_layers.h").read_text()
    assert "#pragma HLS PIPELINE II=1" in layers and "#pragma HLS UNROLL" in layers and "ARRAY_PARTITION" in layers


def test_bundles_and_pools_run_fused(bundle_project):
    out, _ = bundle_project
    layout = json.loads((out / "layout.json").read_text())
    bundles = [c for c in layout["calls"] if c["kind"] == "bundle"]
    assert bundles and all(len(c["ops"]) >= 3 for c in bundles)  # DW conv, its ReLU, the PW conv in one call
    pooled = [c for c in layout["calls"] if any("pool" in op.lower() for op in c["ops"][1:])]
    assert pooled, "a 2x2 max-pool after a conv or bundle should run in its output stage"
    assert not any(c["kind"] == "dwconv" for c in layout["calls"])  # every DW conv here feeds a PW conv


def test_without_fusion_every_layer_is_its_own_call_and_still_bit_exact(tmp_path):
    from dataclasses import replace

    r = build_hls("bundlenet", tmp_path / "unfused", 8, 8, replace(TINY, fuse=False), csim_images=1)
    assert r["bit_exact"] and r["cycles_within_10_percent"]
    assert {"dwconv", "conv", "maxpool"} <= {row["kind"] for row in r["cycles"]}


def test_a_wrong_weight_is_named_by_layer_and_element(bundle_project, tmp_path):
    import shutil

    out, _ = bundle_project
    layout = json.loads((out / "layout.json").read_text())
    good = run_csim(out, 1)[0][0]  # the fixture checked this project bit-exact against the integer reference
    reference = {
        t: good[v["offset"] : v["offset"] + int(np.prod(v["shape"]))].reshape(1, *v["shape"])
        for t, v in layout["tensors"].items()
    }
    work = tmp_path / "broken"
    shutil.copytree(out, work)
    w = np.fromfile(work / "weights.bin", "<i2")
    w[:] = 0  # every weight zero: the first call's output can no longer match
    w.tofile(work / "weights.bin")
    m = compare(layout, run_csim(work, 1)[0][0], reference, 0)
    assert m is not None and m["call"] == 0 and m["got"] != m["want"] and len(m["index"]) == 3


def test_a_resnet_branch_from_a_trained_checkpoint_is_bit_exact(tiny_run, tmp_path):
    r = build_hls(str(tiny_run), tmp_path / "branch0", 8, 8, HlsConfig(tm=8, tn=8, td=8, tr=7, tc=7), csim_images=2, branch=0)
    assert r["model"].endswith("branch0") and r["bit_exact"], r["first_mismatch"]
    assert r["cycles_within_10_percent"]


def test_cli_writes_a_project_and_reports(tmp_path, capsys):
    out = tmp_path / "p"
    assert (
        main(
            [
                "hls",
                "bundlenet",
                "--device",
                "pynq-z1",
                "--out",
                str(out),
                "--csim",
                "1",
                "--tm",
                "8",
                "--tn",
                "4",
                "--td",
                "8",
                "--tr",
                "8",
                "--tc",
                "8",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "bit-exact with the integer reference" in text and "xc7z020clg400-1" in text
    assert "create_clock -period 10.000" in (out / "run_hls.tcl").read_text()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--wbits", "17"], "--wbits must be between 2 and 16"),
        (["--device", "raspberry-pi-4"], "builds for FPGA boards"),
        (["--branch", "0"], "not a split model"),
        (["--tm", "0"], "--tm must be at least 1"),
    ],
)
def test_bad_input_is_one_line(argv, needle, tmp_path, capsys):
    base = {"--device": "pynq-z1"}
    args = ["hls", "bundlenet", "--out", str(tmp_path / "x")]
    if "--device" not in argv:
        args += ["--device", base["--device"]]
    assert main(args + argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def _graph(op: str) -> tuple[QGraph, QScheme]:
    g = QGraph("x", "y", (1, 4, 4), [QOp(op, "odd0", ["x"], "y")])
    return g, QScheme(8, 8, {"x": Fixed(8, 4), "y": Fixed(8, 4)}, {})


def test_an_unsupported_op_is_refused_with_the_list():
    g, s = _graph("softmax")
    with pytest.raises(EdgesplitError, match=r"cannot build 1 op\(s\): odd0 \(softmax\); supported: conv"):
        check_supported(g, s, 8, 8)


def test_per_channel_formats_are_refused():
    g, s = _graph("relu")
    s.weights["w"] = Fixed(8, (3, 4))
    with pytest.raises(EdgesplitError, match="per-channel weight formats"):
        check_supported(g, s, 8, 8)


def test_missing_compiler_and_headers_say_what_to_install(monkeypatch, tmp_path):
    import shutil

    from edgesplit.hls import csim

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EdgesplitError, match="apt-get install g\\+\\+"):
        csim.compile_csim(tmp_path)
    monkeypatch.undo()
    import importlib.resources as resources

    def no_package(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(resources, "files", no_package)
    with pytest.raises(EdgesplitError, match="pip install 'edgesplit\\[hls\\]'"):
        csim.ap_types_dir()


def test_a_split_model_runs_with_one_branch_on_the_accelerator_code(tiny_run, tiny_export, tmp_path):
    """A real worker serves branch0 through the compiled C simulation (engine hls-csim), the other branch on
    ONNX Runtime; the branch answers the integer reference bit for bit, the coordinator the head of both."""
    import asyncio

    import edgesplit
    from edgesplit.data import load_dataset
    from edgesplit.runtime.cluster import LocalCluster
    from edgesplit.runtime.engines import OnnxRuntimeEngine
    from edgesplit.runtime.transport.grpc_peer import GrpcPeer

    proj = tmp_path / "hls_branch0"
    r = build_hls(str(tiny_run), proj, 8, 8, HlsConfig(tm=8, tn=8, td=8, tr=7, tc=7), csim_images=4, branch=0)
    assert r["bit_exact"]
    layout = json.loads((proj / "layout.json").read_text())
    x = np.fromfile(proj / "images.bin", "<f4").reshape(4, *layout["input"]["shape"])  # preprocessed real images
    want = np.fromfile(proj / "expected.bin", "<i2").reshape(4, -1).astype(np.float32) * np.float32(
        2.0 ** -layout["output"]["frac"]
    )
    hls_args = {"branch0": ["--engine", "hls-csim", "--hls", str(proj)]}
    with LocalCluster(tiny_export, timeout_ms=20000, extra_args=hls_args, pin=False) as c:

        async def call():
            w = GrpcPeer(c.workers["branch0"].address, "branch0")
            try:
                return await w.infer({"input": x}, timeout_s=20)
            finally:
                await w.close()

        got = asyncio.run(call()).outputs["features"]
        assert got.shape == want.shape and np.array_equal(got, want)  # bit for bit
        images = np.ascontiguousarray(load_dataset("fashion-mnist", "test").data[:4].transpose(0, 3, 1, 2))  # NCHW uint8
        with edgesplit.connect(c.plan()) as client:
            logits = client.infer(images)
    other = OnnxRuntimeEngine(tiny_export / "branch1.onnx").run({"input": x})["features"]
    head = OnnxRuntimeEngine(tiny_export / "head.onnx")
    expected = head.run({head.inputs[0].name: np.concatenate([want, other], axis=1)})
    assert np.abs(logits - next(iter(expected.values()))).max() < 1e-4


def test_an_export_is_refused_with_what_to_pass(tiny_export, tmp_path, capsys):
    assert main(["hls", str(tiny_export), "--device", "pynq-z1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "without fixed-point formats" in err and "--branch" in err and len(err.splitlines()) == 1
