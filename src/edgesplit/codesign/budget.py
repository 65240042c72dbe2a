"""How a co-design run spends its ``--time-budget``: a share per stage, and training sizes that fit each share.

The run measures its own speed first (a probe: the first bundle's prototype trained on
``PROBE_IMAGES`` images and scored on as many validation images, wall time of each), then
sizes every training from it:

* scoring the finalists (and the baselines and fleet splits) on the validation and test images
  is set aside first: it takes as long whatever the training; ``wrapup`` is kept for what is not
  training (exports, the accelerator's C simulation, reports); the shares split the rest;
* exploration (bundle selection and descent) gets ``explore``; each candidate's proxy training
  gets ``1 / (bundles + DESCENT_CANDIDATES)`` of it, so the proxy images are what fits that (at
  most ``--proxy-images``), and the stage stops when its time is spent;
* the finalists get ``finals``: epochs (at most 10) and training images that fit, from each
  finalist's own measured proxy speed, plus the scoring of validation and test images;
* baselines and the fleet's split models (when asked for) get ``extras``, their images sized
  from the probe's speed scaled by their multiply-accumulates;

A budget too small for one proxy training of ``MIN_PROXY_IMAGES`` per bundle, or for one epoch of
``MIN_FINAL_IMAGES`` per finalist, is refused with the smallest budget that would do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgesplit.errors import EdgesplitError

PROBE_IMAGES = 256
MIN_PROXY_IMAGES = 256
MIN_FINAL_IMAGES = 512
DESCENT_CANDIDATES = 2  # proxy trainings the descent gets at least, beyond the bundles' prototypes
MAX_FINAL_EPOCHS = 10


@dataclass(frozen=True)
class Speed:
    """What the probe measured (wall time). A training of ``n`` images for ``e`` epochs, scored on ``v`` images,
    takes ``e * (fixed_s + n * train_s_per_image) + eval_fixed_s + v * eval_s_per_image``."""

    train_s_per_image: float  # one epoch of the training loop, per image
    eval_s_per_image: float  # float and fixed-point scoring, per image
    fixed_s: float  # per epoch, whatever the images: the validation pass after it, building the model, loading
    eval_fixed_s: float  # per scoring: the quantizer's calibration
    probe_macs: int  # multiply-accumulates of the probe network, per image

    def eval_s(self, images: int) -> float:
        return self.eval_fixed_s + images * self.eval_s_per_image

    def train_s(self, images: int, epochs: int = 1, macs: int | None = None) -> float:
        scale = macs / self.probe_macs if macs else 1.0
        return epochs * (self.fixed_s + images * self.train_s_per_image * scale)


@dataclass(frozen=True)
class Shares:
    """``wrapup``: of the budget; the other three (summing to 1): of what is left for training."""

    explore: float
    finals: float
    extras: float
    wrapup: float

    @classmethod
    def for_run(cls, extras: bool) -> "Shares":
        return cls(0.45, 0.30, 0.25, 0.10) if extras else cls(0.60, 0.40, 0.0, 0.10)


@dataclass(frozen=True)
class StageBudget:
    """Seconds for each stage, from a budget: scoring the finalists and extra trainings on the validation and test
    images is set aside first (it does not shrink with the training), ``wrapup`` of the budget for what is not
    training, and the shares split the rest."""

    explore_s: float
    finals_s: float  # training and scoring the finalists
    extras_s: float  # training and scoring baselines and fleet splits

    @classmethod
    def plan(
        cls, budget_s: float, shares: Shares, speed: Speed, finalists: int, extra_trainings: int, final_eval_images: int
    ) -> "StageBudget":
        score_s = speed.eval_s(final_eval_images)
        trainable_s = budget_s * (1 - shares.wrapup) - (finalists + extra_trainings) * score_s
        return cls(
            trainable_s * shares.explore,
            trainable_s * shares.finals + finalists * score_s,
            trainable_s * shares.extras + extra_trainings * score_s,
        )


def proxy_images(explore_s: float, speed: Speed, bundles: int, wanted: int, val_images: int) -> int:
    """Training images for each proxy training: what fits the exploration's time, at most ``wanted``."""
    per_candidate_s = explore_s / (bundles + DESCENT_CANDIDATES) - speed.eval_s(val_images) - speed.fixed_s
    return min(wanted, max(0, math.floor(per_candidate_s / speed.train_s_per_image)))


