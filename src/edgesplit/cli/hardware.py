"""The CLI of the FPGA half: ``devices``, ``estimate``, ``tune``, ``quantize``, ``hls``."""

from __future__ import annotations


from edgesplit.cli.common import add_dataclass_options, dataclass_from_args, write_json
from edgesplit.hardware.config import AccelConfig, HostConfig

HLS_KNOBS = ("tm", "tn", "td", "tr", "tc", "fuse")  # what the generated engine takes of an accelerator design
from edgesplit.errors import EdgesplitError


def cmd_devices(args) -> None:
    from dataclasses import asdict

    from edgesplit.hardware.catalog import load_catalog

    catalog = load_catalog(args.devices_dir)
    if args.json:  # the summary follows (on stderr when the JSON goes to stdout)
        write_json({name: asdict(d) for name, d in sorted(catalog.items())}, args.json)
    print(
        f"{'device':<18}{'kind':<6}{'DSP':>6}{'BRAM36':>8}{'LUT':>9}{'MHz':>7}{'GFLOP/s':>9}{'DRAM GB/s':>11}{'idle W':>8}  description"
    )
    for name, d in sorted(catalog.items()):
        if d.kind == "fpga":
            print(
                f"{name:<18}{d.kind:<6}{d.dsp:>6}{d.bram36:>8}{d.lut:>9}{d.clock_mhz:>7.0f}{'-':>9}{d.dram_bandwidth_gbs:>11.1f}{d.static_power_w:>8.1f}  {d.description}"
            )
        else:
            print(
                f"{name:<18}{d.kind:<6}{'-':>6}{'-':>8}{'-':>9}{d.clock_mhz:>7.0f}{d.peak_gflops:>9.1f}{d.mem_bandwidth_gbs:>11.1f}{d.static_power_w:>8.1f}  {d.description}"
            )


def _accel_config(args):
    return dataclass_from_args(AccelConfig, args)


def _host_config(args):
    return dataclass_from_args(HostConfig, args)


def _fpga_and_graph(args):
    from edgesplit.data.preprocess import parse_input_shape
    from edgesplit.hardware.catalog import get_device
    from edgesplit.hardware.graph import load_graph

    device = get_device(args.device, args.devices_dir)
    if device.kind != "fpga":
        raise EdgesplitError(
            f"{device.name} is a {device.kind} device; estimate and tune model FPGA boards (see `edgesplit devices`)"
        )
    cfg = _accel_config(args)  # validate the numbers before the (slow) graph export
    host = _host_config(args)
    return device, load_graph(args.model, parse_input_shape(args.input) if args.input else None), cfg, host


def cmd_estimate(args) -> None:
    from edgesplit.hardware.accelerator import estimate

    device, graph, cfg, host = _fpga_and_graph(args)
    est = estimate(graph, device, cfg, host)
    if args.json:
        write_json(est.to_dict(), args.json)
    print(est.text())
    if not est.fits:  # the numbers are written either way; the exit status says it cannot be built
        raise EdgesplitError(
            f"this design does not fit {device.name}: {'; '.join(est.resources.overflow)}; "
            "lower the parallelism or bit widths, or run `edgesplit tune`"
        )


def cmd_tune(args) -> None:
    from edgesplit.hardware.accelerator import tune

    device, graph, cfg, host = _fpga_and_graph(args)
    result = tune(graph, device, cfg, host=host)
    if args.json:  # the summary follows (on stderr when the JSON goes to stdout)
        write_json(result.to_dict(), args.json)
    print(result.text())


def cmd_quantize(args) -> None:
    from edgesplit.quant.quantize import quantize_checkpoint, text_report

    sweep = [int(b) for b in args.sweep.split(",")] if args.sweep else None
    r = quantize_checkpoint(
        args.checkpoint,
        args.wbits,
        args.fbits,
        args.qat_epochs,
        args.calib_images,
        args.data_dir,
        args.max_test,
        sweep,
        args.qat_images,
        per_channel=args.per_channel,
    )
    if args.json:
        write_json(r, args.json)
    print(text_report(r))


