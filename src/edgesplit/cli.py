"""The ``edgesplit`` command: parses arguments, calls the library, prints or writes JSON.

Errors the user can fix are :class:`EdgesplitError`: printed as one line, exit code 2,
no traceback unless ``--debug``. Heavy imports (torch, onnxruntime, grpc) happen inside
the subcommand that needs them, so ``edgesplit worker`` never loads torch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from edgesplit.errors import EdgesplitError

log = logging.getLogger("edgesplit")


_JSON_OUT: list = []  # with `--json` and no value: where the JSON goes (the real stdout; see _json_alone)


def _write_json(obj, path: str | None) -> None:
    text = json.dumps(obj, indent=2, default=str)
    if path in (None, "-"):
        print(text, file=_JSON_OUT[-1] if _JSON_OUT else sys.stdout)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
        print(f"wrote {path}")


def _model_kwargs(args) -> dict:
    kw = {}
    for item in getattr(args, "model_arg", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise EdgesplitError(f"bad --model-arg {item!r}; write KEY=VALUE, e.g. width_mult=0.5")
        kw[key] = _model_arg_value(value)
    return kw


def _model_arg_value(text: str):
    """A --model-arg value: JSON (0.5, [0.75,0.25], true), a comma-separated list of them (0.75,0.25), or a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [_model_arg_value(item.strip()) for item in text.split(",")]
    return text


# ---------------------------------------------------------------- models / profile
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
        _write_json({"input_shape": list(shape), "num_classes": args.num_classes, "models": rows}, args.json)
    print(f"input {args.input}, {args.num_classes} classes")
    print(f"{'model':<22}{'branches':>9}{'params (M)':>12}{'GMACs':>9}")
    for r in rows:
        print(f"{r['model']:<22}{r['branches']:>9}{r['params'] / 1e6:>12.3f}{r['macs'] / 1e9:>9.3f}")


def cmd_profile(args) -> None:
    from edgesplit.data.preprocess import parse_input_shape
    from edgesplit.models import SplitNet, create_model
    from edgesplit.models.profile import communication, profile_model

    shape = parse_input_shape(args.input)
    kw = {"num_classes": args.num_classes, "in_chans": shape[0], "input_size": shape[1:]}
    model = create_model(args.model, **kw, **_model_kwargs(args))
    prof = profile_model(model, shape, args.model)
    comm = None
    if isinstance(model, SplitNet) and model.unsplit_name:
        unsplit = create_model(model.unsplit_name, **kw)
        comm = {enc: communication(model, unsplit, shape, nbytes) for enc, nbytes in (("float32", 4), ("uint8", 1))}
        comm["unsplit_model"] = model.unsplit_name
    if args.json:  # the summary follows (on stderr when the JSON goes to stdout)
        _write_json({"profile": prof.to_dict(), "communication": comm}, args.json)
    print(f"{args.model} at {args.input}: {prof.params / 1e6:.3f} M parameters, {prof.macs / 1e6:.1f} M MACs")
    print(f"{'layer':<40}{'kind':<18}{'params':>10}{'MMACs':>10}{'act KiB':>10}  out shape")
    for c in prof.layers:
        print(f"{c.name:<40}{c.kind:<18}{c.params:>10}{c.macs / 1e6:>10.2f}{c.out_bytes / 1024:>10.1f}  {'x'.join(map(str, c.out_shape))}")
    if prof.branches:
        print("\nper part:")
        for b in prof.branches:
            print(f"  {b['name']:<10} params {b['params'] / 1e6:8.3f} M   MACs {b['macs'] / 1e6:9.1f} M   output {b['feature_dim']} floats")
    if comm:
        print(f"\nbytes over the network per inference, {len(model.branches)} devices "
              f"(layer-wise: {comm['unsplit_model']} cut into balanced contiguous groups):")
        for enc in ("float32", "uint8"):
            s, lw = comm[enc]["split"], comm[enc]["layerwise"]
            print(f"  input as {enc}:")
            print(f"    split network   {s['total_bytes'] / 1024:10.1f} KiB  ({s['transfers']} transfers, "
                  f"{s['sequential_transfers']} on the critical path: broadcast {s['input_broadcast_bytes'] / 1024:.1f} KiB, "
                  f"features back {s['features_back_bytes'] / 1024:.1f} KiB)")
            print(f"    layer-wise      {lw['total_bytes'] / 1024:10.1f} KiB  ({lw['transfers']} transfers, all sequential: "
                  f"input {lw['input_bytes'] / 1024:.1f} KiB, cuts after {', '.join(lw['cuts_after'])} "
                  f"{'+'.join(f'{b / 1024:.1f}' for b in lw['cut_activation_bytes'])} KiB float32)")


# ---------------------------------------------------------------- train / eval
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
            raise EdgesplitError(f"--input {text}: {dataset} images have {channels} channel(s), not {dims[0]}; "
                                 f"write {channels}x{dims[1]}x{dims[2]} or {dims[1]}x{dims[2]}")
    return dims[-2], dims[-1]


def cmd_train(args) -> None:
    from edgesplit.training.train import TrainConfig, train

    cfg = TrainConfig(
        model=args.model, dataset=args.data, data_dir=args.data_dir,
        input_size=_train_input(args.input_size, args.data, args.data_dir) if args.input_size else None,
        model_kwargs=_model_kwargs(args), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, branch_dropout=args.branch_dropout,
        augment_pad=args.augment_pad, val_size=args.val_size, max_train_samples=args.max_train_samples,
        seed=args.seed, threads=args.threads,
    )
    bar = _ProgressBar(enabled=not args.quiet)
    try:
        if args.resume and not (Path(args.out) / "checkpoint.pt").exists():
            print(f"{args.out} holds no run to resume: starting a new one", file=sys.stderr)
        summary = train(cfg, args.out, resume=args.resume, progress=bar.update)
    finally:
        bar.close()
    last = summary["history"][-1] if summary["history"] else {}
    print(f"trained {args.model} for {summary['epochs']} epochs in {summary['train_time_s'] / 60:.1f} min; "
          f"val top-1 {last.get('val_top1')}; checkpoint {args.out}/checkpoint.pt")


