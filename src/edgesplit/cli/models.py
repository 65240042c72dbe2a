"""The CLI of models, training and export: ``models``, ``profile``, ``train``, ``eval``, ``retrain-head``, ``add-parity``, ``export``, ``predict``."""

from __future__ import annotations

import sys
from pathlib import Path

from edgesplit.cli.common import add_dataclass_options, dataclass_from_args, model_kwargs, write_json
from edgesplit.errors import EdgesplitError
from edgesplit.training.config import HeadConfig, ParityConfig, TrainConfig


def cmd_models(args) -> None:
    from edgesplit.data.preprocess import parse_input_shape
    from edgesplit.models import create_model, list_models
    from edgesplit.models.profile import profile_model

    shape = parse_input_shape(args.input)
    rows = []
    for name in list_models():
        model = create_model(name, num_classes=args.num_classes, in_chans=shape[0], input_size=shape[1:])
        p = profile_model(model, shape, name)
        rows.append({"model": name, "params": p.params, "macs": p.macs, "branches": max(1, len(p.branches) - 1)})
    if args.json:  # the summary follows (on stderr when the JSON goes to stdout)
        write_json({"input_shape": list(shape), "num_classes": args.num_classes, "models": rows}, args.json)
    print(f"input {args.input}, {args.num_classes} classes")
    print(f"{'model':<22}{'branches':>9}{'params (M)':>12}{'GMACs':>9}")
    for r in rows:
        print(f"{r['model']:<22}{r['branches']:>9}{r['params'] / 1e6:>12.3f}{r['macs'] / 1e9:>9.3f}")


def cmd_profile(args) -> None:
    from edgesplit.data.preprocess import parse_input_shape
    from edgesplit.models import SplitNet, create_model
    from edgesplit.models.profile import communication, profile_model, text_report

    shape = parse_input_shape(args.input)
    kw = {"num_classes": args.num_classes, "in_chans": shape[0], "input_size": shape[1:]}
    model = create_model(args.model, **kw, **model_kwargs(args))
    prof = profile_model(model, shape, args.model)
    comm = None
    if isinstance(model, SplitNet) and model.unsplit_name:
        unsplit = create_model(model.unsplit_name, **kw)
        comm = {enc: communication(model, unsplit, shape, nbytes) for enc, nbytes in (("float32", 4), ("uint8", 1))}
        comm["unsplit_model"] = model.unsplit_name
        comm["devices"] = len(model.branches)
    if args.json:  # the summary follows (on stderr when the JSON goes to stdout)
        write_json({"profile": prof.to_dict(), "communication": comm}, args.json)
    print(text_report(args.model, shape, prof, comm))


def _train_input(text: str, dataset: str, data_dir: str | None) -> tuple[int, int]:
    """`train --input` as HxW, or CxHxW as every other command writes it (C must be the dataset's channels)."""
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
        if len(dims) not in (2, 3) or min(dims) < 1:
            raise ValueError
    except ValueError:
        raise EdgesplitError(f"bad --input {text!r}; write it as HxW or CxHxW, e.g. 32x32 or 1x32x32") from None
    if len(dims) == 3:
        from edgesplit.data import load_dataset

        channels = load_dataset(dataset, "train", data_dir).image_shape[0]
        if dims[0] != channels:
            raise EdgesplitError(
                f"--input {text}: {dataset} images have {channels} channel(s), not {dims[0]}; "
                f"write {channels}x{dims[1]}x{dims[2]} or {dims[1]}x{dims[2]}"
            )
    return dims[-2], dims[-1]


