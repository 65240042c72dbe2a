"""`edgesplit codesign`: from speed targets on a device to a trained network, its accelerator and a fleet plan.

The three steps of Zhang, Hao et al.'s bi-directional co-design paper (2019), with the hardware model in the loop:

1. **Bundle selection.** Each bundle of the layer pool is repeated into a prototype
   network, costed on the device and trained briefly; the bundles on the Pareto
   front of accuracy against FPS go on (the others are beaten on both).
2. **Stochastic coordinate descent.** From each selected bundle's prototype, pick a
   random knob (depth, base channels, growth, where to down-sample, weight and
   feature-map bits, input resize), try one step up and one down, and move when the
   score improves. The score is the quantized validation accuracy of a candidate
   that meets the targets, and minus its distance to the targets otherwise, so the
   walk first moves into the feasible region (hardware model only, no training),
   then climbs in accuracy inside it.
3. **Finalists.** The best distinct architectures are trained longer, on as many
   training images and epochs as the budget allows; the one with the best quantized
   validation accuracy is chosen, and its test accuracy is reported (the test set is
   used only here).

The time budget is kept stage by stage (:mod:`edgesplit.codesign.budget`): the run
first measures its own training speed, refuses a budget too small for one candidate
per bundle, and sizes every training to its stage's share.

A fleet (``--fleet``) then gets the chosen network split over its devices
(:mod:`edgesplit.codesign.fleet`).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from edgesplit.codesign import budget
from edgesplit.codesign.budget import Shares
from edgesplit.codesign.config import CodesignConfig, ProxyTraining  # noqa: F401 (CodesignConfig: the run's API)
from edgesplit.codesign.evaluate import Evaluator, Journal, Progress, Targets, train_final
from edgesplit.codesign.records import Evaluation, HardwareCost
from edgesplit.codesign.space import COORDINATES, Candidate, SearchSpace, neighbours, pareto_front, prototype
from edgesplit.errors import EdgesplitError

STALL_STEPS = 3 * len(COORDINATES)  # a descent has converged after this many steps without a better neighbour
MAX_RESTARTS = 3  # then it restarts near its best (RESTART_MOVES random moves away), this many times
RESTART_MOVES = 3


def _fmt_time(s: float) -> str:
    return f"{int(s // 60):d}:{int(s % 60):02d}"


class Search:
    """Steps 1-3 over one :class:`Evaluator`; every evaluation is appended to the journal's trace."""

    def __init__(
        self, cfg: CodesignConfig, evaluator: Evaluator, space: SearchSpace, progress: Progress, shares: Shares | None = None
    ):
        self.cfg, self.ev, self.space, self.progress = cfg, evaluator, space, progress
        self.shares = shares or Shares.for_run(bool(cfg.baselines or cfg.fleet))
        self.journal = evaluator.journal
        self.rng = np.random.default_rng(cfg.seed)
        self.records: dict[str, Evaluation] = {}
        for t in self.journal.data["trace"]:  # a resumed search knows everything evaluated before
            self.records[t["key"]] = self.ev.evaluate(Candidate.from_dict(t["candidate"]))

    def _say(self, phase: str, rec: Evaluation, extra: str = "") -> None:
        acc = rec.accuracy
        acc_s = f"val {acc.ptq_top1:.3f} (float {acc.float_top1:.3f})" if acc else f"off target by {rec.violation:.2f}"
        self.progress(
            f"[{_fmt_time(self.journal.spent_s)}/{_fmt_time(self.cfg.time_budget_s)}] {phase:<7} "
            f"{rec.key:<40} {rec.hardware.fps:9.1f} FPS  {acc_s}{extra}"
        )

    def evaluate(self, c: Candidate, phase: str) -> Evaluation:
        if c.key in self.records:
            return self.records[c.key]
        rec = self.records[c.key] = self.ev.evaluate(c)  # records mirror the trace, so c is not in it yet
        self.journal.data["trace"].append(
            {"phase": phase, "key": c.key, "candidate": c.to_dict(), "spent_s": self.journal.spent_s}
        )
        self.journal.save()
        self._say(phase, rec)
        return rec

    explore_budget_s = float("inf")  # when (journal time) the exploration stops; set from the StageBudget

    def bundles(self) -> list[str]:
        bundles = list(self.cfg.bundles or self.space.bundles)
        unknown = [b for b in bundles if b not in self.space.bundles]
        if unknown:
            raise EdgesplitError(f"unknown bundle(s) {unknown}; choose from {', '.join(self.space.bundles)}")
        return bundles

    def select_bundles(self) -> list[str]:
        bundles, recs = [], []
        for b in self.bundles():  # in order, while the exploration's share lasts (at least one)
            if recs and self.journal.spent_s >= self.explore_budget_s:
                self.progress(f"the exploration's share of the budget is spent: bundles {', '.join(bundles)} only")
                break
            bundles.append(b)
            recs.append(self.evaluate(prototype(b), "bundle"))
        # a prototype that misses the targets still ranks by its accuracy here: the descent can shrink it
        recs = [r if r.accuracy else replace(r, accuracy=self.ev.accuracy(r.candidate)) for r in recs]
        for r in recs:
            self.records[r.key] = r
        points = [(r.accuracy.ptq_top1, r.hardware.fps) for r in recs]
        front = [bundles[i] for i in pareto_front(points)]
        self.journal.data["phases"]["bundles"] = {"evaluated": list(bundles), "pareto": front}
        self.journal.save()
        self.progress(f"bundles on the Pareto front (accuracy vs FPS): {', '.join(front)}")
        return front

    def descend(self, bundles: list[str]) -> None:
        current = {b: self.records[prototype(b).key] for b in bundles}
        stalled = {b: 0 for b in bundles}
        step, restarts = 0, 0
        while self.journal.spent_s < self.explore_budget_s:
            active = [b for b in bundles if stalled[b] < STALL_STEPS]
            if not active:
                if restarts == MAX_RESTARTS:
                    self.progress("every descent has converged (no knob improves any more)")
                    break
                restarts += 1
                for b in bundles:  # random restart near each bundle's best: a few random moves away
                    best_b = max((r for r in self.records.values() if r.candidate.bundle == b), key=lambda r: r.score)
                    current[b] = self.evaluate(self._perturb(best_b), "restart")
                    stalled[b] = 0
                self.progress(f"every descent converged: restart {restarts}/{MAX_RESTARTS} from perturbed bests")
                continue
            b = active[step % len(active)]
            step += 1
            coord = COORDINATES[self.rng.integers(len(COORDINATES))]
            cur = current[b]
            best = cur
            for n in neighbours(cur.candidate, coord, self.space, self.ev.image_hw, self.rng):
                if self.journal.spent_s >= self.explore_budget_s:
                    break
                rec = self.evaluate(n, "descent")
                if rec.score > best.score:
                    best = rec
            if best is not cur:
                current[b] = best
                stalled[b] = 0
                self.progress(f"  {b}: moved along {coord} to {best.key} (score {best.score:.3f})")
            else:
                stalled[b] += 1
        best = {b: max((r for r in self.records.values() if r.candidate.bundle == b), key=lambda r: r.score).key for b in bundles}
        self.journal.data["phases"]["descent"] = {"steps": step, "restarts": restarts, "best": best}
        self.journal.save()

    def _perturb(self, rec: Evaluation) -> Candidate:
        c = rec.candidate
        for _ in range(RESTART_MOVES):
            moves = neighbours(c, COORDINATES[self.rng.integers(len(COORDINATES))], self.space, self.ev.image_hw, self.rng)
            if moves:
                c = moves[self.rng.integers(len(moves))]
        return c

    def finalists(self) -> list[Evaluation]:
        """The best feasible candidate of each of the ``cfg.finalists`` best distinct architectures."""
        feasible = sorted((r for r in self.records.values() if r.feasible), key=lambda r: -r.score)
        chosen, archs = [], set()
        for r in feasible:
            arch = r.candidate.arch_key
            if arch not in archs:
                archs.add(arch)
                chosen.append(r)
            if len(chosen) == self.cfg.finalists:
                break
        if not chosen:
            raise EdgesplitError(
                f"no candidate reached {self.cfg.target_fps:g} FPS on {self.cfg.device} within the "
                "search; lower --target-fps, raise --time-budget or pick a faster device"
            )
        return chosen


