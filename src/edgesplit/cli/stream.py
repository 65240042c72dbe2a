"""``edgesplit stream`` (frames through a split model, live) and ``edgesplit video`` (a video from real images)."""

from __future__ import annotations

from edgesplit.cli.common import add_dataclass_options, dataclass_from_args, write_json
from edgesplit.errors import EdgesplitError
from edgesplit.stream.config import StreamConfig


def cmd_stream(args) -> None:
    import asyncio

    from edgesplit.manifest import load_manifest
    from edgesplit.runtime.client import AsyncClient
    from edgesplit.runtime.cluster import LocalCluster
    from edgesplit.runtime.plan import load_plan
    from edgesplit.stream.runner import frame_line, run_stream, summary_text

    if bool(args.plan) == bool(args.local):
        raise EdgesplitError("pass either --plan plan.yaml or --local EXPORT_DIR")
    try:
        cfg = dataclass_from_args(StreamConfig, args)
    except ValueError as err:
        raise EdgesplitError(str(err)) from None
    if not cfg.source:
        raise EdgesplitError("give --source: a video file, /dev/videoN, a stream URL or a folder of images")
    writer = []  # the annotated video, opened at the first answer (at the source's frame rate)

    def on_answer(record, frame, fps):
        if not cfg.quiet:
            print(frame_line(record), flush=True)
        if cfg.out:
            from edgesplit.stream.video import VideoWriter, annotate

            if not writer:
                writer.append(VideoWriter(cfg.out, fps or cfg.fps))
            flag = " (degraded)" if record["degraded"] else ""
            label = f"{record['top'][0][0]} {record['top'][0][1]:.2f}{flag}"
            writer[0].write(annotate(frame.image, [label, f"{record['latency_ms']:.1f} ms"]))

    async def go(plan):
        client = await AsyncClient.connect(plan, require_all=False)
        try:
            if args.dashboard_port is not None:  # the live page and /metrics, counting this stream's answers
                print(f"dashboard: {await client.start_dashboard(args.dashboard_port, cluster=cluster)}", flush=True)
            on_drop = client.metrics.dropped if client.metrics else None
            return await run_stream(client.infer_result, load_manifest(plan.export, verify=False), cfg, on_answer, on_drop)
        finally:
            await client.close()

    cluster = LocalCluster(args.local).start() if args.local else None
    try:
        result = asyncio.run(go(cluster.plan() if cluster else load_plan(args.plan)))
    finally:
        if cluster:
            cluster.stop()
        for w in writer:
            w.close()
    print(summary_text(result))
    if writer:
        print(f"wrote {cfg.out}")
    if args.json:
        write_json(result, args.json)


def cmd_video(args) -> None:
    import numpy as np

    from edgesplit.stream.video import write_video

    if args.count < 1 or args.fps <= 0:
        raise EdgesplitError(f"--count and --fps must be positive, got {args.count} and {args.fps}")
    if args.images:
        from edgesplit.stream.sources import FolderSource

        first = FolderSource.first_shape(args.images)
        frames = [f.image for f in FolderSource(args.images, first, args.fps).frames() if f.image is not None]
        images = np.stack(frames[: args.count])
    else:
        from edgesplit.data.datasets import load_dataset

        images = load_dataset("fashion-mnist", "test", args.data_dir).data[: args.count]  # (N, 28, 28, 1) uint8
    write_video(images, args.out, args.fps)
    print(f"wrote {args.out}: {len(images)} frames of {images.shape[2]}x{images.shape[1]} at {args.fps:g} frames/s")


def register(sub) -> None:
    s = sub.add_parser("stream", help="a video, camera or stream through a split model at the source's pace, live")
    s.add_argument("--plan", help="plan.yaml: where each part runs")
    s.add_argument("--local", metavar="EXPORT_DIR", help="start local worker processes for this export instead")
    add_dataclass_options(s, StreamConfig)
    s.add_argument(
        "--dashboard-port",
        type=int,
        help="serve the live page (and /metrics) at http://127.0.0.1:PORT/dashboard while it runs (0: any free port)",
    )
    s.add_argument("--json", nargs="?", const="-", help="write every frame's record and the summary (to a file, or stdout)")
    s.set_defaults(func=cmd_stream)

    s = sub.add_parser("video", help="write a video of real test images (Fashion-MNIST's, or a folder's) to stream")
    s.add_argument("--out", required=True, help="the video file: .mp4 (H.264) or .mkv (lossless)")
    s.add_argument("--count", type=int, default=100, help="frames: the first N test images (default 100)")
    s.add_argument("--fps", type=float, default=10.0, help="frames per second (default 10)")
    s.add_argument("--images", help="a folder of images instead of the test set (all at the first one's size)")
    s.add_argument("--data-dir", help="Fashion-MNIST folder")
    s.set_defaults(func=cmd_video)
