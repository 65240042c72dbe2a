"""What a co-design run is asked to do (no torch: the CLI builds its options from these fields)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgesplit.errors import EdgesplitError
from edgesplit.options import comma_list, option, parse_duration


@dataclass(frozen=True)
class ProxyTraining:
    """The short training that scores each candidate."""

    samples: int = option(
        6000, "training images for each short training, at most (fewer when the budget needs it)", "--proxy-images"
    )
    epochs: int = 1
    val_images: int = option(2000, "validation images scoring each candidate", "--proxy-val-images")
    batch_size: int = 64

    def __post_init__(self):
        for name in ("samples", "epochs", "val_images", "batch_size"):
            if getattr(self, name) < 1:
                raise EdgesplitError(f"proxy {name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class CodesignConfig:
    device: str
    target_fps: float
    dataset: str = option("fashion-mnist", "dataset", "--data")
    data_dir: str | None = option(None, "dataset folder", type=str)
    time_budget_s: float = option(
        1800.0,
        "wall time for the whole run (search, finalists, baselines, fleet), with a unit: 90s, 30m, 1h; every training "
        "is sized to fit, and a budget too small is refused with the minimum",
        "--time-budget",
        parse=parse_duration,
        text="30m",
    )
    max_watts: float | None = option(None, "highest acceptable board power (model estimate)", type=float)
    arch: str = option("bundle", "accelerator architecture: bundle or pipeline")
    bundles: tuple[str, ...] | None = option(
        None,
        "comma-separated subset of the layer pool (default all: dw3-pw1,conv3,pw1-dw3-pw1,conv3-res,fire)",
        parse=comma_list,
    )
    finalists: int = option(2, "architectures trained longer at the end")
    final_epochs: int | None = option(None, "epochs for finalists (default: what the budget allows, 1-10)", type=int)
    final_images: int | None = option(
        None, "train finalists on at most the first N training images (default: as many as the budget allows)", type=int
    )
    proxy: ProxyTraining = ProxyTraining()
    fleet: str | None = option(None, "YAML fleet file: split the chosen network over these devices and write plan.yaml", type=str)
    accuracy_floor: float | None = option(None, "fleet: lowest fixed-point validation top-1 (default chosen - 0.02)", type=float)
    baselines: tuple[str, ...] = option(
        (),
        "comma-separated models trained with the same recipe for comparison, e.g. resnet18-split2,squeezenet",
        parse=comma_list,
        text="",
    )
    seed: int = option(0, "seed of the search and of every training")
    devices_dir: str | None = option(None, "a folder of your own device YAML files", type=str)

    def __post_init__(self):
        if self.target_fps <= 0:
            raise EdgesplitError(f"--target-fps must be positive, got {self.target_fps}")
        if self.time_budget_s <= 0:
            raise EdgesplitError(f"--time-budget must be positive, got {self.time_budget_s} s")
        if self.finalists < 1:
            raise EdgesplitError(f"--finalists must be at least 1, got {self.finalists}")
        if self.final_images is not None and self.final_images < 1:
            raise EdgesplitError(f"--final-images must be at least 1, got {self.final_images}")
        if self.final_epochs is not None and self.final_epochs < 1:
            raise EdgesplitError(f"--final-epochs must be at least 1, got {self.final_epochs}")
        if self.max_watts is not None and self.max_watts <= 0:
            raise EdgesplitError(f"--max-watts must be positive, got {self.max_watts}")

    def header(self) -> dict:
        """The settings a resumed search must share (the time budget may change)."""
        d = asdict(self)
        for k in ("time_budget_s", "final_epochs", "final_images", "fleet", "accuracy_floor", "baselines", "finalists"):
            d.pop(k)
        return d
