"""Learned parity branches (``edgesplit add-parity``): a split model that loses a device and keeps its accuracy.

Every branch of a split model sees the same input, so a parity branch can learn a code of the branches directly
(the ParM idea, Kosaian et al., SOSP'19, applied to independent branches): parity branch j is trained to output
``sum_i P[j, i] f_i(x)``, the systematic code of ``coding.make_code(k, R)`` (R=1: the sum of the k branches'
features). The deployed model is then a coded stage (``manifest`` merge ``decode``): with a data branch missing or
late, the coordinator solves its features from the parity and the branches that answered and marks the answer
``recovered``. The data branches and the head are frozen; each parity branch starts from a data branch's weights
(the same architecture) and learns on two losses: the error of its features against the code (relative to the
features' own size), and the head's cross-entropy on features rebuilt with one random data branch missing, so
that what it gets wrong matters where the head is sensitive.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgesplit.coding import make_code
from edgesplit.data import load_dataset
from edgesplit.data.datasets import train_val_split
from edgesplit.data.transforms import augment, batches, to_tensor
from edgesplit.errors import EdgesplitError
from edgesplit.models import SplitNet
from edgesplit.training.checkpoint import checkpoint_preprocess, save_checkpoint
from edgesplit.training.config import ParityConfig
from edgesplit.training.head import load_split_run

log = logging.getLogger(__name__)


def parity_branches(model: SplitNet, parity: dict) -> nn.ModuleList:
    """The checkpoint's parity branches (``parity``: the checkpoint's ``parity`` entry), in inference mode."""
    branches = nn.ModuleList(copy.deepcopy(model.branches[j % model.num_branches]) for j in range(parity["r"]))
    branches.load_state_dict(parity["state_dict"])
    return branches.eval()


def rebuild(feats: list[torch.Tensor], parity_out: torch.Tensor, code_parity: torch.Tensor, missing: int) -> list[torch.Tensor]:
    """The features with branch ``missing`` solved from the first parity branch and the others (B, F) each."""
    others = sum(code_parity[0, i] * f for i, f in enumerate(feats) if i != missing)
    solved = (parity_out - others) / code_parity[0, missing]
    return [solved if i == missing else f for i, f in enumerate(feats)]


@torch.no_grad()
def parity_accuracy(model: SplitNet, parity: nn.ModuleList, code_parity: torch.Tensor, images, labels, pre) -> dict:
    """Top-1 with every branch, and with each single branch missing: zeros in its place, or rebuilt from parity."""
    model.eval()
    k, correct, n = model.num_branches, {}, len(images)
    for b in batches(n, 500, shuffle=False):
        x = to_tensor(images[b], pre)
        y = torch.from_numpy(labels[b])
        feats = model.forward_features(x)
        p0 = parity[0](x)
        tallies = {"all": model.forward_head(feats)}
        for i in range(k):
            present = torch.ones(k)
            present[i] = 0
            tallies[f"without_branch{i}_zeros"] = model.forward_head(feats, present)
            tallies[f"without_branch{i}_parity"] = model.forward_head(rebuild(feats, p0, code_parity, i))
        for key, logits in tallies.items():
            correct[key] = correct.get(key, 0) + int((logits.argmax(1) == y).sum())
    return {key: c / n for key, c in correct.items()}


def train_parity(run_dir: str | Path, out_dir: str | Path, cfg: ParityConfig = ParityConfig()) -> dict:
    """Write ``out_dir/checkpoint.pt``: the run's model unchanged, with ``cfg.parity_branches`` trained parity
    branches; returns the summary (test accuracy with each branch missing, zeros against parity)."""
    out_dir = Path(out_dir)
    model, source = load_split_run(run_dir, out_dir)
    entry = fit_parity(model, source, str(run_dir), cfg)
    payload = {key: v for key, v in source.items() if key not in ("optimizer", "scheduler", "format")}
    payload["parity"] = entry
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / "checkpoint.pt", payload)
    (out_dir / "parity_summary.json").write_text(json.dumps(entry["summary"], indent=1))
    return entry["summary"]


def fit_parity(model: SplitNet, source: dict, run_dir: str, cfg: ParityConfig) -> dict:
    """The checkpoint's ``parity`` entry (R, the code, the branches' weights, a summary) for the trained split
    ``model`` of checkpoint ``source``."""
    if not isinstance(model, SplitNet) or model.num_branches < 2:
        raise EdgesplitError(f"{run_dir} is not a split model with at least 2 branches; parity branches need one")
    if len(set(model.feature_dims)) != 1:
        raise EdgesplitError(
            f"{run_dir}'s branches have unequal feature sizes {model.feature_dims}; parity branches need equal ones"
        )
    k, r = model.num_branches, cfg.parity_branches
    if r > k:
        raise EdgesplitError(f"--parity-branches {r} is more than the {k} data branches; use at most {k}")
    code = make_code(k, r)
    code_parity = torch.tensor(code.parity, dtype=torch.float32)  # (R, k)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    pre = checkpoint_preprocess(source)
    train_cfg = source["config"]
    size = train_cfg["input_size"] or (224, 224)  # as `edgesplit train` loaded it
    full = load_dataset(source["dataset"], "train", cfg.data_dir or train_cfg["data_dir"], size=size)
    train_idx, _ = train_val_split(len(full), train_cfg["val_size"])  # the images the model was trained on
    train_idx = train_idx[: cfg.max_train_samples or train_cfg.get("max_train_samples") or len(train_idx)]

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    parity = nn.ModuleList(copy.deepcopy(model.branches[j % k]) for j in range(r))
    for p in parity.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(parity.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(train_idx) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = np.random.default_rng(cfg.seed)
    history, t0 = [], time.perf_counter()
    for epoch in range(cfg.epochs):
        parity.train()
        sums = {"features": 0.0, "answer": 0.0}
        seen = 0
        for idx in batches(len(train_idx), cfg.batch_size, shuffle=True, rng=rng):
            idx = train_idx[idx]
            x = to_tensor(augment(full.images(idx), rng, train_cfg.get("augment_pad", 2)), pre)
            y = torch.from_numpy(full.labels(idx))
            with torch.no_grad():
                feats = model.forward_features(x)
                target = torch.einsum("rk,kbf->rbf", code_parity, torch.stack(feats))  # (R, B, F)
                scale = torch.stack(feats).pow(2).mean().clamp_min(1e-8)
            out = torch.stack([p(x) for p in parity])  # (R, B, F)
            feature_loss = F.mse_loss(out, target) / scale
            missing = int(rng.integers(k))
            answer_loss = F.cross_entropy(model.forward_head(rebuild(feats, out[0], code_parity, missing)), y)
            loss = (1 - cfg.answer_weight) * feature_loss + cfg.answer_weight * answer_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums["features"] += feature_loss.item() * len(idx)
            sums["answer"] += answer_loss.item() * len(idx)
            seen += len(idx)
        history.append({"epoch": epoch + 1, **{f"{key}_loss": v / seen for key, v in sums.items()}})
        log.info("parity epoch %d/%d features %.4f answer %.4f", epoch + 1, cfg.epochs, *(v / seen for v in sums.values()))
    train_s = time.perf_counter() - t0
    parity.eval()
    test = load_dataset(source["dataset"], "test", cfg.data_dir or train_cfg["data_dir"], size=size)
    every = np.arange(len(test))
    accuracy = parity_accuracy(model, parity, code_parity, test.images(every), test.labels(every), pre)

    params = sum(p.numel() for p in parity.parameters())
    summary = {
        "source": str(run_dir),
        **asdict(cfg),
        "k": k,
        "code": code.kind,
        "parity_parameters": params,
        "branch_parameters": sum(p.numel() for p in model.branches[0].parameters()),
        "train_s": train_s,
        "test": accuracy,
        "history": history,
    }
    return {"r": r, "kind": code.kind, "state_dict": parity.state_dict(), "summary": summary}
