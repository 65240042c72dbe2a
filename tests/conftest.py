import os
from pathlib import Path

import numpy as np
import pytest

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny resnet18-split2 trained for one epoch on 512 real Fashion-MNIST images."""
    from edgesplit.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny_split2")
    cfg = TrainConfig(
        model="resnet18-split2",
        model_kwargs={"width_mult": 0.125},
        epochs=1,
        max_train_samples=512,
        val_size=256,
        batch_size=64,
        threads=1,
    )
    train(cfg, out)
    return out


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory):
    from edgesplit.export.onnx_export import export_model
    from edgesplit.training.checkpoint import load_model

    model, ckpt = load_model(tiny_run)
    out = tmp_path_factory.mktemp("tiny_split2_export")
    export_model(model, ckpt, out)
    return out


@pytest.fixture(scope="session")
def mlp():
    """AlexNet-like fully connected layers (random weights): the coded FC tests' network."""
    from edgesplit.export.coded import random_alexnet_fc

    return random_alexnet_fc(num_classes=10, seed=3, widths=(64, 48, 40))


@pytest.fixture(scope="session")
def coded_export(mlp, tmp_path_factory):
    """``mlp`` exported with its two hidden layers coded over 3 data + 1 parity blocks (stages l1, l2)."""
    from edgesplit.export.coded import export_coded_mlp

    d = tmp_path_factory.mktemp("coded")
    export_coded_mlp(mlp, d, 3, 1, "mlp", layer_names=("l1", "l2"))
    return d


@pytest.fixture
def rng():
    return np.random.default_rng(0)


os.environ.setdefault("OMP_NUM_THREADS", "1")