def run_codesign(
    cfg: CodesignConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: Progress = lambda s: None,
    space: SearchSpace = SearchSpace(),
) -> dict:
    from edgesplit.hardware.catalog import get_device

    out_dir = Path(out_dir)
    device = get_device(cfg.device, cfg.devices_dir)
    if device.kind != "fpga":
        raise EdgesplitError(
            f"--device must be an FPGA board (the accelerator is designed for it); {device.name} is a "
            f"{device.kind}: put CPU devices in --fleet"
        )
    journal_path = out_dir / "search.json"
    if journal_path.exists() and not resume:
        raise EdgesplitError(f"{out_dir} already holds a search; add --resume to continue it or choose another --out")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(journal_path, cfg.header())
    ev = Evaluator(
        device, Targets(cfg.target_fps, cfg.max_watts), journal, out_dir, cfg.dataset, cfg.data_dir, cfg.proxy, cfg.arch, cfg.seed
    )
    search = Search(cfg, ev, space, progress)
    progress(
        f"co-design for {device.name} at >= {cfg.target_fps:g} FPS"
        + (f" and <= {cfg.max_watts:g} W" if cfg.max_watts else "")
        + f"; budget {_fmt_time(cfg.time_budget_s)}"
    )
    bundles, shares = search.bundles(), search.shares
    speed = ev.probe(prototype(bundles[0]))
    final_eval_images = len(ev.val_idx) + ev.test_images()
    from edgesplit.codesign.fleet import MAX_TRAINED_OPTIONS

    extra_trainings = len(dict.fromkeys(SAME_NETWORK.get(b, b) for b in cfg.baselines)) + (
        MAX_TRAINED_OPTIONS if cfg.fleet else 0
    )
    try:
        budget.check_budget(
            cfg.time_budget_s,
            shares,
            speed,
            len(bundles),
            cfg.proxy.val_images,
            cfg.finalists,
            final_eval_images,
            extra_trainings,
        )
    except EdgesplitError:
        if not journal.data["trace"]:  # nothing searched yet: leave nothing behind, so the same --out can be used again
            shutil.rmtree(out_dir) if created else (journal_path.unlink(), shutil.rmtree(out_dir / "probe", ignore_errors=True))
        raise
    stages = budget.StageBudget.plan(cfg.time_budget_s, shares, speed, cfg.finalists, extra_trainings, final_eval_images)
    sizes = journal.data.setdefault("budget", {})
    if "proxy_images" not in sizes:  # a resumed search keeps the size its candidates were trained at
        sizes["proxy_images"] = max(
            1, budget.proxy_images(stages.explore_s, speed, len(bundles), cfg.proxy.samples, cfg.proxy.val_images)
        )
        sizes["explore_until_s"] = journal.spent_s + stages.explore_s
        journal.save()
    search.explore_budget_s = sizes["explore_until_s"]
    ev.proxy = replace(ev.proxy, samples=sizes["proxy_images"])
    progress(
        f"measured {speed.train_s_per_image * 1e3:.1f} ms per training image, {speed.eval_s_per_image * 1e3:.2f} ms "
        f"per scored image: each candidate trains on {ev.proxy.samples} images"
    )
    front = search.select_bundles()
    search.descend(front)
    finalists = search.finalists()
    # the search phase's time, fixed when it first ends (a resumed run adds finalists, baselines and fleet to spent_s)
    search_time_s = journal.data["phases"].setdefault("search_time_s", journal.spent_s)
    journal.save()
    remaining = sizes["explore_until_s"] + stages.finals_s - search_time_s  # time the exploration left over goes on
    available = min(cfg.final_images or len(ev.train_idx), len(ev.train_idx))
    s_per_image = [r.accuracy.train_s / r.accuracy.train_images for r in finalists]
    epochs, final_images = budget.final_sizes(remaining, s_per_image, speed, final_eval_images, available, cfg.final_epochs)
    progress(
        f"training {len(finalists)} finalist(s) for {epochs} epoch(s) on {final_images} images "
        f"({_fmt_time(max(remaining, 0))} left for them)"
    )
    finals = []
    for rec in finalists:
        c = rec.candidate
        result = train_final(
            ev,
            "bundlenet",
            c.model_kwargs(),
            c.input_size(ev.image_hw),
            epochs,
            out_dir / "finalists" / f"{c.arch_key}_e{epochs}_n{final_images}",
            (c.wbits, c.fbits),
            progress,
            final_images,
        )
        hw = ev.hardware(c, fine=True)
        finals.append(
            {
                "candidate": c.to_dict(),
                "key": c.key,
                "proxy": rec.accuracy.to_dict(),
                "hardware": hw.to_dict(),
                "train_images": final_images,
                **result,
            }
        )
        progress(
            f"  {c.key}: val {result['val']['ptq_top1']:.4f}, test {result['test']['ptq_top1']:.4f} "
            f"(float {result['test']['float_top1']:.4f}), {hw.fps:.1f} FPS"
        )
    journal.data["finals"] = finals
    journal.save()
    chosen = max(finals, key=lambda f: f["val"]["ptq_top1"])
    result = {
        "device": device.name,
        "targets": {"fps": cfg.target_fps, "max_watts": cfg.max_watts},
        "time_budget_s": cfg.time_budget_s,
        "speed": asdict(speed),
        "proxy_images": ev.proxy.samples,
        "final_epochs": epochs,
        "final_images": final_images,
        "train_split_images": len(ev.train_idx),
        "search_time_s": search_time_s,
        "evaluated": len(search.records),
        "trained_proxies": len({r.candidate.arch_key for r in search.records.values() if r.accuracy}),
        "bundles": journal.data["phases"]["bundles"],
        "finalists": finals,
        "chosen": chosen,
    }
    _write_chosen(ev, chosen, out_dir / "chosen")
    if cfg.baselines or cfg.fleet:
        extras_s = cfg.time_budget_s * (1 - shares.wrapup) - journal.spent_s
        trainings = [_baseline_macs(ev, name) for name in dict.fromkeys(SAME_NETWORK.get(b, b) for b in cfg.baselines)]
        trainings += [chosen["hardware"]["macs"]] * (MAX_TRAINED_OPTIONS if cfg.fleet else 0)
        extra_images = budget.extra_images(extras_s, speed, trainings, epochs, len(ev.val_idx) + ev.test_images(), available)
        result["extra_images"] = extra_images
        progress(f"baselines and fleet splits train on {extra_images} images ({_fmt_time(max(extras_s, 0))} left for them)")
    if cfg.baselines:
        result["baselines"] = run_baselines(ev, cfg, chosen, epochs, out_dir / "baselines", progress, extra_images)
    if cfg.fleet:
        from edgesplit.codesign.fleet import plan_fleet

        result["fleet"] = plan_fleet(
            ev, cfg, chosen, epochs, out_dir / "fleet", progress, extra_images, until_s=cfg.time_budget_s * (1 - shares.wrapup)
        )
    result["wall_time_s"] = journal.spent_s
    journal.data["result"] = {k: v for k, v in result.items() if k != "finalists"}
    journal.save()
    from edgesplit.codesign.report import write_report

    write_report(result, [r.to_dict() for r in search.records.values()], out_dir)
    return result


