"""The training configurations, importable without torch (the CLI builds their options from them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgesplit.errors import EdgesplitError
from edgesplit.options import option


@dataclass(frozen=True)
class TrainConfig:
    model: str
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    input_size: tuple[int, int] | None = None  # (H, W); None: the dataset's own size
    model_kwargs: dict = field(default_factory=dict)  # e.g. width_mult, head_hidden
    epochs: int = option(5, "training epochs")
    batch_size: int = option(128, "images per training step")
    lr: float | None = option(
        None,
        "peak learning rate of the one-cycle schedule (default: the model's: 0.1, 0.02 for SqueezeNet, which has no batch norm)",
        type=float,
    )
    momentum: float = 0.9
    weight_decay: float = option(5e-4, "SGD weight decay")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy loss, 0 to 1")
    branch_dropout: float = option(0.0, "probability of zeroing a branch's features (split models)")
    augment_pad: int = option(2, "random-crop padding in pixels; 0 turns augmentation off")
    val_size: int = option(5000, "training images held out for validation")
    max_train_samples: int | None = option(
        None,
        "train on the first N training images only (default: all)",
        "--train-images",
        aliases=("--max-train-samples",),
        type=int,
        metavar="N",
    )
    teacher: str | None = option(
        None,
        "distil from this trained model (a run folder or checkpoint of the same dataset and input): its softened "
        "answers become part of the loss",
        type=str,
        metavar="RUN",
    )
    kd_temperature: float = option(4.0, "with --teacher: the softmax temperature of both models' answers")
    kd_weight: float = option(0.5, "with --teacher: the distillation loss's share (the rest: cross-entropy on the labels)")
    seed: int = option(0, "seed of the weights' initialisation and of each epoch's shuffling")
    threads: int | None = option(None, "torch threads (default: all cores)", type=int)

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise EdgesplitError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise EdgesplitError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.branch_dropout < 1:
            raise EdgesplitError(f"--branch-dropout must be in [0, 1), got {self.branch_dropout}")
        if self.kd_temperature <= 0 or not 0 <= self.kd_weight <= 1:
            raise EdgesplitError(
                f"--kd-temperature must be positive and --kd-weight in [0, 1], got {self.kd_temperature} and {self.kd_weight}"
            )
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 1):
            raise EdgesplitError(f"--input must be HxW with positive sizes, got {self.input_size}")


@dataclass(frozen=True)
class HeadConfig:
    """Retraining a split model's head with branch dropout, its branches frozen (``retrain-head``)."""

    branch_dropout: float = option(0.3, "probability of zeroing a branch's features per sample")
    epochs: int = option(15, "epochs of head training")
    lr: float = option(1e-3, "AdamW peak rate (cosine to zero; the head starts from its trained weights)")
    weight_decay: float = 1e-4
    batch_size: int = 256
    seed: int = option(0, "seed of the head's training")
    data_dir: str | None = option(None, "dataset folder, if not where the model was trained", type=str)

    def __post_init__(self):
        if not 0 < self.branch_dropout < 1:
            raise EdgesplitError(f"--branch-dropout must be in (0, 1), got {self.branch_dropout}")
        if self.epochs < 1:
            raise EdgesplitError(f"--epochs must be at least 1, got {self.epochs}")


@dataclass(frozen=True)
class ParityConfig:
    """Learned parity branches for a trained split model, its own branches and head frozen (``add-parity``)."""

    parity_branches: int = option(1, "parity branches R: any R of the data branches can be missing")
    epochs: int = option(5, "epochs of parity training")
    lr: float = option(2e-3, "AdamW peak rate (cosine to zero; each parity branch starts from a data branch's weights)")
    weight_decay: float = 1e-4
    batch_size: int = 128
    answer_weight: float = option(
        0.5, "share of the head's cross-entropy on answers rebuilt with a branch missing (the rest: the features' error)"
    )
    max_train_samples: int | None = option(
        None, "train on the first N training images only (default: all)", "--train-images", type=int, metavar="N"
    )
    seed: int = option(0, "seed of the parity training")
    data_dir: str | None = option(None, "dataset folder, if not where the model was trained", type=str)
    threads: int | None = option(None, "torch threads (default: all cores)", type=int)

    def __post_init__(self):
        if self.parity_branches < 1 or self.epochs < 1:
            raise EdgesplitError(
                f"--parity-branches and --epochs must be at least 1, got {self.parity_branches} and {self.epochs}"
            )
        if not 0 <= self.answer_weight <= 1:
            raise EdgesplitError(f"--answer-weight must be in [0, 1], got {self.answer_weight}")
