"""What the co-design search learns about a candidate, typed; JSON only in the journal (``search.json``) and the
result (``to_dict`` / ``from_dict``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from edgesplit.codesign.space import Candidate
from edgesplit.hardware.config import AccelConfig


@dataclass(frozen=True)
class HardwareCost:
    """A network on one device: the tuned design's frame rate, fit, resources and power."""

    fps: float  # what a user of the board sees: end to end where the board's processing system is modelled
    fits: bool
    macs: int
    watts: float | None = None
    dsp: int | None = None
    bram18: int | None = None
    lut: int | None = None
    accelerator_fps: float | None = None
    memory_bound_layers: int | None = None
    accelerator: AccelConfig | None = None  # the tuned design (FPGA only)
    error: str | None = None  # why nothing fits

    def to_dict(self) -> dict:
        return {**asdict(self), "accelerator": asdict(self.accelerator) if self.accelerator else None}

    @classmethod
    def from_dict(cls, d: dict) -> "HardwareCost":
        known = {f.name for f in fields(cls)}
        accel = d.get("accelerator")
        kw = {k: v for k, v in d.items() if k in known}  # older journals kept more
        return cls(**{**kw, "accelerator": AccelConfig(**accel) if accel else None})


@dataclass(frozen=True)
class ProxyAccuracy:
    """A candidate's short training, scored on validation images in float and in fixed point."""

    float_top1: float
    ptq_top1: float
    images: int  # validation images scored
    train_s: float
    train_images: int  # images seen in training (samples x epochs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProxyAccuracy":
        return cls(**d)


@dataclass(frozen=True)
class Evaluation:
    """The search's view of a candidate: its hardware, how far off the targets, its proxy accuracy when it meets
    them, and the score the search maximises."""

    candidate: Candidate
    hardware: HardwareCost
    violation: float  # 0: meets every target; else how far off (relative, summed)
    score: float
    accuracy: ProxyAccuracy | None = None

    @property
    def key(self) -> str:
        return self.candidate.key

    @property
    def feasible(self) -> bool:
        return self.violation == 0

    def to_dict(self) -> dict:
        d = {
            "key": self.key,
            "candidate": self.candidate.to_dict(),
            "hardware": self.hardware.to_dict(),
            "violation": self.violation,
            "feasible": self.feasible,
            "score": self.score,
        }
        if self.accuracy:
            d["accuracy"] = self.accuracy.to_dict()
        return d
