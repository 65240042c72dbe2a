import contextlib
import os
import signal
import subprocess
import sys
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
def random_export(tmp_path_factory):
    """resnet18-split2 at width 0.125 with its initial (random) weights, exported: for the runtime tests,
    where what a part answers matters and its accuracy does not (``tiny_export`` is trained on real data)."""
    import torch

    from edgesplit.data.datasets import FASHION_MNIST_CLASSES
    from edgesplit.data.preprocess import Preprocess
    from edgesplit.export.onnx_export import export_model
    from edgesplit.models import create_model

    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_chans": 1, "input_size": (28, 28), "width_mult": 0.125}
    model = create_model("resnet18-split2", **kwargs).eval()
    ckpt = {
        "model": "resnet18-split2",
        "model_kwargs": kwargs,
        "state_dict": model.state_dict(),
        "classes": list(FASHION_MNIST_CLASSES),
        "preprocess": Preprocess((28, 28), (0.286,), (0.353,)).to_dict(),
        "dataset": "fashion-mnist",
    }
    out = tmp_path_factory.mktemp("random_split2_export")
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


@contextlib.contextmanager
def _serving(*args):
    """`edgesplit serve ARGS --port 0` until the block ends: (its process, its port); stopped with SIGTERM, which
    it must answer with exit status 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgesplit", "serve", *map(str, args), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("EDGESPLIT-SERVE-READY"), proc.stderr.read() if proc.poll() is not None else line
        proc.ready_line = line  # e.g. its http=PORT
        yield proc, int(line.split("port=")[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@pytest.fixture
def serving():
    return _serving


@pytest.fixture
def rng():
    return np.random.default_rng(0)


os.environ.setdefault("OMP_NUM_THREADS", "1")
