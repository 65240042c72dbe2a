"""Hardware-aware co-design: search a network and its accelerator for speed targets, then plan a fleet.

``space``: candidates as knobs, one-step moves (pure, torch-free).
``evaluate``: the hardware model and a short real training per candidate, journaled on disk.
``search``: bundle selection, stochastic coordinate descent, finalists, baselines (`edgesplit codesign`).
``fleet``: branches, widths and devices for a fleet; the plan file the runtime reads.
``report``: report.md, pareto.png, result.json.
"""
