"""What the accelerator model returns: typed records, turned into JSON (``to_dict``) and text (``text``) only at the
edges (``--json``, the journal of the co-design search, the terminal)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgesplit.hardware.config import AccelConfig
from edgesplit.hardware.costs import Buffer

RESOURCES = ("dsp", "bram18", "lut", "ff")


@dataclass(frozen=True)
class LayerCost:
    """One layer on the accelerator (or the processing system): its cycles, DRAM traffic and time."""

    name: str
    op: str
    in_shape: tuple[int, ...]  # (C, H, W) or (F,)
    out_shape: tuple[int, ...]
    macs: int
    cycles: int
    compute_ms: float
    dram_bytes: int
    dram_ms: float
    ms: float  # its share of its fused group's time (the group takes max or sum of compute and DRAM)
    bound: str  # compute | memory | -
    gops: float
    fused_in: bool
    fused_out: bool
    placement: str  # fpga | cpu
    group: str | None = None  # the first layer of its fused group (bundle architecture)


@dataclass(frozen=True)
class Resources:
    dsp: int
    bram18: int
    lut: int
    ff: int
    multipliers: int
    dsp_per_multiply: float
    available: dict[str, int]  # the board's, keyed like RESOURCES
    buffers: tuple[Buffer, ...] = ()  # bundle: the engine's on-chip arrays
    weights_streamed: tuple[str, ...] = ()  # pipeline: layers whose weights stay in DRAM

    @property
    def utilisation(self) -> dict[str, float]:
        return {k: getattr(self, k) / self.available[k] for k in RESOURCES}

    @property
    def overflow(self) -> tuple[str, ...]:
        """One line per resource the design needs more of than the board has."""
        return tuple(
            f"{k}: needs {getattr(self, k)}, has {self.available[k]} ({getattr(self, k) - self.available[k]} over, "
            f"{getattr(self, k) / self.available[k]:.0%})"
            for k in RESOURCES
            if getattr(self, k) > self.available[k]
        )

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in (*RESOURCES, "multipliers", "dsp_per_multiply")}
        if self.buffers:
            d["buffers"] = [b.row() for b in self.buffers]
            d["buffers_bram18"] = {b.name: b.bram18 for b in self.buffers}
        if self.weights_streamed:
            d["weights_streamed"] = list(self.weights_streamed)
        return {**d, "available": dict(self.available), "utilisation": self.utilisation}


@dataclass(frozen=True)
class HostWork:
    """Milliseconds of the processing system's work per network input, step by step (``hardware/host.py``)."""

    decode_ms: float
    resize_ms: float
    normalise_ms: float
    accelerator_starts_ms: float
    cpu_layers_ms: float
    cpu_layers: tuple[str, ...]
    frame_hw: tuple[int, int]
    jpeg: bool
    overlap: bool
    frames_per_input: int

    @property
    def host_ms(self) -> float:
        return self.decode_ms + self.resize_ms + self.normalise_ms + self.accelerator_starts_ms + self.cpu_layers_ms


@dataclass(frozen=True)
class EndToEnd:
    """The host's work beside the accelerator's, and the frame rate of the two together."""

    host: HostWork
    accelerator_ms: float
    frame_ms: float
    latency_ms: float
    fps: float
    bound: str

    def to_dict(self) -> dict:
        h = asdict(self.host)
        return {**h, "host_ms": self.host.host_ms, **{k: v for k, v in asdict(self).items() if k != "host"}}


@dataclass(frozen=True)
class Totals:
    macs: int
    weights: int
    cycles: int
    dram_bytes_per_image: int
    image_ms: float  # the accelerator's time per image
    latency_ms: float
    fps: float  # the accelerator's images per second
    gops: float
    memory_bound_layers: int
    compute_bound_layers: int
    watts: float
    static_w: float
    dynamic_w: float
    dram_w: float
    host_w: float
    images_per_joule: float
    joules_per_image: float
    end_to_end: EndToEnd | None = None  # a board whose device file describes its processing system

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "end_to_end"}
        return {**d, "end_to_end": self.end_to_end.to_dict() if self.end_to_end else None}


