"""Training loop: SGD + one-cycle schedule, light augmentation, atomic checkpoint every epoch, exact resume.

Reproducibility: the shuffle order and augmentation of epoch ``e`` come from a
generator seeded with ``(seed, e)``, and torch's generator is reseeded the same way,
so a run resumed after epoch ``e`` continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgesplit.data.datasets import load_dataset, train_val_split
from edgesplit.data.preprocess import Preprocess
from edgesplit.data.transforms import augment, batches, to_tensor
from edgesplit.errors import EdgesplitError
from edgesplit.models import SplitNet, create_model
from edgesplit.models.registry import default_lr
from edgesplit.training.checkpoint import load_model, read_checkpoint, save_checkpoint
from edgesplit.training.config import TrainConfig  # noqa: F401 (its home is config.py: importable without torch)
from edgesplit.training.evaluate import evaluate

log = logging.getLogger(__name__)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


MIN_CHANNELS_LAST_WIDTH = 8


def _channels_last_safe(model: nn.Module) -> bool:
    """channels-last only when every conv has at least 8 output channels: with torch 2.13 on CPU,
    the backward pass of 4-channel convs in that layout corrupted the heap (seen here, 1 thread)."""
    return all(m.out_channels >= MIN_CHANNELS_LAST_WIDTH for m in model.modules() if isinstance(m, nn.Conv2d))


MIN_ONE_CYCLE_STEPS = 8  # below this OneCycleLR's warm-up phase has no steps (torch divides by zero)


def _schedule(opt: torch.optim.Optimizer, lr: float, total_steps: int):
    """One-cycle (25% warm-up, then cosine down); a constant rate for runs too short to have a cycle."""
    if total_steps < MIN_ONE_CYCLE_STEPS:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.25)


def _read_history(out_dir: Path) -> list:
    path = out_dir / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


def _teacher(cfg: TrainConfig, classes, pre: Preprocess, in_chans: int):
    """The trained model to distil from, frozen; one that answers other classes or takes another input is refused."""
    teacher, ckpt = load_model(cfg.teacher)
    if list(ckpt["classes"]) != list(classes):
        raise EdgesplitError(f"teacher {cfg.teacher} answers other classes than {cfg.dataset}'s; give one trained on it")
    if Preprocess.from_dict(ckpt["preprocess"]) != pre or ckpt["model_kwargs"].get("in_chans") != in_chans:
        raise EdgesplitError(
            f"teacher {cfg.teacher} takes another input ({ckpt['preprocess']}) than this run "
            f"({pre.to_dict()}); give one trained at the same --input on the same data"
        )
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``cfg.model`` and write ``out_dir/checkpoint.pt`` after every epoch; returns the final summary."""
    if cfg.lr is None:
        cfg = replace(cfg, lr=default_lr(cfg.model))
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)

    start_epoch, state = 0, None
    if resume and ckpt_path.exists():
        state = read_checkpoint(ckpt_path)
        if "optimizer" not in state:
            raise EdgesplitError(
                f"{out_dir} holds a finished model without its optimizer state (written by retrain-head); "
                f"it cannot be resumed; train into another --out"
            )
        saved = TrainConfig(
            **{**state["config"], "input_size": tuple(state["config"]["input_size"]) if state["config"]["input_size"] else None}
        )
        if saved != cfg:
            changed = [k for k in asdict(cfg) if asdict(cfg)[k] != asdict(saved)[k]]
            raise EdgesplitError(
                f"cannot resume {out_dir}: settings differ from the saved run ({', '.join(changed)}); use the same arguments or another --out"
            )
        start_epoch = state["epoch"]
        if start_epoch >= cfg.epochs:  # finished: nothing to load or train
            return {
                "out_dir": str(out_dir),
                "epochs": cfg.epochs,
                "train_time_s": state.get("train_time_s", 0.0),
                "history": _read_history(out_dir),
            }
    elif ckpt_path.exists() and not resume:
        raise EdgesplitError(f"{out_dir} already holds a run; add --resume to continue it or choose another --out")

    full = load_dataset(cfg.dataset, "train", cfg.data_dir, size=cfg.input_size or (224, 224))
    train_idx, val_idx = train_val_split(len(full), cfg.val_size)
    if cfg.max_train_samples:
        train_idx = train_idx[: cfg.max_train_samples]
    in_chans, h, w = full.image_shape
    size = tuple(cfg.input_size) if cfg.input_size else (h, w)
    pre = Preprocess(size, tuple(full.mean), tuple(full.std))
    model_kwargs = {"num_classes": len(full.classes), "in_chans": in_chans, "input_size": size, **cfg.model_kwargs}
    torch.manual_seed(cfg.seed)  # the initial weights
    model = create_model(cfg.model, **model_kwargs)
    if isinstance(model, SplitNet):
        model.branch_dropout = cfg.branch_dropout
    elif cfg.branch_dropout:
        raise EdgesplitError(f"--branch-dropout needs a split model; {cfg.model} has no branches")
    teacher = _teacher(cfg, full.classes, pre, in_chans) if cfg.teacher else None
    channels_last = _channels_last_safe(model)
    if channels_last:  # faster for the ResNets on CPU (docs/results.md, "Small measurements behind defaults")
        model = model.to(memory_format=torch.channels_last)

    steps_per_epoch = (len(train_idx) + cfg.batch_size - 1) // cfg.batch_size
    opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    sched = _schedule(opt, cfg.lr, cfg.epochs * steps_per_epoch)
    history = []
    if state is not None:
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = _read_history(out_dir)[:start_epoch]
        log.info("resuming %s from epoch %d", out_dir, start_epoch)

    train_time_s = sum(h["epoch_time_s"] for h in history)
    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        model.train()
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for step, idx in enumerate(batches(len(train_idx), cfg.batch_size, shuffle=True, rng=rng)):
            idx = train_idx[idx]
            images = full.images(idx)
            if cfg.augment_pad:
                images = augment(images, rng, cfg.augment_pad)
            x = to_tensor(images, pre)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(full.labels(idx))
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(x) / cfg.kd_temperature, dim=1)
                # Hinton et al.'s distillation: KL to the teacher's softened answers, scaled by T^2 so that its
                # gradients keep their size whatever the temperature
                kd = F.kl_div(F.log_softmax(logits / cfg.kd_temperature, dim=1), soft, reduction="batchmean")
                loss = cfg.kd_weight * kd * cfg.kd_temperature**2 + (1 - cfg.kd_weight) * loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            if progress:
                progress(
                    {
                        "epoch": epoch + 1,
                        "epochs": cfg.epochs,
                        "step": step + 1,
                        "steps": steps_per_epoch,
                        "loss": loss_sum / seen,
                        "acc": correct / seen,
                    }
                )
        epoch_time_s = time.perf_counter() - t0
        train_time_s += epoch_time_s
        val = evaluate(model, full, val_idx, pre, missing_branches=False)["top1"] if len(val_idx) else None
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "val_top1": val,
            "epoch_time_s": epoch_time_s,
            "lr": sched.get_last_lr()[0],
        }
        history.append(record)
        save_checkpoint(
            ckpt_path,
            {
                "model": cfg.model,
                "model_kwargs": model_kwargs,
                "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "config": {**asdict(cfg), "input_size": list(size) if cfg.input_size else None},
                "classes": list(full.classes),
                "preprocess": pre.to_dict(),
                "dataset": cfg.dataset,
                "train_time_s": train_time_s,
            },
        )
        (out_dir / "history.json").write_text(json.dumps(history, indent=1))
        log.info(
            "epoch %d/%d loss %.4f train_acc %.4f val_top1 %s time %.0fs",
            epoch + 1,
            cfg.epochs,
            record["train_loss"],
            record["train_acc"],
            f"{val:.4f}" if val is not None else "-",
            epoch_time_s,
        )
    return {"out_dir": str(out_dir), "epochs": cfg.epochs, "train_time_s": train_time_s, "history": history}
