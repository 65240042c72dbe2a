"""Cost and quality of one candidate: the hardware model for speed, a short real training for accuracy.

Every result goes into the search journal (``search.json`` in the output folder)
the moment it exists, so an interrupted search resumes without redoing any of it.
Accuracy is measured on the validation split (never the test set) of the real
dataset: the network is trained briefly (``proxy_samples`` images, ``proxy_epochs``),
then quantized to the candidate's bit widths (post-training, per-layer formats) and
run bit-exactly in fixed point. Training depends only on the architecture, so the
bit-width moves of the search reuse the trained network.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgesplit.codesign.budget import PROBE_IMAGES, Speed
from edgesplit.codesign.config import ProxyTraining
from edgesplit.codesign.records import Evaluation, HardwareCost, ProxyAccuracy
from edgesplit.codesign.space import Candidate
from edgesplit.errors import EdgesplitError
from edgesplit.hardware.accelerator import COARSE_PAR_CHOICES, COARSE_TILE_CHOICES, AccelConfig, tune
from edgesplit.hardware.cpu import estimate_cpu
from edgesplit.hardware.records import Estimate

Progress = Callable[[str], None]

CALIB_IMAGES = 500  # training images that set the fixed-point formats


@dataclass(frozen=True)
class Targets:
    fps: float
    max_watts: float | None = None

    def violation(self, hw: HardwareCost) -> float:
        """0 when ``hw`` meets every target; otherwise how far off it is (relative, summed)."""
        v = 0.0 if hw.fits else 1.0
        if hw.fps:
            v += max(0.0, self.fps / hw.fps - 1.0)
        if self.max_watts and hw.watts:
            v += max(0.0, hw.watts / self.max_watts - 1.0)
        return v


class Journal:
    """The search state on disk (atomic JSON writes): results by candidate key, the trace, time spent."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        header = json.loads(json.dumps(header))  # tuples as lists, as they come back from disk
        if path.exists():
            self.data = json.loads(path.read_text())
            if self.data.get("header") != header:
                changed = sorted(
                    k
                    for k in set(header) | set(self.data.get("header", {}))
                    if header.get(k) != self.data.get("header", {}).get(k)
                )
                raise EdgesplitError(
                    f"{path.parent} holds a search with other settings ({', '.join(changed)}); "
                    "use the same arguments to resume, or another --out"
                )
        else:
            self.data = {"header": header, "spent_s": 0.0, "hardware": {}, "accuracy": {}, "trace": [], "phases": {}}
        self._base_s = self.data["spent_s"]
        self._t0 = time.monotonic()

    @property
    def spent_s(self) -> float:
        return self._base_s + time.monotonic() - self._t0

    def save(self) -> None:
        self.data["spent_s"] = self.spent_s
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


