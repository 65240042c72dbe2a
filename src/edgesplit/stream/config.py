"""What ``edgesplit stream`` runs (no numpy: its options are built from these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from edgesplit.options import option


@dataclass(frozen=True)
class StreamConfig:
    source: str = option(
        "", "a video file, a camera (/dev/videoN), an RTSP/HTTP stream URL, or a folder of images", "--source", metavar="SOURCE"
    )
    queue: int = option(4, "frames waiting at most: when the fleet falls behind, the oldest is dropped (and counted)")
    in_flight: int = option(2, "frames in the split model at once")
    speed: float = option(
        1.0, "a file's or folder's pace: 1 its own frame rate, 2 twice that, 0 as fast as frames decode (a camera or a "
        "stream sets its own pace)"
    )  # fmt: skip
    fps: float = option(10.0, "a folder's frames per second")
    max_frames: int | None = option(None, "stop after this many frames", type=int, metavar="N")
    top: int = option(3, "classes reported per frame")
    out: str | None = option(None, "also write the video with each frame's labels (.mp4; .mkv: lossless)", type=str)
    quiet: bool = option(False, "no line per frame; the summary only")

    def __post_init__(self):
        bad = [f"--{k.replace('_', '-')} {getattr(self, k)}" for k in ("queue", "in_flight", "top") if getattr(self, k) < 1]
        bad += [f"--speed {self.speed}"] if self.speed < 0 else []
        bad += [f"--fps {self.fps}"] if self.fps <= 0 else []
        bad += [f"--max-frames {self.max_frames}"] if self.max_frames is not None and self.max_frames < 1 else []
        if bad:
            raise ValueError(f"bad {', '.join(bad)}: counts and rates must be positive (--speed 0 or more)")