def cmd_train(args) -> None:
    from edgesplit.training.train import train

    if args.parity_branches < 0:
        raise EdgesplitError(f"--parity-branches takes 0 or more, got {args.parity_branches}")

    cfg = dataclass_from_args(
        TrainConfig,
        args,
        model=args.model,
        dataset=args.data,
        data_dir=args.data_dir,
        input_size=_train_input(args.input_size, args.data, args.data_dir) if args.input_size else None,
        model_kwargs=model_kwargs(args),
    )
    bar = _ProgressBar(enabled=not args.quiet)
    try:
        if args.resume and not (Path(args.out) / "checkpoint.pt").exists():
            print(f"{args.out} holds no run to resume: starting a new one", file=sys.stderr)
        summary = train(cfg, args.out, resume=args.resume, progress=bar.update)
    finally:
        bar.close()
    if args.parity_branches:  # parity branches for the trained model, as `add-parity` trains them, in its checkpoint
        from edgesplit.training.checkpoint import load_model, save_checkpoint
        from edgesplit.training.parity import fit_parity

        model, ckpt = load_model(args.out)
        if not ckpt.get("parity"):
            ckpt["parity"] = fit_parity(
                model, ckpt, args.out, ParityConfig(parity_branches=args.parity_branches, threads=cfg.threads)
            )
            save_checkpoint(Path(args.out) / "checkpoint.pt", ckpt)
        test = ckpt["parity"]["summary"]["test"]
        print(
            f"{args.parity_branches} parity branch(es): " + ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in test.items())
        )
    last = summary["history"][-1] if summary["history"] else {}
    print(
        f"trained {args.model} for {summary['epochs']} epochs in {summary['train_time_s'] / 60:.1f} min; "
        f"val top-1 {last.get('val_top1')}; checkpoint {args.out}/checkpoint.pt"
    )