def _write_chosen(ev: Evaluator, chosen: dict, out: Path) -> None:
    """The chosen network: config, checkpoint, ONNX export, accelerator configuration and estimate."""
    import json

    from edgesplit.export.onnx_export import export_model
    from edgesplit.training.checkpoint import load_model

    out.mkdir(parents=True, exist_ok=True)
    c = Candidate.from_dict(chosen["candidate"])
    shutil.copyfile(Path(chosen["run_dir"]) / "checkpoint.pt", out / "checkpoint.pt")
    model, ckpt = load_model(out / "checkpoint.pt")
    export_model(model, ckpt, out / "export")
    (out / "network.json").write_text(
        json.dumps({"model": "bundlenet", "model_kwargs": ckpt["model_kwargs"], "candidate": c.to_dict()}, indent=1)
    )
    if chosen["hardware"]["accelerator"]:  # the design, its full estimate, and the accelerator checked in C simulation
        est = ev.estimate(ev.graph(c), ev.device, (c.wbits, c.fbits))
        (out / "accelerator.json").write_text(json.dumps(est.to_dict(), indent=1))
        from edgesplit.hls.build import build_for_design

        chosen["hls"] = build_for_design(
            out / "checkpoint.pt",
            out / "hls",
            (c.wbits, c.fbits),
            HardwareCost.from_dict(chosen["hardware"]).accelerator,
            ev.device,
            data_dir=ev.data_dir,
        )