@dataclass(frozen=True)
class Estimate:
    """One design of one network on one board."""

    model: str
    device: str
    input_shape: tuple[int, ...]
    config: AccelConfig
    clock_mhz: float
    layers: tuple[LayerCost, ...]
    resources: Resources
    totals: Totals

    @property
    def fits(self) -> bool:
        return not self.resources.overflow

    @property
    def frame_fps(self) -> float:
        """The frame rate a user of the board sees: end to end where the host is modelled, else the accelerator's."""
        return self.totals.end_to_end.fps if self.totals.end_to_end else self.totals.fps

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "device": self.device,
            "input_shape": list(self.input_shape),
            "config": asdict(self.config),
            "clock_mhz": self.clock_mhz,
            "layers": [{**asdict(r), "in_shape": list(r.in_shape), "out_shape": list(r.out_shape)} for r in self.layers],
            "resources": self.resources.to_dict(),
            "fits": self.fits,
            "overflow": list(self.resources.overflow),
            "totals": self.totals.to_dict(),
        }

    def text(self) -> str:
        """The report ``edgesplit estimate`` prints."""
        c, t, r = self.config, self.totals, self.resources
        bits = "float32" if c.float32 else f"W{c.wbits}/F{c.fbits}"
        lines = [
            f"{self.model} on {self.device} ({c.arch}, {bits}, batch {c.batch}, "
            f"{'fused' if c.fuse else 'no fusion'}, {self.clock_mhz:.0f} MHz)",
            f"{'layer':<34}{'op':<8}{'out':>15}{'MMACs':>8}{'cycles':>10}{'DRAM kB':>9}{'ms':>8}  {'bound':<8}{'GOP/s':>7}",
        ]
        for row in self.layers:
            name = row.name if len(row.name) <= 33 else "..." + row.name[-30:]
            shape = "x".join(str(v) for v in row.out_shape)
            lines.append(
                f"{name:<34}{row.op:<8}{shape:>15}{row.macs / 1e6:>8.2f}{row.cycles:>10}{row.dram_bytes / 1e3:>9.1f}"
                f"{row.ms:>8.3f}  {row.bound:<8}{row.gops:>7.2f}"
            )
        if r.buffers:
            lines.append(
                "buffers: "
                + "; ".join(
                    f"{b.name} {b.banks}x{2 if b.double else 1} x {b.depth}x{b.width_bits}b "
                    f"({b.row()['bram18_shape']}) = {b.bram18} BRAM18"
                    for b in r.buffers
                )
            )
        u = r.utilisation
        lines += [
            f"resources: DSP {r.dsp} ({u['dsp']:.0%}), BRAM18 {r.bram18} ({u['bram18']:.0%}), LUT {r.lut} "
            f"({u['lut']:.0%}), FF {r.ff} ({u['ff']:.0%}); {r.dsp_per_multiply:g} DSP per multiply",
            f"accelerator: {t.macs / 1e6:.1f} MMACs, {t.dram_bytes_per_image / 1e6:.2f} MB DRAM/image, "
            f"{t.image_ms:.2f} ms/image, {t.fps:.1f} FPS, latency {t.latency_ms:.2f} ms (batch {c.batch}), "
            f"{t.gops:.1f} GOP/s, {'loads overlap compute' if c.overlap else 'loads, compute and stores in sequence'}",
        ]
        e = t.end_to_end
        if e:
            h = e.host
            lines += [
                f"host ({'JPEG ' if h.jpeg else ''}{h.frame_hw[0]}x{h.frame_hw[1]} frames): {h.host_ms:.2f} ms/frame "
                f"(decode {h.decode_ms:.2f}, resize {h.resize_ms:.2f}, normalise {h.normalise_ms:.2f}, "
                f"accelerator starts {h.accelerator_starts_ms:.2f}, layers on the CPU {h.cpu_layers_ms:.2f})",
                f"end to end: {e.frame_ms:.2f} ms/frame, {e.fps:.1f} FPS "
                f"({'host and accelerator overlap' if h.overlap else 'host then accelerator'}; bound: {e.bound}), "
                f"{t.watts:.2f} W, {t.images_per_joule:.2f} images/J",
            ]
        else:
            lines.append(
                f"power: {t.watts:.2f} W, {t.images_per_joule:.2f} images/J "
                f"(no processing system in the device file: accelerator only)"
            )
        if not self.fits:
            lines.append(f"DOES NOT FIT {self.device}: " + "; ".join(r.overflow))
        return "\n".join(lines)


@dataclass(frozen=True)
class TuneResult:
    """The fastest design that fits; how many designs the grid holds, were costed in full, and fitted."""

    best: Estimate
    tried: int  # the grid's designs within the board's DSPs
    fitted: int  # of those costed
    costed: int  # the others' compute alone is slower than the best

    def to_dict(self) -> dict:
        return {"best": self.best.to_dict(), "tried": self.tried, "costed": self.costed, "fitted": self.fitted}

    def text(self) -> str:
        c = self.best.config
        factors = f"tm={c.tm} tn={c.tn} td={c.td} tr={c.tr} tc={c.tc}" if c.arch == "bundle" else f"mults={c.mults}"
        skipped = self.tried - self.costed
        return (
            f"searched {self.tried} designs ({skipped} not costed in full: their compute alone is slower than the best), "
            f"{self.fitted} of {self.costed} fit {self.best.device}; best: {factors}\n" + self.best.text()
        )
