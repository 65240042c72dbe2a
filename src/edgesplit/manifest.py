"""The export manifest: what each ONNX part is, what it expects, and its sha256. numpy-free, torch-free.

``load_manifest(dir)`` checks the format tag and every file's sha256 before anything
is loaded, so a worker never runs a file that is not the one that was exported.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from edgesplit.errors import EdgesplitError

MANIFEST_FORMAT = "edgesplit-export/1"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # -1 for the batch dimension
    dtype: str  # numpy dtype name: float32, uint8

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["dtype"])

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class PartSpec:
    name: str  # branch0 ... branch{k-1}, head, or model for an unsplit network
    role: str  # branch | head | model
    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_dict(cls, d: dict) -> "PartSpec":
        return cls(
            d["name"],
            d["role"],
            d["file"],
            d["sha256"],
            tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "role": self.role,
            "file": self.file,
            "sha256": self.sha256,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


@dataclass(frozen=True)
class StageSpec:
    """One step of the pipeline the coordinator runs: its parts in parallel, then a merge.

    merge: ``concat`` (branch features side by side; a missing branch can be zeros),
    ``decode`` (coded FC row blocks: any ``code_k`` of the parts give the output),
    ``single`` (one part). ``local``: the coordinator runs the part itself (the head).
    """

    name: str
    parts: tuple[str, ...]
    merge: str
    input: str  # tensor name each part takes
    output: str  # tensor name each part returns
    local: bool = False
    code_k: int = 0
    code_r: int = 0
    code_kind: str = "auto"
    out_features: int = 0  # decode: the layer's real width (blocks are padded)
    code_exact: bool = True  # decode: False for learned parity branches (their blocks approximate the code)
    activation: str | None = None  # applied after the merge: relu or None

    @classmethod
    def from_dict(cls, d: dict) -> "StageSpec":
        return cls(**{**d, "parts": tuple(d["parts"])})

    def to_dict(self) -> dict:
        return {**self.__dict__, "parts": list(self.parts)}


def default_stages(parts: tuple["PartSpec", ...]) -> tuple[StageSpec, ...]:
    """A split model: branches (concat), then the head in the coordinator; else one ``model`` part."""
    branches = tuple(p.name for p in parts if p.role == "branch")
    if branches:
        return (
            StageSpec("branches", branches, "concat", "input", "features"),
            StageSpec("head", ("head",), "single", "features", "logits", local=True),
        )
    return (StageSpec("model", ("model",), "single", "input", "logits"),)


@dataclass(frozen=True)
class Manifest:
    directory: Path
    model: str
    model_kwargs: dict
    input_shape: tuple[int, int, int]  # (C, H, W) per image
    preprocess: dict  # Preprocess.to_dict()
    classes: tuple[str, ...]
    feature_dims: tuple[int, ...]  # per branch; () for an unsplit model
    parts: tuple[PartSpec, ...]
    opset: int
    stages: tuple[StageSpec, ...] = ()

    @property
    def branches(self) -> list[PartSpec]:
        return [p for p in self.parts if p.role == "branch"]

    @property
    def is_split(self) -> bool:
        return bool(self.branches)

    @property
    def remote_parts(self) -> list[str]:
        """Parts that workers serve (every part of a non-local stage)."""
        return [p for s in self.stages if not s.local for p in s.parts]

    def part(self, name: str) -> PartSpec:
        for p in self.parts:
            if p.name == name:
                return p
        raise EdgesplitError(f"export {self.directory} has no part {name!r}; it has: {', '.join(p.name for p in self.parts)}")

    def path(self, part: PartSpec) -> Path:
        return self.directory / part.file


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, body: dict) -> Path:
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps({"format": MANIFEST_FORMAT, **body}, indent=2) + "\n")
    return path


def load_manifest(directory: str | Path, verify: bool | list[str] = True) -> Manifest:
    """Read ``directory/manifest.json``; refuse any part whose sha256 differs.

    ``verify``: True checks every part, a list of names checks those (a worker holds only
    its own part), False checks none.
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.exists():
        raise EdgesplitError(f"{directory} has no {MANIFEST_NAME}; pass a directory written by `edgesplit export`")
    try:
        d = json.loads(path.read_text())
        if d.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format tag {d.get('format')!r}")
        parts = tuple(PartSpec.from_dict(p) for p in d["parts"])
        stages = tuple(StageSpec.from_dict(s) for s in d["stages"]) if d.get("stages") else default_stages(parts)
        manifest = Manifest(
            directory,
            d["model"],
            d["model_kwargs"],
            tuple(d["input_shape"]),
            d["preprocess"],
            tuple(d["classes"]),
            tuple(d["feature_dims"]),
            parts,
            int(d["opset"]),
            stages,
        )
    except (ValueError, KeyError, TypeError) as err:
        raise EdgesplitError(f"{path} is not a valid edgesplit manifest ({err}); re-run `edgesplit export`") from None
    _check_parity_code(manifest, path)
    if verify:
        verify_parts(manifest, [p.name for p in manifest.parts] if verify is True else verify)
    return manifest


def _check_parity_code(manifest: Manifest, path: Path) -> None:
    """A split model with learned parity branches: its coded stage must match its branches (k data branches of one
    feature size, then R parity branches, the features k times that size), or the coordinator would decode wrong."""
    roles = {p.name: p.role for p in manifest.parts}
    for s in manifest.stages:
        if s.merge != "decode" or not any(roles.get(p) == "parity" for p in s.parts):
            continue
        data = [p for p in s.parts if roles.get(p) == "branch"]
        parity = [p for p in s.parts if roles.get(p) == "parity"]
        dims = set(manifest.feature_dims)
        if (
            list(s.parts) != data + parity
            or s.code_k != len(data)
            or s.code_r != len(parity)
            or len(dims) != 1
            or len(manifest.feature_dims) != len(data)
            or s.out_features != sum(manifest.feature_dims)
        ):
            raise EdgesplitError(
                f"{path}: stage {s.name}'s parity code (k={s.code_k}, R={s.code_r}, {s.out_features} features) does not "
                f"match its {len(data)} branches of sizes {list(manifest.feature_dims)} and {len(parity)} parity branches; "
                "re-run `edgesplit export` on the `add-parity` run"
            )


def verify_parts(manifest: Manifest, names) -> None:
    """Refuse if any named part's file is missing or its sha256 differs from the manifest."""
    for name in names:
        part = manifest.part(name)
        file = manifest.path(part)
        if not file.exists():
            raise EdgesplitError(f"{file} listed in the manifest is missing; re-run `edgesplit export`")
        if sha256_file(file) != part.sha256:
            raise EdgesplitError(
                f"{file} does not match the sha256 in {MANIFEST_NAME} (changed or corrupted); re-run `edgesplit export`"
            )