SAME_NETWORK = {"bundlenet-b": "bundlenet-a"}  # DNN-B is DNN-A at other bit widths: one training serves both


def _baseline_macs(ev: Evaluator, name: str) -> int:
    from edgesplit.hardware.graph import graph_from_model
    from edgesplit.models import create_model

    kw = {"num_classes": ev.num_classes, "in_chans": ev.in_chans, "input_size": ev.image_hw}
    return int(graph_from_model(create_model(name, **kw), (ev.in_chans, *ev.image_hw), name).macs)


def run_baselines(
    ev: Evaluator, cfg: CodesignConfig, chosen: dict, epochs: int, out: Path, progress: Progress, images: int
) -> list:
    """Hand-made networks trained with the finalists' recipe, costed on the same device (at the chosen bits,
    or the co-design paper's bits for DNN-A/B/C)."""
    from edgesplit.hardware.graph import graph_from_model
    from edgesplit.models import create_model

    rows = []
    for name in cfg.baselines:
        kw = {"num_classes": ev.num_classes, "in_chans": ev.in_chans, "input_size": ev.image_hw}
        model = create_model(name, **kw)
        bits = getattr(model, "default_bits", None) or (chosen["wbits"], chosen["fbits"])  # DNN-A/B/C: the paper's
        graph = graph_from_model(model, (ev.in_chans, *ev.image_hw), name)
        hw = ev.cost_graph(graph, ev.device, bits, fine=True)
        progress(f"baseline {name}: {hw.fps:.1f} FPS on {ev.device.name} at W{bits[0]}/F{bits[1]}; training {epochs} epoch(s)")
        trained_as = SAME_NETWORK.get(name, name)
        result = train_final(
            ev, trained_as, {}, ev.image_hw, epochs, out / f"{trained_as}_e{epochs}_n{images}", bits, progress, images
        )
        rows.append({"model": name, "hardware": hw.to_dict(), "meets_target": ev.targets.violation(hw) == 0, **result})
        progress(f"  {name}: test {result['test']['ptq_top1']:.4f} (float {result['test']['float_top1']:.4f})")
    return rows
