"""The CLI of ``bench``: the benchmarks that write JSON (docs/benchmarks.md)."""

from __future__ import annotations


from edgesplit.cli.common import write_json
from edgesplit.errors import EdgesplitError


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
    r = bench_serve(
        args.model,
        parse_input_shape(args.input),
        args.requests,
        args.in_flight,
        input_dtype=args.input_dtype,
        rounds=args.rounds,
        transports=transports,
        poll_ms=args.poll_ms,
        block=args.block,
    )
    print(
        f"{r['model']} {args.input} on {r['machine']['cores']} cores ({r['machine']['cpu']}), "
        f"medians of {r['rounds']} rounds of {r['requests']} requests"
    )
    print(
        f"  unsplit {r['unsplit_model']} ORT x{r['unsplit_threads']} threads  p50 {r['unsplit_p50_ms']:7.3f} ms, "
        f"{r['unsplit_throughput_rps']:.1f} req/s"
    )
    for t, m in r["transports"].items():
        b = m["breakdown_ms"]
        print(f"  split over {t}:")
        for name, part in b["parts"].items():
            print(
                f"    {name}: compute {part['compute']:6.3f} ms  worker handler {part['handler']:5.3f} ms  "
                f"transport {part['transport']:5.3f} ms"
            )
        print(f"    waiting for the slower branch {b['wait_for_slowest']:.3f} ms, coordinator {b['coordinator']:.3f} ms")
        if "hops" in b:
            for name, h in b["hops"]["parts"].items():
                print(
                    f"    {name} transport, traced: before send {h['before_send']:.3f}  to worker {h['to_worker']:.3f}  "
                    f"worker dispatch {h['worker_dispatch']:.3f}  back {h['back']:.3f} ms"
                )
            print(f"    after the last answer (concatenation, head, return) {b['hops']['after_last_answer']:.3f} ms")
        print(
            f"    end to end, 1 in flight p50 {m['end_to_end_p50_ms']:7.3f} ms   p99 {m['end_to_end_p99_ms']:7.3f} ms;  "
            f"{r['in_flight']} in flight {m['split_throughput_rps']:6.1f} req/s "
            f"(unsplit in the blocks between: {m['unsplit_throughput_rps']:.1f} req/s)"
        )
        print(
            f"    CPU per request at {r['in_flight']} in flight: "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in m["cpu_ms_per_request"].items())
        )
        print(f"    overhead_ratio {m['overhead_ratio']:.3f}   throughput_speedup {m['throughput_speedup']:.3f}")
    print(f"  blocking client over {r['transport']}: end to end p50 {r['end_to_end_blocking_client']['p50_ms']:.3f} ms")
    if args.json:
        write_json(r, args.json)


def cmd_bench_faults(args) -> None:
    from edgesplit.bench.faults import bench_faults

    if not 1 <= args.parity <= 3:
        raise EdgesplitError(f"--parity must be 1, 2 or 3, got {args.parity}")
    r = bench_faults(
        args.requests, args.timeout_ms, histogram=args.histogram, parity=args.parity, parity_policy=args.parity_policy
    )
    print(
        f"{r['model']}: {r['data_workers']} data workers (+{r['parity_workers']} parity, {r['parity_policy']}), "
        f"{r['requests']} requests each"
    )
    print(
        f"{'scenario':<26}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'exact':>7}{'recov':>7}{'degr':>6}{'err':>5}{'lost':>5}{'max rel err':>12}"
    )
    for name, s in r["scenarios"].items():
        l, c = s["latency"], s["counts"]
        print(
            f"{name:<26}{l['p50_ms']:>8.2f}{l['p99_ms']:>8.2f}{l['max_ms']:>8.2f}{c['exact']:>7}{c['recovered']:>7}"
            f"{c['degraded']:>6}{c['errors']:>5}{c['lost']:>5}{s['max_rel_error']:>12.1e}"
        )
    for pattern, t in r["targets"].items():
        print(
            f"{pattern}: coded p99 = {t['p99_vs_fault_free']:.2f}x fault-free, {t['p99_vs_uncoded']:.2f}x uncoded"
            + (
                f" (requests with more stragglers than parity blocks: {t['p_unshielded_request']:.2%})"
                if "p_unshielded_request" in t
                else ""
            )
        )
    print(
        "columns: answers exact (every block in time), recovered (decoded with a parity block), degraded (a block "
        "replaced by zeros), errors, lost (no answer); max rel err: the largest error against the uncoded layers"
    )
    if r.get("histogram"):
        print(f"wrote {r['histogram']} (arrival times of every block's answer)")
    if args.json:
        write_json(r, args.json)


