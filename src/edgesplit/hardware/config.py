"""What an accelerator design and its board's host do (no numpy: the CLI builds estimate's and tune's options
from these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from edgesplit.errors import EdgesplitError
from edgesplit.options import option, parse_sizes

MAX_BITS = 32


def parse_frame(text: str) -> tuple[int, int]:
    """'360x640' -> (360, 640): a camera frame's height and width."""
    return parse_sizes(text, 2, "--frame", "HxW (the camera frame, e.g. 360x640)")


@dataclass(frozen=True)
class AccelConfig:
    arch: str = option("bundle", "bundle (one engine reused per layer) or pipeline (an engine per layer)")
    wbits: int = option(16, "weight bits (fixed point)")
    fbits: int = option(16, "feature-map bits (fixed point)")
    float32: bool = option(False, "a float32 datapath instead of fixed point")
    batch: int = option(1, "images sharing each weight load")
    fuse: bool = option(True, "no layer fusion: every feature map goes to DRAM", "--no-fuse")
    tm: int = option(16, "bundle: output channels in parallel (`tune` searches it)")
    tn: int = option(8, "bundle: input channels in parallel (`tune` searches it)")
    td: int = option(16, "bundle: depth-wise channels in parallel (`tune` searches it)")
    tr: int = option(16, "bundle: output tile rows (`tune` searches it)")
    tc: int = option(16, "bundle: output tile columns (`tune` searches it)")
    mults: int = option(128, "pipeline: multipliers shared among the layers (`tune` searches it)")
    overlap: bool = option(
        True, "tiles are not double-buffered: loads, compute and stores add up instead of overlapping", "--no-overlap"
    )
    pack: bool = option(True, "never put two multiplies in one DSP slice (WP486 packing)", "--no-pack")
    clock_mhz: float | None = option(None, "override the board's clock", type=float)
    dram_gbs: float | None = option(None, "override the board's peak DRAM bandwidth (GB/s)", type=float)

    def __post_init__(self):
        if self.arch not in ("bundle", "pipeline"):
            raise EdgesplitError(f"--arch must be bundle or pipeline, got {self.arch!r}")
        for name in ("wbits", "fbits"):
            v = getattr(self, name)
            if not 1 <= v <= MAX_BITS:
                raise EdgesplitError(f"--{name} must be between 1 and {MAX_BITS}, got {v}")
        for name in ("batch", "tm", "tn", "td", "tr", "tc", "mults"):
            if getattr(self, name) < 1:
                raise EdgesplitError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("clock_mhz", "dram_gbs"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise EdgesplitError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class HostConfig:
    frame_hw: tuple[int, int] | None = option(
        None, "camera frame HxW the board's cores resize to the input (default: the input size)", "--frame", parse=parse_frame
    )
    jpeg: bool = option(False, "frames arrive as JPEG files, decoded on the board's cores")
    overlap: bool = option(
        False,
        "the cores prepare the next frame while the accelerator runs (a multi-threaded host)",
        "--host-overlap",
        dest="host_overlap",
    )
    frames_per_input: int = 1  # frames stitched into one network input (SkyNet's 2x2 mosaic of four images)

    def __post_init__(self):
        if self.frame_hw is not None and (len(self.frame_hw) != 2 or min(self.frame_hw) < 1):
            raise EdgesplitError(f"--frame must be HxW with positive sizes, got {self.frame_hw}")
        if self.frames_per_input < 1:
            raise EdgesplitError(f"frames per input must be at least 1, got {self.frames_per_input}")
