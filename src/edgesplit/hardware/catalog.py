"""The device catalog: one YAML file per board, shipped in ``hardware/devices/``; users add their own.

A user's folder (``--devices-dir``, or ``$EDGESPLIT_DEVICES``) is read after the shipped
one: a file with a new ``name`` adds a board, one with an existing name replaces it.
Every file is checked: unknown or missing fields, wrong types and impossible values
are refused with the file and field named.
"""

from __future__ import annotations

import os
import types
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Union, get_args, get_origin, get_type_hints

import yaml

from edgesplit.errors import EdgesplitError

SHIPPED = Path(__file__).parent / "devices"
DSP_TYPES = {"DSP48E1": (25, 18), "DSP48E2": (27, 18)}  # multiplier input widths (Xilinx UG479, UG579)


@dataclass(frozen=True)
class FpgaDevice:
    name: str
    description: str
    part: str
    dsp: int
    dsp_type: str
    bram36: int
    lut: int
    ff: int
    clock_mhz: float
    dram_bandwidth_gbs: float
    static_power_w: float
    source: str = ""
    kind: str = "fpga"
    # The processing system beside the fabric (Zynq's Arm cores), which reads and prepares each
    # camera frame and drives the accelerator. None: a bare accelerator, no host side modelled.
    ps_cores: int | None = None
    ps_clock_mhz: float | None = None
    ps_flops_per_cycle: float | None = None  # float32 FLOP per cycle per core with NEON (Arm TRMs)
    ps_mem_bandwidth_gbs: float | None = None  # the DRAM bandwidth the cores reach (shared with the fabric)
    ps_active_w: float | None = None  # extra board power while one core is busy

    @property
    def bram18(self) -> int:
        return 2 * self.bram36

    @property
    def has_host(self) -> bool:
        return self.ps_cores is not None


@dataclass(frozen=True)
class CpuDevice:
    name: str
    description: str
    cores: int
    clock_mhz: float
    peak_gflops: float
    mem_bandwidth_gbs: float
    static_power_w: float
    source: str = ""
    kind: str = "cpu"


KINDS = {"fpga": FpgaDevice, "cpu": CpuDevice}
PS_FIELDS = ("ps_cores", "ps_clock_mhz", "ps_flops_per_cycle", "ps_mem_bandwidth_gbs", "ps_active_w")


def parse_device(d: dict, origin: str) -> FpgaDevice | CpuDevice:
    if not isinstance(d, dict):
        raise EdgesplitError(f"{origin}: a device file must be a YAML mapping of fields")
    kind = d.get("kind")
    if kind not in KINDS:
        raise EdgesplitError(f"{origin}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cls = KINDS[kind]
    known = get_type_hints(cls)  # field name -> int | float | str
    if unknown := sorted(set(d) - set(known)):
        raise EdgesplitError(f"{origin}: unknown field(s) {', '.join(unknown)} for a {kind} device")
    required = [f.name for f in fields(cls) if f.default is MISSING and f.name not in d]
    if required:
        raise EdgesplitError(f"{origin}: missing field(s) {', '.join(required)}")
    values = {}
    for name, value in d.items():
        want = known[name]
        if get_origin(want) in (Union, types.UnionType):  # an optional field: int | None
            if value is None:
                continue
            want = next(t for t in get_args(want) if t is not type(None))
        if want in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise EdgesplitError(f"{origin}: {name} must be a number, got {value!r}")
        if want in (int, float) and value <= 0 and name != "static_power_w":
            raise EdgesplitError(f"{origin}: {name} must be positive, got {value!r}")
        values[name] = want(value)
    if kind == "fpga" and values["dsp_type"] not in DSP_TYPES:
        raise EdgesplitError(f"{origin}: dsp_type must be one of {', '.join(DSP_TYPES)}, got {values['dsp_type']!r}")
    if kind == "fpga":
        ps = [f for f in PS_FIELDS if f in values]
        if ps and len(ps) != len(PS_FIELDS):
            missing = ", ".join(f for f in PS_FIELDS if f not in values)
            raise EdgesplitError(
                f"{origin}: the processing system needs all of {', '.join(PS_FIELDS)}; missing {missing} "
                "(or remove every ps_ field for a bare accelerator)"
            )
    return cls(**values)


def _read_dir(directory: Path) -> dict:
    out = {}
    for path in sorted(directory.glob("*.y*ml")):
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise EdgesplitError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        dev = parse_device(d, str(path))
        out[dev.name] = dev
    return out


def load_catalog(user_dir: str | Path | None = None) -> dict[str, FpgaDevice | CpuDevice]:
    catalog = _read_dir(SHIPPED)
    user_dir = user_dir or os.environ.get("EDGESPLIT_DEVICES")
    if user_dir:
        if not Path(user_dir).is_dir():
            raise EdgesplitError(f"devices folder {user_dir} does not exist; pass a folder of device YAML files")
        catalog.update(_read_dir(Path(user_dir)))
    return catalog


def get_device(name: str, user_dir: str | Path | None = None) -> FpgaDevice | CpuDevice:
    catalog = load_catalog(user_dir)
    if name not in catalog:
        raise EdgesplitError(
            f"unknown device {name!r}; known: {', '.join(sorted(catalog))} (see `edgesplit devices`, or add a YAML file)"
        )
    return catalog[name]