def cmd_bench_abuse(args) -> None:
    from edgesplit.bench.abuse import bench_abuse

    if args.flood_s <= 0 or args.idle_timeout_s <= 0 or args.max_inflight_mb <= 0 or args.held < 1:
        raise EdgesplitError("--flood-s, --idle-timeout-s and --max-inflight-mb must be positive, --held at least 1")
    r = bench_abuse(args.flood_s, args.idle_timeout_s, args.max_inflight_mb, args.held)
    c, g, h, m = r["clean"], r["good_during_flood"], r["health_during_flood"], r["memory_mib"]
    print(
        f"{r['model']}; flood {r['flood_wall_s']:.1f} s, idle timeout {args.idle_timeout_s:g} s, in-flight cap {m['cap']:g} MiB"
    )
    print(
        f"good requests: clean p99 {c['latency']['p99_ms']:.2f} ms; during the flood {g['answered']}/{g['sent']} "
        f"answered, {g['correct']} correct, p99 {g['latency']['p99_ms']:.2f} ms ({r['p99_flood_vs_clean']:.1f}x clean)"
    )
    print(
        f"health checks during the flood: {h['checks']}, failed {h['failed']}, p50 {h['latency']['p50_ms']:.1f} ms, "
        f"p99 {h['latency']['p99_ms']:.1f} ms, max {h['latency']['max_ms']:.1f} ms"
    )
    for name, b in r["bad"].items():
        print(
            f"  {name}: "
            + ", ".join(f"{k} {v}" for k, v in b.items() if k != "statuses")
            + ("; " + ", ".join(f"{k} {v}" for k, v in sorted(b["statuses"].items())) if "statuses" in b else "")
        )
    print(
        f"worker memory: {m['before']:.0f} MiB before, peak during the flood {m['flood_peak_sampled']:.0f} MiB "
        f"(+{m['peak_over_before']:.0f}), {m['after']:.0f} MiB after"
    )
    print(
        "held connections closed by the worker after the idle timeout: "
        + ", ".join(f"{k} {v}" for k, v in r["connections_closed_after_idle_timeout"].items())
    )
    a = r["good_after"]
    print(
        f"afterwards: a new client's requests {a['answered']}/{a['sent']} answered, {a['correct']} correct; "
        f"worker alive: {r['worker_alive']}; its log: {r['worker_log']['lines']} lines, "
        f"{r['worker_log']['tracebacks']} tracebacks"
    )
    if args.json:
        write_json(r, args.json)


def cmd_bench_int8(args) -> None:
    from edgesplit.bench.int8 import bench_int8
    from edgesplit.data.preprocess import parse_input_shape

    r = bench_int8(
        args.checkpoint,
        args.calls,
        args.rounds,
        args.test_images,
        args.calib_images,
        args.data_dir,
        parse_input_shape(args.input) if args.input else None,
    )
    print(
        f"{r['model']} {'x'.join(map(str, r['input_shape']))}, batch 1, 1 thread, medians of {r['rounds']} rounds of {r['calls']} calls"
    )
    for name, p in r["parts"].items():
        print(
            f"  {name:<10} float32 {p['float32_ms']:8.3f} ms   int8 {p['int8_ms']:8.3f} ms   speedup {p['speedup']:.2f}x   "
            f"{p['float32_bytes'] / 1e6:.2f} -> {p['int8_bytes'] / 1e6:.2f} MB"
        )
    if r["top1"]:
        print(f"  top-1 on {r['test_images']} test images: float32 {r['top1']['float32']:.4f}, int8 {r['top1']['int8']:.4f}")
    if args.json:
        write_json(r, args.json)


def register(sub) -> None:
    s = sub.add_parser("bench", help="benchmarks that write JSON (see docs/benchmarks.md)")
    bench = s.add_subparsers(dest="bench", required=True, metavar="BENCH")
    b = bench.add_parser("serve", help="branch compute vs end-to-end latency and throughput over local workers")
    b.add_argument(
        "--model", default="resnet18-split2", help="registered split model to serve (default resnet18-split2; random weights)"
    )
    b.add_argument("--input", default="3x224x224", help="input CxHxW (default 3x224x224)")
    b.add_argument("--requests", type=int, default=200, help="requests per latency measurement (default 200)")
    b.add_argument("--in-flight", type=int, default=4, help="requests in flight for the throughput (default 4)")
    b.add_argument(
        "--input-dtype",
        default="uint8",
        choices=["uint8", "float32"],
        help="what the coordinator sends the workers (default uint8)",
    )
    b.add_argument("--rounds", type=int, default=3, help="repeat the measurement; medians are reported")
    b.add_argument(
        "--block",
        type=int,
        default=50,
        help="throughput is measured in blocks of this many images, split and unsplit alternating",
    )
    b.add_argument(
        "--transports",
        default="ipc,grpc",
        help="how the coordinator reaches the local workers, comma-separated; the first gives the headline figures",
    )
    b.add_argument("--json", nargs="?", const="-", help="write the numbers as JSON (to a file, or stdout with no value)")
    b.add_argument(
        "--poll-ms", type=float, default=0.0, help="workers poll their Unix socket this long after each answer (worker --poll-ms)"
    )
    b.set_defaults(func=cmd_bench_serve)
    b = bench.add_parser("faults", help="coded vs uncoded AlexNet FC layers under stragglers and a killed worker")
    b.add_argument("--requests", type=int, default=300, help="requests per scenario (default 300)")
    b.add_argument("--timeout-ms", type=float, default=2000.0, help="per-request deadline, ms (default 2000)")
    b.add_argument("--histogram", default="runs/bench_faults_arrivals.png", help="arrival-time histogram PNG")
    b.add_argument("--parity", type=int, default=1, help="parity workers of the coded run, 1-3 (default 1)")
    b.add_argument(
        "--parity-policy",
        choices=("eager", "lazy"),
        default="eager",
        help="eager: every block asked at once; lazy: parity blocks only when a data block fails or is late",
    )
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
    b.add_argument(
        "checkpoint", help="a checkpoint (speed and accuracy), or a model name with --input (random weights, speed only)"
    )
    b.add_argument("--input", help="input CxHxW for a model name")
    b.add_argument("--calls", type=int, default=50, help="calls per timing block (default 50)")
    b.add_argument("--rounds", type=int, default=3, help="repeat the timing; medians are reported (default 3)")
    b.add_argument(
        "--test-images", type=int, default=10000, help="test images for the accuracy of both precisions (default 10000)"
    )
    b.add_argument(
        "--calib-images", type=int, default=1000, help="training images to calibrate the int8 quantization (default 1000)"
    )
    b.add_argument("--data-dir", help="dataset folder")
    b.add_argument("--json", nargs="?", const="-", help="write the numbers as JSON (to a file, or stdout with no value)")
    b.set_defaults(func=cmd_bench_int8)
