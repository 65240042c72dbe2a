"""Writing video with PyAV (FFmpeg's encoders): the demo's and tests' videos from real test images, and
``stream --out`` with each frame's labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesplit.errors import EdgesplitError

ANNOTATED_MIN_PX = 224  # a 28x28 frame is scaled up until its labels can be read beside it


class VideoWriter:
    """Frames (H, W, C) uint8, C 1 or 3, all of one size, to ``path``: ``.mkv`` lossless (FFV1, grey frames stay
    exact), anything else H.264 (even sizes: an odd row or column is cut)."""

    def __init__(self, path: str | Path, fps: float):
        import av

        self.path, self.fps = Path(path), fps
        try:
            self.container = av.open(str(self.path), "w")
        except (av.error.FFmpegError, OSError, ValueError) as err:
            raise EdgesplitError(f"cannot write {path} ({err}); use a .mp4 or .mkv path in a folder you can write") from None
        self.stream = None

    def write(self, image: np.ndarray) -> None:
        import av

        grey = image.shape[2] == 1
        if self.stream is None:
            lossless = self.path.suffix.lower() == ".mkv"
            self.stream = self.container.add_stream("ffv1" if lossless else "libx264", rate=_rate(self.fps))
            h, w = image.shape[:2] if lossless else (image.shape[0] // 2 * 2, image.shape[1] // 2 * 2)
            self.stream.width, self.stream.height = w, h
            self.stream.pix_fmt = ("gray" if grey else "bgr0") if lossless else "yuv420p"
        h, w = self.stream.height, self.stream.width
        image = np.ascontiguousarray(image[:h, :w])
        frame = av.VideoFrame.from_ndarray(image[:, :, 0] if grey else image, format="gray" if grey else "rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1000)


def write_video(images: np.ndarray, path: str | Path, fps: float = 10.0) -> Path:
    """(N, H, W, C) uint8 images as the frames of a video at ``path``."""
    with VideoWriter(path, fps) as out:
        for image in images:
            out.write(image)
    return Path(path)


def annotate(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """The frame (H, W, C) scaled up to at least ANNOTATED_MIN_PX (nearest: pixels stay pixels), RGB, with a band
    of ``lines`` of text under it."""
    from PIL import Image, ImageDraw

    scale = max(1, -(-ANNOTATED_MIN_PX // min(image.shape[:2])))
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    if big.shape[2] == 1:
        big = np.repeat(big, 3, axis=2)
    band = 14 * len(lines) + 6
    canvas = Image.new("RGB", (big.shape[1], big.shape[0] + band))
    canvas.paste(Image.fromarray(big), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, big.shape[0] + 3 + 14 * i), line, fill=(255, 255, 255))
    return np.asarray(canvas)