def cmd_hls(args) -> None:
    from edgesplit.hardware.catalog import get_device
    from edgesplit.hls.build import build_hls, format_report
    from edgesplit.hls.project import hls_config_for

    device = get_device(args.device, args.devices_dir)
    if device.kind != "fpga":
        raise EdgesplitError(
            f"{device.name} is a {device.kind} device; `edgesplit hls` builds for FPGA boards (see `edgesplit devices`)"
        )
    engine = dataclass_from_args(AccelConfig, args, only=HLS_KNOBS)
    cfg = hls_config_for(device, **{k: getattr(engine, k) for k in HLS_KNOBS})
    r = build_hls(
        args.model,
        args.out,
        args.wbits,
        args.fbits,
        cfg,
        args.csim,
        args.branch,
        args.data_dir,
        tuned_device=device if args.tuned else None,
        image_size=args.image_size,
    )
    if args.json:
        write_json(r, args.json)
    else:
        print(format_report(r))
    if args.csim and not r["bit_exact"]:
        m = r["first_mismatch"]
        raise EdgesplitError(
            f"the C simulation differs from the integer reference: image {m['image']}, call {m['call']} "
            f"({' + '.join(m['ops'])}), element {m['index']}: {m['got']} instead of {m['want']}"
        )


def register(sub) -> None:
    s = sub.add_parser("devices", help="the device catalog (FPGA boards and CPU-class devices)")
    s.add_argument("--devices-dir", help="a folder of your own device YAML files (also $EDGESPLIT_DEVICES)")
    s.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_devices)

    for name, helptext, func in (
        ("estimate", "FPGA accelerator model: per-layer resources, cycles, FPS and power", cmd_estimate),
        ("tune", "search tiling and parallelism for the fastest design that fits", cmd_tune),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("model", help="registered model name, checkpoint (file or run folder), or .onnx file")
        s.add_argument("--device", required=True, help="an FPGA board from `edgesplit devices`")
        s.add_argument("--devices-dir", help="a folder of your own device YAML files")
        s.add_argument("--input", help="input CxHxW (default: the checkpoint's or ONNX file's; 3x224x224 for a model name)")
        add_dataclass_options(s, AccelConfig)
        add_dataclass_options(s, HostConfig)
        s.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout with no value)")
        s.set_defaults(func=func)

    s = sub.add_parser("hls", help="generate the accelerator: a Vitis HLS project, checked bit for bit in C simulation")
    s.add_argument("model", help="registered model name or checkpoint (file or run folder)")
    s.add_argument("--device", required=True, help="the FPGA board it is built for (its part and clock)")
    s.add_argument("--devices-dir", help="a folder of your own device YAML files")
    s.add_argument("--wbits", type=int, default=8, help="weight bits, 2 to 16 (default 8)")
    s.add_argument("--fbits", type=int, default=8, help="feature-map bits, 2 to 16 (default 8)")
    s.add_argument("--branch", type=int, help="one branch of a split model (the part a device serves)")
    s.add_argument(
        "--image-size", type=int, help="a registered model at this square input (Fashion-MNIST images resized; default 28)"
    )
    add_dataclass_options(s, AccelConfig, only=HLS_KNOBS)
    s.add_argument("--tuned", action="store_true", help="the parallelism `edgesplit tune` finds for the board instead")
    s.add_argument("--out", required=True, help="folder for the project")
    s.add_argument(
        "--csim",
        type=int,
        default=0,
        metavar="N",
        help="compile with g++ and run N real test images; every tensor must equal the integer reference",
    )
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
    s.add_argument(
        "--sweep", help="also measure e.g. 8,6,4: each width for weights only and for feature maps only (the other at 16)"
    )
    s.add_argument(
        "--per-channel",
        action="store_true",
        help="one power-of-two weight format per output channel (a per-channel shift in hardware)",
    )
    s.add_argument(
        "--test-images",
        "--max-test",
        dest="max_test",
        type=int,
        metavar="N",
        help="evaluate on the first N test images only (default: all)",
    )
    s.add_argument("--data-dir", help="dataset folder")
    s.add_argument("--json", nargs="?", const="-", help="write JSON (to a file, or stdout with no value)")
    s.set_defaults(func=cmd_quantize)
