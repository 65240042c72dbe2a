"""Checkpoint -> one ONNX file per deployable part + ``manifest.json``.

A split model gives ``branch{i}.onnx`` (image -> pooled features) and ``head.onnx``
(concatenated features -> logits); an unsplit model gives ``model.onnx``. Every part
has a dynamic batch dimension. After writing, each part is run in ONNX Runtime on a
random batch and compared with PyTorch; the largest difference is recorded in the
manifest and an export that differs by more than ``PARITY_TOL`` is refused.

``code_head=(k, r)`` (a split model whose head has a hidden layer): the head's first FC layer
is spread over ``k`` data and ``r`` parity row blocks (``head_fc.{j}.onnx``, a ``decode`` stage:
any ``k`` answers give it), and only its last layer stays in the coordinator.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from edgesplit.manifest import PartSpec, TensorSpec, sha256_file, write_manifest
from edgesplit.errors import EdgesplitError
from edgesplit.models import SplitNet
from edgesplit.models.to_onnx import OPSET

log = logging.getLogger(__name__)

PARITY_TOL = 1e-4  # largest |onnxruntime - torch| accepted, float32


def _export_module(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> None:
    module.eval()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript; it is exact here
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )


def _parity(module: nn.Module, path: Path, x: torch.Tensor) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = module(x).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(got - ref).max())


def export_model(
    model: nn.Module,
    ckpt: dict,
    out_dir: str | Path,
    seed: int = 0,
    code_head: tuple[int, int] | None = None,
    pipeline: int = 0,
    pipeline_speeds: Sequence[float] | None = None,
) -> dict:
    """Export ``model`` (rebuilt from ``ckpt``) into ``out_dir``; returns the manifest body. ``pipeline=K``: an
    unsplit model cut into K stages of about equal MACs at its ``sequential_blocks()`` (``stage0.onnx`` ...),
    each a worker's part, run one after the other with the activations passed on by the coordinator;
    ``pipeline_speeds``: the devices' relative speeds, the stages' MACs in proportion."""
    if pipeline and (isinstance(model, SplitNet) or not hasattr(model, "sequential_blocks")):
        raise EdgesplitError(
            f"--pipeline cuts an unsplit model at its sequential blocks; {ckpt['model']} has none (export it as it is)"
        )
    hidden_head = isinstance(model, SplitNet) and isinstance(model.head.fc, nn.Sequential)
    if code_head and not hidden_head:
        raise EdgesplitError(
            "--code-head needs a split model whose head has a hidden layer; train one with --model-arg head_hidden=N (e.g. 1024)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    kw = ckpt["model_kwargs"]
    input_shape = (kw["in_chans"], *kw["input_size"])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, *input_shape, generator=gen)
    image = TensorSpec("input", (-1, *input_shape), "float32")

    pieces: list[tuple[str, str, nn.Module, torch.Tensor, TensorSpec, TensorSpec]] = []
    if isinstance(model, SplitNet):
        with torch.no_grad():
            feats = model.forward_features(x)
        for i, (branch, f) in enumerate(zip(model.branches, feats)):
            pieces.append((f"branch{i}", "branch", branch, x, image, TensorSpec("features", (-1, f.shape[1]), "float32")))
        if ckpt.get("parity"):  # learned parity branches (training/parity.py): parts like the others
            from edgesplit.training.parity import parity_branches

            if code_head:
                raise EdgesplitError("a model with parity branches cannot also have a coded head; export one or the other")
            for j, branch in enumerate(parity_branches(model, ckpt["parity"])):
                pieces.append(
                    (f"parity{j}", "parity", branch, x, image, TensorSpec("features", (-1, feats[0].shape[1]), "float32"))
                )
        fcat = torch.cat(feats, 1)
        if not code_head:
            pieces.append(
                (
                    "head",
                    "head",
                    model.head,
                    fcat,
                    TensorSpec("features", (-1, fcat.shape[1]), "float32"),
                    TensorSpec("logits", (-1, model.num_classes), "float32"),
                )
            )
        feature_dims = list(model.feature_dims)
    elif pipeline:
        pieces += _pipeline_stages(model, x, image, kw["num_classes"], pipeline, pipeline_speeds)
        feature_dims = []
    else:
        pieces.append(("model", "model", model, x, image, TensorSpec("logits", (-1, kw["num_classes"]), "float32")))
        feature_dims = []

    from edgesplit.progress import Progress

    parts, max_diff, bar = [], 0.0, Progress(len(pieces), "export", "part")
    for name, role, module, example, inp, outp in pieces:
        path = out_dir / f"{name}.onnx"
        _export_module(module, example, path, inp.name, outp.name)
        diff = _parity(module, path, example)
        if diff > PARITY_TOL:
            raise EdgesplitError(
                f"ONNX Runtime output of {name} differs from PyTorch by {diff:.2e} (> {PARITY_TOL}); export refused"
            )
        max_diff = max(max_diff, diff)
        parts.append(PartSpec(name, role, path.name, sha256_file(path), (inp,), (outp,)).to_dict())
        log.info("exported %s (max |ort - torch| = %.2e)", path, diff)
        bar.update(1, done=name)
    bar.close()

    body = {
        "model": ckpt["model"],
        "model_kwargs": kw,
        "input_shape": list(input_shape),
        "preprocess": ckpt["preprocess"],
        "classes": list(ckpt["classes"]),
        "feature_dims": feature_dims,
        "parts": parts,
        "opset": OPSET,
        "parity_max_abs_diff": max_diff,
        "dataset": ckpt.get("dataset"),
        "trained_epochs": ckpt.get("epoch"),
    }
    if ckpt.get("parity"):  # the branches are a coded stage: any k of the k + R answers give every branch's features
        from edgesplit.manifest import StageSpec

        data = tuple(p["name"] for p in parts if p["role"] == "branch")
        coded = (*data, *(p["name"] for p in parts if p["role"] == "parity"))
        body["stages"] = [
            StageSpec("branches", coded, "decode", "input", "features", code_k=len(data), code_r=ckpt["parity"]["r"],
                      code_kind=ckpt["parity"]["kind"], out_features=sum(feature_dims), code_exact=False).to_dict(),
            StageSpec("head", ("head",), "single", "features", "logits", local=True).to_dict(),
        ]  # fmt: skip
    if pipeline:
        from edgesplit.manifest import StageSpec

        body["stages"] = [
            StageSpec(p["name"], (p["name"],), "single", p["inputs"][0]["name"], p["outputs"][0]["name"]).to_dict() for p in parts
        ]
    if code_head:
        body.update(_coded_head(model, out_dir, *code_head, parts))
        write_manifest(out_dir, body)
        body["parity_max_abs_diff"] = max(max_diff, _pipeline_parity(model, out_dir, x))  # the decoded pipeline too
    write_manifest(out_dir, body)
    return body


def _pipeline_stages(
    model: nn.Module, x: torch.Tensor, image: TensorSpec, num_classes: int, k: int, speeds: Sequence[float] | None = None
) -> list[tuple]:
    """The model's sequential blocks in ``k`` contiguous groups of about equal MACs, or of MACs in proportion to
    ``speeds`` (the devices' relative speeds; the fastest gets the first stage, as ``make_plan`` places it):
    (name, role, module, example input, input spec, output spec) per stage; activations are named ``act1`` ...
    between them."""
    from edgesplit.models.profile import balanced_partition, block_costs

    blocks = model.sequential_blocks()
    if not 2 <= k <= len(blocks):
        raise EdgesplitError(f"--pipeline takes 2 to {len(blocks)} stages for {type(model).__name__}, got {k}")
    if speeds is not None and (len(speeds) != k or min(speeds) <= 0):
        raise EdgesplitError(f"--pipeline-speeds: give {k} positive speeds, one per stage, got {list(speeds)}")
    ordered = sorted(speeds, reverse=True) if speeds else None
    cuts = [0, *balanced_partition([c.macs for c in block_costs(model, tuple(x.shape[1:]))], k, ordered), len(blocks)]
    pieces, inp = [], image
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
            stage = nn.Sequential(*(m for _, m in blocks[a:b])).eval()
            y = stage(x)
            last = i == len(cuts) - 2
            out = TensorSpec("logits" if last else f"act{i + 1}", (-1, num_classes) if last else (-1, *y.shape[1:]), "float32")
            pieces.append((f"stage{i}", "stage", stage, x, inp, out))
            x, inp = y, out
    return pieces


def _coded_head(model: SplitNet, out_dir: Path, k: int, r: int, parts: list[dict]) -> dict:
    """The head's hidden FC layer as coded row blocks, its classifier local: parts added, stages and code returned."""
    from edgesplit.export.coded import code_info, coded_layer, local_linear
    from edgesplit.manifest import StageSpec
    from edgesplit.coding import make_code

    code = make_code(k, r)
    hidden, _, classifier = model.head.fc

    def arrays(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
        return layer.weight.detach().numpy().astype(np.float32), layer.bias.detach().numpy().astype(np.float32)

    block_parts, coded_stage = coded_layer(*arrays(hidden), "relu", "head_fc", out_dir, k, r, code)
    head_part, head_stage = local_linear(*arrays(classifier), out_dir)
    parts += [*block_parts, head_part]
    branches = tuple(p["name"] for p in parts if p["role"] == "branch")
    stages = [StageSpec("branches", branches, "concat", "input", "features").to_dict(), coded_stage, head_stage]
    return {"stages": stages, "code": code_info(code)}


def _pipeline_parity(model: nn.Module, out_dir: Path, x: torch.Tensor) -> float:
    """|in-process run of the exported stages - torch|: checks that the blocks decode to the model's head."""
    from edgesplit.runtime.local import LocalModel

    with torch.no_grad():
        want = model(x).numpy()
    diff = float(np.abs(LocalModel(out_dir)(x.numpy()) - want).max())
    if diff > PARITY_TOL * max(1.0, float(np.abs(want).max())):
        raise EdgesplitError(f"the coded head decodes to {diff:.2e} off the model's output; export refused")
    return diff