def minimum_budget_s(
    shares: Shares, speed: Speed, bundles: int, val_images: int, finalists: int, final_eval_images: int, extra_trainings: int = 0
) -> float:
    """The smallest budget that trains every bundle's prototype (and the descent's first candidates) on
    MIN_PROXY_IMAGES, each finalist (and extra training) for one epoch on MIN_FINAL_IMAGES, and scores them."""
    explore_s = (bundles + DESCENT_CANDIDATES) * (speed.train_s(MIN_PROXY_IMAGES) + speed.eval_s(val_images))
    need = [explore_s / shares.explore, finalists * speed.train_s(MIN_FINAL_IMAGES) / shares.finals]
    if extra_trainings:
        need.append(extra_trainings * speed.train_s(MIN_FINAL_IMAGES) / shares.extras)
    return (max(need) + (finalists + extra_trainings) * speed.eval_s(final_eval_images)) / (1 - shares.wrapup)


def check_budget(
    budget_s: float,
    shares: Shares,
    speed: Speed,
    bundles: int,
    val_images: int,
    finalists: int,
    final_eval_images: int,
    extra_trainings: int = 0,
) -> None:
    need_s = minimum_budget_s(shares, speed, bundles, val_images, finalists, final_eval_images, extra_trainings)
    if budget_s < need_s:
        raise EdgesplitError(
            f"--time-budget {_fmt(budget_s)} is too small on this machine: {bundles} bundle(s), "
            f"{finalists} finalist(s)"
            + (f" and {extra_trainings} baseline/fleet training(s)" if extra_trainings else "")
            + f" need at least {_fmt(math.ceil(need_s))} (measured: {speed.train_s_per_image * 1e3:.1f} ms "
            f"per training image, {speed.eval_s_per_image * 1e3:.2f} ms per scored image); raise it, or "
            f"pass fewer --bundles or --finalists"
        )


def final_sizes(
    remaining_s: float, s_per_image: list[float], speed: Speed, eval_images: int, available: int, epochs: int | None = None
) -> tuple[int, int]:
    """(epochs, images) for the finalists' training in ``remaining_s``: each finalist's own seconds per training image
    (``s_per_image``); ``epochs`` fixed by the user or as many as fit (1-10) on all ``available`` images; then as
    many images as fit those epochs (at least MIN_FINAL_IMAGES)."""
    train_s = remaining_s - len(s_per_image) * speed.eval_s(eval_images)
    fixed_s = len(s_per_image) * speed.fixed_s  # per epoch, all finalists
    if epochs is None:
        per_epoch_s = sum(s_per_image) * available + fixed_s
        epochs = int(max(1, min(MAX_FINAL_EPOCHS, math.floor(train_s / max(per_epoch_s, 1e-9)))))
    images = math.floor((train_s / epochs - fixed_s) / max(sum(s_per_image), 1e-12))
    return epochs, int(min(available, max(MIN_FINAL_IMAGES, images)))


def extra_images(share_s: float, speed: Speed, trainings: list[int], epochs: int, eval_images: int, available: int) -> int:
    """Training images for each of the extra trainings (baselines, fleet splits; ``trainings``: their MACs per
    image) that fit ``share_s`` at ``epochs``, at least MIN_FINAL_IMAGES."""
    if not trainings:
        return available
    per_image_s = sum(epochs * speed.train_s_per_image * macs / speed.probe_macs for macs in trainings)
    train_s = share_s - len(trainings) * (speed.eval_s(eval_images) + epochs * speed.fixed_s)
    return int(min(available, max(MIN_FINAL_IMAGES, math.floor(train_s / max(per_image_s, 1e-12)))))


def _fmt(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s"
