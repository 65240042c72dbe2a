"""``edgesplit demo``, the main job: ``config.py`` (what it runs; no numpy, the CLI reads its options from it) and
``run.py`` (training, workers, the measurements, the report)."""
