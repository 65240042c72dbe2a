"""Training, evaluation and checkpoints (needs torch: ``pip install edgesplit[train]``)."""
