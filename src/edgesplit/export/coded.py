"""Export a stack of fully connected layers with their rows coded over k + r devices.

Each coded layer becomes k data blocks and r parity blocks (:mod:`edgesplit.coding`),
each a two-node ONNX graph (MatMul, Add) written directly with ``onnx.helper``: no
torch needed. The last layer (the classifier) runs in the coordinator. The manifest's
``stages`` tell the coordinator to wait for any k blocks of each layer and decode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgesplit.manifest import PartSpec, StageSpec, TensorSpec, sha256_file, write_manifest
from edgesplit.coding import make_code, split_linear

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; newer onnx packages stamp one ONNX Runtime may not read


def _linear_onnx(weight: np.ndarray, bias: np.ndarray, path: Path, input_name: str, output_name: str) -> None:
    """``y = x @ weight.T + bias`` with a dynamic batch dimension."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out_features, in_features = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "wt"], ["xw"]), helper.make_node("Add", ["xw", "b"], [output_name])],
        path.stem,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", out_features])],
        [
            numpy_helper.from_array(np.ascontiguousarray(weight.T.astype(np.float32)), "wt"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def coded_layer(
    weight: np.ndarray, bias: np.ndarray, activation: str | None, name: str, out_dir: Path, k: int, r: int, code
) -> tuple[list[dict], dict]:
    """One FC layer as ``k`` data and ``r`` parity row blocks (ONNX files in ``out_dir``): their part entries
    and the ``decode`` stage that gathers any ``k`` of them (manifest dicts)."""
    parts, block_names = [], []
    for j, (w, b) in enumerate(split_linear(weight, bias, k, code)):
        part = f"{name}.{j}"
        path = out_dir / f"{part}.onnx"
        _linear_onnx(w, b, path, "x", "y")
        role = "fc_block" if j < k else "fc_parity"
        parts.append(
            PartSpec(
                part,
                role,
                path.name,
                sha256_file(path),
                (TensorSpec("x", (-1, weight.shape[1]), "float32"),),
                (TensorSpec("y", (-1, w.shape[0]), "float32"),),
            ).to_dict()
        )
        block_names.append(part)
    stage = StageSpec(
        name,
        tuple(block_names),
        "decode",
        "x",
        "y",
        code_k=k,
        code_r=r,
        code_kind=code.kind,
        out_features=weight.shape[0],
        activation=activation,
    ).to_dict()
    return parts, stage


def local_linear(weight: np.ndarray, bias: np.ndarray, out_dir: Path, name: str = "head") -> tuple[dict, dict]:
    """The last FC layer as a part the coordinator runs itself: its part entry and ``single`` local stage."""
    path = out_dir / f"{name}.onnx"
    _linear_onnx(weight, bias, path, "x", "logits")
    part = PartSpec(
        name,
        "head",
        path.name,
        sha256_file(path),
        (TensorSpec("x", (-1, weight.shape[1]), "float32"),),
        (TensorSpec("logits", (-1, weight.shape[0]), "float32"),),
    ).to_dict()
    return part, StageSpec(name, (name,), "single", "x", "logits", local=True).to_dict()


def export_coded_mlp(
    layers: Sequence[tuple[np.ndarray, np.ndarray, str | None]],
    out_dir: str | Path,
    k: int,
    r: int,
    model_name: str = "mlp",
    classes: Sequence[str] | None = None,
    code_kind: str = "auto",
    layer_names: Sequence[str] | None = None,
) -> dict:
    """``layers``: ``(weight (out, in), bias (out,), activation)``; all but the last are coded over k + r."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    code = make_code(k, r, code_kind)
    names = list(layer_names or [f"fc{i}" for i in range(len(layers))])
    parts, stages = [], []
    for (weight, bias, act), name in zip(layers[:-1], names):
        layer_parts, stage = coded_layer(weight, bias, act, name, out_dir, k, r, code)
        parts += layer_parts
        stages.append(stage)
    weight, bias, _ = layers[-1]
    part, stage = local_linear(weight, bias, out_dir)
    parts.append(part)
    stages.append(stage)
    in_features = layers[0][0].shape[1]
    body = {
        "model": model_name,
        "model_kwargs": {},
        "input_shape": [in_features],
        "preprocess": {"size": [], "mean": [], "std": []},
        "classes": list(classes or [str(i) for i in range(weight.shape[0])]),
        "feature_dims": [],
        "parts": parts,
        "stages": stages,
        "opset": OPSET,
        "code": code_info(code),
    }
    write_manifest(out_dir, body)
    return body


def code_info(code) -> dict:
    return {"k": code.k, "r": code.r, "kind": code.kind, "worst_condition": code.worst_condition}


ALEXNET_FC = (9216, 4096, 4096)  # AlexNet's classifier: 9216 -> 4096 -> 4096 -> classes


def random_alexnet_fc(num_classes: int = 1000, seed: int = 0, widths: Sequence[int] = ALEXNET_FC) -> list:
    """AlexNet's FC layers with random (He-scaled) weights: timing and decoding do not depend on training."""
    rng = np.random.default_rng(seed)
    dims = list(widths) + [num_classes]
    layers = []
    for i, (n_in, n_out) in enumerate(zip(dims, dims[1:])):
        w = rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(np.sqrt(2.0 / n_in))
        layers.append((w, (rng.standard_normal(n_out) * 0.01).astype(np.float32), "relu" if i < len(dims) - 2 else None))
    return layers


def reference_forward(layers: Sequence[tuple[np.ndarray, np.ndarray, str | None]], x: np.ndarray) -> np.ndarray:
    """The uncoded layers in float64: what every decoded answer is compared with."""
    y = x.astype(np.float64)
    for w, b, act in layers:
        y = y @ w.T.astype(np.float64) + b
        if act == "relu":
            y = np.maximum(y, 0)
    return y
