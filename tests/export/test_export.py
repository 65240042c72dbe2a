import json

import numpy as np
import pytest
import torch

from edgesplit.errors import EdgesplitError
from edgesplit.manifest import load_manifest
from edgesplit.export.onnx_export import PARITY_TOL, export_model
from edgesplit.models import create_model
from edgesplit.runtime.local import LocalModel
from edgesplit.training.checkpoint import load_model


def test_split_export_matches_pytorch(tiny_run, tiny_export):
    model, _ = load_model(tiny_run)
    manifest = load_manifest(tiny_export)
    assert [p.name for p in manifest.parts] == ["branch0", "branch1", "head"]
    assert manifest.feature_dims == (32, 32) and manifest.classes[0] == "T-shirt/top"
    x = np.random.default_rng(1).standard_normal((5, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = LocalModel(tiny_export)(x)
    assert np.abs(got - ref).max() < PARITY_TOL


def test_unsplit_export_matches_pytorch(tmp_path):
    model = create_model("squeezenet", num_classes=10, in_chans=1, input_size=(28, 28)).eval()
    ckpt = {
        "model": "squeezenet",
        "model_kwargs": {"num_classes": 10, "in_chans": 1, "input_size": [28, 28]},
        "preprocess": {"size": [28, 28], "mean": [0.5], "std": [0.5]},
        "classes": [str(i) for i in range(10)],
    }
    body = export_model(model, ckpt, tmp_path)
    assert [p["name"] for p in body["parts"]] == ["model"] and body["parity_max_abs_diff"] < PARITY_TOL
    x = np.random.default_rng(2).standard_normal((3, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(LocalModel(tmp_path)(x) - ref).max() < PARITY_TOL


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_onnx_is_refused(tiny_export, tmp_path):
    d = _copy(tiny_export, tmp_path / "e")
    with open(d / "branch1.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(EdgesplitError, match="branch1.onnx does not match the sha256"):
        load_manifest(d)


def test_corrupted_manifest_is_refused(tiny_export, tmp_path):
    d = _copy(tiny_export, tmp_path / "e")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(EdgesplitError, match="not a valid edgesplit manifest"):
        load_manifest(d)
    body = json.loads((tiny_export / "manifest.json").read_text())
    del body["parts"]
    (d / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(EdgesplitError, match="not a valid edgesplit manifest"):
        load_manifest(d)


def test_corrupted_onnx_with_matching_hash_fails_cleanly(tiny_export, tmp_path):
    from edgesplit.manifest import sha256_file
    from edgesplit.runtime.engines import OnnxRuntimeEngine

    d = _copy(tiny_export, tmp_path / "e")
    (d / "head.onnx").write_bytes(b"garbage")
    body = json.loads((d / "manifest.json").read_text())
    for p in body["parts"]:
        if p["name"] == "head":
            p["sha256"] = sha256_file(d / "head.onnx")
    (d / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(EdgesplitError, match="ONNX Runtime cannot load"):
        OnnxRuntimeEngine(d / "head.onnx")
