"""NumpyEngine against ONNX Runtime on every ONNX graph of fully connected layers the exports produce."""

import numpy as np
import pytest
import torch

from edgesplit.export.coded import export_coded_mlp, random_alexnet_fc
from edgesplit.manifest import load_manifest
from edgesplit.export.onnx_export import export_model
from edgesplit.models import SplitNet, create_model, list_models
from edgesplit.runtime.engines import OnnxRuntimeEngine, create_engine
from edgesplit.runtime.engines.numpy_engine import NumpyEngine, UnsupportedGraph

SPLIT_MODELS = [
    n for n in list_models() if isinstance(create_model(n, num_classes=10, in_chans=1, input_size=[32, 32]), SplitNet)
]


def _export(name, out, **kw):
    kw = {"num_classes": 10, "in_chans": 1, "input_size": [32, 32], **kw}
    torch.manual_seed(0)
    model = create_model(name, **kw).eval()
    ckpt = {
        "model": name,
        "model_kwargs": kw,
        "classes": [str(i) for i in range(10)],
        "preprocess": {"size": [32, 32], "mean": [0.5], "std": [0.25]},
    }
    export_model(model, ckpt, out)
    return load_manifest(out, verify=False)


def _same_as_ort(path, rng, batch=3):
    fast, ort = NumpyEngine(path), OnnxRuntimeEngine(path)
    assert [(t.name, t.dtype) for t in fast.inputs] == [(t.name, t.dtype) for t in ort.inputs]
    assert [t.name for t in fast.outputs] == [t.name for t in ort.outputs]
    spec = fast.inputs[0]
    x = rng.standard_normal((batch, *[d for d in spec.shape[1:]])).astype(np.float32)
    got, want = fast.run({spec.name: x}), ort.run({spec.name: x})
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SPLIT_MODELS)
def test_every_split_models_head_runs_in_numpy_as_in_onnxruntime(name, tmp_path, rng):
    manifest = _export(name, tmp_path)
    heads = [p for s in manifest.stages if s.local for p in s.parts]
    assert heads
    for part in heads:
        path = manifest.path(manifest.part(part))
        _same_as_ort(path, rng)
        assert type(create_engine("auto", path)).__name__ == "NumpyEngine"
        _blockwise_is_the_whole_head(NumpyEngine(path), manifest.feature_dims, rng)


def _blockwise_is_the_whole_head(engine, widths, rng):
    """The head finished from per-branch products equals the head on the concatenated features, and a branch
    left out counts as zeros (a degraded answer)."""
    blockwise = engine.blockwise(widths)
    assert blockwise is not None
    assert engine.blockwise([*widths[:-1], widths[-1] + 1]) is None  # widths that do not add up: no split
    feats = [rng.standard_normal((2, w)).astype(np.float32) for w in widths]
    (name,) = [t.name for t in engine.inputs]
    (out,) = [t.name for t in engine.outputs]
    whole = engine.run({name: np.concatenate(feats, axis=1)})[out]
    total = sum(blockwise.partial(i, f) for i, f in enumerate(feats))
    np.testing.assert_allclose(blockwise.finish(total)[out], whole, rtol=1e-5, atol=1e-5)
    if len(widths) == 1:
        return
    feats[0] = np.zeros_like(feats[0])
    without_first = engine.run({name: np.concatenate(feats, axis=1)})[out]
    total = sum(blockwise.partial(i, f) for i, f in enumerate(feats) if i > 0)
    np.testing.assert_allclose(blockwise.finish(total)[out], without_first, rtol=1e-5, atol=1e-5)


def test_a_head_with_a_hidden_layer(tmp_path, rng):
    manifest = _export("resnet18-split2", tmp_path, width_mult=0.125, head_hidden=32)
    (head,) = [p for s in manifest.stages if s.local for p in s.parts]
    _same_as_ort(manifest.path(manifest.part(head)), rng)
    _blockwise_is_the_whole_head(NumpyEngine(manifest.path(manifest.part(head))), manifest.feature_dims, rng)


def test_coded_fc_blocks(tmp_path, rng):
    layers = random_alexnet_fc(num_classes=10, seed=1, widths=(64, 32, 32))
    export_coded_mlp(layers, tmp_path, 2, 1, "mlp")
    manifest = load_manifest(tmp_path, verify=False)
    for part in manifest.parts:
        _same_as_ort(manifest.path(part), rng)
    last = NumpyEngine(manifest.path(manifest.parts[-1]))  # a Gemm, then nothing: split if asked
    _blockwise_is_the_whole_head(last, [last.inputs[0].shape[1]], rng)


def test_a_graph_with_other_ops_is_refused_with_the_list_and_auto_falls_back(tmp_path):
    manifest = _export("resnet18-split2", tmp_path, width_mult=0.125)
    branch = manifest.path(manifest.part("branch0"))
    with pytest.raises(UnsupportedGraph) as err:
        NumpyEngine(branch)
    assert "op Conv" in err.value.unsupported
    assert "op Conv" in str(err.value) and "onnxruntime" in str(err.value)
    assert isinstance(create_engine("auto", branch), OnnxRuntimeEngine)
    with pytest.raises(UnsupportedGraph):
        create_engine("numpy", branch)


def test_a_file_that_is_not_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xfe not a model")
    with pytest.raises(Exception, match="cannot read .*bad.onnx as an ONNX model"):
        NumpyEngine(bad)


def _gemm_model(path, dtype=np.float32, trans_a=0):
    from onnx import TensorProto, helper, numpy_helper, save

    elem = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}[dtype]
    w = numpy_helper.from_array(np.ones((4, 3), dtype), "w")
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transA=trans_a, name="fc")
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", elem, [None, 4])],
        [helper.make_tensor_value_info("y", elem, [None, 3])],
        [w],
    )
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_what_numpy_does_not_run_is_listed_never_run_wrong(tmp_path):
    with pytest.raises(UnsupportedGraph) as err:
        NumpyEngine(_gemm_model(tmp_path / "half.onnx", np.float16))
    assert any("data type 10" in u for u in err.value.unsupported)  # FLOAT16: the initializer and the tensors
    with pytest.raises(UnsupportedGraph, match="op Gemm .fc: transA"):
        NumpyEngine(_gemm_model(tmp_path / "ta.onnx", trans_a=1))
    ok = NumpyEngine(_gemm_model(tmp_path / "ok.onnx"))
    assert ok.run({"x": np.ones((2, 4), np.float32)})["y"].tolist() == [[4.0] * 3] * 2
