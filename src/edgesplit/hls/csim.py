"""C simulation of a generated project with g++ (no Xilinx tools), checked bit for bit against the integer reference.

The arbitrary-precision types come from a maintained open-source package: the ``hls4ml``
wheel ships Xilinx's ``ap_types`` headers; edgesplit depends on it (``pip install
edgesplit[hls]``) and never copies them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from edgesplit.errors import EdgesplitError


def ap_types_dir() -> Path:
    try:
        import importlib.resources as resources

        path = Path(str(resources.files("hls4ml") / "templates" / "vivado" / "ap_types"))
    except ModuleNotFoundError:
        raise EdgesplitError(
            "C simulation needs the ap_types headers of the hls4ml package: pip install 'edgesplit[hls]' (or pip install hls4ml)"
        ) from None
    if not (path / "ap_int.h").is_file():
        raise EdgesplitError(f"the hls4ml package has no ap_types headers at {path}; reinstall it (pip install hls4ml)")
    return path


def compile_csim(project: Path) -> tuple[Path, float]:
    """Build the testbench and kernel with g++; returns the executable and the seconds it took."""
    gxx = shutil.which("g++")
    if gxx is None:
        raise EdgesplitError("C simulation needs g++: apt-get install g++")
    project = Path(project)
    exe = project / "csim_tb"
    cmd = [
        gxx,
        "-O2",
        "-std=c++14",
        "-DEDGESPLIT_CSIM",
        "-I",
        str(ap_types_dir()),
        "-I",
        str(project),
        str(project / "net.cpp"),
        str(project / "tb.cpp"),
        "-o",
        str(exe),
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        first = next((ln for ln in done.stderr.splitlines() if "error" in ln), done.stderr.strip()[:300])
        raise EdgesplitError(f"g++ could not compile the generated project {project}: {first}")
    return exe, time.perf_counter() - t0


def compile_library(project: Path) -> Path:
    """The kernel and ``engine_abi.cpp`` as a shared library (once; rebuilt when the sources are newer)."""
    gxx = shutil.which("g++")
    if gxx is None:
        raise EdgesplitError("the hls-csim engine needs g++: apt-get install g++")
    project = Path(project)
    lib = project / "libedgesplit_csim.so"
    sources = [project / "net.cpp", project / "engine_abi.cpp", project / "net.h", project / "edgesplit_layers.h"]
    if lib.exists() and all(lib.stat().st_mtime >= p.stat().st_mtime for p in sources):
        return lib
    tmp = project / f".libedgesplit_csim.{os.getpid()}.so"
    cmd = [
        gxx,
        "-O2",
        "-std=c++14",
        "-shared",
        "-fPIC",
        "-DEDGESPLIT_CSIM",
        "-I",
        str(ap_types_dir()),
        "-I",
        str(project),
        str(project / "net.cpp"),
        str(project / "engine_abi.cpp"),
        "-o",
        str(tmp),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        first = next((ln for ln in done.stderr.splitlines() if "error" in ln), done.stderr.strip()[:300])
        raise EdgesplitError(f"g++ could not build the C simulation library in {project}: {first}")
    os.replace(tmp, lib)  # atomic: a worker starting meanwhile sees the old file or the new one
    return lib


def run_csim(project: Path, images: int) -> tuple[list[np.ndarray], dict[int, dict], float]:
    """Run ``images`` images; returns each image's tensor arena, per call its loop counts (compute iterations,
    compute-loop invocations, load iterations), and the seconds."""
    project = Path(project)
    exe = project / "csim_tb"
    out = project / "csim_out"
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    done = subprocess.run([str(exe.resolve()), str(images)], cwd=project, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode not in (0, 1):  # 1: the output differs from expected.bin, which compare() reports in full
        raise EdgesplitError(f"the C simulation failed: {(done.stderr or done.stdout).strip()[:300]}")
    layout = json.loads((project / "layout.json").read_text())
    arenas = [np.fromfile(out / f"tensors_{i}.bin", "<i2").astype(np.int64) for i in range(images)]
    assert all(len(a) == layout["fm_size"] for a in arenas)
    cycles = {}
    for line in (out / "cycles.txt").read_text().split("\n"):
        if line.strip():
            c, n, inv, loads, dw, dw_inv = line.split()
            cycles[int(c)] = {
                "iterations": int(n),
                "invocations": int(inv),
                "loads": int(loads),
                "dw_iterations": int(dw),
                "dw_invocations": int(dw_inv),
            }
    return arenas, cycles, seconds


def compare(layout: dict, arena: np.ndarray, reference: dict[str, np.ndarray], image: int) -> dict | None:
    """The first materialized tensor (in call order, then the network's output) that differs from the reference, or None."""
    final = {"index": len(layout["calls"]), "ops": ["(the network's output)"], "output": layout["output"]["name"]}
    for call in [*layout["calls"], final]:
        t = layout["tensors"][call["output"]]
        got = arena[t["offset"] : t["offset"] + int(np.prod(t["shape"]))]
        want = reference[call["output"]][image].reshape(-1)
        if not np.array_equal(got, want):
            i = int(np.flatnonzero(got != want)[0])
            return {
                "image": image,
                "call": call["index"],
                "ops": call["ops"],
                "tensor": call["output"],
                "element": int(i),
                "index": [int(v) for v in np.unravel_index(i, t["shape"])],
                "got": int(got[i]),
                "want": int(want[i]),
                "differing": int((got != want).sum()),
            }
    return None
