"""Where ``edgesplit stream`` reads frames: a video file, a camera (``/dev/videoN``), an RTSP/HTTP stream (PyAV:
FFmpeg's own demuxers and decoders), or a folder of images (each decoded by PyAV too).

A source yields ``Frame``: its timestamp in seconds and the image as the model takes it, (H, W, C) uint8 at the
model's input size, grey for one channel and RGB for three (FFmpeg's scaler does the resize and conversion).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgesplit.errors import EdgesplitError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
LIVE_PREFIXES = ("/dev/video", "rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
OPEN_TIMEOUT_S = 10.0  # a network source that does not answer


class SourceLost(EdgesplitError):
    """The source stopped mid-stream (a camera unplugged, a broken stream): the frames before it were used."""


@dataclass(frozen=True)
class Frame:
    index: int
    t_s: float  # the source's timestamp (a folder: index / fps)
    image: np.ndarray | None  # (H, W, C) uint8; None: this frame could not be decoded
    error: str | None = None


def open_source(spec: str, chw: tuple[int, int, int], folder_fps: float = 10.0):
    """The source ``spec`` names, giving frames of shape ``chw`` (C, H, W): a folder, or anything FFmpeg opens."""
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, chw, folder_fps)
    if not spec.startswith(LIVE_PREFIXES) and not path.exists():
        raise EdgesplitError(f"{spec} does not exist; give a video file, a folder of images, /dev/videoN or a stream URL")
    return VideoSource(spec, chw)


def _convert(frame, chw: tuple[int, int, int]) -> np.ndarray:
    """A PyAV video frame as (H, W, C) uint8 at the model's size and channels."""
    c, h, w = chw
    a = frame.to_ndarray(width=w, height=h, format="gray" if c == 1 else "rgb24")
    return a[:, :, None] if a.ndim == 2 else a


class VideoSource:
    """A video file, a camera or a network stream, through PyAV."""

    def __init__(self, spec: str, chw: tuple[int, int, int]):
        import av

        self.spec, self.chw = spec, chw
        self.live = spec.startswith(LIVE_PREFIXES)
        options = {"rtsp_transport": "tcp"} if spec.startswith(("rtsp://", "rtsps://")) else {}
        try:
            self.container = av.open(
                spec, format="v4l2" if spec.startswith("/dev/video") else None, options=options, timeout=OPEN_TIMEOUT_S
            )
            self.stream = self.container.streams.video[0]
        except IndexError:
            self.container.close()
            raise EdgesplitError(f"{spec} has no video stream; give a video file, a camera or a stream with video") from None
        except (av.error.FFmpegError, OSError) as err:
            raise EdgesplitError(
                f"cannot open {spec} as video ({err}); check the path or URL, or give a folder of images"
            ) from None
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else None

    def frames(self) -> Iterator[Frame]:
        import av

        index = 0
        try:
            for frame in self.container.decode(self.stream):
                t = float(frame.time) if frame.time is not None else index / (self.fps or 30.0)
                yield Frame(index, t, _convert(frame, self.chw))
                index += 1
        except av.error.FFmpegError as err:  # a camera unplugged, a broken stream, a corrupt file
            raise SourceLost(f"{self.spec} stopped after {index} frames ({err})") from None
        if index == 0:
            raise EdgesplitError(f"{self.spec}: no frame could be decoded; check that it is a video")

    def close(self) -> None:
        self.container.close()


class FolderSource:
    """The images of a folder in name order, ``fps`` of them per second; one that cannot be decoded is a frame with
    its error (the stream goes on)."""

    live = False

    def __init__(self, folder: Path, chw: tuple[int, int, int], fps: float):
        self.spec, self.chw, self.fps = str(folder), chw, fps
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise EdgesplitError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); give a folder of images or a video")

    @staticmethod
    def first_shape(folder: str | Path) -> tuple[int, int, int]:
        """(3, H, W) of the folder's first image that decodes: the size ``edgesplit video --images`` keeps."""
        import av

        for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with av.open(str(path)) as c:
                    f = next(c.decode(video=0))
                return 3, f.height, f.width
            except (av.error.FFmpegError, OSError, StopIteration):
                continue
        raise EdgesplitError(f"{folder} holds no image that decodes; give a folder of JPEG/PNG images")

    def frames(self) -> Iterator[Frame]:
        import av

        for index, path in enumerate(self.files):
            t = index / self.fps
            try:
                with av.open(str(path)) as c:
                    image = _convert(next(c.decode(video=0)), self.chw)
            except (av.error.FFmpegError, OSError, StopIteration) as err:
                log.warning("%s: cannot decode (%s); skipped", path.name, err)
                yield Frame(index, t, None, f"{path.name}: cannot decode ({err})")
                continue
            yield Frame(index, t, image)

    def close(self) -> None:
        pass