class _ProgressBar:
    """tqdm bar per epoch with running loss and accuracy (tqdm is optional)."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.epoch = enabled, None, None

    def update(self, s: dict) -> None:
        if not self.enabled:
            return
        if s["epoch"] != self.epoch:
            self.close()
            from tqdm import tqdm

            self.bar = tqdm(total=s["steps"], desc=f"epoch {s['epoch']}/{s['epochs']}", unit="batch", mininterval=2.0)
            self.epoch = s["epoch"]
        self.bar.set_postfix(loss=f"{s['loss']:.4f}", acc=f"{s['acc']:.4f}", refresh=False)
        self.bar.update(1)

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
    report = {"checkpoint": str(args.checkpoint), "model": ckpt["model"], "dataset": data, "split": "test",
              **evaluate(model, dataset, None, pre)}
    if args.json:  # the summary follows (on stderr when the JSON goes to stdout)
        _write_json(report, args.json)
    print(f"{ckpt['model']} on {data} test ({report['n']} images): top-1 {report['top1']:.4f}  top-5 {report['top5']:.4f}")
    for cls, acc in report["per_class"].items():
        print(f"  {cls:<16}{acc:.4f}")
    for part, acc in report.get("missing_branch_top1", {}).items():
        print(f"  without {part}: top-1 {acc:.4f}")


def cmd_retrain_head(args) -> None:
    from edgesplit.training.head import HeadConfig, retrain_head

    r = retrain_head(args.checkpoint, args.out, HeadConfig(args.branch_dropout, args.epochs, args.lr, seed=args.seed,
                                                           data_dir=args.data_dir))
    print(f"features of the frozen branches: {r['features_s']:.0f} s; head: {r['train_s']:.0f} s ({args.epochs} epochs)")
    for label, acc in (("before", r["val_before"]), ("after", r["val_after"])):
        print(f"  validation top-1 {label}: " + ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in acc.items()))
    print(f"wrote {args.out}/checkpoint.pt (test accuracy: edgesplit eval {args.out})")


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
            raise EdgesplitError(f"--code-head takes K,R with 1 <= K <= 8 data blocks and 0 <= R <= 3 parity blocks, "
                                 f"got {args.code_head!r}")
        if args.int8:
            raise EdgesplitError("--code-head and --int8 cannot be combined; export the coded head in float32")
    model, ckpt = load_model(args.checkpoint)
    if not args.int8:
        body = export_model(model, ckpt, args.out, code_head=code_head)
        print(f"exported {ckpt['model']} to {args.out}: {', '.join(p['file'] for p in body['parts'])} + manifest.json "
              f"(max |onnxruntime - torch| = {body['parity_max_abs_diff']:.1e})")
        return
    import tempfile

    from edgesplit.export.int8 import calibration_images, int8_export

    if args.calib_images < 1:
        raise EdgesplitError(f"--calib-images must be at least 1, got {args.calib_images}")
    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, ckpt, tmp)
        body = int8_export(tmp, args.out, calibration_images(ckpt, args.calib_images, args.data_dir))
    print(f"exported {ckpt['model']} as int8 QDQ to {args.out}: {', '.join(p['file'] for p in body['parts'])} + manifest.json "
          f"(calibrated on {body['calibration_images']} training images)")


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


def cmd_demo(args) -> None:
    from edgesplit.demo import DemoConfig, run_demo
    from edgesplit.runtime.tuning import keep_heap

    keep_heap()  # the coordinator (and the in-process baselines) run in this process

    modes = ("split",) if args.split_only else ("nonsplit",) if args.nonsplit else ("in-process",) if args.in_process else None
    cfg = DemoConfig(work_dir=args.work_dir, data_dir=args.data_dir, limit=args.limit, retrain=args.retrain,
                     images_dir=args.images, interactive=args.interactive, **({"modes": modes} if modes else {}))
    report = run_demo(cfg, json_path=None if args.json == "-" else args.json)
    if args.json == "-":
        _write_json(report, "-")


# ---------------------------------------------------------------- runtime
def _cpus(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise EdgesplitError(f"bad --cpus {text!r}; write a comma-separated list like 0,1") from None


class _TokenOnCommandLine(argparse.Action):
    """``--token VALUE``: refused without echoing the value (a secret on a command line shows in ps and history)."""

    def __call__(self, parser, namespace, values, option_string=None):
        raise EdgesplitError("there is no --token option (a token on the command line shows in `ps` and shell history): "
                             "write it in a file readable only by you and pass --token-file FILE")


def _security_args(s) -> None:
    s.add_argument("--token-file", help="file holding the bearer token every call must carry")
    s.add_argument("--token", action=_TokenOnCommandLine, help=argparse.SUPPRESS)
    s.add_argument("--tls-cert", help="server certificate (PEM)")
    s.add_argument("--tls-key", help="server private key (PEM)")
    s.add_argument("--tls-client-ca", help="require client certificates signed by this CA (PEM)")
    s.add_argument("--insecure", action="store_true", help="allow a non-loopback address without TLS or token")


def _limits_args(s) -> None:
    g = s.add_argument_group("limits (what a hostile or broken client can make the server hold)")
    g.add_argument("--max-message-mb", type=float, help="largest request accepted, MiB (default: --max-batch items of "
                   "the served model's input, at least 1 MiB)")
    g.add_argument("--max-batch", type=int, default=256, help="items per request the default message limit admits (default 256)")
    g.add_argument("--max-inflight-mb", type=float, default=256.0,
                   help="memory held for requests being handled, MiB; more is refused RESOURCE_EXHAUSTED "
                        "(default 256: a 1 GiB board)")
    g.add_argument("--idle-timeout-s", type=float, default=60.0,
                   help="close connections idle, stalled or not reading their answers for this long (default 60)")
    g.add_argument("--max-connections", type=int, default=64, help="connections accepted at once (default 64)")
    g.add_argument("--max-connection-age-s", type=float, default=120.0,
                   help="gRPC: recycle each connection after this long (clients reconnect; a stream stalled mid-message "
                        "ends then, after the idle timeout's grace; default 120)")


def _server_limits(args):
    from edgesplit.runtime.transport.limits import ServerLimits

    try:
        return ServerLimits(None if args.max_message_mb is None else int(args.max_message_mb * (1 << 20)), args.max_batch,
                            int(args.max_inflight_mb * (1 << 20)), args.idle_timeout_s, args.max_connections,
                            args.max_connection_age_s)
    except ValueError as err:
        raise EdgesplitError(f"{err}; check --max-message-mb, --max-batch, --max-inflight-mb, --idle-timeout-s, "
                             f"--max-connections and --max-connection-age-s") from None


def _server_security(args):
    from edgesplit.runtime.transport.grpc_server import ServerSecurity

    from edgesplit.runtime.secrets import read_token_file

    token = read_token_file(args.token_file) if args.token_file else None
    return ServerSecurity(token, args.tls_cert, args.tls_key, args.tls_client_ca, args.insecure)


def cmd_worker(args) -> None:
    from edgesplit.runtime.tuning import tune_runtime_process

    tune_runtime_process()  # before numpy loads
    import asyncio

    from edgesplit.runtime.worker import WorkerConfig, die_with_parent, serve_worker

    die_with_parent()
    from edgesplit.runtime.faults import FaultConfig

    faults = FaultConfig(args.inject_delay_ms, args.inject_delay_dist, args.inject_slowdown, args.inject_prob,
                         args.inject_error_prob, args.crash_after, args.inject_seed)
    cfg = WorkerConfig(args.source, args.part, args.host, args.port, args.threads, _cpus(args.cpus),
                       providers=tuple(args.providers.split(",")) if args.providers else None,
                       engine=args.engine, limits=_server_limits(args), faults=faults,
                       unix_socket=args.unix_socket, poll_ms=args.poll_ms, hls_dir=args.hls)
    asyncio.run(serve_worker(cfg, _server_security(args)))


def cmd_serve(args) -> None:
    from edgesplit.runtime.tuning import tune_runtime_process

    tune_runtime_process()  # before numpy loads: the coordinator must not take cores from local workers
    import asyncio

    from edgesplit.runtime.serve import serve

    if bool(args.plan) == bool(args.local):
        raise EdgesplitError("pass either --plan plan.yaml or --local EXPORT_DIR")
    if args.poll_ms < 0 or (args.poll_ms and not args.local):
        raise EdgesplitError("--poll-ms takes 0 or more milliseconds and only goes with --local (for remote workers, "
                             "pass it to `edgesplit worker`)")
    if args.wait_ready_s <= 0:
        raise EdgesplitError(f"--wait-ready-s must be positive, got {args.wait_ready_s}")
    asyncio.run(serve(args.plan, args.local, args.host, args.port, _server_security(args), _server_limits(args),
                      args.poll_ms, args.wait_ready_s))


def cmd_plan(args) -> None:
    from edgesplit.runtime.plan import coded_tolerance, make_plan, parts_by_address

    try:
        speeds = [float(v) for v in args.speeds.split(",")] if args.speeds else None
    except ValueError:
        raise EdgesplitError(f"bad --speeds {args.speeds!r}; give one number per worker, comma-separated, e.g. 1,2.5") from None
    plan = make_plan(args.export_dir, args.workers, speeds, args.timeout_ms, args.input_dtype)
    plan = replace(plan, export=str(Path(args.export_dir).resolve()))  # written relative to the plan's own folder
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    plan.write(args.out)
    for p in plan.parts:
        print(f"{p.name}: {', '.join(p.replicas)}")
    for address, names in parts_by_address(plan).items():
        print(f"worker at {address}: --part {','.join(names)}")
    for line in coded_tolerance(plan):
        print(line)
    print(f"wrote {args.out}")


def cmd_bench_serve(args) -> None:
    from edgesplit.bench.serve import bench_serve
    from edgesplit.data.preprocess import parse_input_shape
    from edgesplit.runtime.tuning import keep_heap

    keep_heap()  # the coordinator and the unsplit baseline run in this process: both get the same heap settings

    transports = tuple(args.transports.split(","))
    if not transports or any(t not in ("ipc", "grpc") for t in transports):
        raise EdgesplitError(f"--transports takes ipc and/or grpc, comma-separated; got {args.transports!r}")
    if args.poll_ms < 0:
        raise EdgesplitError(f"--poll-ms must be 0 or more, got {args.poll_ms}")
    if args.block < 1:
        raise EdgesplitError(f"--block must be 1 or more images, got {args.block}")
    r = bench_serve(args.model, parse_input_shape(args.input), args.requests, args.in_flight,
                    input_dtype=args.input_dtype, rounds=args.rounds, transports=transports, poll_ms=args.poll_ms,
                    block=args.block)
    print(f"{r['model']} {args.input} on {r['machine']['cores']} cores ({r['machine']['cpu']}), "
          f"medians of {r['rounds']} rounds of {r['requests']} requests")
    print(f"  unsplit {r['unsplit_model']} ORT x{r['unsplit_threads']} threads  p50 {r['unsplit_p50_ms']:7.3f} ms, "
          f"{r['unsplit_throughput_rps']:.1f} req/s")
    for t, m in r["transports"].items():
        b = m["breakdown_ms"]
        print(f"  split over {t}:")
        for name, part in b["parts"].items():
            print(f"    {name}: compute {part['compute']:6.3f} ms  worker handler {part['handler']:5.3f} ms  "
                  f"transport {part['transport']:5.3f} ms")
        print(f"    waiting for the slower branch {b['wait_for_slowest']:.3f} ms, coordinator {b['coordinator']:.3f} ms")
        if "hops" in b:
            for name, h in b["hops"]["parts"].items():
                print(f"    {name} transport, traced: before send {h['before_send']:.3f}  to worker {h['to_worker']:.3f}  "
                      f"worker dispatch {h['worker_dispatch']:.3f}  back {h['back']:.3f} ms")
            print(f"    after the last answer (concatenation, head, return) {b['hops']['after_last_answer']:.3f} ms")
        print(f"    end to end, 1 in flight p50 {m['end_to_end_p50_ms']:7.3f} ms   p99 {m['end_to_end_p99_ms']:7.3f} ms;  "
              f"{r['in_flight']} in flight {m['split_throughput_rps']:6.1f} req/s "
              f"(unsplit in the blocks between: {m['unsplit_throughput_rps']:.1f} req/s)")
        print(f"    CPU per request at {r['in_flight']} in flight: " + ", ".join(f"{k} {v:.2f} ms" for k, v in m["cpu_ms_per_request"].items()))
        print(f"    overhead_ratio {m['overhead_ratio']:.3f}   throughput_speedup {m['throughput_speedup']:.3f}")
    print(f"  blocking client over {r['transport']}: end to end p50 {r['end_to_end_blocking_client']['p50_ms']:.3f} ms")
    if args.json:
        _write_json(r, args.json)


def cmd_bench_faults(args) -> None:
    from edgesplit.bench.faults import bench_faults

    if not 1 <= args.parity <= 3:
        raise EdgesplitError(f"--parity must be 1, 2 or 3, got {args.parity}")
    r = bench_faults(args.requests, args.timeout_ms, histogram=args.histogram, parity=args.parity,
                     parity_policy=args.parity_policy)
    print(f"{r['model']}: {r['data_workers']} data workers (+{r['parity_workers']} parity, {r['parity_policy']}), "
          f"{r['requests']} requests each")
    print(f"{'scenario':<26}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'exact':>7}{'recov':>7}{'degr':>6}{'err':>5}{'lost':>5}{'max rel err':>12}")
    for name, s in r["scenarios"].items():
        l, c = s["latency"], s["counts"]
        print(f"{name:<26}{l['p50_ms']:>8.2f}{l['p99_ms']:>8.2f}{l['max_ms']:>8.2f}{c['exact']:>7}{c['recovered']:>7}"
              f"{c['degraded']:>6}{c['errors']:>5}{c['lost']:>5}{s['max_rel_error']:>12.1e}")
    for pattern, t in r["targets"].items():
        print(f"{pattern}: coded p99 = {t['p99_vs_fault_free']:.2f}x fault-free, {t['p99_vs_uncoded']:.2f}x uncoded"
              + (f" (requests with more stragglers than parity blocks: {t['p_unshielded_request']:.2%})"
                 if "p_unshielded_request" in t else ""))
    print("columns: answers exact (every block in time), recovered (decoded with a parity block), degraded (a block "
          "replaced by zeros), errors, lost (no answer); max rel err: the largest error against the uncoded layers")
    if r.get("histogram"):
        print(f"wrote {r['histogram']} (arrival times of every block's answer)")
    if args.json:
        _write_json(r, args.json)


def cmd_bench_abuse(args) -> None:
    from edgesplit.bench.abuse import bench_abuse

    if args.flood_s <= 0 or args.idle_timeout_s <= 0 or args.max_inflight_mb <= 0 or args.held < 1:
        raise EdgesplitError("--flood-s, --idle-timeout-s and --max-inflight-mb must be positive, --held at least 1")
    r = bench_abuse(args.flood_s, args.idle_timeout_s, args.max_inflight_mb, args.held)
    c, g, h, m = r["clean"], r["good_during_flood"], r["health_during_flood"], r["memory_mib"]
    print(f"{r['model']}; flood {r['flood_wall_s']:.1f} s, idle timeout {args.idle_timeout_s:g} s, in-flight cap {m['cap']:g} MiB")
    print(f"good requests: clean p99 {c['latency']['p99_ms']:.2f} ms; during the flood {g['answered']}/{g['sent']} "
          f"answered, {g['correct']} correct, p99 {g['latency']['p99_ms']:.2f} ms ({r['p99_flood_vs_clean']:.1f}x clean)")
    print(f"health checks during the flood: {h['checks']}, failed {h['failed']}, p50 {h['latency']['p50_ms']:.1f} ms, "
          f"p99 {h['latency']['p99_ms']:.1f} ms, max {h['latency']['max_ms']:.1f} ms")
    for name, b in r["bad"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in b.items() if k != "statuses")
              + ("; " + ", ".join(f"{k} {v}" for k, v in sorted(b["statuses"].items())) if "statuses" in b else ""))
    print(f"worker memory: {m['before']:.0f} MiB before, peak during the flood {m['flood_peak_sampled']:.0f} MiB "
          f"(+{m['peak_over_before']:.0f}), {m['after']:.0f} MiB after")
    print("held connections closed by the worker after the idle timeout: "
          + ", ".join(f"{k} {v}" for k, v in r["connections_closed_after_idle_timeout"].items()))
    a = r["good_after"]
    print(f"afterwards: a new client's requests {a['answered']}/{a['sent']} answered, {a['correct']} correct; "
          f"worker alive: {r['worker_alive']}; its log: {r['worker_log']['lines']} lines, "
          f"{r['worker_log']['tracebacks']} tracebacks")
    if args.json:
        _write_json(r, args.json)


def cmd_bench_int8(args) -> None:
    from edgesplit.bench.int8 import bench_int8
    from edgesplit.data.preprocess import parse_input_shape

    r = bench_int8(args.checkpoint, args.calls, args.rounds, args.test_images, args.calib_images, args.data_dir,
                   parse_input_shape(args.input) if args.input else None)
    print(f"{r['model']} {'x'.join(map(str, r['input_shape']))}, batch 1, 1 thread, medians of {r['rounds']} rounds of {r['calls']} calls")
    for name, p in r["parts"].items():
        print(f"  {name:<10} float32 {p['float32_ms']:8.3f} ms   int8 {p['int8_ms']:8.3f} ms   speedup {p['speedup']:.2f}x   "
              f"{p['float32_bytes'] / 1e6:.2f} -> {p['int8_bytes'] / 1e6:.2f} MB")
    if r["top1"]:
        print(f"  top-1 on {r['test_images']} test images: float32 {r['top1']['float32']:.4f}, int8 {r['top1']['int8']:.4f}")
    if args.json:
        _write_json(r, args.json)


# ---------------------------------------------------------------- hardware
def cmd_devices(args) -> None:
    from dataclasses import asdict

    from edgesplit.hardware.catalog import load_catalog

    catalog = load_catalog(args.devices_dir)
    if args.json:  # the summary follows (on stderr when the JSON goes to stdout)
        _write_json({name: asdict(d) for name, d in sorted(catalog.items())}, args.json)
    print(f"{'device':<18}{'kind':<6}{'DSP':>6}{'BRAM36':>8}{'LUT':>9}{'MHz':>7}{'GFLOP/s':>9}{'DRAM GB/s':>11}{'idle W':>8}  description")
    for name, d in sorted(catalog.items()):
        if d.kind == "fpga":
            print(f"{name:<18}{d.kind:<6}{d.dsp:>6}{d.bram36:>8}{d.lut:>9}{d.clock_mhz:>7.0f}{'-':>9}{d.dram_bandwidth_gbs:>11.1f}{d.static_power_w:>8.1f}  {d.description}")
        else:
            print(f"{name:<18}{d.kind:<6}{'-':>6}{'-':>8}{'-':>9}{d.clock_mhz:>7.0f}{d.peak_gflops:>9.1f}{d.mem_bandwidth_gbs:>11.1f}{d.static_power_w:>8.1f}  {d.description}")


# ---------------------------------------------------------------- hardware model
def _accel_config(args):
    from edgesplit.hardware.accelerator import AccelConfig

    return AccelConfig(arch=args.arch, wbits=args.wbits, fbits=args.fbits, float32=args.float32, batch=args.batch,
                       fuse=not args.no_fuse, tm=args.tm, tn=args.tn, td=args.td, tr=args.tr, tc=args.tc,
                       mults=args.mults, overlap=not args.no_overlap, pack=not args.no_pack,
                       clock_mhz=args.clock_mhz, dram_gbs=args.dram_gbs)


def _host_config(args):
    from edgesplit.data.preprocess import parse_input_shape
    from edgesplit.hardware.host import HostConfig

    frame = None
    if args.frame:
        try:
            frame = tuple(parse_input_shape(f"1x{args.frame}")[1:])
        except EdgesplitError:
            raise EdgesplitError(f"--frame must be HxW (the camera frame, e.g. 360x640), got {args.frame!r}") from None
    return HostConfig(frame_hw=frame, jpeg=args.jpeg, overlap=args.host_overlap)


def _fpga_and_graph(args):
    from edgesplit.data.preprocess import parse_input_shape
    from edgesplit.hardware.catalog import get_device
    from edgesplit.hardware.graph import load_graph

    device = get_device(args.device, args.devices_dir)
    if device.kind != "fpga":
        raise EdgesplitError(f"{device.name} is a {device.kind} device; estimate and tune model FPGA boards (see `edgesplit devices`)")
    cfg = _accel_config(args)  # validate the numbers before the (slow) graph export
    host = _host_config(args)
    return device, load_graph(args.model, parse_input_shape(args.input) if args.input else None), cfg, host


def _print_estimate(est: dict) -> None:
    c, t, r = est["config"], est["totals"], est["resources"]
    bits = "float32" if c["float32"] else f"W{c['wbits']}/F{c['fbits']}"
    print(f"{est['model']} on {est['device']} ({c['arch']}, {bits}, batch {c['batch']}, "
          f"{'fused' if c['fuse'] else 'no fusion'}, {est['clock_mhz']:.0f} MHz)")
    print(f"{'layer':<34}{'op':<8}{'out':>15}{'MMACs':>8}{'cycles':>10}{'DRAM kB':>9}{'ms':>8}  {'bound':<8}{'GOP/s':>7}")
    for row in est["layers"]:
        name = row["name"] if len(row["name"]) <= 33 else "..." + row["name"][-30:]
        shape = "x".join(str(v) for v in row["out_shape"])
        print(f"{name:<34}{row['op']:<8}{shape:>15}{row['macs'] / 1e6:>8.2f}{row['cycles']:>10}{row['dram_bytes'] / 1e3:>9.1f}"
              f"{row['ms']:>8.3f}  {row['bound']:<8}{row['gops']:>7.2f}")
    if r.get("buffers"):
        print("buffers: " + "; ".join(f"{b['name']} {b['banks']}x{2 if b['double_buffered'] else 1} x {b['depth']}x{b['width_bits']}b "
                                      f"({b['bram18_shape']}) = {b['bram18']} BRAM18" for b in r["buffers"]))
    u = r["utilisation"]
    print(f"resources: DSP {r['dsp']} ({u['dsp']:.0%}), BRAM18 {r['bram18']} ({u['bram18']:.0%}), LUT {r['lut']} ({u['lut']:.0%}), "
          f"FF {r['ff']} ({u['ff']:.0%}); {r['dsp_per_multiply']:g} DSP per multiply")
    print(f"accelerator: {t['macs'] / 1e6:.1f} MMACs, {t['dram_bytes_per_image'] / 1e6:.2f} MB DRAM/image, "
          f"{t['image_ms']:.2f} ms/image, {t['fps']:.1f} FPS, latency {t['latency_ms']:.2f} ms (batch {c['batch']}), "
          f"{t['gops']:.1f} GOP/s, {'loads overlap compute' if c['overlap'] else 'loads, compute and stores in sequence'}")
    e = t["end_to_end"]
    if e:
        print(f"host ({'JPEG ' if e['jpeg'] else ''}{e['frame_hw'][0]}x{e['frame_hw'][1]} frames): {e['host_ms']:.2f} ms/frame "
              f"(decode {e['decode_ms']:.2f}, resize {e['resize_ms']:.2f}, normalise {e['normalise_ms']:.2f}, "
              f"accelerator starts {e['accelerator_starts_ms']:.2f}, layers on the CPU {e['cpu_layers_ms']:.2f})")
        print(f"end to end: {e['frame_ms']:.2f} ms/frame, {e['fps']:.1f} FPS "
              f"({'host and accelerator overlap' if e['overlap'] else 'host then accelerator'}; bound: {e['bound']}), "
              f"{t['watts']:.2f} W, {t['images_per_joule']:.2f} images/J")
    else:
        print(f"power: {t['watts']:.2f} W, {t['images_per_joule']:.2f} images/J "
              f"(no processing system in the device file: accelerator only)")
    if not est["fits"]:
        print(f"DOES NOT FIT {est['device']}: " + "; ".join(est["overflow"]))


def cmd_estimate(args) -> None:
    from edgesplit.hardware.accelerator import estimate

    device, graph, cfg, host = _fpga_and_graph(args)
    est = estimate(graph, device, cfg, host)
    if args.json:
        _write_json(est, args.json)
    _print_estimate(est)
    if not est["fits"]:  # the numbers are written either way; the exit status says it cannot be built
        raise EdgesplitError(f"this design does not fit {device.name}: {'; '.join(est['overflow'])}; "
                             "lower the parallelism or bit widths, or run `edgesplit tune`")


def cmd_tune(args) -> None:
    from edgesplit.hardware.accelerator import tune

    device, graph, cfg, host = _fpga_and_graph(args)
    result = tune(graph, device, cfg, host=host)
    if args.json:  # the summary follows (on stderr when the JSON goes to stdout)
        _write_json(result, args.json)
    best = result["best"]
    c = best["config"]
    factors = f"tm={c['tm']} tn={c['tn']} td={c['td']} tr={c['tr']} tc={c['tc']}" if c["arch"] == "bundle" else f"mults={c['mults']}"
    print(f"searched {result['tried']} designs, {result['fitted']} fit {device.name}; best: {factors}")
    _print_estimate(best)


def cmd_quantize(args) -> None:
    from edgesplit.quant.quantize import quantize_checkpoint

    sweep = [int(b) for b in args.sweep.split(",")] if args.sweep else None
    r = quantize_checkpoint(args.checkpoint, args.wbits, args.fbits, args.qat_epochs, args.calib_images, args.data_dir,
                            args.max_test, sweep, args.qat_images, per_channel=args.per_channel)
    if args.json:
        _write_json(r, args.json)
    granularity = "per-channel" if r["per_channel"] else "per-tensor"
    print(f"{r['model']} on {r['dataset']} test ({r['test_images']} images), W{r['wbits']}/F{r['fbits']} fixed point, "
          f"{granularity} weight formats")
    print(f"{'layer':<40}{'op':<8}{'weights':>9}{'max |w|':>9}{'w format':>10}{'out format':>11}")
    for row in r["layers"]:
        name = row["layer"] if len(row["layer"]) <= 39 else "..." + row["layer"][-36:]
        print(f"{name:<40}{row['op']:<8}{row['weights']:>9}{row['weight_max_abs']:>9.3f}{row['weight_format']:>10}{row['output_format']:>11}")
    size = r["size"]
    print(f"model size: {size['float32_bytes'] / 1e6:.2f} MB float32 -> {size['quantized_bytes'] / 1e6:.2f} MB")
    for row in r.get("sweep", []):
        print(f"sweep {row['varied']:<9} W{row['wbits']}/F{row['fbits']}: top-1 {row['ptq_top1']:.4f}")
    line = f"top-1: float {r['float_top1']:.4f}, post-training quantization {r['ptq_top1']:.4f}"
    if "qat_top1" in r:
        line += f", after {len(r['qat_history'])} QAT epoch(s) {r['qat_top1']:.4f}"
    print(line)


# ---------------------------------------------------------------- accelerator generation
def cmd_hls(args) -> None:
    from edgesplit.hardware.catalog import get_device
    from edgesplit.hls.build import build_hls, format_report
    from edgesplit.hls.project import hls_config_for

    device = get_device(args.device, args.devices_dir)
    if device.kind != "fpga":
        raise EdgesplitError(f"{device.name} is a {device.kind} device; `edgesplit hls` builds for FPGA boards (see `edgesplit devices`)")
    cfg = hls_config_for(device, tm=args.tm, tn=args.tn, td=args.td, tr=args.tr, tc=args.tc, fuse=not args.no_fuse)
    r = build_hls(args.model, args.out, args.wbits, args.fbits, cfg, args.csim, args.branch, args.data_dir,
                  tuned_device=device if args.tuned else None, image_size=args.image_size)
    if args.json:
        _write_json(r, args.json)
    else:
        print(format_report(r))
    if args.csim and not r["bit_exact"]:
        m = r["first_mismatch"]
        raise EdgesplitError(f"the C simulation differs from the integer reference: image {m['image']}, call {m['call']} "
                             f"({' + '.join(m['ops'])}), element {m['index']}: {m['got']} instead of {m['want']}")


# ---------------------------------------------------------------- co-design
def parse_duration(text: str) -> float:
    """'30m', '1h', '90s' -> seconds. A unit is required: a bare number is ambiguous (seconds? minutes?)."""
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1:].isdigit():
        raise EdgesplitError(f"--time-budget needs a unit: {text}s, {text}m or {text}h")
    try:
        if not text or text[-1] not in units:
            raise ValueError
        value = float(text[:-1]) * units[text[-1]]
    except ValueError:
        raise EdgesplitError(f"--time-budget must look like 30m, 1h or 90s, got {text!r}") from None
    if value <= 0:
        raise EdgesplitError(f"--time-budget must be positive, got {text!r}")
    return value


def cmd_codesign(args) -> None:
    from edgesplit.codesign.evaluate import ProxyTraining
    from edgesplit.codesign.search import CodesignConfig, run_codesign

    cfg = CodesignConfig(device=args.device, target_fps=args.target_fps, dataset=args.data, data_dir=args.data_dir,
                         time_budget_s=parse_duration(args.time_budget), max_watts=args.max_watts, arch=args.arch,
                         bundles=tuple(args.bundles.split(",")) if args.bundles else None, finalists=args.finalists,
                         final_epochs=args.final_epochs, final_images=args.final_images,
                         proxy=ProxyTraining(samples=args.proxy_images, val_images=args.proxy_val_images),
                         fleet=args.fleet, accuracy_floor=args.accuracy_floor,
                         baselines=tuple(args.baselines.split(",")) if args.baselines else (), seed=args.seed,
                         devices_dir=args.devices_dir)
    try:
        r = run_codesign(cfg, args.out, resume=args.resume, progress=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"edgesplit: codesign interrupted; everything evaluated is kept in {args.out}/search.json: "
              "run the same command with --resume to continue", file=sys.stderr)
        raise
    c = r["chosen"]
    print(f"chosen: {c['key']}: {c['hardware']['fps']:.1f} FPS on {r['device']}, test top-1 {c['test']['ptq_top1']:.4f} "
          f"(fixed point W{c['wbits']}/F{c['fbits']}), float {c['test']['float_top1']:.4f}")
    if "fleet" in r:
        a = r["fleet"]["accepted"]
        print(f"fleet: {a['k']} branch(es) on {', '.join(a['devices'])}, {a['fps']:.1f} FPS; plan {r['fleet']['plan']}")
    print(f"search took {r['wall_time_s'] / 60:.1f} min; report {Path(args.out) / 'report.md'}, plot {Path(args.out) / 'pareto.png'}")
    if args.json:
        _write_json(r, args.json)


# ---------------------------------------------------------------- parser
class _DefaultsShown(argparse.HelpFormatter):
    """Every option's default in its help, where the help text does not say it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and "default" not in text and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """No prefix matching anywhere (``--token`` must never be taken for ``--token-file``); every default shown;
    subcommands inherit both."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _DefaultsShown)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgesplit", description="Split CNNs over small edge devices: models, training, export, runtime.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("models", help="list registered models with parameters and MACs")
    s.add_argument("--input", default="3x224x224", help="input shape CxHxW (default 3x224x224)")
    s.add_argument("--num-classes", type=int, default=1000, help="classes of the models' heads (default 1000)")
    s.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("profile", help="per-layer cost and the bytes a distributed inference sends")
    s.add_argument("model", help='a registered model name (`edgesplit models`)')
    s.add_argument("--input", default="3x224x224", help="input shape CxHxW")
    s.add_argument("--num-classes", type=int, default=1000, help="classes of the model's head (default 1000)")
    s.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="extra model argument, e.g. width_mult=0.5")
    s.add_argument("--json", nargs="?", const="-", help='write JSON (to a file, or stdout with no value)')
    s.set_defaults(func=cmd_profile)

    s = sub.add_parser("train", help="train a model; checkpoint every epoch")
    s.add_argument("model", help='a registered model name (`edgesplit models`)')
    s.add_argument("--data", default="fashion-mnist", help="fashion-mnist (default), cifar10 or imagefolder")
    s.add_argument("--data-dir", help="dataset folder (default for fashion-mnist: /usr/share/datasets/fashion-mnist)")
    s.add_argument("--input", "--input-size", dest="input_size", metavar="HxW|CxHxW",
                   help="network input HxW or CxHxW, images resized to it (default: the dataset's size; C must be the "
                        "dataset's channels)")
    s.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="extra model argument, e.g. width_mult=0.5")
    s.add_argument("--epochs", type=int, default=5, help='training epochs (default 5)')
    s.add_argument("--batch-size", type=int, default=128, help='images per training step (default 128)')
    s.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule (default: the model's: 0.1, "
                                            "0.02 for SqueezeNet, which has no batch norm)")
    s.add_argument("--weight-decay", type=float, default=5e-4, help='SGD weight decay (default 5e-4)')
    s.add_argument("--label-smoothing", type=float, default=0.0, help='label smoothing of the cross-entropy loss, 0 to 1 (default 0)')
    s.add_argument("--branch-dropout", type=float, default=0.0, help="probability of zeroing a branch's features (split models)")
    s.add_argument("--augment-pad", type=int, default=2, help="random-crop padding; 0 disables augmentation")
    s.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    s.add_argument("--train-images", "--max-train-samples", dest="max_train_samples", type=int, metavar="N",
                   help="train on the first N training images only (default: all)")
    s.add_argument("--seed", type=int, default=0, help="seed of the weights' initialisation and of each epoch's shuffling (default 0)")
    s.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="accuracy of a checkpoint on the test set")
    s.add_argument("checkpoint", help="checkpoint.pt or its run directory")
    s.add_argument("--data", help="dataset (default: the one it was trained on)")
    s.add_argument("--data-dir", help="dataset folder (default: the checkpoint's dataset in its usual place)")
    s.add_argument("--json", nargs="?", const="-", help='write JSON (to a file, or stdout with no value)')
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("retrain-head", help="retrain a split model's head with branch dropout (branches frozen)")
    s.add_argument("checkpoint", help="checkpoint.pt of a split model, or its run directory")
    s.add_argument("--out", required=True, help="run directory for the new checkpoint")
    s.add_argument("--branch-dropout", type=float, default=0.3, help="probability of zeroing a branch's features per sample")
    s.add_argument("--epochs", type=int, default=15, help='epochs of head training (default 15)')
    s.add_argument("--lr", type=float, default=1e-3, help="AdamW peak rate (cosine to zero)")
    s.add_argument("--seed", type=int, default=0, help="seed of the head's training (default 0)")
    s.add_argument("--data-dir", help="dataset folder, if not where the model was trained")
    s.set_defaults(func=cmd_retrain_head)

    s = sub.add_parser("export", help="checkpoint -> ONNX part files + manifest.json")
    s.add_argument("checkpoint", help="checkpoint.pt or its run directory")
    s.add_argument("--out", required=True, help="export directory")
    s.add_argument("--int8", action="store_true", help="int8 QDQ parts (ONNX Runtime static quantization) instead of float32")
    s.add_argument("--calib-images", type=int, default=1000, help="training images to calibrate --int8 (default 1000)")
    s.add_argument("--data-dir", help="dataset folder for the calibration images")
    s.add_argument("--code-head", metavar="K,R",
                   help="spread the head's hidden FC layer over K data + R parity workers (coded; any K answers decode); "
                        "needs a head trained with --model-arg head_hidden=N")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("predict", help="classify image files with an export, in this process")
    s.add_argument("export_dir", help='an export folder (`edgesplit export`)')
    s.add_argument("images", nargs="+", help="JPEG/PNG files")
    s.add_argument("--top", type=int, default=3, help='how many classes to print per image (default 3)')
    s.add_argument("--threads", type=int, default=1, help='ONNX Runtime threads (default 1)')
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("worker", help="serve one model part over KServe v2 gRPC (no torch needed)")
    s.add_argument("source", help="export directory (with --part) or a bare .onnx file")
    s.add_argument("--part", help="part name(s), comma-separated: branch0, branch1, ..., head, model, fc6.0, ...")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    s.add_argument("--port", type=int, default=0, help="port (0: any free one, printed when ready)")
    s.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    s.add_argument("--engine", default="onnxruntime", choices=["onnxruntime", "numpy", "auto", "hls-csim"],
                   help="what runs the part: ONNX Runtime (default), numpy (FC graphs), or hls-csim: the part's "
                        "generated accelerator in C simulation (needs --hls)")
    s.add_argument("--hls", metavar="DIR", help="with --engine hls-csim: the project `edgesplit hls ... --branch K` wrote")
    s.add_argument("--cpus", help="pin to these CPUs, e.g. 0 or 2,3")
    s.add_argument("--providers", help="ONNX Runtime execution providers in order, e.g. CUDAExecutionProvider")
    s.add_argument("--unix-socket", metavar="PATH", help="also serve on this Unix socket (plan address ipc://PATH): "
                   "a coordinator on the same machine skips gRPC's per-call cost")
    s.add_argument("--poll-ms", type=float, default=0.0,
                   help="with --unix-socket: after each answer, poll for the next request this long (ms) instead of "
                        "sleeping, yielding the core to other processes; saves the wake-up of an idle core (default 0)")
    _security_args(s)
    _limits_args(s)
    f = s.add_argument_group("fault injection (tests and benchmarks)")
    f.add_argument("--inject-delay-ms", type=float, default=0.0, help="extra delay per affected call")
    f.add_argument("--inject-delay-dist", default="fixed", choices=["fixed", "exp", "lognormal"], help='distribution of the injected delay: fixed, exp or lognormal (default fixed)')
    f.add_argument("--inject-slowdown", type=float, default=1.0, help="affected calls take this many times their compute time")
    f.add_argument("--inject-prob", type=float, default=1.0, help="fraction of calls affected by delay/slowdown")
    f.add_argument("--inject-error-prob", type=float, default=0.0, help="fraction of calls that fail")
    f.add_argument("--crash-after", type=int, help="exit abruptly after this many requests")
    f.add_argument("--inject-seed", type=int, default=0, help='seed of the injected faults (default 0)')
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("serve", help="serve the whole split model as one KServe v2 endpoint")
    s.add_argument("--plan", help="plan.yaml: where each part runs")
    s.add_argument("--local", metavar="EXPORT_DIR", help="start local worker processes for this export instead")
    s.add_argument("--host", default="127.0.0.1", help='address to bind (default 127.0.0.1: loopback only)')
    s.add_argument("--port", type=int, default=8001, help='KServe v2 gRPC port (default 8001; 0: any free one)')
    s.add_argument("--poll-ms", type=float, default=0.0,
                   help="with --local: the workers' --poll-ms (poll for the next request this long after each answer)")
    s.add_argument("--wait-ready-s", type=float, default=30.0,
                   help="wait this long for every worker (progress every 5 s); then a plan with on_missing: degrade "
                        "starts without the missing ones and takes each in when it comes up, and one with fail stops "
                        "(default 30)")
    _security_args(s)
    _limits_args(s)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("plan", help="write a plan.yaml placing an export's parts on worker addresses")
    s.add_argument("export_dir", help='an export folder (`edgesplit export`)')
    s.add_argument("--workers", nargs="+", required=True, metavar="HOST:PORT", help="the workers' addresses, one per device (a part goes to each)")
    s.add_argument("--speeds", help="relative device speeds, one per worker, e.g. 2,1")
    s.add_argument("--timeout-ms", type=float, default=2000.0, help='per-request deadline over all stages, ms (default 2000)')
    s.add_argument("--input-dtype", default="uint8", choices=["uint8", "float32"], help='what the coordinator sends the branches: uint8 pixels (normalised by the workers) or float32 (default uint8)')
    s.add_argument("--out", default="plan.yaml", help="plan file to write (default plan.yaml); the export path in it is relative to the plan's folder")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("devices", help="the device catalog (FPGA boards and CPU-class devices)")
    s.add_argument("--devices-dir", help="a folder of your own device YAML files (also $EDGESPLIT_DEVICES)")
    s.add_argument("--json", nargs="?", const="-", help='write JSON (to a file, or stdout with no value)')
    s.set_defaults(func=cmd_devices)

    for name, helptext, func in (("estimate", "FPGA accelerator model: per-layer resources, cycles, FPS and power", cmd_estimate),
                                 ("tune", "search tiling and parallelism for the fastest design that fits", cmd_tune)):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("model", help="registered model name, checkpoint (file or run folder), or .onnx file")
        s.add_argument("--device", required=True, help="an FPGA board from `edgesplit devices`")
        s.add_argument("--devices-dir", help="a folder of your own device YAML files")
        s.add_argument("--input", help="input CxHxW (default: the checkpoint's or ONNX file's; 3x224x224 for a model name)")
        s.add_argument("--arch", default="bundle", help="bundle (one engine reused per layer) or pipeline (an engine per layer)")
        s.add_argument("--wbits", type=int, default=16, help="weight bits (fixed point)")
        s.add_argument("--fbits", type=int, default=16, help="feature-map bits (fixed point)")
        s.add_argument("--float32", action="store_true", help="a float32 datapath instead of fixed point")
        s.add_argument("--batch", type=int, default=1, help="images sharing each weight load")
        s.add_argument("--no-fuse", action="store_true", help="no layer fusion: every feature map goes to DRAM")
        for f, default, h in (("tm", 16, "output channels in parallel"), ("tn", 8, "input channels in parallel"),
                              ("td", 16, "depth-wise channels in parallel"), ("tr", 16, "tile rows"), ("tc", 16, "tile columns"),
                              ("mults", 128, "pipeline: multipliers in total")):
            s.add_argument(f"--{f}", type=int, default=default, help=f"{h} (default {default})" + (" (tune searches it)" if name == "tune" else ""))
        s.add_argument("--no-overlap", action="store_true",
                       help="tiles are not double-buffered: loads, compute and stores add up instead of overlapping")
        s.add_argument("--no-pack", action="store_true", help="never put two multiplies in one DSP slice")
        s.add_argument("--frame", help="camera frame HxW the board's cores resize to the input (default: the input size)")
        s.add_argument("--jpeg", action="store_true", help="frames arrive as JPEG files, decoded on the board's cores")
        s.add_argument("--host-overlap", action="store_true",
                       help="the cores prepare the next frame while the accelerator runs (a multi-threaded host)")
        s.add_argument("--clock-mhz", type=float, help="override the board's clock")
        s.add_argument("--dram-gbs", type=float, help="override the board's DRAM bandwidth (GB/s)")
        s.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout with no value)")
        s.set_defaults(func=func)

    s = sub.add_parser("hls", help="generate the accelerator: a Vitis HLS project, checked bit for bit in C simulation")
    s.add_argument("model", help="registered model name or checkpoint (file or run folder)")
    s.add_argument("--device", required=True, help="the FPGA board it is built for (its part and clock)")
    s.add_argument("--devices-dir", help="a folder of your own device YAML files")
    s.add_argument("--wbits", type=int, default=8, help="weight bits, 2 to 16 (default 8)")
    s.add_argument("--fbits", type=int, default=8, help="feature-map bits, 2 to 16 (default 8)")
    s.add_argument("--branch", type=int, help="one branch of a split model (the part a device serves)")
    s.add_argument("--image-size", type=int, help="a registered model at this square input (Fashion-MNIST images resized; "
                                                   "default 28)")
    for f, default, h in (("tm", 16, "output channels in parallel"), ("tn", 8, "input channels in parallel"),
                          ("td", 16, "depth-wise channels in parallel"), ("tr", 16, "tile rows"), ("tc", 16, "tile columns")):
        s.add_argument(f"--{f}", type=int, default=default, help=f"{h} (default {default})")
    s.add_argument("--tuned", action="store_true", help="the parallelism `edgesplit tune` finds for the board instead")
    s.add_argument("--no-fuse", action="store_true", help="no DW->PW bundles or conv+pool: every layer through DRAM")
    s.add_argument("--out", required=True, help="folder for the project")
    s.add_argument("--csim", type=int, default=0, metavar="N",
                   help="compile with g++ and run N real test images; every tensor must equal the integer reference")
    s.add_argument("--data-dir", help="dataset folder")
    s.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_hls)

    s = sub.add_parser("quantize", help="fixed-point quantization of a checkpoint: accuracy before/after, ranges, size")
    s.add_argument("checkpoint", help="a checkpoint file or run folder")
    s.add_argument("--wbits", type=int, default=8, help="weight bits, 2 to 16 (default 8)")
    s.add_argument("--fbits", type=int, default=8, help="feature-map bits, 2 to 16 (default 8)")
    s.add_argument("--qat-epochs", type=int, default=0, help="quantization-aware training epochs after calibration")
    s.add_argument("--calib-images", type=int, default=1000, help="training images for calibration (default 1000)")
    s.add_argument("--qat-images", type=int, help="train QAT on the first N training images (default: all)")
    s.add_argument("--sweep", help="also measure e.g. 8,6,4: each width for weights only and for feature maps only (the other at 16)")
    s.add_argument("--per-channel", action="store_true",
                   help="one power-of-two weight format per output channel (a per-channel shift in hardware)")
    s.add_argument("--test-images", "--max-test", dest="max_test", type=int, metavar="N",
                   help="evaluate on the first N test images only (default: all)")
    s.add_argument("--data-dir", help="dataset folder")
    s.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("codesign", help="search a network and its FPGA accelerator for a speed target; plan a fleet",
                       description="Bundle selection, stochastic coordinate descent with the hardware model in the loop, "
                                   "finalists trained longer; writes OUT/chosen/, report.md, pareto.png. Interrupt it "
                                   "any time and rerun with --resume.")
    s.add_argument("--device", required=True, help="the FPGA board the accelerator is designed for")
    s.add_argument("--target-fps", type=float, required=True, help="lowest acceptable frames per second")
    s.add_argument("--max-watts", type=float, help="highest acceptable board power (model estimate)")
    s.add_argument("--data", default="fashion-mnist", help="dataset (default fashion-mnist)")
    s.add_argument("--data-dir", help="dataset folder")
    s.add_argument("--time-budget", default="30m", help="wall time for the whole run (search, finalists, baselines, fleet), with a unit: 90s, 30m, 1h (default "
                        "30m); every training is sized to fit, and a budget too small is refused with the minimum")
    s.add_argument("--out", required=True, help="output folder (also the resume state)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted search in --out")
    s.add_argument("--arch", default="bundle", help="accelerator architecture: bundle or pipeline")
    s.add_argument("--bundles", help="comma-separated subset of the layer pool (default all: dw3-pw1,conv3,pw1-dw3-pw1,conv3-res,fire)")
    s.add_argument("--finalists", type=int, default=2, help="architectures trained longer at the end (default 2)")
    s.add_argument("--final-epochs", type=int, help="epochs for finalists (default: what the budget allows, 1-10)")
    s.add_argument("--final-images", type=int, help="train finalists on at most the first N training images (default: "
                   "as many as the budget allows)")
    s.add_argument("--proxy-images", type=int, default=6000, help="training images for each short training, at most "
                   "(default 6000; fewer when the budget needs it)")
    s.add_argument("--proxy-val-images", type=int, default=2000, help="validation images scoring each candidate (default 2000)")
    s.add_argument("--fleet", help="YAML fleet file: split the chosen network over these devices and write plan.yaml")
    s.add_argument("--accuracy-floor", type=float, help="fleet: lowest fixed-point validation top-1 (default chosen - 0.02)")
    s.add_argument("--baselines", help="comma-separated models trained with the same recipe for comparison, e.g. resnet18-split2,squeezenet")
    s.add_argument("--seed", type=int, default=0, help='seed of the search and of every training (default 0)')
    s.add_argument("--devices-dir", help="a folder of your own device YAML files")
    s.add_argument("--json", nargs="?", const="-", help="write the result as JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_codesign)

    s = sub.add_parser("bench", help="benchmarks that write JSON (see docs/benchmarks.md)")
    bench = s.add_subparsers(dest="bench", required=True, metavar="BENCH")
    b = bench.add_parser("serve", help="branch compute vs end-to-end latency and throughput over local workers")
    b.add_argument("--model", default="resnet18-split2", help='registered split model to serve (default resnet18-split2; random weights)')
    b.add_argument("--input", default="3x224x224", help='input CxHxW (default 3x224x224)')
    b.add_argument("--requests", type=int, default=200, help='requests per latency measurement (default 200)')
    b.add_argument("--in-flight", type=int, default=4, help='requests in flight for the throughput (default 4)')
    b.add_argument("--input-dtype", default="uint8", choices=["uint8", "float32"], help='what the coordinator sends the workers (default uint8)')
    b.add_argument("--rounds", type=int, default=3, help="repeat the measurement; medians are reported")
    b.add_argument("--block", type=int, default=50,
                   help="throughput is measured in blocks of this many images, split and unsplit alternating")
    b.add_argument("--transports", default="ipc,grpc",
                   help="how the coordinator reaches the local workers, comma-separated; the first gives the headline figures")
    b.add_argument("--json", nargs="?", const="-", help="write the numbers as JSON (to a file, or stdout with no value)")
    b.add_argument("--poll-ms", type=float, default=0.0,
                   help="workers poll their Unix socket this long after each answer (worker --poll-ms; default 0)")
    b.set_defaults(func=cmd_bench_serve)
    b = bench.add_parser("faults", help="coded vs uncoded AlexNet FC layers under stragglers and a killed worker")
    b.add_argument("--requests", type=int, default=300, help='requests per scenario (default 300)')
    b.add_argument("--timeout-ms", type=float, default=2000.0, help='per-request deadline, ms (default 2000)')
    b.add_argument("--histogram", default="runs/bench_faults_arrivals.png", help="arrival-time histogram PNG")
    b.add_argument("--parity", type=int, default=1, help="parity workers of the coded run, 1-3 (default 1)")
    b.add_argument("--parity-policy", choices=("eager", "lazy"), default="eager",
                   help="eager: every block asked at once; lazy: parity blocks only when a data block fails or is late")
    b.add_argument("--json", nargs="?", const="-", help="write the numbers as JSON (to a file, or stdout with no value)")
    b.set_defaults(func=cmd_bench_faults)

    b = bench.add_parser("abuse", help="a worker under malformed, oversized and slow clients beside good traffic")
    b.add_argument("--flood-s", type=float, default=20.0, help="length of the flood, seconds (default 20)")
    b.add_argument("--idle-timeout-s", type=float, default=5.0, help="the worker's --idle-timeout-s (default 5)")
    b.add_argument("--max-inflight-mb", type=float, default=256.0, help="the worker's --max-inflight-mb (default 256)")
    b.add_argument("--held", type=int, default=20, help="connections of each slow kind held open (default 20)")
    b.add_argument("--json", nargs="?", const="-", help="write the numbers as JSON (to a file, or stdout with no value)")
    b.set_defaults(func=cmd_bench_abuse)

    b = bench.add_parser("int8", help="float32 vs int8 QDQ parts in ONNX Runtime: latency per part and test accuracy")
    b.add_argument("checkpoint", help="a checkpoint (speed and accuracy), or a model name with --input (random weights, speed only)")
    b.add_argument("--input", help="input CxHxW for a model name")
    b.add_argument("--calls", type=int, default=50, help='calls per timing block (default 50)')
    b.add_argument("--rounds", type=int, default=3, help='repeat the timing; medians are reported (default 3)')
    b.add_argument("--test-images", type=int, default=10000, help='test images for the accuracy of both precisions (default 10000)')
    b.add_argument("--calib-images", type=int, default=1000, help='training images to calibrate the int8 quantization (default 1000)')
    b.add_argument("--data-dir", help='dataset folder')
    b.add_argument("--json", nargs="?", const="-", help="write the numbers as JSON (to a file, or stdout with no value)")
    b.set_defaults(func=cmd_bench_int8)

    s = sub.add_parser("demo", help="the main job: split model over local workers vs unsplit, on the test set")
    s.add_argument("--work-dir", default="runs/demo", help="where the cached checkpoints and exports live")
    s.add_argument("--data-dir", help="Fashion-MNIST folder")
    s.add_argument("--test-images", "--limit", dest="limit", type=int, metavar="N", help="use only the first N test images (default: all)")
    s.add_argument("--images", metavar="DIR", help="a folder of JPEG/PNG images instead of the test set")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--split-only", action="store_true", help="only the split model over local workers")
    g.add_argument("--nonsplit", action="store_true", help="only the unsplit model (ONNX Runtime, all cores)")
    g.add_argument("--in-process", action="store_true", help="only the split model in this process (the seed's --cpu)")
    g.add_argument("--interactive", action="store_true", help="type image paths, get the top-3 classes")
    s.add_argument("--retrain", action="store_true", help="ignore the cached checkpoints")
    s.add_argument("--json", nargs="?", const="-", help="write the numbers as JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_demo)
    return p


@contextlib.contextmanager
def _json_alone(args):
    """Every command's `--json` with no value puts the JSON alone on stdout: what else it prints goes to stderr."""
    if getattr(args, "json", None) != "-":
        yield
        return
    _JSON_OUT.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _JSON_OUT.pop()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except EdgesplitError as err:  # an option refused while parsing (e.g. --token), said in one line
        print(f"edgesplit: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with _json_alone(args):
            args.func(args)
    except EdgesplitError as err:
        if args.debug:
            raise
        print(f"edgesplit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgesplit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`edgesplit plan ... | head`): stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
