"""The co-design outputs a person reads: ``report.md``, ``pareto.png`` (accuracy against FPS) and ``result.json``."""

from __future__ import annotations

import json
from pathlib import Path


def _acc(d: dict | None, which: str = "ptq_top1") -> str:
    return "-" if not d else f"{d[which]:.4f}"


def pareto_plot(result: dict, records: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    trained = [r for r in records if "accuracy" in r]
    for feasible, color, label in (
        (True, "tab:blue", "searched, meets targets"),
        (False, "tab:gray", "searched, misses targets"),
    ):
        pts = [(r["hardware"]["fps"], r["accuracy"]["ptq_top1"]) for r in trained if r["feasible"] == feasible]
        if pts:
            ax.scatter(*zip(*pts), s=14, c=color, alpha=0.6, label=f"{label} (proxy val)")
    for f in result["finalists"]:
        ax.scatter(
            f["hardware"]["fps"],
            f["test"]["ptq_top1"],
            marker="*",
            s=160,
            c="tab:red",
            label="finalists (test)" if f is result["finalists"][0] else None,
            zorder=3,
        )
    for b in result.get("baselines", []):
        if b["hardware"]["fps"] > 0:
            ax.scatter(
                b["hardware"]["fps"],
                b["test"]["ptq_top1"],
                marker="s",
                s=50,
                c="tab:green",
                zorder=3,
                label="baselines (test)" if b is result["baselines"][0] else None,
            )
            ax.annotate(
                b["model"], (b["hardware"]["fps"], b["test"]["ptq_top1"]), fontsize=7, xytext=(4, -8), textcoords="offset points"
            )
    ax.axvline(result["targets"]["fps"], color="k", linestyle="--", linewidth=1, label="target FPS")
    ax.set_xscale("log")
    ax.set_xlabel(f"FPS on {result['device']} (hardware model)")
    ax.set_ylabel("top-1 (fixed point)")
    ax.set_title("edgesplit codesign: accuracy against speed")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def report_markdown(result: dict) -> str:
    t = result["targets"]
    lines = [
        f"# Co-design for {result['device']}",
        "",
        f"Targets: >= {t['fps']:g} FPS"
        + (f", <= {t['max_watts']:g} W" if t.get("max_watts") else "")
        + f". Search: {result['evaluated']} candidates costed, {result['trained_proxies']} trained briefly in "
        f"{result['search_time_s'] / 60:.1f} min on {result['proxy_images']} training images each; "
        f"{result['wall_time_s'] / 60:.1f} min in all with finalists, baselines and fleet (summed over the sessions "
        f"of a resumed search), of a {result['time_budget_s'] / 60:.1f} min budget.",
        "",
        f"Bundles on the Pareto front: {', '.join(result['bundles']['pareto'])} "
        f"(of {', '.join(result['bundles']['evaluated'])}).",
        "",
        f"## Finalists (trained {result['final_epochs']} epoch(s) on {result['final_images']:,} training images"
        + (
            ", the whole training split)"
            if result["final_images"] >= result.get("train_split_images", 0)
            else f" of the {result['train_split_images']:,} of the training split: what the budget allowed)"
        ),
        "",
        "| network | bits | FPS | DSP | BRAM18 | LUT | W | val top-1 | test top-1 (fixed) | test top-1 (float) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in result["finalists"]:
        hw = f["hardware"]
        mark = " **(chosen)**" if f is result["chosen"] or f["key"] == result["chosen"]["key"] else ""
        lines.append(
            f"| {f['key']}{mark} | W{f['wbits']}/F{f['fbits']} | {hw['fps']:.1f} | {hw['dsp']} | {hw['bram18']} | "
            f"{hw['lut']} | {hw['watts']:.2f} | {_acc(f['val'])} | {_acc(f['test'])} | {_acc(f['test'], 'float_top1')} |"
        )
    c = result["chosen"]["candidate"]
    lines += [
        "",
        f"Chosen: {c['bundle']} x {c['depth']}, channels {c['channels']}, pools {c['pools']}, "
        f"W{c['wbits']}/F{c['fbits']}, input x{c['resize']:g}; trained {result['chosen']['epochs']} epoch(s). "
        "Files: `chosen/` (network.json, checkpoint.pt, export/, accelerator.json).",
    ]
    if result.get("baselines"):
        lines += [
            "",
            f"## Hand-made baselines (same recipe on {result['extra_images']:,} training images, same device)",
            "",
            "| model | bits | FPS | meets target | test top-1 (fixed) | test top-1 (float) |",
            "|---|---|---|---|---|---|",
        ]
        for b in result["baselines"]:
            lines.append(
                f"| {b['model']} | W{b['wbits']}/F{b['fbits']} | {b['hardware']['fps']:.1f} | "
                f"{'yes' if b['meets_target'] else 'no'} | {_acc(b['test'])} | {_acc(b['test'], 'float_top1')} |"
            )
    if result.get("fleet"):
        fl = result["fleet"]
        lines += [
            "",
            "## Fleet plan",
            "",
            f"Accuracy floor (fixed-point validation top-1): {fl['floor']:.4f}.",
            "",
            "| k | devices | shares | bits | FPS | val top-1 | test top-1 |",
            "|---|---|---|---|---|---|---|",
        ]
        for o in fl["options"]:
            acc = o.get("accuracy")
            lines.append(
                f"| {o['k']} | {', '.join(o['devices'])} | {', '.join(f'{s:.2f}' for s in o['shares'])} | "
                f"{', '.join(o['bits'])} | {o['fps']:.1f} | {_acc(acc['val']) if acc else 'not trained'} | "
                f"{_acc(acc['test']) if acc else '-'} |"
            )
        lines += ["", f"Accepted: k={fl['accepted']['k']}; plan: `{Path(fl['plan']).name}` (run with `edgesplit serve --plan`)."]
    lines += ["", "FPS, resources and watts come from the analytical model (docs/hardware-model.md), not a board."]
    return "\n".join(lines) + "\n"


def write_report(result: dict, records: list[dict], out_dir: Path) -> None:
    (out_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
    pareto_plot(result, records, out_dir / "pareto.png")
    (out_dir / "report.md").write_text(report_markdown(result))


def summary_text(r: dict, out: Path) -> str:
    """The lines ``edgesplit codesign`` ends with: the chosen design, the fleet plan, where the report is."""
    c = r["chosen"]
    lines = [
        f"chosen: {c['key']}: {c['hardware']['fps']:.1f} FPS on {r['device']}, test top-1 {c['test']['ptq_top1']:.4f} "
        f"(fixed point W{c['wbits']}/F{c['fbits']}), float {c['test']['float_top1']:.4f}"
    ]
    if "fleet" in r:
        a = r["fleet"]["accepted"]
        lines.append(f"fleet: {a['k']} branch(es) on {', '.join(a['devices'])}, {a['fps']:.1f} FPS; plan {r['fleet']['plan']}")
    lines.append(f"search took {r['wall_time_s'] / 60:.1f} min; report {out / 'report.md'}, plot {out / 'pareto.png'}")
    return "\n".join(lines)