class _ProgressBar:
    """A progress line per epoch (``progress.Progress``: a bar on a terminal) with the running loss and accuracy."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.epoch = enabled, None, None

    def update(self, s: dict) -> None:
        if not self.enabled:
            return
        if s["epoch"] != self.epoch:
            self.close()
            from edgesplit.progress import Progress

            self.bar = Progress(s["steps"], f"epoch {s['epoch']}/{s['epochs']}", unit="batch")
            self.epoch = s["epoch"]
        self.bar.update(1, loss=f"{s['loss']:.4f}", acc=f"{s['acc']:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_eval(args) -> None:
    from edgesplit.data.datasets import load_dataset
    from edgesplit.training.checkpoint import checkpoint_preprocess, load_model
    from edgesplit.training.evaluate import evaluate

    model, ckpt = load_model(args.checkpoint)
    data = args.data or ckpt.get("dataset", "fashion-mnist")
    pre = checkpoint_preprocess(ckpt)
    dataset = load_dataset(data, "test", args.data_dir, size=pre.size, in_chans=ckpt["model_kwargs"]["in_chans"])
    if list(dataset.classes) != list(ckpt["classes"]):
        raise EdgesplitError(f"dataset {data} has other classes than the checkpoint was trained on; pass the matching --data")
    report = {
        "checkpoint": str(args.checkpoint),
        "model": ckpt["model"],
        "dataset": data,
        "split": "test",
        **evaluate(model, dataset, None, pre),
    }
    if args.json:  # the summary follows (on stderr when the JSON goes to stdout)
        write_json(report, args.json)
    print(f"{ckpt['model']} on {data} test ({report['n']} images): top-1 {report['top1']:.4f}  top-5 {report['top5']:.4f}")
    for cls, acc in report["per_class"].items():
        print(f"  {cls:<16}{acc:.4f}")
    for part, acc in report.get("missing_branch_top1", {}).items():
        print(f"  without {part}: top-1 {acc:.4f}")


def cmd_retrain_head(args) -> None:
    from edgesplit.training.head import retrain_head

    r = retrain_head(args.checkpoint, args.out, dataclass_from_args(HeadConfig, args))
    print(f"features of the frozen branches: {r['features_s']:.0f} s; head: {r['train_s']:.0f} s ({args.epochs} epochs)")
    for label, acc in (("before", r["val_before"]), ("after", r["val_after"])):
        print(f"  validation top-1 {label}: " + ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in acc.items()))
    print(f"wrote {args.out}/checkpoint.pt (test accuracy: edgesplit eval {args.out})")


def cmd_add_parity(args) -> None:
    from edgesplit.training.parity import train_parity

    r = train_parity(args.checkpoint, args.out, dataclass_from_args(ParityConfig, args))
    print(f"{r['parity_branches']} parity branch(es), {r['code']} code over {r['k']} branches; trained in {r['train_s']:.0f} s")
    test = r["test"]
    print(f"  test top-1 with every branch: {test['all']:.4f}")
    for i in range(r["k"]):
        print(
            f"  without branch{i}: zeros {test[f'without_branch{i}_zeros']:.4f}, rebuilt from parity {test[f'without_branch{i}_parity']:.4f}"
        )
    print(f"wrote {args.out}/checkpoint.pt (`edgesplit export` makes the parity branches parts of their own)")


def cmd_export(args) -> None:
    from edgesplit.export.onnx_export import export_model
    from edgesplit.training.checkpoint import load_model

    code_head = None
    if args.code_head:
        try:
            code_head = tuple(int(v) for v in args.code_head.split(","))
        except ValueError:
            code_head = ()
        if len(code_head) != 2 or not (1 <= code_head[0] <= 8 and 0 <= code_head[1] <= 3):
            raise EdgesplitError(
                f"--code-head takes K,R with 1 <= K <= 8 data blocks and 0 <= R <= 3 parity blocks, got {args.code_head!r}"
            )
        if args.int8:
            raise EdgesplitError("--code-head and --int8 cannot be combined; export the coded head in float32")
    if args.pipeline and args.int8:
        raise EdgesplitError("--pipeline and --int8 cannot be combined; export the stages in float32")
    speeds = None
    if args.pipeline_speeds:
        if not args.pipeline:
            raise EdgesplitError("--pipeline-speeds goes with --pipeline K")
        try:
            speeds = [float(v) for v in args.pipeline_speeds.split(",")]
        except ValueError:
            raise EdgesplitError(f"bad --pipeline-speeds {args.pipeline_speeds!r}; give K numbers, e.g. 2,1,1") from None
    model, ckpt = load_model(args.checkpoint)
    if not args.int8:
        body = export_model(model, ckpt, args.out, code_head=code_head, pipeline=args.pipeline, pipeline_speeds=speeds)
        print(
            f"exported {ckpt['model']} to {args.out}: {', '.join(p['file'] for p in body['parts'])} + manifest.json "
            f"(max |onnxruntime - torch| = {body['parity_max_abs_diff']:.1e})"
        )
        return
    import tempfile

    from edgesplit.export.int8 import calibration_images, int8_export

    if args.calib_images < 1:
        raise EdgesplitError(f"--calib-images must be at least 1, got {args.calib_images}")
    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, ckpt, tmp)
        body = int8_export(tmp, args.out, calibration_images(ckpt, args.calib_images, args.data_dir))
    print(
        f"exported {ckpt['model']} as int8 QDQ to {args.out}: {', '.join(p['file'] for p in body['parts'])} + manifest.json "
        f"(calibrated on {body['calibration_images']} training images)"
    )


def cmd_predict(args) -> None:
    from edgesplit.data.datasets import conversion_note, load_image
    from edgesplit.runtime.local import LocalModel

    model = LocalModel(args.export_dir, threads=args.threads)
    c, h, w = model.manifest.input_shape
    for path in args.images:
        image = load_image(path, (h, w), c)[None]  # (1, H, W, C) uint8
        note = conversion_note(path, (h, w), c)
        if note:
            print(f"note: {note}", file=sys.stderr)
        top = model.top_k(image, k=args.top)[0]
        print(f"{path}: " + ", ".join(f"{cls} {p:.3f}" for cls, p in top))


def register(sub) -> None:
    s = sub.add_parser("models", help="list registered models with parameters and MACs")
    s.add_argument("--input", default="3x224x224", help="input shape CxHxW (default 3x224x224)")
    s.add_argument("--num-classes", type=int, default=1000, help="classes of the models' heads (default 1000)")
    s.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("profile", help="per-layer cost and the bytes a distributed inference sends")
    s.add_argument("model", help="a registered model name (`edgesplit models`)")
    s.add_argument("--input", default="3x224x224", help="input shape CxHxW")
    s.add_argument("--num-classes", type=int, default=1000, help="classes of the model's head (default 1000)")
    s.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="extra model argument, e.g. width_mult=0.5")
    s.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_profile)

    s = sub.add_parser("train", help="train a model; checkpoint every epoch")
    s.add_argument("model", help="a registered model name (`edgesplit models`)")
    s.add_argument("--data", default="fashion-mnist", help="fashion-mnist (default), cifar10 or imagefolder")
    s.add_argument("--data-dir", help="dataset folder (default for fashion-mnist: /usr/share/datasets/fashion-mnist)")
    s.add_argument(
        "--input",
        "--input-size",
        dest="input_size",
        metavar="HxW|CxHxW",
        help="network input HxW or CxHxW, images resized to it (default: the dataset's size; C must be the dataset's channels)",
    )
    s.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="extra model argument, e.g. width_mult=0.5")
    s.add_argument(
        "--parity-branches",
        type=int,
        default=0,
        metavar="R",
        help="then train R learned parity branches for the split model (as `add-parity`, 5 epochs) into its checkpoint",
    )

    add_dataclass_options(s, TrainConfig)
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="accuracy of a checkpoint on the test set")
    s.add_argument("checkpoint", help="checkpoint.pt or its run directory")
    s.add_argument("--data", help="dataset (default: the one it was trained on)")
    s.add_argument("--data-dir", help="dataset folder (default: the checkpoint's dataset in its usual place)")
    s.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("retrain-head", help="retrain a split model's head with branch dropout (branches frozen)")
    s.add_argument("checkpoint", help="checkpoint.pt of a split model, or its run directory")
    s.add_argument("--out", required=True, help="run directory for the new checkpoint")
    add_dataclass_options(s, HeadConfig)
    s.set_defaults(func=cmd_retrain_head)

    s = sub.add_parser("add-parity", help="train learned parity branches for a split model (its branches and head frozen)")
    s.add_argument("checkpoint", help="checkpoint.pt of a split model, or its run directory")
    s.add_argument("--out", required=True, help="run directory for the new checkpoint")
    add_dataclass_options(s, ParityConfig)
    s.set_defaults(func=cmd_add_parity)

    s = sub.add_parser("export", help="checkpoint -> ONNX part files + manifest.json")
    s.add_argument("checkpoint", help="checkpoint.pt or its run directory")
    s.add_argument("--out", required=True, help="export directory")
    s.add_argument("--int8", action="store_true", help="int8 QDQ parts (ONNX Runtime static quantization) instead of float32")
    s.add_argument("--calib-images", type=int, default=1000, help="training images to calibrate --int8 (default 1000)")
    s.add_argument("--data-dir", help="dataset folder for the calibration images")
    s.add_argument(
        "--code-head",
        metavar="K,R",
        help="spread the head's hidden FC layer over K data + R parity workers (coded; any K answers decode); "
        "needs a head trained with --model-arg head_hidden=N",
    )
    s.add_argument(
        "--pipeline",
        type=int,
        default=0,
        metavar="K",
        help="cut an unsplit model into K stages of about equal MACs, one per device (`plan --strategy pipeline`); 0: not cut",
    )
    s.add_argument(
        "--pipeline-speeds",
        metavar="S1,S2,...",
        help="with --pipeline K: the K devices' relative speeds; each stage's MACs in proportion "
        "(the fastest device takes the first stage, as `plan` places it)",
    )
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("predict", help="classify image files with an export, in this process")
    s.add_argument("export_dir", help="an export folder (`edgesplit export`)")
    s.add_argument("images", nargs="+", help="JPEG/PNG files")
    s.add_argument("--top", type=int, default=3, help="how many classes to print per image (default 3)")
    s.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    s.set_defaults(func=cmd_predict)
