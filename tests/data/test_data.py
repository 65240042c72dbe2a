import gzip
import struct

import numpy as np
import pytest

from edgesplit.data import load_dataset, read_idx, train_val_split
from edgesplit.data.datasets import ImageFolderDataset, load_cifar10
from edgesplit.data.preprocess import Preprocess, parse_input_shape
from edgesplit.errors import EdgesplitError


def _idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def test_idx_reader_on_hand_made_file(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(arr))
    with gzip.open(tmp_path / "a.idx.gz", "wb") as f:
        f.write(_idx_bytes(arr))
    assert np.array_equal(read_idx(tmp_path / "a.idx"), arr)
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz"), arr)
    # big-endian int32 labels
    raw = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">2i", 7, -1)
    (tmp_path / "b.idx").write_bytes(raw)
    assert read_idx(tmp_path / "b.idx").tolist() == [7, -1]


def test_idx_reader_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(EdgesplitError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((4,), np.uint8))[:-1])
    with pytest.raises(EdgesplitError, match="promises 4 data bytes"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_real_files():
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert train.data.shape == (60000, 28, 28, 1) and test.data.shape == (10000, 28, 28, 1)
    assert np.bincount(test.targets).tolist() == [1000] * 10
    assert train.classes[9] == "Ankle boot"


def test_missing_data_dir_message(tmp_path):
    with pytest.raises(EdgesplitError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "train", tmp_path / "nope")
    with pytest.raises(EdgesplitError, match="unknown dataset"):
        load_dataset("mnist2", "train")


def test_train_val_split_deterministic_and_disjoint():
    a_train, a_val = train_val_split(1000, 100)
    b_train, b_val = train_val_split(1000, 100)
    assert np.array_equal(a_val, b_val) and len(a_val) == 100
    assert not set(a_train) & set(a_val) and len(a_train) + len(a_val) == 1000


def test_cifar10_python_format(tmp_path):
    import pickle

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.full((2, 3072), 7, np.uint8), b"labels": [1, 2]}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    ds = load_cifar10("train", tmp_path)
    assert ds.data.shape == (10, 32, 32, 3) and ds.targets.tolist() == [1, 2] * 5


def test_imagefolder(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "train" / cls / "a.png")
    ds = load_dataset("imagefolder", "train", tmp_path, size=(16, 16))
    assert ds.classes == ["cat", "dog"] and ds.images(np.array([0, 1])).shape == (2, 16, 16, 3)
    with pytest.raises(EdgesplitError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nothing")


def test_preprocess_normalize_and_shapes():
    pre = Preprocess((2, 2), (0.5,), (0.25,))
    x = pre.normalize(np.full((1, 1, 2, 2), 255, np.uint8))
    assert np.allclose(x, (1.0 - 0.5) / 0.25)
    assert parse_input_shape("3x224x224") == (3, 224, 224)
    with pytest.raises(EdgesplitError, match="CxHxW"):
        parse_input_shape("224x224")