class Evaluator:
    """Hardware estimate and proxy accuracy of candidates, cached in a :class:`Journal`."""

    def __init__(
        self,
        device,
        targets: Targets,
        journal: Journal,
        out_dir: Path,
        dataset: str,
        data_dir: str | None,
        proxy: ProxyTraining = ProxyTraining(),
        arch: str = "bundle",
        seed: int = 0,
    ):
        from edgesplit.data.datasets import load_dataset, train_val_split

        self.device, self.targets, self.journal, self.out_dir = device, targets, journal, out_dir
        self.dataset_name, self.data_dir, self.proxy, self.arch, self.seed = dataset, data_dir, proxy, arch, seed
        self.train_set = load_dataset(dataset, "train", data_dir, size=(224, 224))
        self.in_chans, h, w = self.train_set.image_shape
        self.image_hw = (h, w)
        self.num_classes = len(self.train_set.classes)
        self.train_idx, self.val_idx = train_val_split(len(self.train_set), 5000)
        self._qnet_cache: tuple[str, object, list] | None = None  # (run dir, QuantNet, calibration batches)
        self._test_set = None  # loaded on first use
        self._graphs: dict[str, object] = {}  # arch_key/width -> hardware.graph.Graph

    # ------------------------------------------------------------ hardware
    def build(self, c: Candidate, width_mult: float = 1.0):
        from edgesplit.models import create_model

        return create_model(
            "bundlenet",
            num_classes=self.num_classes,
            in_chans=self.in_chans,
            input_size=c.input_size(self.image_hw),
            width_mult=width_mult,
            **c.model_kwargs(),
        )

    def hardware(self, c: Candidate, device=None, width_mult: float = 1.0, fine: bool = False) -> HardwareCost:
        """FPS, resources and power of ``c`` (scaled by ``width_mult``) on ``device`` (default: the target)."""
        device = device or self.device
        key = f"{device.name}/{c.key}/x{width_mult:g}" + ("/fine" if fine else "")
        cached = self.journal.data["hardware"].get(key)
        if cached is not None:
            return HardwareCost.from_dict(cached)
        hw = self.cost_graph(self.graph(c, width_mult), device, (c.wbits, c.fbits), fine)
        # kept with the next save (after a training or a phase): a cost lost to an interruption takes milliseconds to redo
        self.journal.data["hardware"][key] = hw.to_dict()
        return hw

    def graph(self, c: Candidate, width_mult: float = 1.0):
        """The layer graph of ``c`` at ``width_mult``, built once per architecture and width (bits do not change it)."""
        from edgesplit.hardware.graph import graph_from_model

        key = f"{c.arch_key}/x{width_mult:g}"
        if key not in self._graphs:
            self._graphs[key] = graph_from_model(self.build(c, width_mult), (self.in_chans, *c.input_size(self.image_hw)), key)
        return replace(self._graphs[key], name=c.key)

    def estimate(self, graph, device, bits: tuple[int, int]) -> Estimate:
        """The full estimate of the fastest design of ``graph`` that fits ``device`` (the fine ``tune`` grid)."""
        return tune(graph, device, AccelConfig(arch=self.arch, wbits=bits[0], fbits=bits[1])).best

    def cost_graph(self, graph, device, bits: tuple[int, int], fine: bool = False) -> HardwareCost:
        """FPS, fit, resources and power of ``graph`` on ``device`` at ``bits`` (the tuned design on an FPGA)."""
        if device.kind == "cpu":
            est = estimate_cpu(graph, device)
            return HardwareCost(fps=est["totals"]["fps"], fits=True, macs=graph.macs, dsp=0, bram18=0, lut=0)
        grid = {} if fine else {"par_choices": COARSE_PAR_CHOICES, "tile_choices": COARSE_TILE_CHOICES}
        try:
            est = tune(graph, device, AccelConfig(arch=self.arch, wbits=bits[0], fbits=bits[1]), **grid).best
        except EdgesplitError as err:  # nothing fits the device
            return HardwareCost(fps=0.0, fits=False, macs=graph.macs, error=str(err))
        return HardwareCost(
            fps=est.frame_fps,  # the frame rate a user of the board sees, with its cores' work per frame
            fits=est.fits,
            macs=graph.macs,
            watts=est.totals.watts,
            dsp=est.resources.dsp,
            bram18=est.resources.bram18,
            lut=est.resources.lut,
            accelerator_fps=est.totals.fps,
            memory_bound_layers=est.totals.memory_bound_layers,
            accelerator=est.config,
        )

    # ------------------------------------------------------------ accuracy
    def train_dir(self, c: Candidate) -> Path:
        return self.out_dir / "proxy" / c.arch_key

    def accuracy(self, c: Candidate) -> ProxyAccuracy:
        """Proxy accuracy on validation images: float and fixed point at ``c``'s bit widths."""
        cached = self.journal.data["accuracy"].get(c.key)
        if cached is not None:
            return ProxyAccuracy.from_dict(cached)
        from edgesplit.training.train import train

        summary = train(self._proxy_config(c, self.proxy.epochs, self.proxy.samples), self.train_dir(c), resume=True)
        scored = self.quantized_accuracy(self.train_dir(c), (c.wbits, c.fbits), self.val_idx[: self.proxy.val_images])
        acc = ProxyAccuracy(
            **scored,
            train_s=summary["train_time_s"],
            train_images=min(self.proxy.samples, len(self.train_idx)) * self.proxy.epochs,
        )
        self.journal.data["accuracy"][c.key] = acc.to_dict()
        self.journal.save()
        return acc

    def _proxy_config(self, c: Candidate, epochs: int, images: int):
        """The short training of candidate ``c`` (the proxy's recipe) on the first ``images`` training images."""
        from edgesplit.training.config import TrainConfig

        return TrainConfig(
            model="bundlenet",
            dataset=self.dataset_name,
            data_dir=self.data_dir,
            input_size=c.input_size(self.image_hw),
            model_kwargs=c.model_kwargs(),
            epochs=epochs,
            batch_size=self.proxy.batch_size,
            max_train_samples=images,
            seed=self.seed,
        )

    def probe(self, c: Candidate) -> Speed:
        """This machine's speed at training and scoring ``c`` (the first bundle's prototype): a training of
        PROBE_IMAGES images; a first scoring (a new network's one-time costs), then two of half and twice PROBE_IMAGES
        images, whose difference is the cost per scored image (at least half the average, against timer noise); kept
        in the journal."""
        cached = self.journal.data.get("speed")
        if cached is not None:
            return Speed(**cached)
        from edgesplit.training.train import train

        run_dir = self.out_dir / "probe"
        t0 = time.monotonic()
        loop_s = train(self._proxy_config(c, 1, PROBE_IMAGES), run_dir, resume=True)["train_time_s"]
        train_s = time.monotonic() - t0
        self.test_images()  # loaded once per run: not a cost of each scoring
        t0 = time.monotonic()
        first = PROBE_IMAGES // 4
        self.quantized_accuracy(run_dir, (c.wbits, c.fbits), self.val_idx[:first])  # with a new network's one-time costs
        first_s = time.monotonic() - t0
        sizes, scored = (PROBE_IMAGES // 2, 2 * PROBE_IMAGES), []
        for n in sizes:  # then the slope between two sizes: what one more scored image costs
            t0 = time.monotonic()
            self.quantized_accuracy(run_dir, (c.wbits, c.fbits), self.val_idx[:n])
            scored.append(time.monotonic() - t0)
        per_image = max((scored[1] - scored[0]) / (sizes[1] - sizes[0]), scored[1] / sizes[1] / 2)
        # a scoring's fixed part: what a new network's first scoring costs beyond its images (the quantizer built and
        # calibrated); later scorings of the same network cost less, so this errs long
        speed = Speed(
            loop_s / PROBE_IMAGES,
            per_image,
            max(0.0, train_s - loop_s),
            max(0.0, first_s - first * per_image, scored[1] - sizes[1] * per_image),
            int(self.hardware(c).macs),
        )
        self.journal.data["speed"] = asdict(speed)
        self.journal.save()
        return speed

    def test_images(self) -> int:
        from edgesplit.data.datasets import load_dataset

        if self._test_set is None:
            self._test_set = load_dataset(self.dataset_name, "test", self.data_dir, size=(224, 224))
        return len(self._test_set)

    def val_and_test(self, run_dir: Path, bits: tuple[int, int], overrides: dict | None = None) -> dict:
        """:meth:`quantized_accuracy` on the validation images and on the whole test set."""
        self.test_images()  # loads the test set once
        return {
            "val": self.quantized_accuracy(run_dir, bits, self.val_idx, overrides=overrides),
            "test": self.quantized_accuracy(run_dir, bits, np.arange(len(self._test_set)), self._test_set, overrides),
        }

    def quantized_accuracy(
        self, run_dir: Path, bits: tuple[int, int], idx: np.ndarray, dataset=None, overrides: dict | None = None
    ) -> dict:
        """Float and fixed-point (``bits`` = weight, feature-map widths; ``overrides`` per part, see
        :meth:`QuantNet.calibrate`) top-1 of the network in ``run_dir`` on ``idx``."""
        from edgesplit.quant.qnet import QuantNet, qgraph_from_model
        from edgesplit.quant.quantize import calibration_batches, quantized_top1
        from edgesplit.training.checkpoint import checkpoint_preprocess, load_model
        from edgesplit.training.evaluate import predict_logits

        dataset = dataset or self.train_set
        model, ckpt = load_model(run_dir)
        pre = checkpoint_preprocess(ckpt)
        float_top1 = float((predict_logits(model, dataset, idx, pre).argmax(1) == dataset.labels(idx)).mean())
        cache_key = str(run_dir)
        if self._qnet_cache is None or self._qnet_cache[0] != cache_key:
            qnet = QuantNet(qgraph_from_model(model, (self.in_chans, *pre.size)))
            self._qnet_cache = (cache_key, qnet, calibration_batches(self.train_set, self.train_idx, pre, CALIB_IMAGES))
        _, qnet, calib = self._qnet_cache
        qnet.calibrate(calib, *bits, overrides)
        return {"float_top1": float_top1, "ptq_top1": quantized_top1(qnet, dataset, idx, pre), "images": int(len(idx))}

    # ------------------------------------------------------------ both
    def evaluate(self, c: Candidate) -> Evaluation:
        """The search's view of ``c``: hardware, feasibility, and (only when feasible) accuracy; ``score`` to maximise."""
        hw = self.hardware(c)
        violation = self.targets.violation(hw)
        if violation == 0:
            acc = self.accuracy(c)
            return Evaluation(c, hw, violation, acc.ptq_top1, acc)
        return Evaluation(c, hw, violation, -1.0 - violation)  # below every feasible one, closer to the targets first


def train_final(
    ev: Evaluator,
    model: str,
    model_kwargs: dict,
    input_size,
    epochs: int,
    out_dir: Path,
    bits: tuple[int, int],
    progress: Progress,
    max_images: int | None = None,
    overrides: dict | None = None,
) -> dict:
    """Full-data training (label smoothing 0.1), then quantized accuracy on validation and test images
    (``overrides``: per-part widths, see :meth:`QuantNet.calibrate`)."""
    from edgesplit.training.train import TrainConfig, train

    cfg = TrainConfig(
        model=model,
        dataset=ev.dataset_name,
        data_dir=ev.data_dir,
        input_size=tuple(input_size),
        model_kwargs=model_kwargs,
        epochs=epochs,
        label_smoothing=0.1,
        seed=ev.seed,
        max_train_samples=max_images,
    )
    last = [0]

    def show(p: dict) -> None:
        if p["step"] == p["steps"] or p["step"] - last[0] >= max(1, p["steps"] // 4):
            last[0] = p["step"] % p["steps"]
            progress(
                f"    {out_dir.name}: epoch {p['epoch']}/{p['epochs']} step {p['step']}/{p['steps']} "
                f"loss {p['loss']:.3f} acc {p['acc']:.3f}"
            )

    summary = train(cfg, out_dir, resume=True, progress=show)
    return {
        "run_dir": str(out_dir),
        "epochs": epochs,
        "train_time_s": summary["train_time_s"],
        "wbits": bits[0],
        "fbits": bits[1],
        **ev.val_and_test(out_dir, bits, overrides),
    }
