import json

import pytest
import torch

from edgesplit.errors import EdgesplitError
from edgesplit.training.checkpoint import build_model, load_model, read_checkpoint
from edgesplit.training.train import TrainConfig, train

TINY = dict(
    model="resnet18-split2", model_kwargs={"width_mult": 0.125}, max_train_samples=384, val_size=128, batch_size=64, threads=1
)


def test_short_training_lowers_the_loss(tmp_path):
    cfg = TrainConfig(**{**TINY, "max_train_samples": 1024}, epochs=3, branch_dropout=0.2)
    summary = train(cfg, tmp_path)
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[-1] < losses[0] * 0.8, losses
    assert summary["history"][-1]["val_top1"] > 0.3  # 10 classes: chance is 0.1


def test_resume_continues_from_saved_epoch_exactly(tmp_path):
    full = train(TrainConfig(**TINY, epochs=2), tmp_path / "full")
    # the same run, interrupted after epoch 1: a 2-epoch schedule stopped by hand
    part_dir = tmp_path / "part"
    with pytest.raises(_Interrupt):
        train(TrainConfig(**TINY, epochs=2), part_dir, progress=_stop_after_epoch(1))
    assert read_checkpoint(part_dir)["epoch"] == 1
    resumed = train(TrainConfig(**TINY, epochs=2), part_dir, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a, b = read_checkpoint(tmp_path / "full")["state_dict"], read_checkpoint(part_dir)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads((part_dir / "history.json").read_text())[-1]["train_loss"] == pytest.approx(
        full["history"][-1]["train_loss"]
    )


class _Interrupt(Exception):
    pass


def _stop_after_epoch(n):
    """A progress callback that interrupts training in the first step after epoch ``n`` was saved."""

    def progress(state):
        if state["epoch"] > n:
            raise _Interrupt

    return progress


def test_resume_refuses_other_settings_and_overwrite(tmp_path):
    train(TrainConfig(**TINY, epochs=1), tmp_path)
    with pytest.raises(EdgesplitError, match="settings differ.*epochs"):
        train(TrainConfig(**TINY, epochs=3), tmp_path, resume=True)
    with pytest.raises(EdgesplitError, match="--resume"):
        train(TrainConfig(**TINY, epochs=1), tmp_path)


def test_checkpoint_of_another_model_is_refused(tiny_run):
    ckpt = read_checkpoint(tiny_run)
    ckpt["model"] = "resnet18-split4"
    with pytest.raises(EdgesplitError, match="do not fit model 'resnet18-split4'"):
        build_model(ckpt)


def test_corrupted_checkpoint_is_refused(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EdgesplitError, match="not a readable edgesplit checkpoint"):
        load_model(tmp_path)


def test_branch_dropout_needs_split_model(tmp_path):
    with pytest.raises(EdgesplitError, match="needs a split model"):
        train(TrainConfig(**{**TINY, "model": "resnet18"}, epochs=1, branch_dropout=0.5), tmp_path)


def test_eval_reports_missing_branches(tiny_run):
    from edgesplit.data import load_dataset
    from edgesplit.training.checkpoint import checkpoint_preprocess
    from edgesplit.training.evaluate import evaluate
    import numpy as np

    model, ckpt = load_model(tiny_run)
    test = load_dataset("fashion-mnist", "test")
    report = evaluate(model, test, np.arange(300), checkpoint_preprocess(ckpt))
    assert report["n"] == 300 and 0 <= report["top1"] <= report["top5"] <= 1
    assert set(report["missing_branch_top1"]) == {"branch0", "branch1"}
    assert len(report["per_class"]) == 10


def test_learning_rate_defaults_to_the_models(tiny_run):
    from edgesplit.models.registry import DEFAULT_LR, default_lr
    from edgesplit.training.checkpoint import read_checkpoint

    assert read_checkpoint(tiny_run)["config"]["lr"] == DEFAULT_LR  # None resolved before it is saved
    assert default_lr("squeezenet") == default_lr("squeezenet-split2") == 0.02  # no batch norm
    assert default_lr("resnet18-split2") == DEFAULT_LR


def test_retrain_head_keeps_branches_and_learns_missing_branches(tiny_run, tmp_path):
    import torch

    from edgesplit.cli import main
    from edgesplit.training.checkpoint import load_model
    from edgesplit.training.head import HeadConfig, retrain_head

    out = tmp_path / "head"
    r = retrain_head(tiny_run, out, HeadConfig(branch_dropout=0.5, epochs=3, lr=3e-3))
    before, _ = load_model(tiny_run)
    after, ckpt = load_model(out)
    for name, p in before.state_dict().items():
        same = torch.equal(p, after.state_dict()[name])
        assert same == (not name.startswith("head.")), name  # branches frozen, head retrained
    assert set(r["val_after"]) == {"all", "without_branch0", "without_branch1"}
    assert ckpt["head_retrained"]["branch_dropout"] == 0.5 and "optimizer" not in ckpt
    assert main(["eval", str(out), "--json", str(tmp_path / "eval.json")]) == 0  # a normal run directory for eval/export
    with pytest.raises(EdgesplitError, match="retrain-head"):  # not a run that can be resumed
        train(
            TrainConfig(
                model="resnet18-split2",
                model_kwargs={"width_mult": 0.125},
                epochs=2,
                max_train_samples=512,
                val_size=256,
                batch_size=64,
                threads=1,
            ),
            out,
            resume=True,
        )
    with pytest.raises(EdgesplitError, match="already holds a run"):
        retrain_head(tiny_run, out)
    with pytest.raises(EdgesplitError, match="branch-dropout must be in"):
        HeadConfig(branch_dropout=1.0)


def _agreement(student, teacher, n=256) -> float:
    """How often two models give the same class on the first ``n`` test images."""
    from edgesplit.data.datasets import load_dataset
    from edgesplit.data.preprocess import Preprocess
    from edgesplit.data.transforms import to_tensor

    test = load_dataset("fashion-mnist", "test")
    x = to_tensor(test.images(list(range(n))), Preprocess((28, 28), tuple(test.mean), tuple(test.std)))
    with torch.no_grad():
        return float((student.eval()(x).argmax(1) == teacher.eval()(x).argmax(1)).float().mean())


def test_distillation_follows_the_teacher(tiny_run, tmp_path):
    plain = train(TrainConfig(**TINY, epochs=2), tmp_path / "plain")
    # weight 0: the teacher is asked but counts for nothing: the same weights as without it
    zero = train(TrainConfig(**TINY, epochs=2, teacher=str(tiny_run), kd_weight=0.0), tmp_path / "zero")
    a, b = read_checkpoint(tmp_path / "plain")["state_dict"], read_checkpoint(tmp_path / "zero")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in plain["history"]] == [h["train_loss"] for h in zero["history"]]
    # weight 1: the teacher's softened answers alone: the student answers as its teacher more than one taught by labels
    train(TrainConfig(**TINY, epochs=2, teacher=str(tiny_run), kd_weight=1.0), tmp_path / "kd")
    teacher = load_model(tiny_run)[0]
    assert _agreement(load_model(tmp_path / "kd")[0], teacher) > _agreement(load_model(tmp_path / "plain")[0], teacher)


def test_a_teacher_for_other_data_is_refused(tiny_run, tmp_path):
    ckpt = read_checkpoint(tiny_run)
    torch.save({**ckpt, "classes": [f"c{i}" for i in range(10)]}, tmp_path / "classes.pt")
    torch.save({**ckpt, "preprocess": {**ckpt["preprocess"], "size": [32, 32]}}, tmp_path / "input.pt")
    with pytest.raises(EdgesplitError, match="answers other classes"):
        train(TrainConfig(**TINY, epochs=1, teacher=str(tmp_path / "classes.pt")), tmp_path / "a")
    with pytest.raises(EdgesplitError, match="takes another input"):
        train(TrainConfig(**TINY, epochs=1, teacher=str(tmp_path / "input.pt")), tmp_path / "b")
    with pytest.raises(EdgesplitError, match="not found"):
        train(TrainConfig(**TINY, epochs=1, teacher=str(tmp_path / "none")), tmp_path / "c")
    with pytest.raises(EdgesplitError, match="--kd-weight in"):
        TrainConfig(**TINY, teacher=str(tiny_run), kd_weight=1.5)
