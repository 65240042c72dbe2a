"""What the demo runs (no numpy: ``edgesplit demo``'s options are built from these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from edgesplit.options import option

MODES = ("split", "in-process", "nonsplit")
DEMO_MODELS = {"split": "resnet18-split2", "unsplit": "resnet18"}


@dataclass(frozen=True)
class DemoConfig:
    work_dir: str = option("runs/demo", "where the cached checkpoints and exports live")
    data_dir: str | None = option(None, "Fashion-MNIST folder", type=str)
    limit: int | None = option(
        None, "use only the first N test images (default: all)", "--test-images", aliases=("--limit",), type=int, metavar="N"
    )
    retrain: bool = option(False, "ignore the cached checkpoints")
    modes: tuple[str, ...] = MODES
    images_dir: str | None = option(
        None, "a folder of JPEG/PNG images instead of the test set", "--images", type=str, metavar="DIR"
    )
    dashboard_port: int | None = option(
        None,
        "serve the live page at http://127.0.0.1:PORT/dashboard while the split model runs (0: any free port)",
        type=int,
        metavar="PORT",
    )
    interactive: bool = False  # type image paths, get the top-3 classes (an option of its own: it excludes the modes)
    in_flight: int = 4
    throughput_images: int = 2000
    width_mult: float = 0.25  # small enough to train on 2 cores in about a minute per model
    epochs: int = 2
    max_train_samples: int | None = None  # a subset, for quick runs
    branch_dropout: float = 0.1  # the split model learns to answer with a branch missing
    unplug_images: int = 1000  # images run after one worker is killed
