"""The deployment plan: which part runs where. A YAML file, read into frozen dataclasses.

    export: runs/demo/split/export     # manifest.json (+ head.onnx: the head runs in the coordinator)
    timeout_ms: 2000                   # per request, all stages together
    on_missing: degrade                # a branch that cannot answer: zeros + degraded flag (or: fail)
    hedge_ms: 50                       # optional: ask a second replica when the first is this late
    parity: eager                      # coded stages: ask parity blocks with the data blocks (eager) or only
                                       # when a data block fails or is late (lazy; parity_slack sets "late")
    input_dtype: uint8                 # what the coordinator sends to branches: uint8 | float32
    shared_memory: true                # workers on this machine (ipc://...) read the input from shared memory
    parts:
      branch0: {replicas: ["10.0.0.11:50051"]}
      branch1: {replicas: ["10.0.0.12:50051", "10.0.0.13:50051"], model_name: split_b1}
    security: {token_file: token.txt, tls_ca: ca.pem}

``make_plan`` writes one for a list of addresses; given device speeds it balances the
work: the faster devices get the wider branches (when the export has unequal widths)
or the most replicas.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from edgesplit.errors import EdgesplitError
from edgesplit.manifest import Manifest, load_manifest
from edgesplit.options import option


@dataclass(frozen=True)
class PartPlacement:
    name: str  # part name in the manifest
    replicas: tuple[str, ...]  # host:port of servers that serve it
    model_name: str | None = None  # the name the server knows it by (default: the part name)

    @property
    def remote_name(self) -> str:
        return self.model_name or self.name


@dataclass(frozen=True)
class PlanSecurity:
    token_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass(frozen=True)
class Plan:
    export: str
    parts: tuple[PartPlacement, ...]
    timeout_ms: float = option(2000.0, "per-request deadline over all stages, ms")
    input_dtype: str = option(
        "uint8",
        "what the coordinator sends the branches: uint8 pixels (normalised by the workers) or float32",
        choices=("uint8", "float32"),
    )
    security: PlanSecurity = field(default_factory=PlanSecurity)
    on_missing: str = "degrade"  # a branch or FC block that cannot answer: degrade (zeros, flagged) or fail
    hedge_ms: float | None = None  # ask the next replica too when the first is this late
    unhealthy_after: int = 3  # consecutive failures before a peer is skipped and probed
    probe_interval_ms: float = 500.0
    # Coded stages. eager: every block (data and parity) is asked at once, the first k answers decode.
    # lazy: the data blocks first; the parity blocks only when a data block fails, or has not answered
    # (1 + parity_slack) x as long after the stage started as the first data block took (parity devices
    # then idle unless needed: for parity workers that share cores, or are metered).
    parity: str = "eager"
    parity_slack: float = 0.5
    shared_memory: bool = True  # workers on this machine (ipc://) read a broadcast input from shared memory

    def to_dict(self) -> dict:
        d = asdict(self)
        d["parts"] = {
            p.name: {k: v for k, v in (("replicas", list(p.replicas)), ("model_name", p.model_name)) if v} for p in self.parts
        }
        d["security"] = {k: v for k, v in d["security"].items() if v}
        return d

    def write(self, path: str | Path) -> None:
        """An absolute export path is written relative to the plan file's folder, as :func:`load_plan` reads it
        (a relative one is taken to be relative to that folder already)."""
        import yaml  # here: the CLI reads Plan's fields for its options and must stay light

        d = self.to_dict()
        if Path(self.export).is_absolute():
            d["export"] = os.path.relpath(self.export, Path(path).resolve().parent)
        Path(path).write_text(yaml.safe_dump(d, sort_keys=False))


def load_plan(path: str | Path) -> Plan:
    import yaml

    path = Path(path)
    if not path.exists():
        raise EdgesplitError(f"plan file {path} not found; write one with `edgesplit plan`")
    try:
        d = yaml.safe_load(path.read_text())
        parts = tuple(PartPlacement(name, tuple(spec["replicas"]), spec.get("model_name")) for name, spec in d["parts"].items())
        export = (path.parent / d["export"]) if not Path(d["export"]).is_absolute() else d["export"]
        plan = Plan(
            str(export),
            parts,
            timeout_ms=float(d.get("timeout_ms", Plan.timeout_ms)),
            input_dtype=d.get("input_dtype", Plan.input_dtype),
            security=PlanSecurity(**(d.get("security") or {})),
            on_missing=d.get("on_missing", Plan.on_missing),
            hedge_ms=d.get("hedge_ms", Plan.hedge_ms),
            unhealthy_after=int(d.get("unhealthy_after", Plan.unhealthy_after)),
            probe_interval_ms=float(d.get("probe_interval_ms", Plan.probe_interval_ms)),
            parity=d.get("parity", Plan.parity),
            parity_slack=float(d.get("parity_slack", Plan.parity_slack)),
            shared_memory=bool(d.get("shared_memory", Plan.shared_memory)),
        )
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as err:
        raise EdgesplitError(f"{path} is not a valid plan ({type(err).__name__}: {err}); see `edgesplit plan --help`") from None
    try:
        manifest = load_manifest(plan.export, verify=False)
    except EdgesplitError as err:
        raise EdgesplitError(
            f"plan {path}: its export {d['export']!r} is read relative to the plan's folder, as {plan.export}: {err}"
        ) from None
    validate_plan(plan, manifest)
    return plan


def validate_plan(plan: Plan, manifest: Manifest) -> None:
    names = {p.name for p in manifest.parts}
    wanted = set(manifest.remote_parts)
    placed = {p.name for p in plan.parts}
    if unknown := placed - names:
        raise EdgesplitError(f"plan places parts the export does not have: {sorted(unknown)}; it has {sorted(names)}")
    if missing := wanted - placed:
        raise EdgesplitError(f"plan does not place {sorted(missing)}; give each a worker address")
    for p in plan.parts:
        if not p.replicas:
            raise EdgesplitError(f"part {p.name} has no replicas; list at least one host:port")
    if plan.input_dtype not in ("uint8", "float32"):
        raise EdgesplitError(f"input_dtype must be uint8 or float32, got {plan.input_dtype!r}")
    if plan.timeout_ms <= 0:
        raise EdgesplitError("timeout_ms must be positive")
    if plan.on_missing not in ("degrade", "fail"):
        raise EdgesplitError(f"on_missing must be degrade or fail, got {plan.on_missing!r}")
    if plan.parity not in ("eager", "lazy"):
        raise EdgesplitError(f"parity must be eager or lazy, got {plan.parity!r}")
    if plan.parity_slack < 0:
        raise EdgesplitError(f"parity_slack must be 0 or more, got {plan.parity_slack}")


STRATEGIES = {  # how a model is spread over devices, and the export each needs
    "split": "a split model's export (k independent branches)",
    "pipeline": "an export cut into stages (`edgesplit export --pipeline K`)",
    "data-parallel": "an unsplit model's export (whole-model replicas, requests spread over them)",
    "single": "an unsplit model's export (the whole model on the fastest device)",
}


def export_strategy(manifest: Manifest) -> str:
    """The strategy an export is made for: ``split``, ``pipeline``, or ``data-parallel`` (also ``single``)."""
    if manifest.is_split:
        return "split"
    return "pipeline" if any(p.role == "stage" for p in manifest.parts) else "data-parallel"


def make_plan(
    export_dir: str,
    addresses: Sequence[str],
    speeds: Sequence[float] | None = None,
    timeout_ms: float = Plan.timeout_ms,
    input_dtype: str = Plan.input_dtype,
    strategy: str | None = None,
) -> Plan:
    """Assign the export's parts to ``addresses`` so that branches finish together.

    ``strategy`` (default: what the export is made for, see :data:`STRATEGIES`): ``single`` places the whole
    model on the fastest device only; ``data-parallel`` makes every device a replica of it (the coordinator
    spreads requests over them in turn); ``pipeline`` puts one stage per device, the fastest first, spare
    devices becoming replicas of stages; ``split`` places the branches as below.

    Branch cost is its feature width as a proxy when the export has unequal widths
    (the manifest's ``feature_dims``; MACs scale with width squared), else equal. The
    heaviest branch goes to the fastest device. Devices beyond the number of branches
    become extra replicas of the branches whose devices are slowest relative to their work.
    Coded FC blocks (a ``decode`` stage) are spread over the devices in turn, one block of a
    stage per device while there are devices enough, so that one lost device costs one block.
    """
    manifest = load_manifest(export_dir, verify=False)
    made_for = export_strategy(manifest)
    strategy = strategy or made_for
    if strategy not in STRATEGIES:
        raise EdgesplitError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if (made_for, strategy) not in (("split", "split"), ("pipeline", "pipeline"), ("data-parallel", "data-parallel"),
                                    ("data-parallel", "single")):  # fmt: skip
        raise EdgesplitError(f"strategy {strategy} needs {STRATEGIES[strategy]}; {export_dir} is made for {made_for}")
    speeds = list(speeds) if speeds else [1.0] * len(addresses)
    if len(speeds) != len(addresses) or min(speeds, default=1.0) <= 0:
        raise EdgesplitError("give one positive speed per address")
    if strategy == "single" and addresses:
        fastest = max(range(len(addresses)), key=lambda j: speeds[j])
        addresses, speeds = [addresses[fastest]], [speeds[fastest]]
    coded = [s for s in manifest.stages if s.merge == "decode"]
    blocks = {p for s in coded for p in s.parts}
    parts = [p for p in manifest.remote_parts if p not in blocks]
    if len(addresses) < max(len(parts), 1):
        raise EdgesplitError(f"{len(parts)} parts need at least {len(parts)} worker addresses, got {len(addresses)}")
    work = [float(d) ** 2 for d in manifest.feature_dims] if manifest.is_split else [1.0] * len(parts)
    by_work = sorted(range(len(parts)), key=lambda i: -work[i])
    by_speed = sorted(range(len(addresses)), key=lambda j: -speeds[j])
    replicas: dict[int, list[int]] = {i: [by_speed[r]] for r, i in enumerate(by_work)}
    if not coded:
        for j in by_speed[len(parts) :]:  # spare devices: add capacity where finish time is worst
            worst = max(replicas, key=lambda i: work[i] / sum(speeds[d] for d in replicas[i]))
            replicas[worst].append(j)
    placements = [PartPlacement(parts[i], tuple(addresses[j] for j in replicas[i])) for i in range(len(parts))]
    for stage in coded:  # a device holding more blocks than the code can lose would cost answers when it goes
        blocks = len(stage.parts)
        if stage.code_r and math.ceil(blocks / len(addresses)) > stage.code_r:
            need = math.ceil(blocks / stage.code_r)
            raise EdgesplitError(
                f"stage {stage.name}: {stage.code_k} data + {stage.code_r} parity blocks on "
                f"{len(addresses)} device(s) would put {math.ceil(blocks / len(addresses))} blocks on one "
                f"device, more than the {stage.code_r} the code can lose; give at least {need} worker "
                f"addresses, or export with more parity blocks (--code-head K,R)"
            )
    for stage in coded:  # block j of every coded stage on device j (mod the number of devices)
        placements += [PartPlacement(p, (addresses[by_speed[j % len(addresses)]],)) for j, p in enumerate(stage.parts)]
    return Plan(str(export_dir), tuple(placements), timeout_ms=timeout_ms, input_dtype=input_dtype)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def coded_tolerance(plan: Plan) -> list[str]:
    """One line per coded stage of ``plan``: how its blocks sit on the devices, and how many devices it can lose
    without a degraded answer."""
    manifest = load_manifest(plan.export, verify=False)
    where = {p.name: p.replicas for p in plan.parts}
    lines = []
    for stage in (s for s in manifest.stages if s.merge == "decode"):
        per_device: dict[str, int] = {}
        for part in stage.parts:
            for address in where.get(part, ()):
                per_device[address] = per_device.get(address, 0) + 1
        most = max(per_device.values(), default=0)
        lose = stage.code_r // most if most else 0
        lines.append(
            f"{stage.name}: {stage.code_k} data + {stage.code_r} parity blocks on {len(per_device)} device(s), "
            f"at most {most} per device: "
            + (f"any {lose} device(s) can be lost without a degraded answer" if lose else "losing any device degrades answers")
        )
    return lines


def has_local_workers(plan: Plan) -> bool:
    """Whether any worker of ``plan`` runs on this machine (a Unix socket or a loopback address): its coordinator
    then shares cores with workers."""
    return any(a.startswith("ipc://") or a.rsplit(":", 1)[0] in LOOPBACK_HOSTS for p in plan.parts for a in p.replicas)


def parts_by_address(plan: Plan) -> dict[str, list[str]]:
    """What each worker must serve (its ``--part`` list)."""
    out: dict[str, list[str]] = {}
    for p in plan.parts:
        for address in p.replicas:
            out.setdefault(address, []).append(p.remote_name)
    return out
